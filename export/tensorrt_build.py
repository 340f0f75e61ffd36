"""Build TensorRT engines from exported ONNX files, on the device that will run them.

Written against TensorRT's Python API as shipped by JetPack 5 (TensorRT 8.5) and JetPack 6 (TensorRT 10.x), with
fallbacks for 8.2 (the Nano's JetPack 4.6): explicit-batch network from the ONNX parser, one optimization profile
(batch 1..max_batch, optimized for 1, the camera loop's batch), FP16 or INT8 (real images through an entropy
calibrator, with FP16 fallback for layers INT8 cannot run), a persistent timing cache, a progress line while it
builds (IProgressMonitor phases on TensorRT >= 10, elapsed time always), an engine cache (export.cache) and
atomic engine + sidecar writes. A freshly built engine is checked against the ONNX file in onnxruntime before it
is written.

`tensorrt` and the CUDA binding (PyTorch with CUDA, else cuda-python, else pycuda) are imported only here and only
when used, so the rest of the project works on machines without them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edge.core.errors import EdgeError
from edge.core.fsutil import atomic_write_bytes, ensure_writable_dir
from edge.core.metadata import ModelMeta, sha256_file
from edge.core.model_files import PRECISIONS, EngineKey, read_onnx_meta
from edge.core.preprocess import PreprocessSpec, preprocess_image

from .cache import (
    cached_engine_path,
    calibration_cache_path,
    calibration_digest,
    default_engine_path,
    engine_cache_key,
    is_dir_arg,
    prepare_output,
    stale_reason,
    timing_cache_path,
    write_engine,
)
from .verify import (
    DEFAULT_VERIFY_IMAGES,
    ENGINE_TOLERANCES,
    InputBatch,
    VerifyReport,
    compare_probabilities,
    image_source,
    onnxruntime_probabilities,
    pick_evenly,
    read_image_bgr,
    require_passed,
    verification_inputs,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 8
DEFAULT_WORKSPACE_MB = 1024
DEFAULT_CALIB_IMAGES = 512
DEFAULT_CALIB_BATCH = 8
MIN_CALIB_IMAGES = 32  # fewer than this gives a noisy INT8 table: warn
PROGRESS_INTERVAL_S = 2.0  # how often the progress line is refreshed while TensorRT builds

INSTALL_HINT = (
    "TensorRT's Python API is not installed here; it ships with JetPack on a Jetson (`sudo apt install "
    "python3-libnvinfer`, and create your venv with --system-site-packages to see it), on a PC `pip install tensorrt`. "
    "Export ONNX anywhere with `edge export model.pt`, then build the engine on the device that will run it with "
    "`edge export model.onnx --format engine --fp16`"
)

ProgressFn = Callable[[str], None]


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as missing
        return False
    return True


def require_tensorrt():
    """The `tensorrt` module, or EdgeError with one line saying how to get it."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - ImportError, or a binding that fails to load its libraries
        raise EdgeError(INSTALL_HINT) from e
    return trt


def trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


# --------------------------------------------------------------------------------------------------- CUDA access


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "8.7"


class _Buffer:
    """A device allocation: `ptr` (int), `copy_from(host array)`, `copy_to(host array)`."""

    ptr: int

    def copy_from(self, arr: np.ndarray) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def copy_to(self, arr: np.ndarray) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class CudaBackend:
    """The CUDA binding in use: PyTorch (JetPack's CUDA build), cuda-python or pycuda, whichever imports first."""

    name = "none"

    def device_info(self) -> DeviceInfo:  # pragma: no cover - interface
        raise NotImplementedError

    def alloc(self, nbytes: int) -> _Buffer:  # pragma: no cover - interface
        raise NotImplementedError

    def synchronize(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class _TorchBackend(CudaBackend):
    name = "torch"

    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch has no CUDA")
        self.torch = torch

    def device_info(self) -> DeviceInfo:
        major, minor = self.torch.cuda.get_device_capability(0)
        return DeviceInfo(self.torch.cuda.get_device_name(0), f"{major}.{minor}")

    def alloc(self, nbytes: int) -> _Buffer:
        torch = self.torch

        class Buf(_Buffer):
            def __init__(self):
                self.t = torch.empty(max(1, nbytes), dtype=torch.uint8, device="cuda")
                self.ptr = int(self.t.data_ptr())

            def copy_from(self, arr: np.ndarray) -> None:
                src = torch.from_numpy(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
                self.t[: src.numel()].copy_(src)  # pageable host memory: synchronous

            def copy_to(self, arr: np.ndarray) -> None:
                flat = arr.reshape(-1).view(np.uint8)
                flat[:] = self.t[: flat.size].cpu().numpy()

        return Buf()

    def synchronize(self) -> None:
        self.torch.cuda.synchronize()


class _CudaPythonBackend(CudaBackend):
    name = "cuda-python"

    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.cudart = cudart
        self._check(cudart.cudaSetDevice(0))

    def _check(self, result):
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    def device_info(self) -> DeviceInfo:
        prop = self._check(self.cudart.cudaGetDeviceProperties(0))
        name = prop.name.decode(errors="replace").rstrip("\0") if isinstance(prop.name, bytes) else str(prop.name)
        return DeviceInfo(name, f"{prop.major}.{prop.minor}")

    def alloc(self, nbytes: int) -> _Buffer:
        backend, cudart = self, self.cudart

        class Buf(_Buffer):
            def __init__(self):
                self.ptr = int(backend._check(cudart.cudaMalloc(max(1, nbytes))))

            def copy_from(self, arr: np.ndarray) -> None:
                a = np.ascontiguousarray(arr)
                backend._check(cudart.cudaMemcpy(self.ptr, a.ctypes.data, a.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))

            def copy_to(self, arr: np.ndarray) -> None:
                backend._check(cudart.cudaMemcpy(arr.ctypes.data, self.ptr, arr.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))

            def __del__(self):
                try:
                    cudart.cudaFree(self.ptr)
                except Exception:  # noqa: BLE001 - interpreter shutdown
                    pass

        return Buf()

    def synchronize(self) -> None:
        self._check(self.cudart.cudaDeviceSynchronize())


class _PyCudaBackend(CudaBackend):
    name = "pycuda"

    def __init__(self):
        import pycuda.autoinit  # noqa: F401 - creates and activates a context on GPU 0
        import pycuda.driver as cuda

        self.cuda = cuda

    def device_info(self) -> DeviceInfo:
        dev = self.cuda.Device(0)
        major, minor = dev.compute_capability()
        return DeviceInfo(dev.name(), f"{major}.{minor}")

    def alloc(self, nbytes: int) -> _Buffer:
        cuda = self.cuda

        class Buf(_Buffer):
            def __init__(self):
                self.mem = cuda.mem_alloc(max(1, nbytes))
                self.ptr = int(self.mem)

            def copy_from(self, arr: np.ndarray) -> None:
                cuda.memcpy_htod(self.mem, np.ascontiguousarray(arr))

            def copy_to(self, arr: np.ndarray) -> None:
                cuda.memcpy_dtoh(arr, self.mem)

        return Buf()

    def synchronize(self) -> None:
        self.cuda.Context.synchronize()


_BACKEND: CudaBackend | None = None


def cuda_backend() -> CudaBackend:
    """The first CUDA binding that works (torch, cuda-python, pycuda); EdgeError naming them when none does."""
    global _BACKEND
    if _BACKEND is not None:
        return _BACKEND
    tried = []
    for cls in (_TorchBackend, _CudaPythonBackend, _PyCudaBackend):
        try:
            _BACKEND = cls()
            log.debug("CUDA access through %s", cls.name)
            return _BACKEND
        except Exception as e:  # noqa: BLE001 - missing module, no driver, no GPU: try the next
            tried.append(f"{cls.name}: {type(e).__name__}: {str(e)[:80]}")
    raise EdgeError(
        "building a TensorRT engine needs a CUDA GPU reachable from Python (JetPack's CUDA-enabled torch, "
        "cuda-python or pycuda); none worked (" + "; ".join(tried) + ")"
    )


def device_info() -> DeviceInfo:
    """Name and compute capability of GPU 0."""
    return cuda_backend().device_info()


# ------------------------------------------------------------------------------------------------------ progress


@dataclass
class BuildProgress:
    """What the build is doing, updated from TensorRT's threads and read by the heartbeat thread."""

    label: str
    phase: str = "starting"
    step: int = 0
    steps: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _phases: dict[str, tuple[str | None, int, int]] = field(default_factory=dict, repr=False)

    def set(self, phase: str, step: int = 0, steps: int = 0) -> None:
        with self.lock:
            self.phase, self.step, self.steps = phase, step, steps

    # IProgressMonitor callbacks (TensorRT >= 10); nested phases: show the innermost active one
    def phase_start(self, name: str, parent: str | None, steps: int) -> None:
        with self.lock:
            self._phases[name] = (parent, 0, int(steps))
            self.phase, self.step, self.steps = name, 0, int(steps)

    def step_complete(self, name: str, step: int) -> None:
        with self.lock:
            parent, _, steps = self._phases.get(name, (None, 0, 0))
            self._phases[name] = (parent, int(step) + 1, steps)
            if self.phase == name:
                self.step = int(step) + 1

    def phase_finish(self, name: str) -> None:
        with self.lock:
            parent, _, _ = self._phases.pop(name, (None, 0, 0))
            if parent and parent in self._phases:
                _, step, steps = self._phases[parent]
                self.phase, self.step, self.steps = parent, step, steps

    def line(self) -> str:
        with self.lock:
            elapsed = time.monotonic() - self.started
            where = self.phase + (f" {self.step}/{self.steps}" if self.steps else "")
        return f"{self.label}: {where}, {int(elapsed) // 60}:{int(elapsed) % 60:02d} elapsed"


class _Heartbeat:
    """Calls progress(state.line()) every `interval` seconds from a daemon thread while the build runs."""

    def __init__(self, state: BuildProgress, progress: ProgressFn, interval: float | None = None):
        self.state, self.progress = state, progress
        self.interval = PROGRESS_INTERVAL_S if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trt-build-progress", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.progress(self.state.line())
            except Exception:  # noqa: BLE001 - a broken progress sink must not break the build
                log.debug("progress callback failed", exc_info=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _default_progress(line: str) -> None:
    log.info(line)


# ------------------------------------------------------------------------------------------------ TensorRT glue

_TRT_LOGGER: Any = None


def _trt_logger(trt):
    """One TensorRT logger per process (TensorRT expects that), forwarding to this module's Python logger."""
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
    except Exception:  # noqa: BLE001 - bindings that cannot be subclassed: TensorRT's own stderr logger
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


def _make_progress_monitor(trt, state: BuildProgress):
    """An IProgressMonitor feeding `state` (TensorRT >= 10), or None where the API has none."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                state.phase_start(str(phase_name), parent_phase and str(parent_phase), int(num_steps))
            except Exception:  # noqa: BLE001 - never raise into TensorRT
                pass

        def step_complete(self, phase_name, step):
            try:
                state.step_complete(str(phase_name), int(step))
            except Exception:  # noqa: BLE001
                pass
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            try:
                state.phase_finish(str(phase_name))
            except Exception:  # noqa: BLE001
                pass

    return _Monitor()


class CalibrationBatches:
    """Real images -> preprocessed Bx3xSxS float32 batches for INT8 calibration (same preprocessing as serving).

    Images are read lazily, one batch at a time (a Nano cannot hold hundreds of tensors); unreadable files are
    skipped and counted; only full batches are produced.
    """

    def __init__(self, files: Sequence[Path], spec: PreprocessSpec, batch_size: int):
        if batch_size < 1:
            raise EdgeError(f"calibration batch size must be >= 1, got {batch_size}")
        self.files = list(files)
        self.spec = spec
        self.batch_size = batch_size
        self.skipped = 0
        self.used = 0

    def __len__(self) -> int:
        return len(self.files) // self.batch_size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 3, self.spec.input_size, self.spec.input_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        batch = np.empty(self.shape, np.float32)
        n = 0
        for f in self.files:
            img = read_image_bgr(f)
            if img is None:
                self.skipped += 1
                log.warning("calibration: skipping unreadable image %s", f)
                continue
            preprocess_image(img, self.spec, "BGR", out=batch[n])
            n += 1
            if n == self.batch_size:
                self.used += n
                yield batch
                batch = np.empty(self.shape, np.float32)
                n = 0


def _make_calibrator(trt, batches: CalibrationBatches, cache_path: Path, state: BuildProgress, backend: CudaBackend):
    """An IInt8EntropyCalibrator2 fed from `batches`; its table is cached at `cache_path` (written atomically)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.error: BaseException | None = None
            self._it = iter(batches)
            self._buf: _Buffer | None = None
            self._count = 0

        def get_batch_size(self):
            return batches.batch_size

        def get_batch(self, names, *args):
            try:
                batch = next(self._it, None)
                if batch is None:
                    return None
                if self._buf is None:
                    self._buf = backend.alloc(batch.nbytes)
                self._buf.copy_from(batch)
                self._count += 1
                state.set("calibrating", self._count, len(batches))
                return [self._buf.ptr]
            except BaseException as e:  # noqa: BLE001 - never raise into TensorRT; re-raised after the build
                self.error = e
                return None

        def read_calibration_cache(self):
            if cache_path.is_file():
                log.info("using cached INT8 calibration table %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache):
            try:
                atomic_write_bytes(cache_path, bytes(cache))
            except OSError as e:
                log.warning("could not write calibration cache %s: %s", cache_path, e)

    return EntropyCalibrator()


def _set_workspace(trt, config, workspace_mb: int) -> None:
    size = int(workspace_mb) << 20
    if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size)
    else:  # TensorRT < 8.4
        config.max_workspace_size = size


def _load_timing_cache(config, path: Path):
    data = b""
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as e:
            log.warning("cannot read timing cache %s: %s", path, e)
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False: a cache from elsewhere is dropped
        log.info("timing cache %s does not match this TensorRT/GPU; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config, path: Path) -> None:
    try:
        cache = config.get_timing_cache()
        if cache is not None:
            atomic_write_bytes(path, bytes(memoryview(cache.serialize())))
    except Exception as e:  # noqa: BLE001 - a timing cache is an optimization; never fail the build for it
        log.warning("could not save timing cache %s: %s", path, e)


def build_serialized_engine(
    trt,
    onnx_path: Path,
    *,
    precision: str,
    input_size: int,
    max_batch: int,
    workspace_mb: int,
    timing_cache: Path,
    state: BuildProgress,
    calibrator: Any = None,
    calib_shape: tuple[int, ...] | None = None,
) -> bytes:
    """Parse the ONNX file and build a serialized engine (bytes). EdgeError when TensorRT refuses."""
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if trt_major(trt) < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    state.set("parsing ONNX")
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgeError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {(errors or ['unknown error'])[0].strip()}; "
            f"re-export with an opset it supports (`edge export model.pt --opset 11`)"
        )
    if network.num_inputs != 1:
        raise EdgeError(f"{onnx_path.name} has {network.num_inputs} inputs; expected one image batch")
    inp = network.get_input(0)
    dims = tuple(int(d) for d in inp.shape)
    if len(dims) != 4 or dims[1:] != (3, input_size, input_size):
        raise EdgeError(f"{onnx_path.name} input {inp.name!r} has shape {dims}; expected (batch, 3, {input_size}, {input_size})")

    config = builder.create_builder_config()
    _set_workspace(trt, config, workspace_mb)
    profile = builder.create_optimization_profile()
    chw = (3, input_size, input_size)
    if dims[0] == -1:
        profile.set_shape(inp.name, (1, *chw), (1, *chw), (max_batch, *chw))
    else:  # a fixed-batch ONNX file (not ours): build exactly that
        profile.set_shape(inp.name, dims, dims, dims)
    config.add_optimization_profile(profile)

    if precision == "fp32":
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # "fp32" means fp32; TF32 would loosen results on Ampere (Orin)
    elif precision == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast FP16; the FP16 engine may not be faster than FP32")
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        if not getattr(builder, "platform_has_fast_int8", True):
            log.warning("this GPU has no fast INT8 (the Nano's Maxwell GPU has none); prefer --fp16 there")
        if calibrator is None or not hasattr(config, "int8_calibrator"):
            raise EdgeError(f"TensorRT {trt.__version__} offers no INT8 calibration API here; build with --fp16")
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers without INT8 kernels fall back to FP16, not FP32
        config.int8_calibrator = calibrator
        if dims[0] == -1 and calib_shape is not None and hasattr(config, "set_calibration_profile"):
            calib_profile = builder.create_optimization_profile()
            calib_profile.set_shape(inp.name, calib_shape, calib_shape, calib_shape)
            config.set_calibration_profile(calib_profile)

    _load_timing_cache(config, timing_cache)
    monitor = _make_progress_monitor(trt, state)
    if monitor is not None:
        config.progress_monitor = monitor
    state.set("building (calibration, layer fusion, kernel timing)")
    serialized = builder.build_serialized_network(network, config)
    calib_error = getattr(calibrator, "error", None)
    if calib_error is not None:
        raise EdgeError(f"INT8 calibration failed: {type(calib_error).__name__}: {calib_error}") from calib_error
    if serialized is None:
        raise EdgeError(
            f"TensorRT {trt.__version__} could not build the {precision} engine for {onnx_path.name} (its messages are "
            f"logged above; out of memory on a small Jetson? try --workspace-mb 256 or a smaller --max-batch)"
        )
    _save_timing_cache(config, timing_cache)
    return bytes(memoryview(serialized))


def engine_probabilities(trt, engine_data: bytes, batch: np.ndarray, backend: CudaBackend) -> np.ndarray:
    """Run a serialized engine on a host batch (in chunks of its max batch) -> NxC float32 probabilities."""
    runtime = trt.Runtime(_trt_logger(trt))
    engine = runtime.deserialize_cuda_engine(engine_data)
    if engine is None:
        raise EdgeError("TensorRT could not deserialize the engine it just built")
    context = engine.create_execution_context()
    if hasattr(engine, "num_io_tensors"):  # TensorRT >= 8.5: name-based I/O
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = [engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        max_b = int(engine.get_tensor_profile_shape(names[is_input.index(True)], 0)[2][0]) if hasattr(
            engine, "get_tensor_profile_shape") else 1
    else:  # TensorRT 8.2
        names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
        is_input = [engine.binding_is_input(i) for i in range(engine.num_bindings)]
        max_b = int(engine.get_profile_shape(0, 0)[2][0])
    if is_input.count(True) != 1 or len(names) != 2:
        raise EdgeError(f"engine has I/O {names}; expected one input and one output")
    in_idx, out_idx = is_input.index(True), is_input.index(False)
    outs = []
    max_b = max(1, max_b)
    for i in range(0, len(batch), max_b):
        x = np.ascontiguousarray(batch[i:i + max_b], np.float32)
        if hasattr(context, "set_input_shape"):
            context.set_input_shape(names[in_idx], tuple(x.shape))
            out_shape = tuple(context.get_tensor_shape(names[out_idx]))
        else:
            context.set_binding_shape(in_idx, tuple(x.shape))
            out_shape = tuple(context.get_binding_shape(out_idx))
        y = np.empty(out_shape, np.float32)
        d_in, d_out = backend.alloc(x.nbytes), backend.alloc(y.nbytes)
        d_in.copy_from(x)
        bindings = [0, 0]
        bindings[in_idx], bindings[out_idx] = d_in.ptr, d_out.ptr
        if not context.execute_v2(bindings):
            raise EdgeError("TensorRT engine execution failed during verification")
        backend.synchronize()
        d_out.copy_to(y)
        outs.append(y.reshape(len(x), -1))
    return np.concatenate(outs)


def verify_engine(trt, engine_data: bytes, onnx_path: Path, batch: InputBatch, precision: str, backend: CudaBackend) -> VerifyReport | None:
    """Compare the engine with the ONNX file in onnxruntime (CPU) on `batch`; None when onnxruntime is missing."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("engine not verified: onnxruntime is not installed (pip install onnxruntime)")
        return None
    tol, min_agree = ENGINE_TOLERANCES[precision]
    reference = onnxruntime_probabilities(onnx_path, batch.data)
    got = engine_probabilities(trt, engine_data, batch.data, backend)
    return compare_probabilities(
        got,
        reference,
        subject=f"TensorRT {precision} engine",
        reference_name=f"{onnx_path.name} in onnxruntime",
        precision=precision,
        inputs=batch.source,
        tolerance=tol,
        min_agreement=min_agree,
    )


# --------------------------------------------------------------------------------------------------- public API


@dataclass
class EngineBuild:
    path: Path
    built: bool  # False: an up-to-date cached engine was reused
    reason: str  # why it was (re)built, or "up to date"
    key: EngineKey
    report: VerifyReport | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        if not self.built:
            return f"engine {self.path} is up to date (same ONNX, TensorRT, GPU, precision and shape); not rebuilt"
        return f"built {self.key.precision} engine {self.path} in {self.seconds:.0f} s ({self.reason})"


def _resolve_engine_path(onnx_path: Path, precision: str, key: EngineKey, output, cache_dir) -> Path:
    if output is not None:
        out = Path(output)
        if is_dir_arg(output):
            out = out / default_engine_path(onnx_path, precision).name
    elif cache_dir is not None:
        out = cached_engine_path(cache_dir, onnx_path, key)
    else:
        out = default_engine_path(onnx_path, precision)
    return prepare_output(out, "engine directory")


def build_engine_report(
    onnx_path: str | os.PathLike,
    precision: str = "fp16",
    calib_data: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    output: str | os.PathLike | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    calib_images: int = DEFAULT_CALIB_IMAGES,
    calib_batch: int = DEFAULT_CALIB_BATCH,
    verify: bool = True,
    verify_images: int = DEFAULT_VERIFY_IMAGES,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> EngineBuild:
    """Build (or reuse from cache) a TensorRT engine for an exported ONNX file -> EngineBuild. See build_engine."""
    if precision not in PRECISIONS:
        raise EdgeError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if max_batch < 1:
        raise EdgeError(f"--max-batch must be >= 1, got {max_batch}")
    onnx_path = Path(onnx_path)
    trt = require_tensorrt()
    meta: ModelMeta = read_onnx_meta(onnx_path)
    backend = cuda_backend()
    dev = backend.device_info()
    size = meta.preprocess.input_size

    calib_files: list[Path] = []
    calibration = ""
    if precision == "int8":
        folder, why, found = image_source(meta, calib_data)
        if folder is None:
            raise EdgeError(
                f"INT8 needs real calibration images ({why}): pass --calib-data DIR with a few hundred images like "
                f"the camera sees (the training set is ideal); random data is never used, it would quantize badly"
            )
        calib_files = pick_evenly(found, calib_images)
        calib_batch = max(1, min(calib_batch, max_batch, len(calib_files)))
        if len(calib_files) < MIN_CALIB_IMAGES:
            log.warning("only %d calibration images in %s; INT8 accuracy may suffer (use a few hundred)", len(calib_files), folder)
        calibration = calibration_digest(calib_files, extra=json.dumps(meta.preprocess.to_dict(), sort_keys=True) + f"|b{calib_batch}")

    key = engine_cache_key(
        onnx_sha256=sha256_file(onnx_path),
        tensorrt_version=str(trt.__version__),
        gpu_name=dev.name,
        compute_capability=dev.compute_capability,
        precision=precision,
        input_shape=(1, 3, size, size),
        max_batch=max_batch,
        calibration=calibration,
    )
    engine_path = _resolve_engine_path(onnx_path, precision, key, output, cache_dir)
    cache_root = ensure_writable_dir(cache_dir, "cache directory") if cache_dir is not None else engine_path.parent
    reason = "--force" if force else stale_reason(engine_path, key)
    if reason is None:
        log.info("engine %s is up to date; reusing it", engine_path)
        return EngineBuild(engine_path, False, "up to date", key)
    log.info("building %s: %s", engine_path.name, reason)

    state = BuildProgress(label=f"building {precision} engine {engine_path.name} (TensorRT {trt.__version__}, {dev.name})")
    calibrator = None
    calib_shape = None
    if precision == "int8":
        batches = CalibrationBatches(calib_files, meta.preprocess, calib_batch)
        calib_shape = batches.shape
        calibrator = _make_calibrator(trt, batches, calibration_cache_path(cache_root, onnx_path, key), state, backend)
    started = time.monotonic()
    with _Heartbeat(state, progress or _default_progress):
        data = build_serialized_engine(
            trt,
            onnx_path,
            precision=precision,
            input_size=size,
            max_batch=max_batch,
            workspace_mb=workspace_mb,
            timing_cache=timing_cache_path(cache_root, key.tensorrt_version, key.gpu_name, key.compute_capability),
            state=state,
            calibrator=calibrator,
            calib_shape=calib_shape,
        )
        report = None
        if verify:
            state.set("verifying against onnxruntime")
            batch = verification_inputs(meta, calib_data, verify_images)
            report = verify_engine(trt, data, onnx_path, batch, precision, backend)
            if report is not None:
                require_passed(report, f"engine verification failed, {engine_path.name} not written")
    write_engine(engine_path, data, key, meta)
    return EngineBuild(engine_path, True, reason, key, report, time.monotonic() - started)


def build_engine(
    onnx_path: str | os.PathLike,
    precision: str = "fp16",
    calib_data: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Path:
    """Build a TensorRT engine from an ONNX file written by `edge export` and return its path.

    precision: "fp32", "fp16" or "int8" (int8 calibrates on real images from `calib_data`, else the training data
    recorded in the model; never on random data). The engine goes to `output=` if given, else into `cache_dir`
    under a name holding the cache key's digest, else beside the ONNX file (`model.fp16.engine`); timing and
    calibration caches go to `cache_dir` (else beside the engine). An existing engine whose sidecar matches the
    current key (ONNX sha256, TensorRT version, GPU, compute capability, precision, input shape) is reused;
    anything else is rebuilt. Other keywords: see build_engine_report.
    """
    return build_engine_report(onnx_path, precision, calib_data, cache_dir, **kwargs).path
