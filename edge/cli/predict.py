"""`edge predict --model PATH IMAGE_OR_DIR...`: classify image files, one JSON line per image on stdout.

Folders are walked recursively (hidden and temporary files skipped). Any backend: `.pt`, `.onnx`, `.engine`.
Each line: `{"path": ..., "label": ..., "confidence": ...}` (+ `"top": [[label, p], ...]` with --top-k > 1).
A model with a novelty score adds `"novelty"` and `"top_label"` (the most likely class): above the model's
novelty threshold (or --novelty-threshold) the image is unlike everything it was trained on and `label` is
`unknown`; `confidence` stays the top class's probability.
An unreadable image gives `{"path": ..., "error": ...}` and exit code 1; the others are still classified.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import IO, Iterator, Sequence

import numpy as np

from edge.cli._options import add_model_arguments, backend_options, log_to_stderr
from edge.core.errors import EdgeError, cli_entry
from edge.core.files import IMAGE_EXTENSIONS, list_images, read_image_bgr
from edge.core.preprocess import preprocess_image
from edge.runtime.smoothing import decide, label_of

log = logging.getLogger(__name__)


def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named directly (any extension) plus image files found recursively under named folders, in order."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = list_images(p, recursive=True)
            if not found:
                log.warning("no images under %s (looked for %s)", p, ", ".join(IMAGE_EXTENSIONS))
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise EdgeError(f"no such file or folder: {str(p)!r}")
    if not out:
        raise EdgeError(f"no images found in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return out


def predict_files(backend, paths: Sequence[Path], batch_size: int = 16, top_k: int = 1) -> Iterator[dict]:
    """Yield one result dict per path, in order: path, label, confidence (+ top, + novelty and top_label), or
    path and error."""
    spec = backend.meta.preprocess
    threshold = getattr(backend, "novelty_threshold", None)
    names = backend.meta.class_names
    batch = np.empty((batch_size, 3, spec.input_size, spec.input_size), np.float32)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        slots: list[int | None] = []
        n = 0
        for p in chunk:
            img = read_image_bgr(p)
            if img is None:
                slots.append(None)
                continue
            preprocess_image(img, spec, "BGR", out=batch[n])
            slots.append(n)
            n += 1
        probs, novelty = backend.run(batch[:n]) if n else (np.empty((0, len(names)), np.float32), None)
        for p, slot in zip(chunk, slots):
            if slot is None:
                log.warning("cannot decode %s; skipped", p)
                yield {"path": str(p), "error": "cannot decode image (corrupt or not an image)"}
                continue
            row = probs[slot]
            top = int(np.argmax(row))
            result = {"path": str(p), "label": names[top], "confidence": round(float(row[top]), 6)}
            if novelty is not None and threshold is not None:
                score = float(novelty[slot])
                result.update(label=label_of(names, decide(row, novelty=score, novelty_threshold=threshold)),
                              top_label=names[top],
                              novelty=round(score, 6))
            if top_k > 1:
                order = np.argsort(-row)[:top_k]
                result["top"] = [[names[i], round(float(row[i]), 6)] for i in order]
            yield result


def run_predict(model: str, inputs: Sequence[str], backend: str = "auto", device: str = "auto",
                batch_size: int = 16, top_k: int = 1, out: IO[str] | None = None, threads: int | None = None,
                novelty_threshold: float | None = None) -> int:
    """Classify `inputs`, writing JSON lines to `out` (stdout). Returns the number of unreadable images.

    novelty_threshold replaces the model's own (models without a novelty score ignore it, with a log line)."""
    from edge.runtime.backends import load_backend

    if batch_size < 1:
        raise EdgeError(f"--batch-size must be >= 1, got {batch_size}")
    out = out or sys.stdout
    paths = collect_images(inputs)
    bad = 0
    with load_backend(model, backend, device, novelty_threshold=novelty_threshold, **backend_options(threads)) as be:
        for result in predict_files(be, paths, batch_size=batch_size, top_k=top_k):
            bad += "error" in result
            out.write(json.dumps(result) + "\n")
            out.flush()
    return bad


def _novelty_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 2.0:  # cosine distance: 0..2 (2 = opposite; nothing is ever called unknown)
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 2, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge predict", description=__doc__.split("\n")[0].split(": ", 1)[-1])
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (walked recursively)")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--top-k", type=int, default=1, help="also list the K most likely labels")
    p.add_argument("--novelty-threshold", type=_novelty_threshold, default=None, metavar="T",
                   help="label `unknown` above this novelty (default: the threshold calibrated by `train`; 0 = "
                        "identical to a training image, 1 = unlike all; ignored by models without a novelty score)")
    p.add_argument("-q", "--quiet", action="store_true", help="no log lines on stderr (backend choice), only errors")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    log_to_stderr(logging.ERROR if a.quiet else logging.INFO)
    try:
        bad = run_predict(a.model, a.inputs, a.backend, a.device, a.batch_size, a.top_k, threads=a.threads,
                          novelty_threshold=a.novelty_threshold)
    except BrokenPipeError:  # `edge predict ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if bad:
        print(f"{bad} image(s) could not be read", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
