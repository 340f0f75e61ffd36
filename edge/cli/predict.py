"""`edge predict --model PATH INPUT...`: classify images, folders, videos and streams, JSON lines on stdout.

Inputs are what `edge serve` takes: image files and folders (one line per image), video files, test://, rtsp://,
csi://, v4l2://, 0 or /dev/video0 (one line per frame; see edge.cli.predict_stream, with --frames / --seconds
for sources that never end). --save DIR writes the annotated images, or an annotated video browsers play.

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
from edge.cli.predict_stream import result_dict
from edge.core.cli_parser import CliParser
from edge.core.errors import EdgeError, cli_entry
from edge.core.files import IMAGE_EXTENSIONS, list_images, read_image_bgr
from edge.core.images import pixel_problem
from edge.core.preprocess import preprocess_image

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
        if probs.ndim != 2 or probs.shape[1] != len(names):
            width = probs.shape[1] if probs.ndim == 2 else tuple(probs.shape[1:])
            raise EdgeError(f"the model outputs {width} scores per image but names {len(names)} classes "
                            f"({', '.join(names)}); it does not match its labels: re-export it with `edge export`")
        for p, slot in zip(chunk, slots):
            if slot is None:
                error = pixel_problem(p) or "cannot decode image (corrupt or not an image)"
                log.warning("cannot decode %s; skipped", p)
                yield {"path": str(p), "error": error}
                continue
            result = result_dict(names, probs[slot], None if novelty is None else float(novelty[slot]), threshold,
                                 top_k)
            if "error" in result:
                log.warning("%s: %s", p, result["error"])
            yield {"path": str(p), **result}


def run_predict(model: str, inputs: Sequence[str], backend: str = "auto", device: str = "auto",
                batch_size: int = 16, top_k: int = 1, out: IO[str] | None = None, threads: int | None = None,
                novelty_threshold: float | None = None, save: str | None = None) -> int:
    """Classify `inputs`, writing JSON lines to `out` (stdout). Returns the number of unreadable images.

    novelty_threshold replaces the model's own (models without a novelty score ignore it, with a log line)."""
    from edge.runtime.backends import load_backend

    if batch_size < 1:
        raise EdgeError(f"--batch-size must be >= 1, got {batch_size}")
    out = out or sys.stdout
    paths = collect_images(inputs)
    bad = 0
    saver = None
    if save:
        from edge.cli.predict_stream import ImageSaver

        saver = ImageSaver(save)
    with load_backend(model, backend, device, novelty_threshold=novelty_threshold, **backend_options(threads)) as be:
        for result in predict_files(be, paths, batch_size=batch_size, top_k=top_k):
            bad += "error" in result
            out.write(json.dumps(result) + "\n")
            out.flush()
            if saver is not None and "error" not in result:
                saver.save(result)
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
    p = CliParser(prog="edge predict", description=__doc__.split("\n")[0].split(": ", 1)[-1])
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files and/or folders (walked recursively), video files, test://, rtsp://..., "
                        "csi://0, v4l2:///dev/video0, 0: whatever `edge serve --source` takes")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=int, default=16, help="images per inference call")
    p.add_argument("--top-k", type=int, default=1, help="also list the K most likely labels")
    p.add_argument("--novelty-threshold", type=_novelty_threshold, default=None, metavar="T",
                   help="label `unknown` above this novelty (default: the threshold calibrated by `train`; 0 = "
                        "identical to a training image, 1 = unlike all; ignored by models without a novelty score)")
    p.add_argument("--frames", type=int, default=None, metavar="N", help="at most N frames of each video source")
    p.add_argument("--seconds", type=float, default=None, metavar="S",
                   help="at most S seconds of each video source (video time for files and test://)")
    p.add_argument("--save", metavar="DIR", help="write annotated images, or an annotated video (H.264 .mp4 or "
                   "VP8 .webm, which browsers play), into DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no log lines on stderr (backend choice), only errors")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    log_to_stderr(logging.ERROR if a.quiet else logging.INFO)
    from edge.cli.predict_stream import is_stream_input, run_sources

    if (a.frames is not None and a.frames < 1) or (a.seconds is not None and not a.seconds > 0):
        raise EdgeError("--frames must be >= 1 and --seconds > 0")
    streams = [i for i in a.inputs if is_stream_input(i)]
    images = [i for i in a.inputs if not is_stream_input(i)]
    try:
        bad = run_predict(a.model, images, a.backend, a.device, a.batch_size, a.top_k, threads=a.threads,
                          novelty_threshold=a.novelty_threshold, save=a.save) if images else 0
        if streams:
            bad += run_sources(a.model, streams, sys.stdout, backend=a.backend, device=a.device,
                               backend_options=backend_options(a.threads), novelty_threshold=a.novelty_threshold,
                               frames=a.frames, seconds=a.seconds, batch_size=a.batch_size, top_k=a.top_k,
                               save=a.save)
    except BrokenPipeError:  # `edge predict ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if bad:
        print(f"{bad} input(s) could not be read", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
