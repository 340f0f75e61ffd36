"""End-to-end pipeline speed vs the tutorial loop, SqueezeNet 1.1 on a generated 640x480 video.

    python benchmarks/bench_pipeline.py [--frames 300] [--rounds 3] [--arch squeezenet1_1] [--json]

Baseline: the straightforward per-frame loop of common tutorials and of JetBot's live demo -- OpenCV read ->
PIL image -> torchvision transforms (Resize 256, CenterCrop 224, ToTensor, Normalize) -> eager PyTorch ->
softmax -> cv2.putText overlay -- one frame after the other.

Ours: `edge bench` (edge.cli.bench.run_bench), i.e. the service's Pipeline: vectorised preprocessing into a reused
buffer, onnxruntime, smoothing-ready prediction, the full overlay; capture modes `prefetch` (default for files:
one frame decoded ahead on a reader thread), `sync` (decode on the inference thread) and `camera` (the service's
latest-frame camera thread reading the file unpaced: most frames are dropped by design). Also ours with the
torch backend (.pt), which separates the pipeline's gain from the runtime's.

Weights are random (no download needed): speed does not depend on them. Runs are interleaved over `--rounds`
and the median is reported, because this machine's CPU may be shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def make_video(path: Path, frames: int = 300, size: tuple[int, int] = (640, 480), fps: float = 30.0) -> Path:
    """The test:// scene written as an mp4 (mp4v) file."""
    from edge.core.synthetic import SceneRenderer

    w, h = size
    scene = SceneRenderer(w, h)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(frames):
        writer.write(scene.render(i / fps, i))
    writer.release()
    return path


def make_models(workdir: Path, arch: str = "squeezenet1_1", classes=("up", "down")) -> tuple[Path, Path]:
    """A random-init checkpoint of `arch` (our model.pt format) and its verified ONNX export."""
    from edge.core.metadata import ModelMeta, save_checkpoint
    from edge.core.registry import create_model, get_arch
    from export.onnx_export import export_onnx

    pt = workdir / f"{arch}.pt"
    model = create_model(arch, len(classes), "none")
    save_checkpoint(pt, model.state_dict(), ModelMeta(arch, list(classes), get_arch(arch).preprocess))
    onnx_path = export_onnx(pt, workdir / f"{arch}.onnx", verify_images=4)
    return pt, onnx_path


def tutorial_loop(checkpoint: Path, video: Path, frames: int, warmup: int = 10) -> dict:
    """The baseline: OpenCV read -> PIL -> torchvision transforms -> eager PyTorch -> putText, per frame."""
    import PIL.Image
    import torch
    import torch.nn.functional as F
    from torchvision import transforms

    from edge.core.metadata import load_model

    model, meta = load_model(checkpoint, "cpu")
    spec = meta.preprocess
    tf = transforms.Compose([
        transforms.Resize(spec.resize_size),
        transforms.CenterCrop(spec.input_size),
        transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std),
    ])
    cap = cv2.VideoCapture(str(video))
    lat: list[float] = []
    t_first = None
    for i in range(warmup + frames):
        if i == warmup:
            t_first = time.perf_counter()
        t0 = time.perf_counter()
        ok, frame = cap.read()
        if not ok:  # loop the file
            cap.release()
            cap = cv2.VideoCapture(str(video))
            ok, frame = cap.read()
        img = PIL.Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        x = tf(img).unsqueeze(0)
        with torch.no_grad():
            probs = F.softmax(model(x), dim=1)[0]
        conf, idx = torch.max(probs, 0)
        cv2.putText(frame, f"{meta.class_names[int(idx)]} {float(conf):.2f}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 1,
                    (0, 255, 0), 2)
        if i >= warmup:
            lat.append((time.perf_counter() - t0) * 1e3)
    elapsed = time.perf_counter() - t_first
    cap.release()
    return {"fps": round(frames / elapsed, 2), "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arch", default="squeezenet1_1")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from edge.cli.bench import run_bench

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = make_video(work / "scene_640x480.mp4", frames=300)
        pt, onnx_path = make_models(work, a.arch)
        runs = {
            "baseline (tutorial loop, eager torch)": lambda: tutorial_loop(pt, video, a.frames),
            "ours onnxruntime, prefetch": lambda: run_bench(str(onnx_path), str(video), a.frames, capture="prefetch"),
            "ours onnxruntime, sync": lambda: run_bench(str(onnx_path), str(video), a.frames, capture="sync"),
            "ours onnxruntime, camera thread": lambda: run_bench(str(onnx_path), str(video), a.frames,
                                                                 capture="camera"),
            "ours torch backend, prefetch": lambda: run_bench(str(pt), str(video), a.frames, capture="prefetch"),
        }
        results: dict[str, list[dict]] = {k: [] for k in runs}
        for r in range(a.rounds):
            for name, fn in runs.items():
                res = fn()
                results[name].append(res)
                print(f"round {r + 1}: {name:<40} {res['fps']:8.1f} fps  p50 {res['latency_ms_p50']:6.2f} ms  "
                      f"p95 {res['latency_ms_p95']:6.2f} ms", file=sys.stderr, flush=True)

    def med(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in results[name]), 2)

    base = "baseline (tutorial loop, eager torch)"
    summary = {
        "arch": a.arch, "video": "640x480 mp4v, 300 frames looped", "frames": a.frames, "rounds": a.rounds,
        "cpu_threads": torch.get_num_threads(),
        "runs": {name: {"fps": med(name, "fps"), "latency_ms_p50": med(name, "latency_ms_p50"),
                        "latency_ms_p95": med(name, "latency_ms_p95"),
                        **({"drops": int(statistics.median(r["drops"] for r in results[name]))}
                           if "drops" in results[name][0] else {})}
                 for name in runs},
    }
    for name in runs:
        summary["runs"][name]["speedup_vs_baseline"] = round(med(name, "fps") / med(base, "fps"), 2)
    if a.json:
        print(json.dumps(summary))
        return
    print(f"\n{a.arch}, 640x480 video, {a.frames} frames x {a.rounds} rounds (median), {torch.get_num_threads()} "
          f"CPU threads")
    print(f"{'':<42}{'fps':>8}{'p50 ms':>9}{'p95 ms':>9}{'drops':>8}{'x base':>8}")
    for name, r in summary["runs"].items():
        print(f"{name:<42}{r['fps']:>8.1f}{r['latency_ms_p50']:>9.2f}{r['latency_ms_p95']:>9.2f}"
              f"{r.get('drops', '-'):>8}{r['speedup_vs_baseline']:>8.2f}")


if __name__ == "__main__":
    main()
