"""The real-time runtime: video sources, the latest-frame camera, inference backends, the pipeline, smoothing,
overlay and outputs. Builds on `edge.core` only; used by the service, the CLI, capture and export."""
