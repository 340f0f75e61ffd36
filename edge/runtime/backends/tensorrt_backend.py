"""TensorRT backend: a serialized engine (.engine/.plan) built on this device by `edge export`.

Labels and preprocessing come from the engine's JSON sidecar `<engine>.json` (written by `edge export`). An engine
built from a model with a novelty score has a second output, `novelty`, computed in the engine. Works
with TensorRT's named-tensor API (8.5+, 10.x: `set_tensor_address` + `execute_async_v3`) and falls back to the
binding API of TensorRT 7/8.0-8.4 (`execute_async_v2`), as on JetPack 4.x. Device buffers are preallocated torch
CUDA tensors (torch is the one CUDA binding) and the host input is page-locked, so a frame costs two copies and one
launch. `edge export` checks every engine it builds through this same class (`TensorRTBackend.from_engine_bytes`),
so what was verified is what `edge serve` runs.

The only module of `edge` that imports `tensorrt` (lazily, so the rest works without it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import EdgeError
from edge.core.metadata import ModelMeta
from edge.core.model_files import NOVELTY_OUTPUT, OUTPUT_NAME
from edge.runtime.backends.base import Backend, Outputs, as_probabilities, check_batch

log = logging.getLogger(__name__)

_TRT_LOGGER: Any = None


def trt_logger(trt):
    """The process's one TensorRT logger (TensorRT expects a single one for builder and runtime), forwarding to
    this module's Python logger; TensorRT's own stderr logger where its bindings cannot be subclassed."""
    global _TRT_LOGGER
    if _TRT_LOGGER is not None:
        return _TRT_LOGGER
    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.ERROR, sev.ERROR: logging.ERROR, sev.WARNING: logging.WARNING}
    try:

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                level = levels.get(severity, logging.DEBUG)
                if log.isEnabledFor(level):
                    log.log(level, "TensorRT: %s", msg)

        _TRT_LOGGER = _Logger()
    except Exception:  # noqa: BLE001 - bindings that cannot be subclassed
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


def cuda_device_identity() -> tuple[str, str]:
    """(name, compute capability "8.7") of CUDA GPU 0, as PyTorch sees it."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def read_engine_meta(path: Path):
    """(ModelMeta, EngineKey) from the engine's sidecar `<engine>.json` written by `edge export`."""
    from edge.core.model_files import read_engine_sidecar

    side = read_engine_sidecar(path)
    return side.meta, side.key


def check_environment(path: Path, key, trt_version: str) -> None:
    """Refuse an engine built by another TensorRT (it cannot deserialize); warn when the GPU differs."""
    if key.tensorrt_version and key.tensorrt_version != trt_version:
        raise EdgeError(
            f"engine {str(path)!r} was built with TensorRT {key.tensorrt_version}, this is {trt_version}; engines "
            f"only run on the TensorRT that built them: rebuild it here with `edge export`"
        )
    try:
        why = key.environment_mismatch(trt_version, *cuda_device_identity())
    except Exception:  # noqa: BLE001 - the check is advisory; deserialization has the last word
        why = None
    if why:
        log.warning("engine %s may not fit this device (%s); rebuild it with `edge export` if loading fails", path, why)


def _import_runtime(device: str):
    """(tensorrt, torch) with a usable CUDA GPU, or EdgeError saying what is missing."""
    if device == "cpu":
        raise EdgeError("TensorRT runs on the GPU only; use --backend onnxruntime or torch with --device cpu")
    try:
        import tensorrt as trt
    except ImportError as e:
        raise EdgeError(
            "the tensorrt backend needs TensorRT's Python API (on a Jetson it comes with JetPack: "
            "`sudo apt install python3-libnvinfer`); or use --backend onnxruntime / torch"
        ) from e
    import torch

    if not torch.cuda.is_available():
        raise EdgeError("TensorRT needs a CUDA GPU, and PyTorch sees none; use --backend onnxruntime or torch")
    return trt, torch


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, device: str = "auto") -> None:
        path = Path(path)
        trt, torch = _import_runtime(device)
        meta, key = read_engine_meta(path)
        check_environment(path, key, trt.__version__)
        try:
            data = path.read_bytes()
        except OSError as e:  # e.g. the service user may not read it
            raise EdgeError(f"cannot read engine {str(path)!r}: {e.strerror or e}") from e
        self._load(trt, torch, data, meta, f"engine {str(path)!r}")

    @classmethod
    def from_engine_bytes(cls, data: bytes, meta: ModelMeta, label: str = "the engine just built") -> "TensorRTBackend":
        """A backend for a serialized engine in memory, described by `meta` (no file, no sidecar): how `edge export`
        runs an engine it has built, before writing it."""
        trt, torch = _import_runtime("cuda")
        backend = cls.__new__(cls)
        backend._load(trt, torch, bytes(data), meta, label)
        return backend

    def _load(self, trt, torch, data: bytes, meta: ModelMeta, label: str) -> None:
        self._trt, self._torch = trt, torch
        self._logger = trt_logger(trt)
        trt.init_libnvinfer_plugins(self._logger, "")
        runtime = trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EdgeError(
                f"TensorRT {trt.__version__} cannot load {label}: engines only run on the TensorRT "
                f"version and GPU that built them; rebuild it on this device with `edge export`"
            )
        self._runtime, self._engine = runtime, engine
        self._context = engine.create_execution_context()
        self._named = hasattr(engine, "num_io_tensors")
        self._setup_io()
        size = meta.preprocess.input_size
        if tuple(self._in_shape[1:]) != (3, size, size):
            raise EdgeError(f"{label} takes input {tuple(self._in_shape)} but its metadata says "
                            f"3x{size}x{size}; rebuild it")
        super().__init__(meta, device="cuda", providers=[f"TensorRT {trt.__version__}"])
        self.has_novelty = NOVELTY_OUTPUT in self._out_names and meta.novelty is not None
        self._allocate()

    def _allocate(self) -> None:
        """Device and page-locked host buffers for max_batch inputs and outputs, bound to the context."""
        torch, n, size = self._torch, self.max_batch, self.input_size
        self._stream = torch.cuda.Stream()
        self._d_in = torch.empty((n, 3, size, size), dtype=self._in_dtype, device="cuda")
        self._h_in = torch.empty((n, 3, size, size), dtype=torch.float32, pin_memory=True)
        self._d_out = [torch.empty((n, *shape[1:]), dtype=dtype, device="cuda")
                       for shape, dtype in zip(self._out_shapes, self._out_dtypes)]
        self._h_out = [torch.empty((n, *shape[1:]), dtype=torch.float32, pin_memory=True) for shape in self._out_shapes]
        if self._named:
            self._context.set_tensor_address(self._in_name, self._d_in.data_ptr())
            for name, buf in zip(self._out_names, self._d_out):
                self._context.set_tensor_address(name, buf.data_ptr())

    # ---------------------------------------------------------------- engine I/O description
    def _torch_dtype(self, trt_dtype):
        np_dtype = np.dtype(self._trt.nptype(trt_dtype))
        return {np.dtype(np.float32): self._torch.float32, np.dtype(np.float16): self._torch.float16}.get(np_dtype)

    def _setup_io(self) -> None:
        trt, e = self._trt, self._engine
        if self._named:  # TensorRT >= 8.5
            names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
            ins = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            shape = lambda n: tuple(e.get_tensor_shape(n))  # noqa: E731 - two TensorRT APIs, one name
            dtype = lambda n: e.get_tensor_dtype(n)  # noqa: E731 - two TensorRT APIs, one name
            profile_max = lambda n: tuple(e.get_tensor_profile_shape(n, 0)[2])  # noqa: E731 - two TensorRT APIs, one name
        else:  # TensorRT 7 / 8.0-8.4 binding API
            names = [e.get_binding_name(i) for i in range(e.num_bindings)]
            ins = [n for i, n in enumerate(names) if e.binding_is_input(i)]
            outs = [n for i, n in enumerate(names) if not e.binding_is_input(i)]
            shape = lambda n: tuple(e.get_binding_shape(e.get_binding_index(n)))  # noqa: E731 - two TensorRT APIs, one name
            dtype = lambda n: e.get_binding_dtype(e.get_binding_index(n))  # noqa: E731 - two TensorRT APIs, one name
            profile_max = lambda n: tuple(e.get_profile_shape(0, e.get_binding_index(n))[2])  # noqa: E731 - two TensorRT APIs, one name
        if len(ins) != 1 or not outs or (len(outs) > 1 and set(outs) != {OUTPUT_NAME, NOVELTY_OUTPUT}):
            raise EdgeError(f"expected an engine with one input and one output (or {OUTPUT_NAME!r} and "
                            f"{NOVELTY_OUTPUT!r}), got inputs {ins} and outputs {outs}; rebuild it with `edge export`")
        # probabilities first, then novelty (used when the sidecar's metadata has its threshold)
        self._out_names = sorted(outs, key=lambda n: n == NOVELTY_OUTPUT)
        self._in_name = ins[0]
        self._binding_order = names
        in_shape = shape(ins[0])
        self._dynamic = in_shape[0] == -1
        self.max_batch = int(profile_max(ins[0])[0]) if self._dynamic else int(in_shape[0])
        self._in_shape = (self.max_batch, *in_shape[1:])
        self._out_shapes = [(self.max_batch, *shape(n)[1:]) for n in self._out_names]
        self._in_dtype = self._torch_dtype(dtype(ins[0]))
        self._out_dtypes = [self._torch_dtype(dtype(n)) for n in self._out_names]
        if self._in_dtype is None or None in self._out_dtypes:
            raise EdgeError("engine input/output must be float32 or float16; rebuild it with `edge export`")

    # ---------------------------------------------------------------- inference
    def _run(self, chunk: np.ndarray) -> list[np.ndarray]:
        """Outputs of one chunk of at most max_batch inputs: [probabilities (n x C)] (+ [novelty (n x 1)])."""
        torch, ctx = self._torch, self._context
        n = chunk.shape[0]
        np.copyto(self._h_in.numpy()[:n], chunk)
        with torch.cuda.stream(self._stream):
            self._d_in[:n].copy_(self._h_in[:n], non_blocking=True)
            if self._named:
                if self._dynamic:
                    ctx.set_input_shape(self._in_name, (n, *self._in_shape[1:]))
                ok = ctx.execute_async_v3(self._stream.cuda_stream)
            else:
                if self._dynamic:
                    ctx.set_binding_shape(self._engine.get_binding_index(self._in_name), (n, *self._in_shape[1:]))
                ptrs = {self._in_name: self._d_in.data_ptr(),
                        **{name: buf.data_ptr() for name, buf in zip(self._out_names, self._d_out)}}
                ok = ctx.execute_async_v2([ptrs[name] for name in self._binding_order], self._stream.cuda_stream)
            if not ok:
                raise RuntimeError("TensorRT execution failed")
            for host, dev in zip(self._h_out, self._d_out):
                host[:n].copy_(dev[:n], non_blocking=True)
        self._stream.synchronize()
        return [host.numpy()[:n].reshape(n, -1).copy() for host in self._h_out]

    def run(self, batch: np.ndarray) -> Outputs:
        if self._context is None:
            raise RuntimeError("backend is closed")
        batch = check_batch(batch, self.input_size)
        chunks = [self._run(batch[i:i + self.max_batch]) for i in range(0, batch.shape[0], self.max_batch)]
        probs = as_probabilities(np.concatenate([c[0] for c in chunks]), atol=1e-2)  # softmax: graph without Softmax
        novelty = np.concatenate([c[1] for c in chunks]).reshape(-1) if self.has_novelty else None
        return probs, novelty

    def close(self) -> None:
        if self._context is not None:
            self._context = None
            self._engine = None
            self._runtime = None
            self._d_in = None
            self._d_out = []
