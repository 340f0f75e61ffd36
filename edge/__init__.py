"""Jetson edge classifier. Layers, lowest first (a layer imports only those below it):

- `edge.core`: errors, atomic files, model registry, preprocessing, metadata, model files (ONNX/engine).
- `edge.runtime`: sources, camera, backends, pipeline, smoothing, overlay, outputs.
- `edge.service`: the always-on service (`edge serve`) and its installer.
- `edge.cli`: the `edge` umbrella command; the only place that reaches into `train`, `export` and `capture`.

See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
