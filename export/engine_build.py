"""Build TensorRT engines from exported ONNX files, on the device that will run them.

Written against TensorRT's Python API as shipped by JetPack 5 (TensorRT 8.5) and JetPack 6 (TensorRT 10.x), with
fallbacks for 8.2 (the Nano's JetPack 4.6): explicit-batch network from the ONNX parser, one optimization profile
(batch 1..max_batch, optimized for 1, the camera loop's batch), FP16 or INT8 (export.calibration, with FP16
fallback for layers INT8 cannot run), a persistent timing cache, a progress line while it builds
(export.engine_progress), an engine cache (export.cache) and atomic engine + sidecar writes.

A freshly built engine is run through `edge serve`'s own TensorRTBackend and checked against the ONNX file in
onnxruntime before it is written: what was verified is what will serve.

`tensorrt` is imported only when used, so the rest of the project works on machines without it; CUDA is reached
through PyTorch (export.cuda_binding).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.core.errors import EdgeError
from edge.core.fsutil import atomic_write_bytes, ensure_writable_dir
from edge.core.metadata import ModelMeta, sha256_file
from edge.core.model_files import EngineKey, read_onnx_meta
from edge.runtime.backends.tensorrt_backend import TensorRTBackend, trt_logger

from .cache import (
    calibration_cache_path,
    calibration_digest,
    engine_cache_key,
    stale_reason,
    timing_cache_path,
    write_engine,
)
from .calibration import MIN_CALIB_IMAGES, CalibrationBatches, make_calibrator
from .cuda_binding import cuda_binding
from .engine_progress import BuildProgress, Heartbeat, ProgressFn, log_progress, make_progress_monitor
from .options import ExportOptions, output_path
from .verify import (
    ENGINE_NOVELTY_TOLERANCES,
    ENGINE_TOLERANCES,
    InputBatch,
    VerifyReport,
    compare_outputs,
    image_source,
    onnxruntime_outputs,
    pick_evenly,
    require_passed,
    verification_inputs,
)

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "TensorRT's Python API is not installed here; it ships with JetPack on a Jetson (`sudo apt install "
    "python3-libnvinfer`, and create your venv with --system-site-packages to see it), on a PC `pip install tensorrt`. "
    "Export ONNX anywhere with `edge export model.pt`, then build the engine on the device that will run it with "
    "`edge export model.onnx --format engine --fp16`"
)


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401 - imported only to see whether it loads
    except Exception:  # noqa: BLE001 - a broken install counts as missing
        return False
    return True


def require_tensorrt():
    """The `tensorrt` module, or EdgeError with one line saying how to get it."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a binding that fails to load its libraries
        raise EdgeError(INSTALL_HINT) from e
    return trt


def trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


# ------------------------------------------------------------------------------------------------------ builder


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


@dataclass
class BuildInputs:
    """What a build needs besides the options: the model's input size, the timing cache file, the progress state
    and, for INT8, the calibrator and its batch shape."""

    input_size: int
    timing_cache: Path
    state: BuildProgress
    calibrator: Any = None
    calib_shape: tuple[int, ...] | None = None


def build_serialized_engine(trt, onnx_path: Path, options: ExportOptions, inputs: BuildInputs) -> bytes:
    """Parse the ONNX file and build a serialized engine (bytes) at options.precision, with options.max_batch
    and options.workspace_mb. EdgeError when TensorRT refuses."""
    precision, max_batch, input_size = options.precision, options.max_batch, inputs.input_size
    state, calibrator, calib_shape = inputs.state, inputs.calibrator, inputs.calib_shape
    logger = trt_logger(trt)
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
        raise EdgeError(f"{onnx_path.name} input {inp.name!r} has shape {dims}; "
                        f"expected (batch, 3, {input_size}, {input_size})")

    config = builder.create_builder_config()
    _set_workspace(trt, config, options.workspace_mb)
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

    _load_timing_cache(config, inputs.timing_cache)
    monitor = make_progress_monitor(trt, state)
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
    _save_timing_cache(config, inputs.timing_cache)
    return bytes(memoryview(serialized))


def verify_engine(engine_data: bytes, meta: ModelMeta, onnx_path: Path, batch: InputBatch,
                  precision: str) -> VerifyReport | None:
    """Run the engine through TensorRTBackend (what `edge serve` runs) and the ONNX file in onnxruntime (CPU) on
    `batch`; compare probabilities, and novelty when the model has it. None when onnxruntime is missing."""
    try:
        import onnxruntime  # noqa: F401 - imported only to see whether it is installed
    except ImportError:
        log.warning("engine not verified: onnxruntime is not installed (pip install onnxruntime)")
        return None
    tol, min_agree = ENGINE_TOLERANCES[precision]
    reference = onnxruntime_outputs(onnx_path, batch.data)
    with TensorRTBackend.from_engine_bytes(engine_data, meta, f"the {precision} engine just built") as engine:
        got = engine.run(batch.data)
    return compare_outputs(
        got,
        reference,
        novelty_tolerance=ENGINE_NOVELTY_TOLERANCES[precision],
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


def build_engine_report(onnx_path: str | os.PathLike, options: ExportOptions,
                        progress: ProgressFn | None = None) -> EngineBuild:
    """Build (or reuse from cache) a TensorRT engine for an exported ONNX file -> EngineBuild.

    precision: options.precision ("int8" calibrates on real images from options.calib_data, else the training data
    recorded in the model; never on random data). The engine goes where `output_path` says (options.output, else
    beside the ONNX file: `model.fp16.engine`); timing and calibration caches go to options.cache_dir (else beside
    the engine). An existing engine whose sidecar matches the current key (ONNX sha256, TensorRT version, GPU,
    compute capability, precision, input shape) is reused unless options.force; anything else is rebuilt.
    """
    precision, max_batch, calib_data, cache_dir = options.precision, options.max_batch, options.calib_data, \
        options.cache_dir
    onnx_path = Path(onnx_path)
    trt = require_tensorrt()
    meta: ModelMeta = read_onnx_meta(onnx_path)
    cuda = cuda_binding()
    dev = cuda.device_info()
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
        calib_files = pick_evenly(found, options.calib_images)
        calib_batch = max(1, min(options.calib_batch, max_batch, len(calib_files)))
        if len(calib_files) < MIN_CALIB_IMAGES:
            log.warning("only %d calibration images in %s; INT8 accuracy may suffer (use a few hundred)",
                        len(calib_files), folder)
        calibration = calibration_digest(
            calib_files, extra=json.dumps(meta.preprocess.to_dict(), sort_keys=True) + f"|b{calib_batch}")

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
    engine_path = output_path(options, "engine", onnx_path)
    cache_root = ensure_writable_dir(cache_dir, "cache directory") if cache_dir is not None else engine_path.parent
    reason = "--force" if options.force else stale_reason(engine_path, key)
    if reason is None:
        log.info("engine %s is up to date; reusing it", engine_path)
        return EngineBuild(engine_path, False, "up to date", key)
    log.info("building %s: %s", engine_path.name, reason)

    state = BuildProgress(label=f"building {precision} engine {engine_path.name} "
                                f"(TensorRT {trt.__version__}, {dev.name})")
    calibrator = None
    calib_shape = None
    if precision == "int8":
        batches = CalibrationBatches(calib_files, meta.preprocess, calib_batch)
        calib_shape = batches.shape
        calibrator = make_calibrator(trt, batches, calibration_cache_path(cache_root, onnx_path, key), state, cuda)
    started = time.monotonic()
    with Heartbeat(state, progress or log_progress):
        timing = timing_cache_path(cache_root, key.tensorrt_version, key.gpu_name, key.compute_capability)
        data = build_serialized_engine(trt, onnx_path, options, BuildInputs(size, timing, state, calibrator,
                                                                            calib_shape))
        report = None
        if options.verify:
            state.set("verifying against onnxruntime")
            batch = verification_inputs(meta, calib_data, options.verify_images)
            report = verify_engine(data, meta, onnx_path, batch, precision)
            if report is not None:
                require_passed(report, f"engine verification failed, {engine_path.name} not written")
    write_engine(engine_path, data, key, meta)
    return EngineBuild(engine_path, True, reason, key, report, time.monotonic() - started)


def build_engine(onnx_path: str | os.PathLike, options: ExportOptions, progress: ProgressFn | None = None) -> Path:
    """Build a TensorRT engine from an ONNX file written by `edge export` and return its path (see
    build_engine_report)."""
    return build_engine_report(onnx_path, options, progress).path
