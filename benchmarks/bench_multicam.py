"""Several cameras on one model: batched inference vs one inference call per frame, on `test://` cameras.

    python benchmarks/bench_multicam.py [--cameras 1 2 4] [--fps 30] [--seconds 5] [--rounds 2]
                                        [--arch squeezenet1_1] [--threads N] [--modes batched per-frame separate]
                                        [--backend onnxruntime|torch] [--device cpu|cuda|auto]

Each camera is a live `Camera` on `test://?width=640&height=480&fps=F&seed=i`, paced at F fps like a real camera
(unpaced test:// cameras would render hundreds of frames per second each, only to drop them, and steal the CPU
the model needs). So the offered load is cameras x F frames per second, and a mode shows its capacity only
once the load exceeds it: with 4 cameras at 30 fps on a small CPU.

Modes (same model, same cameras, overlay drawn, no outputs):
- batched: one Pipeline, one inference thread, the newest frame of every camera that has one in one call.
- per-frame: the same pipeline with max_batch=1: one inference call per frame (the same thread, in turn).
- separate: one Pipeline per camera (N inference threads sharing one onnxruntime session), what running one
  service per camera amounts to.

Figures over the measured window (after a warm-up): aggregate fps (all cameras), each camera's fps and its share
of the mean, capture-to-result latency p50/p95 over all frames, the mean batch, and where the time goes per frame:
preprocess, model (call time / frames in the call) and overlay. Weights are random (speed does not depend on them).
Rounds are interleaved and the round with the median aggregate fps is reported (the CPU may be shared). First, the
model alone: ms per frame at batch 1, 2 and 4, which decides whether batching can pay on this machine at all.

Found on a 2-core x86 CPU (onnxruntime, squeezenet1_1 and efficientnet_lite0): the model's cost per frame does not
fall with the batch size (it rises a little), so batching gives no throughput there (0.90-1.00x of per-frame) and
costs latency; it is meant for GPUs (TensorRT engines, CUDA), where a batch-1 call leaves most of the GPU idle.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import make_models

MODES = ("batched", "per-frame", "separate")


def measure(model: Path, cameras: int, mode: str, fps: float, seconds: float, warmup: float,
            threads: int | None, runtime: tuple[str, str] = ("onnxruntime", "cpu")) -> dict[str, Any]:
    """Run `cameras` test:// cameras through `mode` for warmup + seconds; the measured window's figures."""
    from edge.runtime.backends import load_backend
    from edge.runtime.camera import Camera
    from edge.runtime.pipeline import Pipeline

    backend = load_backend(str(model), *runtime, **({"threads": threads} if threads else {}))
    cams = [Camera(f"test://?width=640&height=480&fps={fps:g}&seed={i}") for i in range(cameras)]
    rows: list[tuple[int, float, float, float, float, float]] = []  # camera, latency, prep, infer/frame, overlay, batch
    lock = threading.Lock()
    measuring = threading.Event()

    def listen(pred, t: dict[str, float]) -> None:
        if measuring.is_set():
            with lock:
                batch = t.get("batch", 1.0)
                rows.append((pred.camera, t["latency_ms"], t["preprocess_ms"], t["infer_ms"] / batch,
                             t["overlay_ms"], batch))

    if mode == "separate":
        pipes = [Pipeline(cam, backend, listeners=[listen]) for cam in cams]
        for i, p in enumerate(pipes):  # each pipeline is one camera; give the predictions their camera id back
            p.slots[0].index = i
    else:
        pipes = [Pipeline(cams, backend, listeners=[listen], max_batch=1 if mode == "per-frame" else None)]
    try:
        for p in pipes:
            p.start()
        time.sleep(warmup)
        measuring.set()
        time.sleep(seconds)
        measuring.clear()
    finally:
        for p in pipes:
            p.stop()
        backend.close()
    with lock:
        a = np.array(rows, np.float64).reshape(-1, 6)
    per_cam = [round(float((a[:, 0] == i).sum()) / seconds, 2) for i in range(cameras)]
    mean = statistics.mean(per_cam)
    return {
        "cameras": cameras,
        "mode": mode,
        "offered_fps": cameras * fps,
        "fps": round(len(a) / seconds, 2),
        "camera_fps": per_cam,
        "min_share": round(min(per_cam) / mean, 3) if mean else 0.0,
        "latency_ms_p50": round(float(np.percentile(a[:, 1], 50)), 1) if len(a) else None,
        "latency_ms_p95": round(float(np.percentile(a[:, 1], 95)), 1) if len(a) else None,
        "batch_avg": round(float(a[:, 5].mean()), 2) if len(a) else None,
        "preprocess_ms": round(float(np.median(a[:, 2])), 2) if len(a) else None,
        "infer_ms_per_frame": round(float(np.median(a[:, 3])), 2) if len(a) else None,
        "overlay_ms": round(float(np.median(a[:, 4])), 2) if len(a) else None,
    }


def model_scaling(model: Path, threads: int | None, batches=(1, 2, 4), repeats: int = 5,
                  runtime: tuple[str, str] = ("onnxruntime", "cpu")) -> dict[int, float]:
    """The model alone: median ms per frame at each batch size (no pipeline, no cameras)."""
    from edge.runtime.backends import load_backend

    backend = load_backend(str(model), *runtime, **({"threads": threads} if threads else {}))
    size = backend.meta.preprocess.input_size
    x = np.random.default_rng(0).random((max(batches), 3, size, size), np.float32)
    runs: dict[int, list[float]] = {n: [] for n in batches}
    try:
        for n in batches:
            backend.run(x[:n])  # warm-up: first calls allocate
        for _ in range(repeats):
            for n in batches:
                t = time.perf_counter()
                for _ in range(8 // n):
                    backend.run(x[:n])
                runs[n].append((time.perf_counter() - t) / (8 // n * n) * 1e3)
    finally:
        backend.close()
    return {n: round(statistics.median(v), 2) for n, v in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--fps", type=float, default=30.0, help="each test:// camera's frame rate (paced)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds run first and not measured")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--arch", default="squeezenet1_1")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: the backend's own)")
    p.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime",
                   help="torch: the model.pt on --device (the CUDA path on a GPU machine)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        pt_path, onnx_path = make_models(Path(tmp), a.arch)
        model, runtime = (pt_path if a.backend == "torch" else onnx_path), (a.backend, a.device)
        scaling = model_scaling(model, a.threads, runtime=runtime)
        results: dict[tuple[int, str], list[dict]] = {}
        for r in range(a.rounds):
            for n in a.cameras:
                for mode in a.modes:
                    res = measure(model, n, mode, a.fps, a.seconds, a.warmup, a.threads, runtime)
                    results.setdefault((n, mode), []).append(res)
                    print(f"round {r + 1}: {n} cameras {mode:<9} {res['fps']:7.1f} fps  {res['camera_fps']}",
                          file=sys.stderr, flush=True)

    def median_run(runs: list[dict]) -> dict:
        return sorted(runs, key=lambda x: x["fps"])[(len(runs) - 1) // 2]

    table = [median_run(results[(n, m)]) for n in a.cameras for m in a.modes]
    ratios = {n: round(median_run(results[(n, "batched")])["fps"] / median_run(results[(n, "per-frame")])["fps"], 2)
              for n in a.cameras if "batched" in a.modes and "per-frame" in a.modes}
    if a.json:
        print(json.dumps({"arch": a.arch, "fps": a.fps, "seconds": a.seconds, "rounds": a.rounds, "runs": table,
                          "batched_vs_per_frame": ratios, "model_ms_per_frame_by_batch": scaling}))
        return
    print("\nmodel alone, ms per frame by batch size: "
          + ", ".join(f"batch {n}: {ms:.2f}" for n, ms in scaling.items()))
    print(f"{a.arch} on {a.backend} {a.device}, test:// 640x480 cameras paced at {a.fps:g} fps, "
          f"{a.seconds:g} s measured, "
          f"round with the median fps of {a.rounds}")
    print(f"{'cams':>4} {'mode':<10}{'offered':>8}{'agg fps':>9}  {'per-camera fps':<28}{'min/mean':>9}{'batch':>7}"
          f"{'lat p50':>9}{'lat p95':>9}{'prep ms':>9}{'model ms/frame':>16}{'overlay ms':>12}")
    for r in table:
        cams = " ".join(f"{f:.1f}" for f in r["camera_fps"])
        print(f"{r['cameras']:>4} {r['mode']:<10}{r['offered_fps']:>8g}{r['fps']:>9.1f}  {cams:<28}"
              f"{r['min_share']:>9.2f}"
              f"{r['batch_avg']:>7.2f}{r['latency_ms_p50']:>9.1f}{r['latency_ms_p95']:>9.1f}{r['preprocess_ms']:>9.2f}"
              f"{r['infer_ms_per_frame']:>16.2f}{r['overlay_ms']:>12.2f}")
    if ratios:
        print("batched / per-frame aggregate fps: " + ", ".join(f"{n} cams {x:.2f}x" for n, x in ratios.items()))


if __name__ == "__main__":
    main()
