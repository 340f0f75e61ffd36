"""`train`: fine-tune a pretrained CNN on an ImageFolder dataset and write model.pt (with its metadata and
novelty score), labels.txt, metrics.json and plots.

- `config`: TrainConfig (what a training job is) and the valid range of every numeric setting.
- `cli`: the `train` command, building a TrainConfig from its flags.
- `trainer`: `train_model(cfg)`: stages, one fit loop, resume, outputs; `engine`: one epoch / evaluate.
- `dataset`, `presets` (augmentation), `novelty` (fitting the novelty score), `distributed` (torchrun),
  `report` (metrics and plots).
"""
