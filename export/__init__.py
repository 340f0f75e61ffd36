"""Export: training checkpoint -> verified ONNX (FP32 / FP16) -> TensorRT engine built on the device.

Modules (import what you need; nothing heavy is imported here):
- `export.onnx_export`: `export_onnx(checkpoint, output=None, *, opset=11, fp16=False, calib_data=None) -> Path`,
  `export_onnx_verified(...) -> (Path, VerifyReport)`.
- `export.verify`: `VerifyReport`, `verify_onnx(...)`, `verification_inputs(meta, calib_data, count)`, tolerances.
- `export.engine_build`: `build_engine(onnx_path, precision, calib_data=None, cache_dir=None, **kw) -> Path`
  (TensorRT imported lazily; `require_tensorrt()` says how to get it); the built engine is verified through the
  runtime's own `TensorRTBackend`. Its parts: `export.engine_progress` (progress line), `export.calibration`
  (INT8 calibration on real images), `export.cuda_binding` (GPU identity and buffers, through PyTorch).
- `export.cache`: `engine_cache_key(...)`, `stale_reason(engine, key)`, `write_engine(...)` (no TensorRT needed).
- `export.run`: `run_export(model, fmt=..., ...)`, what the CLI (`edge export`, `python -m export`) calls.
Reading metadata back (for the runtime): `edge.core.model_files.read_onnx_meta`, `edge.core.model_files.read_engine_sidecar`.
"""
