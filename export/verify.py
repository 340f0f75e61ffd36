"""Verification of exported models: run the export and a reference on the same inputs and compare their outputs.

Inputs are real images when there are any (`--calib-data DIR`, else the training data recorded in the checkpoint if
it still exists), preprocessed with the model's own spec (`edge.core.preprocess.preprocess_image`); otherwise seeded
random
input. Two figures decide: the largest absolute difference between the two probability vectors, and top-1 agreement.

Tolerances (on softmax probabilities, which lie in [0, 1]):
- FP32 ONNX vs PyTorch (both on CPU): max abs diff <= 1e-4 and 100% top-1 agreement. Observed: ~1e-7.
- FP16 ONNX vs FP32 PyTorch: max abs diff <= 2e-2 and >= 99% top-1 agreement (fp16 keeps ~3 significant digits;
  logits move by ~1e-2 in deep nets, which moves a probability by at most a quarter of that).
- TensorRT engines vs the FP32 ONNX in onnxruntime: fp32 1e-3 / 100% (TensorRT picks other kernels), fp16 2e-2 /
  99%, int8 no bound on the difference / >= 95% agreement (quantization changes probabilities; the label must hold).

A model with a novelty score (a cosine distance in [0, 2], thresholds around 0.1-0.5) also has its `novelty`
output compared, as the largest absolute difference: ONNX fp32 1e-4, fp16 5e-3 (fp16 features move the cosine by
a few 1e-4 to 1e-3); engines fp32 1e-3, fp16 1e-2, int8 no bound (reported).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edge.core.errors import EdgeError, brief
from edge.core.files import IMAGE_EXTENSIONS, list_images, read_image_bgr
from edge.core.metadata import ModelMeta
from edge.core.preprocess import PreprocessSpec, preprocess_image

log = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, "np.ndarray | None"]  # (NxC probabilities, N novelty scores or None)

DEFAULT_VERIFY_IMAGES = 32
RANDOM_SEED = 0

# precision -> (max abs diff on probabilities or None for no bound, minimum top-1 agreement)
ONNX_TOLERANCES: dict[str, tuple[float | None, float]] = {"fp32": (1e-4, 1.0), "fp16": (2e-2, 0.99)}
ENGINE_TOLERANCES: dict[str, tuple[float | None, float]] = {
    "fp32": (1e-3, 1.0), "fp16": (2e-2, 0.99), "int8": (None, 0.95)}
# precision -> max abs diff on novelty scores (None: reported, not bounded)
ONNX_NOVELTY_TOLERANCES: dict[str, float | None] = {"fp32": 1e-4, "fp16": 5e-3}
ENGINE_NOVELTY_TOLERANCES: dict[str, float | None] = {"fp32": 1e-3, "fp16": 1e-2, "int8": None}


class ExportVerificationError(EdgeError):
    """An exported file does not reproduce its reference within tolerance; nothing was written. Exit code 3."""

    exit_code = 3

    def __init__(self, message: str, report: "VerifyReport"):
        super().__init__(message)
        self.report = report


@dataclass
class InputBatch:
    """A verification batch (Nx3xSxS float32) and where it came from, in words."""

    data: np.ndarray
    source: str
    real: bool  # True for real images, False for seeded random input


@dataclass
class VerifyReport:
    subject: str  # e.g. "model.onnx (fp32) in onnxruntime"
    reference: str  # e.g. "PyTorch fp32"
    precision: str
    inputs: str  # where the inputs came from
    count: int
    max_abs_diff: float
    mean_abs_diff: float
    agree: int  # inputs whose top-1 class matches the reference's
    tolerance: float | None
    min_agreement: float
    novelty_max_abs_diff: float | None = None  # None: the model has no novelty score
    novelty_tolerance: float | None = None

    @property
    def top1_agreement(self) -> float:
        return self.agree / self.count if self.count else 0.0

    @property
    def novelty_ok(self) -> bool:
        bound = self.novelty_tolerance
        return self.novelty_max_abs_diff is None or bound is None or self.novelty_max_abs_diff <= bound

    @property
    def passed(self) -> bool:
        ok_diff = self.tolerance is None or self.max_abs_diff <= self.tolerance
        return ok_diff and self.top1_agreement >= self.min_agreement and self.novelty_ok

    def failures(self) -> list[str]:
        out = []
        if self.tolerance is not None and not self.max_abs_diff <= self.tolerance:
            out.append(f"max abs diff {self.max_abs_diff:.3g} > tolerance {self.tolerance:g}")
        if self.top1_agreement < self.min_agreement:
            out.append(f"top-1 agreement {100 * self.top1_agreement:.1f}% < {100 * self.min_agreement:g}%")
        if not self.novelty_ok:
            out.append(f"novelty max abs diff {self.novelty_max_abs_diff:.3g} > tolerance {self.novelty_tolerance:g}")
        return out

    def summary(self) -> str:
        """One line: what was compared on what, the figures against their bounds, and PASS/FAIL."""
        tol = f"tolerance {self.tolerance:g}" if self.tolerance is not None else "no bound"
        novelty = ""
        if self.novelty_max_abs_diff is not None:
            bound = f"tolerance {self.novelty_tolerance:g}" if self.novelty_tolerance is not None else "no bound"
            novelty = f", novelty max abs diff {self.novelty_max_abs_diff:.3g} ({bound})"
        return (
            f"verify {self.subject} vs {self.reference} on {self.inputs}: "
            f"max abs diff {self.max_abs_diff:.3g} ({tol}), "
            f"top-1 agreement {100 * self.top1_agreement:.1f}% ({self.agree}/{self.count}, "
            f"need {100 * self.min_agreement:g}%){novelty}: {'PASS' if self.passed else 'FAIL'}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(top1_agreement=self.top1_agreement, passed=self.passed)
        return d


def require_passed(report: VerifyReport, failed: str) -> VerifyReport:
    """Log the report's summary; raise ExportVerificationError ("{failed}: what failed (summary)") unless it passed."""
    log.info(report.summary())
    if not report.passed:
        raise ExportVerificationError(f"{failed}: {'; '.join(report.failures())} ({report.summary()})", report)
    return report


def compare_probabilities(
    test: np.ndarray,
    reference: np.ndarray,
    *,
    subject: str,
    reference_name: str,
    precision: str,
    inputs: str,
    tolerance: float | None,
    min_agreement: float,
) -> VerifyReport:
    """Compare two NxC probability arrays -> VerifyReport (max/mean abs diff, top-1 agreement)."""
    test = np.asarray(test, np.float64)
    reference = np.asarray(reference, np.float64)
    if test.shape != reference.shape or test.ndim != 2 or test.shape[0] == 0:
        raise EdgeError(f"verification: output shape {test.shape} does not match the reference's {reference.shape}")
    diff = np.abs(test - reference)
    max_diff = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    return VerifyReport(
        subject=subject,
        reference=reference_name,
        precision=precision,
        inputs=inputs,
        count=int(test.shape[0]),
        max_abs_diff=max_diff,
        mean_abs_diff=float(diff.mean()) if np.isfinite(max_diff) else float("inf"),
        agree=int((test.argmax(1) == reference.argmax(1)).sum()),
        tolerance=tolerance,
        min_agreement=min_agreement,
    )


def compare_outputs(test: Outputs, reference: Outputs, *, novelty_tolerance: float | None, **kw: Any) -> VerifyReport:
    """compare_probabilities on the probabilities (same keywords), plus the novelty scores when the reference has
    them: the largest absolute difference against `novelty_tolerance`."""
    report = compare_probabilities(test[0], reference[0], **kw)
    if reference[1] is None:
        return report
    if test[1] is None:
        raise EdgeError(f"verification: {kw.get('subject', 'the export')} has no novelty output, but the model has a "
                        "novelty score; re-export it")
    got, want = np.asarray(test[1], np.float64).reshape(-1), np.asarray(reference[1], np.float64).reshape(-1)
    if got.shape != want.shape:
        raise EdgeError(f"verification: novelty shape {got.shape} does not match the reference's {want.shape}")
    diff = np.abs(got - want)
    report.novelty_max_abs_diff = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    report.novelty_tolerance = novelty_tolerance
    return report


def find_images(root: str | os.PathLike) -> list[Path]:
    """Image files under root (recursively, sorted; temporary and hidden files skipped)."""
    return list_images(root, recursive=True)


def pick_evenly(items: Sequence[Any], n: int) -> list[Any]:
    """n items spread evenly over a sorted list (so every class folder of an ImageFolder tree is represented)."""
    if n >= len(items):
        return list(items)
    if n <= 0:
        return []
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def load_image_batch(files: Sequence[Path], spec: PreprocessSpec) -> tuple[np.ndarray, int]:
    """Preprocess image files with the model's spec -> (Nx3xSxS float32 of the readable ones, number skipped)."""
    arrays = []
    skipped = 0
    for f in files:
        img = read_image_bgr(f)
        if img is None:
            skipped += 1
            log.warning("skipping unreadable image %s", f)
            continue
        arrays.append(preprocess_image(img, spec, "BGR"))
    if not arrays:
        return np.empty((0, 3, spec.input_size, spec.input_size), np.float32), skipped
    return np.stack(arrays).astype(np.float32, copy=False), skipped


def image_source(meta: ModelMeta, calib_data: str | os.PathLike | None) -> tuple[Path | None, str, list[Path]]:
    """Where real images come from: (folder, how it was chosen, its images) or (None, why there is none, []).

    `calib_data` must exist and hold images (EdgeError otherwise); without it, the training data recorded in the
    checkpoint (`meta.training["data"]`) is used if it still exists.
    """
    if calib_data is not None:
        p = Path(calib_data)
        if not p.is_dir():
            raise EdgeError(f"--calib-data {str(p)!r} is not a directory; pass a folder of images (e.g. your dataset)")
        files = find_images(p)
        if not files:
            raise EdgeError(f"--calib-data {str(p)!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        return p, "--calib-data", files
    data = (meta.training or {}).get("data")
    if data and Path(str(data)).is_dir():
        files = find_images(Path(str(data)))
        if files:
            return Path(str(data)), "training data", files
    if data:
        return None, f"training data {str(data)!r} not found here", []
    return None, "no --calib-data", []


def verification_inputs(
    meta: ModelMeta,
    calib_data: str | os.PathLike | None = None,
    count: int = DEFAULT_VERIFY_IMAGES,
    seed: int = RANDOM_SEED,
) -> InputBatch:
    """A batch to verify on: real images when available (see image_source), else seeded random input."""
    if count < 1:
        raise EdgeError(f"--verify-images must be >= 1, got {count}")
    spec = meta.preprocess
    folder, why, files = image_source(meta, calib_data)
    if folder is not None:
        data, skipped = load_image_batch(pick_evenly(files, count), spec)
        if len(data):
            extra = f", {skipped} unreadable skipped" if skipped else ""
            return InputBatch(data, f"{len(data)} images from {why} {str(folder)!r}{extra}", True)
        if calib_data is not None:
            raise EdgeError(f"--calib-data {str(folder)!r}: none of its images could be read")
        why = f"no readable images in {str(folder)!r}"
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((count, 3, spec.input_size, spec.input_size), dtype=np.float32)
    return InputBatch(data, f"{count} seeded random inputs (seed {seed}; {why})", False)


def onnxruntime_outputs(onnx_path: str | os.PathLike, batch: np.ndarray,
                        providers: Sequence[str] | None = None) -> Outputs:
    """Run an exported ONNX file in onnxruntime (CPU by default) -> (NxC probabilities, N novelty or None)."""
    import onnxruntime as ort

    from edge.core.model_files import INPUT_NAME, NOVELTY_OUTPUT, OUTPUT_NAME

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(onnx_path), opts, providers=list(providers or ["CPUExecutionProvider"]))
        names = [o.name for o in sess.get_outputs()]
        ys = dict(zip(names, sess.run(None, {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})))
    except Exception as e:  # onnxruntime raises its own exception types
        raise EdgeError(f"onnxruntime cannot run {Path(onnx_path).name}: {brief(e, 300)}") from e
    novelty = ys.get(NOVELTY_OUTPUT)
    return np.asarray(ys.get(OUTPUT_NAME, ys[names[0]])), None if novelty is None else np.asarray(novelty)


def torch_outputs(model: Any, batch: np.ndarray, chunk: int = 16) -> Outputs:
    """(softmax probabilities, novelty or None) of an eval-mode PyTorch model on CPU, in chunks to bound memory.

    `model` maps x -> logits, or x -> (probabilities, novelty) (edge.core.novelty.ClassifierWithNovelty)."""
    import torch

    probs, novelty = [], []
    with torch.inference_mode():
        for i in range(0, len(batch), chunk):
            y = model(torch.from_numpy(np.ascontiguousarray(batch[i:i + chunk])))
            if isinstance(y, tuple):
                probs.append(y[0].float().numpy())
                novelty.append(y[1].float().numpy())
            else:
                probs.append(torch.softmax(y.float(), dim=1).numpy())
    return np.concatenate(probs), np.concatenate(novelty) if novelty else None


def verify_onnx(
    onnx_path: str | os.PathLike,
    model: Any,
    batch: InputBatch,
    precision: str = "fp32",
    *,
    reference: Outputs | None = None,
    run_onnx: Callable[[str | os.PathLike, np.ndarray], Outputs] | None = None,
    name: str | None = None,
) -> VerifyReport:
    """Run the ONNX file in onnxruntime (CPU) and `model` in PyTorch (FP32, CPU) on `batch`; compare.

    Returns the report; the caller decides what a failure means (export deletes the file and fails).
    `reference` may hold the PyTorch outputs (torch_outputs) already computed for this batch; `run_onnx`
    replaces onnxruntime (returning outputs like onnxruntime_outputs).
    """
    if precision not in ONNX_TOLERANCES:
        raise EdgeError(f"unknown ONNX precision {precision!r}; choose one of: {', '.join(ONNX_TOLERANCES)}")
    tol, min_agree = ONNX_TOLERANCES[precision]
    ref = torch_outputs(model, batch.data) if reference is None else reference
    got = (run_onnx or onnxruntime_outputs)(onnx_path, batch.data)
    return compare_outputs(
        got,
        ref,
        novelty_tolerance=ONNX_NOVELTY_TOLERANCES[precision],
        subject=f"{name or Path(onnx_path).name} ({precision}, onnxruntime CPU)",
        reference_name="PyTorch fp32",
        precision=precision,
        inputs=batch.source,
        tolerance=tol,
        min_agreement=min_agree,
    )
