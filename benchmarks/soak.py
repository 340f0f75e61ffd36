"""Soak: run the service pipeline for a long stretch and report memory (RSS) and latency drift.

    python benchmarks/soak.py [--minutes 10] [--fps 60] [--model PATH.onnx] [--window 30] [--json]

Setup as `edge serve` would run: the latest-frame Camera on `test://` paced at --fps (640x480), onnxruntime,
smoothing, the full overlay, and an output that JPEG-encodes every annotated frame (what an MJPEG web view does).
Every --window seconds it samples RSS and the window's latency percentiles. Reported: RSS after warm-up vs at the
end and its slope (MB/hour, least squares over the windows after the first), end-to-end latency p50/p95 of the
first vs the last window, frames, drops. Without --model a random-init SqueezeNet 1.1 is exported first.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; falls back to the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=60.0, help="test camera frame rate")
    p.add_argument("--window", type=float, default=30.0, help="seconds per sample")
    p.add_argument("--model", default=None, help="ONNX/.pt/.engine model (default: random SqueezeNet 1.1 ONNX)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from edge.runtime.backends import load_backend
    from edge.runtime.camera import Camera
    from edge.runtime.outputs.base import Output
    from edge.runtime.pipeline import Pipeline
    from edge.runtime.smoothing import Smoother

    class JpegOutput(Output):
        name = "jpeg"

        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0

        def write(self, frame, prediction) -> None:
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
            self.bytes += len(buf)

    tmp = tempfile.TemporaryDirectory()
    model = a.model
    if model is None:  # exported in a child process, so this process's RSS is the service's alone (no torch)
        import subprocess

        code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
                "from bench_pipeline import make_models; print(make_models(Path(sys.argv[2]))[1])")
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), tmp.name],
                             check=True, capture_output=True, text=True).stdout
        model = out.strip().splitlines()[-1]

    lock = threading.Lock()
    window: list[float] = []
    windows: list[dict] = []

    def listen(pred, timings) -> None:
        with lock:
            window.append(timings["e2e_ms"])

    backend = load_backend(model)
    cam = Camera(f"test://?width=640&height=480&fps={a.fps:g}", realtime=True)
    pipe = Pipeline(cam, backend, smoother=Smoother(backend.meta.class_names, smoothing=0.6, threshold=0.5,
                                                   min_dwell=3),
                    outputs=[JpegOutput()], listeners=[listen], top_k=2)
    t0 = time.monotonic()
    end = t0 + a.minutes * 60
    pipe.start()
    t_prev = t0
    try:
        while time.monotonic() < end:
            time.sleep(min(a.window, max(0.0, end - time.monotonic())))
            gc.collect()
            with lock:
                lat, window[:] = list(window), []
            now = time.monotonic()
            span, t_prev = now - t_prev, now
            s = pipe.stats
            row = {
                "t_s": round(now - t0, 1),
                "rss_mb": round(rss_mb(), 1),
                "frames": s["frames"],
                "drops": s["drops"],
                "fps": round(len(lat) / span, 1) if span > 0 else None,
                "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if lat else None,
                "latency_ms_p95": round(float(np.percentile(lat, 95)), 2) if lat else None,
                "threads": threading.active_count(),
            }
            windows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        pipe.stop()
        backend.close()
        tmp.cleanup()

    steady = windows[1:] if len(windows) > 2 else windows
    t = np.array([w["t_s"] for w in steady]) / 3600
    r = np.array([w["rss_mb"] for w in steady])
    slope = float(np.polyfit(t, r, 1)[0]) if len(steady) >= 2 else float("nan")
    first, last = steady[0], windows[-1]
    summary = {
        "minutes": a.minutes, "camera_fps": a.fps, "model": Path(model).name, "backend": backend.name,
        "frames": last["frames"], "drops": last["drops"],
        "rss_mb_after_warmup": first["rss_mb"], "rss_mb_end": last["rss_mb"],
        "rss_mb_max": max(w["rss_mb"] for w in windows),
        "rss_slope_mb_per_hour": round(slope, 2),
        "latency_ms_p50_first": first["latency_ms_p50"], "latency_ms_p50_last": last["latency_ms_p50"],
        "latency_ms_p95_first": first["latency_ms_p95"], "latency_ms_p95_last": last["latency_ms_p95"],
        "threads_first": first["threads"], "threads_last": last["threads"],
    }
    if a.json:
        print(json.dumps(summary))
        return
    print(f"\nsoak: {a.minutes:g} min, test:// 640x480 @ {a.fps:g} fps, {summary['model']} on {summary['backend']}")
    print(f"frames {summary['frames']}, drops {summary['drops']}")
    print(f"RSS    {summary['rss_mb_after_warmup']} MB after warm-up -> {summary['rss_mb_end']} MB at the end "
          f"(max {summary['rss_mb_max']}; slope {summary['rss_slope_mb_per_hour']} MB/h)")
    print(f"latency p50 {summary['latency_ms_p50_first']} -> {summary['latency_ms_p50_last']} ms, "
          f"p95 {summary['latency_ms_p95_first']} -> {summary['latency_ms_p95_last']} ms (first -> last window)")
    print(f"threads {summary['threads_first']} -> {summary['threads_last']}")


if __name__ == "__main__":
    main()
