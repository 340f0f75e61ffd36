"""One model metadata format (arch, class names, preprocessing, metrics, novelty), read by export and the runtime.

`model.pt` (written by `train`) is a plain dict loadable with `torch.load(weights_only=True)`:
    {"format": "jetson-edge-classifier/model", "format_version": 1, "meta": {...}, "state_dict": {...},
     "novelty_bank": [N, D] float tensor}     # the last entry only for models with a novelty score
The same `meta` travels as JSON in an ONNX file's `metadata_props` (key ONNX_META_KEY) and beside engines;
`meta.novelty` (edge.core.novelty.NoveltyReport as a dict: k, threshold, ...) is None for models without one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import __version__
from edge.core.errors import EdgeError, brief
from edge.core.files import load_torch_file
from edge.core.preprocess import PreprocessSpec

CHECKPOINT_FORMAT = "jetson-edge-classifier/model"
FORMAT_VERSION = 1
ONNX_META_KEY = "jetson_edge_meta"


@dataclass
class ModelMeta:
    arch: str
    class_names: list[str]
    preprocess: PreprocessSpec
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    tool_version: str = __version__
    source_sha256: str = ""  # of the checkpoint an exported file came from
    novelty: dict[str, Any] | None = None  # NoveltyReport.to_dict() of the model's novelty score; None: it has none

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def novelty_threshold(self) -> float | None:
        """Above this novelty a prediction is `unknown`; None for a model without a novelty score."""
        return None if self.novelty is None else float(self.novelty["threshold"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "class_names": list(self.class_names),
            "preprocess": self.preprocess.to_dict(),
            "metrics": self.metrics,
            "training": self.training,
            "created": self.created,
            "tool_version": self.tool_version,
            "source_sha256": self.source_sha256,
            **({"novelty": dict(self.novelty)} if self.novelty is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMeta":
        try:
            names = [str(n) for n in d["class_names"]]
            if not names:
                raise ValueError("class_names is empty")
            return cls(
                arch=str(d["arch"]),
                class_names=names,
                preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                metrics=dict(d.get("metrics") or {}),
                training=dict(d.get("training") or {}),
                created=str(d.get("created", "")),
                tool_version=str(d.get("tool_version", "")),
                source_sha256=str(d.get("source_sha256", "")),
                novelty=_novelty_dict(d.get("novelty")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EdgeError(f"model metadata is incomplete or invalid ({type(e).__name__}: {e})") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMeta":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise EdgeError(f"model metadata is not valid JSON: {e}") from e


def _novelty_dict(value: Any) -> dict[str, Any] | None:
    """The `novelty` entry checked just enough for the runtime: a dict with a finite numeric threshold, or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"novelty must be an object, got {type(value).__name__}")
    threshold = value.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"novelty threshold must be a finite number, got {threshold!r}")
    return dict(value)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, Any], meta: ModelMeta,
                    novelty_bank: Any = None) -> None:
    """Write model.pt atomically (temporary name + os.replace): a killed run never leaves half a checkpoint.

    novelty_bank: the NoveltyScorer's bank ([N, D] tensor), stored under CHECKPOINT_BANK_KEY; `meta.novelty`
    must describe it (both or neither).
    """
    import torch

    from edge.core.fsutil import atomic_write_bytes
    from edge.core.novelty import CHECKPOINT_BANK_KEY

    if (novelty_bank is None) != (meta.novelty is None):
        raise EdgeError("a novelty bank needs its report in meta.novelty, and a report needs its bank")
    obj = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": meta.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    if novelty_bank is not None:
        obj[CHECKPOINT_BANK_KEY] = novelty_bank.detach().cpu().contiguous()
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], ModelMeta, dict[str, Any]]:
    """Read one of our model.pt files -> (state_dict, meta, raw dict). Clear EdgeError for anything else."""
    from edge.core.registry import strip_wrappers

    p = Path(path)
    obj = load_torch_file(p, "model file")
    if isinstance(obj, dict) and "optimizer" in obj and "model" in obj and "stage" in obj:  # train's last.pt
        model_pt = p.parent / "model.pt"
        raise EdgeError(
            f"{str(p)!r} is the resume state `train` keeps for `--resume`, not a model; use the model.pt written "
            f"beside it ({str(model_pt)!r}) when training finishes"
        )
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise EdgeError(
            f"{str(p)!r} is not a checkpoint written by `train` (no model metadata: arch, labels, preprocessing); "
            f"train one with `train --data DIR`, or start from it with `train --weights {p}`"
        )
    try:
        version = int(obj.get("format_version", 0))
    except (TypeError, ValueError) as e:
        raise EdgeError(f"{str(p)!r} has an invalid format_version {obj.get('format_version')!r}") from e
    if version > FORMAT_VERSION:
        raise EdgeError(f"{str(p)!r} has format version {obj.get('format_version')}; upgrade this tool to read it")
    state = obj.get("state_dict")
    if not isinstance(state, dict):
        raise EdgeError(f"{str(p)!r} has no state_dict")
    meta = ModelMeta.from_dict(obj.get("meta") or {})
    return strip_wrappers(state), meta, obj


def load_model(path: str | os.PathLike, device: str = "cpu", with_novelty: bool = False):
    """Build the model a checkpoint describes and load its weights -> (model in eval mode, meta).

    The model maps x -> logits. with_novelty: when the checkpoint has a novelty score, the model is instead an
    `edge.core.novelty.ClassifierWithNovelty`, x -> (probabilities, novelty); checkpoints without one (trained
    before novelty existed, or with `train --no-novelty`) still give the plain model: test
    `meta.novelty is not None` (or isinstance) to tell which.
    """
    from edge.core.registry import create_model

    state, meta, raw = load_checkpoint(path)
    model = create_model(meta.arch, meta.num_classes, weights="none")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EdgeError(f"{str(path)!r} does not match its declared arch {meta.arch!r}: {brief(e, 300)}") from e
    model = model.eval()
    if with_novelty and meta.novelty is not None:
        from edge.core.novelty import ClassifierWithNovelty, scorer_from_checkpoint

        model = ClassifierWithNovelty.for_arch(model, meta.arch, scorer_from_checkpoint(raw, meta, str(path))).eval()
    return model.to(device), meta
