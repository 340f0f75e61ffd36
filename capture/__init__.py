"""`capture`: build a dataset from a camera, a video or a photo folder (DATA/<label>/*.jpg, or DATA/train|val/...).

- `cli`: the `capture` command (thin; `capture --web` opens the teach page, `edge.teach`).
- `session`: the capture loop (preview, keys, bursts, timed shots) over any `edge.runtime.sources` URI.
- `dataset`: DatasetWriter (atomic JPEG writes, counts per label); `labels`: where a label's images go
  (`edge.core.labels.check_label` holds the label rules); `importer`: photos imported from a folder;
  `display`: the preview window.
It reads frames and writes a dataset, nothing more: it imports only `edge.core` and `edge.runtime`.
"""
