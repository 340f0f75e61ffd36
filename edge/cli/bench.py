"""`edge bench --model PATH --source SRC --frames N`: benchmark the real pipeline end to end.

Runs the same Pipeline as `edge serve` (frame -> preprocess -> infer -> smoothing -> overlay) for N frames after
a short warm-up, reading the source as fast as it delivers frames (files and test:// unpaced, looped), and
reports end-to-end FPS, inference and end-to-end latency p50/p95, drops and the backend. `--json` prints one
JSON object.

Capture (`--capture`): `camera` is the service's latest-frame Camera thread (drops = frames the camera read that
inference never saw); `prefetch` decodes one frame ahead on a reader thread (nothing decoded in vain: an unpaced
file read by a latest-frame camera decodes hundreds of frames per second only to drop them, stealing the CPU
inference needs; latency then includes the frame's wait in the read-ahead slot); `sync` decodes on the inference
thread. `auto`: camera for live sources (cameras, streams), prefetch for files, folders and test://.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from edge.cli._options import add_model_arguments, backend_options, log_to_stderr
from edge.core.cli_parser import CliParser
from edge.core.errors import EdgeError, cli_entry
from edge.runtime.pipeline import Pipeline
from edge.runtime.timings import TimingWindow

log = logging.getLogger(__name__)


def run_bench(
    model: str,
    source: str,
    frames: int = 300,
    backend: str = "auto",
    device: str = "auto",
    warmup: int = 10,
    overlay: bool = True,
    capture: str = "auto",
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the pipeline for `warmup` + `frames` frames and return the figures (see module doc)."""
    from edge.runtime.backends import load_backend
    from edge.runtime.camera import Camera
    from edge.runtime.sources import open_source
    from edge.runtime.sources.adapters import PrefetchSource, SyncSource

    if capture not in CAPTURE_CHOICES:
        raise EdgeError(f"unknown capture mode {capture!r}; choose one of: {', '.join(CAPTURE_CHOICES)}")
    if frames < 1:
        raise EdgeError(f"--frames must be >= 1, got {frames}")
    if warmup < 0:
        raise EdgeError(f"--warmup must be >= 0, got {warmup}")
    log.info("bench: loading %s", model)
    be = load_backend(model, backend, device, **backend_options(threads))
    measured = TimingWindow(MEASURED, size=None)
    seen = 0
    t_begin = t_end = 0.0  # the measured span: from the last warm-up frame (or the start) to the last frame
    next_report = time.monotonic() + PROGRESS_EVERY_S

    def listen(_pred, timings: dict[str, float]) -> None:
        nonlocal seen, t_begin, t_end, next_report
        seen += 1
        if time.monotonic() >= next_report:  # a slow model (a .pt on a CPU) takes minutes: say how far it is
            next_report = time.monotonic() + PROGRESS_EVERY_S
            log.info("bench: %d of %d frames (%s)", seen, warmup + frames,
                     "warming up" if seen <= warmup else f"{len(measured)} measured")
        if seen <= warmup:
            t_begin = time.monotonic()
        else:
            measured.add(timings)
            t_end = time.monotonic()

    try:
        src = open_source(source, loop=True, realtime=False)
    except BaseException:
        be.close()
        raise
    if capture == "auto":
        capture = "camera" if src.is_live else "prefetch"
    if capture == "camera":  # the opened source goes to the camera; it reopens by URI after an error
        cam: Any = Camera.from_source(src, source, loop=True, realtime=False)
    else:
        cam = PrefetchSource(src) if capture == "prefetch" else SyncSource(src)
    pipe = Pipeline(cam, be, overlay=overlay, listeners=[listen])
    t_start = t_begin = time.monotonic()
    try:
        pipe.run(max_frames=warmup + frames)
    finally:
        pipe.stop()
        cam.stop()  # idempotent; also when the pipeline did not start it
        be.close()
    wall = time.monotonic() - t_start
    if len(measured) < 2:
        raise EdgeError(f"source {source!r} ended after {seen} frames; need more than --warmup {warmup} + 1")
    elapsed = t_end - t_begin
    e2e50, e2e95 = measured.percentiles("e2e_ms")
    inf50, inf95 = measured.percentiles("infer_ms")
    return {
        "fps": round(len(measured) / elapsed, 2) if elapsed > 0 else None,
        "latency_ms_p50": e2e50,
        "latency_ms_p95": e2e95,
        "infer_ms_p50": inf50,
        "infer_ms_p95": inf95,
        "preprocess_ms_p50": measured.percentiles("preprocess_ms", (50,))[0],
        "overlay_ms_p50": measured.percentiles("overlay_ms", (50,))[0],
        "frame_age_ms_p50": measured.percentiles("frame_age_ms", (50,))[0],
        "frames": len(measured),
        "drops": int(measured.total("drops")),
        "backend": be.name,
        "providers": be.providers,
        "device": be.device,
        "model": str(model),
        "arch": be.meta.arch,
        "source": source,
        "capture": capture,
        "overlay": overlay,
        "wall_s": round(wall, 2),
    }


CAPTURE_CHOICES = ("auto", "camera", "prefetch", "sync")
PROGRESS_EVERY_S = 2.0
MEASURED = ("e2e_ms", "infer_ms", "preprocess_ms", "overlay_ms", "frame_age_ms", "drops")


def format_report(r: dict[str, Any]) -> str:
    return "\n".join([
        f"model    {r['model']} ({r['arch']}) on {r['backend']} [{', '.join(r['providers'])}]",
        f"source   {r['source']} (capture: {r['capture']}, overlay: {'on' if r['overlay'] else 'off'})",
        f"frames   {r['frames']} in {r['wall_s']} s, drops {r['drops']}",
        f"fps      {r['fps']}",
        f"latency  p50 {r['latency_ms_p50']} ms, p95 {r['latency_ms_p95']} ms (frame captured -> overlay drawn)",
        f"infer    p50 {r['infer_ms_p50']} ms, p95 {r['infer_ms_p95']} ms; preprocess p50 {r['preprocess_ms_p50']} ms, "
        f"overlay p50 {r['overlay_ms_p50']} ms",
    ])


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="edge bench", description=__doc__.split("\n")[0].split(": ", 1)[-1])
    add_model_arguments(p)
    p.add_argument("--source", default="test://", help="video source URI (default test://, 640x480 synthetic)")
    p.add_argument("--frames", type=int, default=300, help="frames to measure (after --warmup)")
    p.add_argument("--warmup", type=int, default=10, help="frames run first and not measured")
    p.add_argument("--no-overlay", dest="overlay", action="store_false", help="skip drawing the overlay")
    p.add_argument("--capture", default="auto", choices=CAPTURE_CHOICES,
                   help="how frames reach the pipeline: camera (the service's capture thread, newest frame wins), "
                        "prefetch (a reader thread decodes one frame ahead), sync (decoded on the inference thread); "
                        "default auto: camera for live sources, else prefetch")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    log_to_stderr(logging.WARNING if a.json else logging.INFO)
    r = run_bench(a.model, a.source, a.frames, a.backend, a.device, a.warmup, a.overlay, a.capture, a.threads)
    print(json.dumps(r) if a.json else format_report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
