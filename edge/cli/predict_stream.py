"""`edge predict` on what `edge serve` takes: video files, test://, rtsp://, csi://, v4l2://, 0 and /dev/video0,
and `--save DIR` (annotated images, or an annotated video that browsers play).

A video source gives one JSON line per frame: {"source", "frame" (index from 0), "time" (seconds into the video:
frame / fps for files and test://, since the start for cameras and streams), "label", "confidence"} (+ "top",
+ "novelty"/"top_label" as for images). Every frame of a file is classified (read as fast as the model goes, never
paced or dropped); a camera or stream gives the frames that come while the model keeps up. `--frames N` and
`--seconds S` end endless sources (cameras, streams, test://); Ctrl-C ends one too and still finalizes the video.
With --save, the annotated video goes to DIR/<name>.mp4 in H.264 where this OpenCV encodes it, else DIR/<name>.webm
(VP8) - the choice `edge demo` makes - written under a temporary name and moved into place at the end.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from edge.core.errors import EdgeError
from edge.core.files import is_image_name, read_image_bgr
from edge.core.fsutil import (
    TEMP_PREFIX,
    atomic_write_bytes,
    ensure_writable_dir,
    make_readable,
)
from edge.core.preprocess import preprocess_image
from edge.runtime.prediction import Prediction
from edge.runtime.smoothing import decide, label_of

log = logging.getLogger(__name__)


def is_stream_input(text: str) -> bool:
    """A source `edge serve` takes that is not an image or a folder of images: a URI (test://, rtsp://, csi://,
    v4l2://...), a camera index or device, or a file that is not an image (a video)."""
    if "://" in text or text.strip().isdigit() or text.startswith("/dev/video"):
        return True
    p = Path(text)
    return p.is_file() and not is_image_name(p.name)


def result_dict(names: list[str], row: np.ndarray, novelty: float | None, threshold: float | None,
                top_k: int) -> dict[str, Any]:
    """label, confidence (+ novelty, top_label; + top), as `edge predict` prints them for an image or a frame;
    {"error": ...} when the model gave NaN or infinite scores (JSON has no NaN)."""
    if not np.isfinite(row).all() or (novelty is not None and not np.isfinite(novelty)):
        return {"error": "the model gave NaN or infinite scores (a broken model file?)"}
    top = int(np.argmax(row))
    result: dict[str, Any] = {"label": names[top], "confidence": round(float(row[top]), 6)}
    if novelty is not None and threshold is not None:
        result.update(label=label_of(names, decide(row, novelty=novelty, novelty_threshold=threshold)),
                      top_label=names[top], novelty=round(float(novelty), 6))
    if top_k > 1:
        order = np.argsort(-row)[:top_k]
        result["top"] = [[names[i], round(float(row[i]), 6)] for i in order]
    return result


def _prediction(result: dict[str, Any], probabilities: dict[str, float], frame: int, fps: float,
                infer_ms: float = 0.0) -> Prediction:
    return Prediction(label=result["label"], confidence=result["confidence"], probabilities=probabilities,
                      frame_id=frame, timestamp=time.time(), fps=fps, infer_ms=infer_ms, latency_ms=0.0,
                      frame_age_ms=0.0, raw_label=result.get("top_label", result["label"]),
                      novelty=result.get("novelty"))


def _annotate(img: np.ndarray, result: dict[str, Any], probabilities: dict[str, float], frame: int = 0,
              fps: float = 0.0, top_k: int = 0, infer_ms: float = 0.0) -> np.ndarray:
    from edge.runtime.overlay import draw_overlay

    return draw_overlay(img, _prediction(result, probabilities, frame, fps, infer_ms), top_k)


def _save_name(source: str) -> str:
    """A file name for a source: the video's stem, else the URI without scheme and secrets (`test`, `rtsp_cam`)."""
    from edge.runtime.sources import redact_uri

    if "://" not in source and not source.isdigit() and not source.startswith("/dev/"):
        return Path(source).stem or "video"
    text = redact_uri(source).split("?", 1)[0]
    text = re.sub(r"^[a-z0-9+]+://", lambda m: m.group(0)[:-3] + "_", text)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "video"


class ImageSaver:
    """`--save DIR` for images: the annotated image as DIR/<its name> (a name seen twice gets a number)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        ensure_writable_dir(self.folder, "--save folder")
        self._used: set[str] = set()

    def save(self, result: dict[str, Any]) -> None:
        src = Path(result["path"])
        img = read_image_bgr(src)
        if img is None:
            return
        probs = {n: p for n, p in result.get("top", [])} or {result.get("top_label", result["label"]):
                                                               result["confidence"]}
        _annotate(img, result, probs, top_k=len(result.get("top", [])))
        name, n = src.name, 1
        while name in self._used:
            n += 1
            name = f"{src.stem}-{n}{src.suffix}"
        self._used.add(name)
        ok, buf = cv2.imencode(src.suffix if src.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".png",
                               img)
        if not ok:
            raise EdgeError(f"--save: cannot encode {src.name}")
        atomic_write_bytes(self.folder / name, buf.tobytes())


class VideoSaver:
    """`--save DIR` for a video source: the annotated frames as a video browsers play (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, name: str, fps: float) -> None:
        from edge.cli.demo import video_format

        self.folder = Path(folder)
        ensure_writable_dir(self.folder, "--save folder")
        suffix, self.fourcc = video_format(self.folder)
        self.path = self.folder / f"{name}{suffix}"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=TEMP_PREFIX, suffix=suffix)
        os.close(fd)
        self._tmp = Path(tmp)
        self.fps = fps
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            h, w = frame.shape[:2]
            self._size = (w - w % 2, h - h % 2)  # H.264 (yuv420p) wants even sizes
            from edge.runtime.outputs.video import native_stderr_off

            with native_stderr_off():  # FFmpeg's notes on the codec tag mean nothing here
                self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                               self._size)
            if not self._writer.isOpened():
                raise EdgeError(f"--save: OpenCV cannot open a {self.fourcc} video writer for {self.path}")
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = np.ascontiguousarray(frame[: self._size[1], : self._size[0]])
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> Path | None:
        """Finalize: the video under its name (None and no file when no frame came)."""
        if self._writer is not None:
            self._writer.release()
        if not self.frames:
            self._tmp.unlink(missing_ok=True)
            return None
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        make_readable(self._tmp)
        os.replace(self._tmp, self.path)
        from edge.cli.demo import video_hint

        hint = video_hint(self.path, self.fourcc)
        log.info("saved %d annotated frames to %s%s", self.frames, self.path, f" ({hint})" if hint else "")
        return self.path


def predict_source(backend: Any, uri: str, out: IO[str], *, frames: int | None = None, seconds: float | None = None,
                   batch_size: int = 16, top_k: int = 1, save: str | None = None) -> bool:
    """Classify `uri` frame by frame, one JSON line each on `out`; False when the source could not be read (an
    error line was written instead)."""
    from edge.runtime.sources import SourceError, open_source, redact_uri

    shown = redact_uri(uri)
    try:
        source = open_source(uri, realtime=False)
    except SourceError as e:
        log.warning("%s", e)
        out.write(json.dumps({"source": shown, "error": str(e)}) + "\n")
        return False
    spec, names = backend.meta.preprocess, backend.meta.class_names
    threshold = getattr(backend, "novelty_threshold", None)
    fps = float(source.fps or 30.0)
    live = bool(getattr(source, "is_live", False))
    endless = live or getattr(source, "frames", 0) is None
    if endless and frames is None and seconds is None:
        log.info("%s does not end by itself: stop it with Ctrl-C, or pass --frames N / --seconds S", shown)
    batch_size = 1 if live else batch_size  # a camera's frame is classified as soon as it comes
    batch = np.empty((batch_size, 3, spec.input_size, spec.input_size), np.float32)
    saver = VideoSaver(save, _save_name(uri), fps) if save else None
    index, t0, ok = 0, time.monotonic(), True
    try:
        ended = False
        while not ended:
            chunk: list[tuple[int, float, np.ndarray]] = []
            while len(chunk) < batch_size:
                at = time.monotonic() - t0 if live else (index + len(chunk)) / fps
                if (frames is not None and index + len(chunk) >= frames) or (seconds is not None and at >= seconds):
                    ended = True
                    break
                frame = source.read()
                if frame is None:
                    ended = True
                    break
                if live:
                    at = time.monotonic() - t0
                preprocess_image(frame, spec, "BGR", out=batch[len(chunk)])
                chunk.append((index + len(chunk), at, frame if saver is None else frame.copy()))
            if not chunk:
                break
            started = time.perf_counter()
            probs, novelty = backend.run(batch[: len(chunk)])
            infer_ms = (time.perf_counter() - started) * 1e3 / len(chunk)
            for n, (i, at, frame) in enumerate(chunk):
                score = None if novelty is None else float(novelty[n])
                result = result_dict(names, probs[n], score, threshold, top_k)
                out.write(json.dumps({"source": shown, "frame": i, "time": round(at, 3), **result}) + "\n")
                if saver is not None and "error" not in result:
                    saver.write(_annotate(frame, result, {k: float(p) for k, p in zip(names, probs[n])}, i,
                                          0.0 if live else fps, top_k if top_k > 1 else 0, infer_ms))
            out.flush()
            index += len(chunk)
    except KeyboardInterrupt:
        log.info("interrupted after %d frames of %s", index, shown)
    except (SourceError, OSError) as e:
        log.warning("%s: %s", shown, e)
        out.write(json.dumps({"source": shown, "error": f"reading failed after {index} frames: {e}"}) + "\n")
        ok = False
    finally:
        source.close()
        if saver is not None:
            saver.close()
    if index == 0 and ok:
        log.warning("%s gave no frames", shown)
    return ok


def run_sources(model: str, sources: list[str], out: IO[str], *, backend: str = "auto", device: str = "auto",
                backend_options: dict[str, Any] | None = None, novelty_threshold: float | None = None,
                **kw: Any) -> int:
    """`predict_source` for each source in turn with one loaded model; the number of sources that failed."""
    from edge.runtime.backends import load_backend
    from edge.runtime.sources import SourceConfigError, validate_source_uri

    for uri in sources:  # a wrong URI or missing file: one line and exit 2 before the model loads
        try:
            validate_source_uri(uri)
        except SourceConfigError as e:
            raise EdgeError(str(e)) from None
    with load_backend(model, backend, device, novelty_threshold=novelty_threshold, **(backend_options or {})) as be:
        return sum(not predict_source(be, uri, out, **kw) for uri in sources)
