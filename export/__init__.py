"""Export: training checkpoint -> verified ONNX (FP32 / FP16) -> TensorRT engine built on the device.

Modules (import what you need; nothing heavy is imported here):
- `export.options`: `ExportOptions` (every setting, validated once when made; the CLI builds it from its flags)
  and `output_path(options, kind, source)`, the one function that decides where each file goes.
- `export.run`: `run_export(model, options, progress=, on_file=)`, what the CLI (`edge export`, `python -m
  export`) and the teach page call.
- `export.onnx_export`: `export_onnx_verified(checkpoint, options) -> (Path, VerifyReport)`; `export_onnx(checkpoint,
  output=None, **ExportOptions fields) -> Path` for scripts and tests.
- `export.verify`: `VerifyReport`, `verify_onnx(...)`, `verification_inputs(meta, calib_data, count)`, tolerances.
- `export.engine_build`: `build_engine_report(onnx_path, options)` / `build_engine(...) -> Path` (TensorRT imported
  lazily; `require_tensorrt()` says how to get it); the built engine is verified through the runtime's own
  `TensorRTBackend`. Its parts: `export.engine_progress` (progress line), `export.calibration` (INT8 calibration
  on real images), `export.cuda_binding` (GPU identity and buffers, through PyTorch).
- `export.cache`: default file names, `engine_cache_key(...)`, `stale_reason(engine, key)`, `write_engine(...)`
  (no TensorRT needed).
Reading metadata back (for the runtime): `edge.core.model_files.read_onnx_meta`,
`edge.core.model_files.read_engine_sidecar`.
"""
