"""Read model metadata back from exported files: ONNX `metadata_props` and TensorRT engine sidecars.

An exported `model.onnx` carries everything the runtime needs (class names, preprocessing, arch, the source
checkpoint's sha256) as `meta.to_json()` under `metadata_props[ONNX_META_KEY]`, so the ONNX file alone can be served.
A TensorRT engine cannot hold such metadata, so `export` writes a JSON sidecar `<engine>.json` beside it with the
engine's cache key (ONNX sha256, TensorRT version, GPU, compute capability, precision, input shape) and the same
ModelMeta. This module has no TensorRT, torch or export-package dependency: the runtime imports it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from edge.core.errors import EdgeError
from edge.core.metadata import ONNX_META_KEY, ModelMeta

# Names of the exported graph's single input (Nx3xSxS float32, normalized RGB) and outputs: NxC float32 softmax,
# and for models with a novelty score (edge.core.novelty) a second one, N float32.
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
NOVELTY_OUTPUT = "novelty"
# metadata_props key holding how the file was exported: {"precision", "opset", "input", "output", "output_kind", ...}
EXPORT_INFO_KEY = "jetson_edge_export"

ENGINE_SIDECAR_FORMAT = "jetson-edge-classifier/engine"
ENGINE_SIDECAR_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")


def meta_from_metadata_props(props: Mapping[str, str], source: str = "model") -> ModelMeta:
    """ModelMeta from an ONNX file's metadata_props (e.g. onnxruntime's `get_modelmeta().custom_metadata_map`)."""
    text = props.get(ONNX_META_KEY)
    if not text:
        raise EdgeError(
            f"{source} has no {ONNX_META_KEY!r} metadata (class names, preprocessing); it was not written by "
            f"`edge export`: export the training checkpoint with `edge export model.pt`"
        )
    try:
        return ModelMeta.from_json(text)
    except EdgeError as e:
        raise EdgeError(f"{source}: {e}") from e


def _load_onnx(path: str | os.PathLike):
    import onnx

    p = Path(path)
    if not p.is_file():
        raise EdgeError(f"ONNX file {str(p)!r} not found")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as e:  # any protobuf/decoding failure means "not a usable ONNX file"
        raise EdgeError(f"cannot read {str(p)!r}: corrupt, truncated or not an ONNX file ({type(e).__name__})") from e


def read_onnx_props(path: str | os.PathLike) -> dict[str, str]:
    """All metadata_props of an ONNX file as a dict."""
    model = _load_onnx(path)
    return {p.key: p.value for p in model.metadata_props}


def read_onnx_meta(path: str | os.PathLike) -> ModelMeta:
    """ModelMeta embedded by `edge export` in an ONNX file; EdgeError (one line) when missing or invalid."""
    return meta_from_metadata_props(read_onnx_props(path), source=repr(str(path)))


def read_onnx_export_info(path: str | os.PathLike) -> dict[str, Any]:
    """How an ONNX file was exported ({"precision": "fp32"|"fp16", "opset": 11, ...}); {} for foreign files."""
    text = read_onnx_props(path).get(EXPORT_INFO_KEY, "")
    try:
        info = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized TensorRT engine depends on; any difference means the engine must be rebuilt.

    input_shape is the optimization profile's opt shape (batch 1 for a camera loop); max_batch its largest batch.
    calibration identifies the INT8 calibration images ("" for fp32/fp16).
    """

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_shape: tuple[int, ...]
    max_batch: int
    calibration: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgeError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EngineKey":
        names = {f.name for f in fields(cls)}
        try:
            kw = {k: d[k] for k in names if k in d}
            kw["input_shape"] = tuple(int(x) for x in kw["input_shape"])
            kw["max_batch"] = int(kw["max_batch"])
            return cls(**kw)
        except (KeyError, TypeError, ValueError) as e:
            raise EdgeError(f"engine cache key is incomplete or invalid ({type(e).__name__}: {e})") from e

    def digest(self) -> str:
        """Stable hex digest of all fields (used in cached engine file names)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def differences(self, other: "EngineKey") -> list[str]:
        """Human-readable 'field: recorded -> current' for every field that differs (empty when equal)."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]

    def environment_mismatch(self, tensorrt_version: str, gpu_name: str, compute_capability: str) -> str | None:
        """Why this engine cannot run here (other TensorRT or GPU), or None. For runtimes that have no ONNX file."""
        diffs = []
        if self.tensorrt_version != tensorrt_version:
            diffs.append(f"TensorRT {self.tensorrt_version} != {tensorrt_version}")
        if self.gpu_name != gpu_name or self.compute_capability != compute_capability:
            diffs.append(f"GPU {self.gpu_name} (sm {self.compute_capability}) != {gpu_name} (sm {compute_capability})")
        return "; ".join(diffs) or None


@dataclass
class EngineSidecar:
    """Contents of `<engine>.json`: the cache key, the model metadata, and the engine file's size and sha256."""

    key: EngineKey
    meta: ModelMeta
    engine_sha256: str
    engine_size: int
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ENGINE_SIDECAR_FORMAT,
            "format_version": ENGINE_SIDECAR_VERSION,
            "key": self.key.to_dict(),
            "key_digest": self.key.digest(),
            "engine_sha256": self.engine_sha256,
            "engine_size": self.engine_size,
            "created": self.created,
            "meta": self.meta.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "engine sidecar") -> "EngineSidecar":
        if not isinstance(d, Mapping) or d.get("format") != ENGINE_SIDECAR_FORMAT:
            raise EdgeError(f"{source} is not an engine sidecar written by `edge export`")
        try:
            if int(d.get("format_version", 0)) > ENGINE_SIDECAR_VERSION:
                raise EdgeError(f"{source} has format version {d.get('format_version')}; upgrade this tool to read it")
            return cls(
                key=EngineKey.from_dict(d["key"]),
                meta=ModelMeta.from_dict(d["meta"]),
                engine_sha256=str(d["engine_sha256"]),
                engine_size=int(d["engine_size"]),
                created=str(d.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EdgeError(f"{source} is incomplete ({type(e).__name__}: {e}); rebuild the engine") from e


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """`model.fp16.engine` -> `model.fp16.engine.json`."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_engine_sidecar(engine_path: str | os.PathLike) -> EngineSidecar:
    """Read `<engine>.json` (key + ModelMeta) for an engine file; EdgeError (one line) when missing or invalid."""
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise EdgeError(
            f"engine {str(engine_path)!r} has no sidecar {side.name!r} (labels, preprocessing, cache key); "
            f"build engines with `edge export model.onnx --format engine`"
        )
    try:
        d = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgeError(f"cannot read engine sidecar {str(side)!r} ({type(e).__name__}: {e}); "
                        "rebuild the engine") from e
    return EngineSidecar.from_dict(d, source=repr(str(side)))
