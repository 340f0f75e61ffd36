"""TensorRT engine cache: keys, file names, staleness checks and atomic engine + sidecar writes. No TensorRT here.

An engine is only reused when its sidecar (`<engine>.json`) records exactly the current key: the ONNX file's sha256,
the TensorRT version, the GPU's name and compute capability, the precision, the input shape / max batch and (INT8)
the calibration images; and when the engine file still has the size and sha256 the sidecar recorded. Anything
else (no sidecar, unreadable sidecar, any difference) means rebuild; a stale engine is never deserialized.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from edge.core.errors import EdgeError
from edge.core.fsutil import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from edge.core.metadata import ModelMeta, sha256_file
from edge.core.model_files import (
    EngineKey,
    EngineSidecar,
    read_engine_sidecar,
    sidecar_path,
)

log = logging.getLogger(__name__)

__all__ = [
    "EngineKey",
    "engine_cache_key",
    "default_onnx_path",
    "default_engine_path",
    "stale_reason",
    "write_engine",
    "timing_cache_path",
    "calibration_cache_path",
    "calibration_digest",
    "slug",
    "is_dir_arg",
    "check_output_suffix",
    "prepare_output",
]

# what an --output file must end in, per kind of file written: the suffixes `edge serve` reads as that kind
OUTPUT_KINDS = {"onnx": ("onnxruntime", "an ONNX file"), "engine": ("tensorrt", "a TensorRT engine")}


def engine_cache_key(
    *,
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str | tuple[int, int],
    precision: str,
    input_shape: Sequence[int],
    max_batch: int,
    calibration: str = "",
) -> EngineKey:
    """The key an engine is cached under. compute_capability as "8.7" or (8, 7)."""
    if isinstance(compute_capability, (tuple, list)):
        compute_capability = ".".join(str(int(v)) for v in compute_capability)
    if max_batch < 1 or (input_shape and int(input_shape[0]) > max_batch):
        raise EdgeError(f"max batch {max_batch} must be >= 1 and >= the input shape's batch {input_shape}")
    return EngineKey(  # refuses an unknown precision
        onnx_sha256=onnx_sha256,
        tensorrt_version=str(tensorrt_version),
        gpu_name=str(gpu_name),
        compute_capability=str(compute_capability),
        precision=precision,
        input_shape=tuple(int(d) for d in input_shape),
        max_batch=int(max_batch),
        calibration=calibration if precision == "int8" else "",
    )


def is_dir_arg(output: str | os.PathLike) -> bool:
    """True when an --output names a directory: an existing one, or a path ending in a separator."""
    return Path(output).is_dir() or str(output).endswith(("/", os.sep))


def check_output_suffix(output: str | os.PathLike, kind: str) -> None:
    """Refuse an --output file whose suffix `edge serve` would not read as `kind` ("onnx" or "engine"): a
    `model.txt` would be written, verified, and then refused at serve time. A directory argument passes."""
    from edge.runtime.backends import SUFFIXES

    if is_dir_arg(output):
        return
    backend, what = OUTPUT_KINDS[kind]
    valid = sorted(s for s, b in SUFFIXES.items() if b == backend)
    suffix = Path(output).suffix.lower()
    if suffix not in valid:
        choices = valid[0] if len(valid) == 1 else "one of " + ", ".join(valid)
        raise EdgeError(
            f"--output {str(output)!r} ends in {suffix or '(no suffix)'!r}, but {what} must end in {choices} "
            f"(`edge serve` picks the runtime by suffix); rename it, or pass a directory ending in '/'"
        )


def prepare_output(out: Path, what: str = "output directory") -> Path:
    """Check `out` can be written: no file stands where a parent directory should be; its folder is created and
    writable (EdgeError saying which, otherwise). Returns `out`."""
    for parent in [out.parent, *out.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise EdgeError(f"cannot write {str(out)!r}: {str(parent)!r} is a file, not a directory")
            break
    ensure_writable_dir(out.parent, what)
    return out


def slug(text: str) -> str:
    """File-name-safe version of a GPU name or version string ("NVIDIA Tegra X1" -> "nvidia-tegra-x1")."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def _onnx_stem(onnx_path: str | os.PathLike) -> str:
    name = Path(onnx_path).name
    return name[: -len(".onnx")] if name.lower().endswith(".onnx") else Path(name).stem


def default_onnx_path(checkpoint: str | os.PathLike, fp16: bool = False) -> Path:
    """`runs/x/model.pt` -> `runs/x/model.onnx` (or `model.fp16.onnx`)."""
    p = Path(checkpoint)
    return p.with_name(p.stem + (".fp16.onnx" if fp16 else ".onnx"))


def default_engine_path(onnx_path: str | os.PathLike, precision: str) -> Path:
    """`model.onnx` -> `model.fp16.engine` beside it (`model.fp16.onnx` -> `model.fp16.engine` too)."""
    stem = _onnx_stem(onnx_path)
    if stem.endswith("." + precision):
        stem = stem[: -len(precision) - 1]
    return Path(onnx_path).with_name(f"{stem}.{precision}.engine")




def stale_reason(engine_path: str | os.PathLike, key: EngineKey, *, check_hash: bool = True) -> str | None:
    """None when `engine_path` can be reused for `key`; otherwise why it must be (re)built, in words."""
    engine = Path(engine_path)
    if not engine.is_file():
        return f"no engine at {str(engine)!r}"
    try:
        side = read_engine_sidecar(engine)
    except EdgeError as e:
        return str(e)
    diffs = side.key.differences(key)
    if diffs:
        return "engine is stale (" + "; ".join(diffs) + ")"
    try:
        size = engine.stat().st_size
    except OSError as e:
        return f"cannot stat {str(engine)!r}: {e.strerror}"
    if size != side.engine_size:
        return f"engine file size {size} != {side.engine_size} recorded in its sidecar"
    if check_hash and sha256_file(engine) != side.engine_sha256:
        return "engine file's sha256 differs from its sidecar's"
    return None


def write_engine(engine_path: str | os.PathLike, data: bytes, key: EngineKey, meta: ModelMeta) -> Path:
    """Write an engine and its sidecar, each atomically, in an order that never pairs an engine with a wrong sidecar.

    The old sidecar goes first (an engine without sidecar is rebuilt), then the engine is renamed into place, then
    the new sidecar. A crash at any point leaves either a matching pair or an engine that will be rebuilt.
    """
    engine = Path(engine_path)
    side = sidecar_path(engine)
    data = bytes(data)
    if not data:
        raise EdgeError("TensorRT returned an empty engine; nothing written")
    with contextlib.suppress(FileNotFoundError):
        side.unlink()
    atomic_write_bytes(engine, data)
    record = EngineSidecar(key=key, meta=meta, engine_sha256=hashlib.sha256(data).hexdigest(), engine_size=len(data))
    atomic_write_text(side, record.to_json())
    log.info("wrote %s (%.1f MB) and %s", engine, len(data) / 1e6, side.name)
    return engine


def timing_cache_path(cache_dir: str | os.PathLike, tensorrt_version: str, gpu_name: str,
                      compute_capability: str) -> Path:
    """TensorRT timing cache for one TensorRT version on one GPU (shared by all models; speeds up rebuilds)."""
    return Path(cache_dir) / f"timing-trt{slug(tensorrt_version)}-{slug(gpu_name)}-sm{slug(compute_capability)}.cache"


def calibration_cache_path(cache_dir: str | os.PathLike, onnx_path: str | os.PathLike, key: EngineKey) -> Path:
    """INT8 calibration table for this ONNX file, calibration set, TensorRT version and GPU."""
    h = hashlib.sha256(
        "|".join([key.onnx_sha256, key.calibration, key.tensorrt_version, key.gpu_name,
                  key.compute_capability]).encode()
    ).hexdigest()[:12]
    return Path(cache_dir) / f"{_onnx_stem(onnx_path)}.int8.{h}.calib"


def calibration_digest(files: Iterable[str | os.PathLike], extra: str = "") -> str:
    """Identity of a calibration set: names, sizes and modification times of its images (plus `extra`)."""
    h = hashlib.sha256(extra.encode())
    n = 0
    for f in files:
        p = Path(f)
        try:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
        n += 1
    return f"{n}:{h.hexdigest()[:16]}"
