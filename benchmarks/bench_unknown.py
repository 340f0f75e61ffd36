"""Unknown on burst-collected data: does the stored novelty threshold keep later live frames and reject a new scene?

    python benchmarks/bench_unknown.py [--arch efficientnet_lite0] [--live 60] [--json]

Two datasets of the `test://` scene (arrow up / down), written as `capture` and teach write them (JPEG, quality
95, time-stamped names whose times are the scene's times):
- burst snapshots: 2 labels x 30 snapshots, one every 0.25 s while the scene shows that arrow (the teach page's
  Burst; the arrow flips every 3 s, so each label's snapshots fall into a few bursts);
- video frames: consecutive frames at 15 fps of a scene whose arrow flips every 8 s (each label one take).
For each, a `train` model (train_model, head mode, as `train --data DIR`) and a teach model (edge.teach's own
train job on its feature cache, in process), then at each model's stored threshold, through the runtime's torch
backend on raw frames (as the live pipeline feeds them):
- kept: later live frames of the taught scene (from 2 s after the dataset's last image, away from the flips)
  whose label is their arrow (target >= 90%);
- unknown: frames of untaught scenes (`test://?scene=empty`: the background alone; `scene=shapes`: another
  background with moving discs) called `unknown` (target >= 80%).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.core.fsutil import atomic_write_bytes  # noqa: E402 - after the path: runs from a checkout
from edge.core.novelty import UNKNOWN_LABEL  # noqa: E402 - after the path: runs from a checkout
from edge.core.preprocess import preprocess_image  # noqa: E402 - after the path: runs from a checkout
from edge.core.synthetic import SceneRenderer  # noqa: E402 - after the path: runs from a checkout

W, H = 160, 120
BASE = 1.75e9  # the scene's t = 0, as a capture time


def write(root: Path, label: str, frame: np.ndarray, t: float) -> None:
    folder = root / label
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{datetime.datetime.fromtimestamp(BASE + t):%Y%m%d-%H%M%S-%f}-{int(t * 1000) % 0xffffff:06x}.jpg"
    atomic_write_bytes(folder / name, cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())


def bursts(root: Path, per_label: int = 30, interval: float = 0.25, period: float = 3.0, fps: float = 15.0) -> dict:
    scene, counts, t = SceneRenderer(W, H, period_s=period), {"up": 0, "down": 0}, 0.0
    while min(counts.values()) < per_label:
        label = scene.label_at(t)
        if counts[label] < per_label and period - t % period > 0.5:
            i = round(t * fps)
            write(root, label, scene.render(i / fps, i), t)
            counts[label] += 1
        t += interval
    return {"period": period, "fps": fps, "end": t, "what": f"2 labels x {per_label} burst snapshots, one every "
            f"{interval:g} s, arrow flips every {period:g} s"}


def video(root: Path, period: float = 8.0, fps: float = 15.0) -> dict:
    scene = SceneRenderer(W, H, period_s=period)
    n = round(2 * period * fps)
    for i in range(n):
        t = i / fps
        if 0.3 < period - t % period < period - 0.3:  # frames at a flip are neither
            write(root, scene.label_at(t), scene.render(t, i), t)
    return {"period": period, "fps": fps, "end": n / fps,
            "what": f"consecutive video frames at {fps:g} fps, one {period:g} s take per label"}


def live_frames(setup: dict, scene: str, n: int) -> tuple[np.ndarray, list[str]]:
    """Raw frames after the dataset (the live camera later on) -> (N x H x W x 3 BGR, true labels)."""
    period, fps = setup["period"], setup["fps"]
    renderer = SceneRenderer(W, H, period_s=period, scene=scene)
    frames, truth, t = [], [], setup["end"] + 2.0
    while len(frames) < n:
        if scene != "arrows" or 0.5 < period - t % period < period - 0.5:
            i = round(t * fps)
            frames.append(renderer.render(i / fps, i))
            truth.append(renderer.label_at(i / fps))
        t += 0.37
    return np.stack(frames), truth


def score(model: Path, setup: dict, n: int) -> dict:
    from edge.runtime.backends import load_backend

    backend = load_backend(model, "torch", "cpu")
    out = {"threshold": backend.novelty_threshold}
    labels = backend.meta.class_names
    for scene in ("arrows", "empty", "shapes"):
        frames, truth = live_frames(setup, scene, n)
        batch = np.stack([preprocess_image(f, backend.meta.preprocess, "BGR") for f in frames])
        probs, novelty = backend.run(batch)
        said = [UNKNOWN_LABEL if novelty is not None and v > backend.novelty_threshold else labels[int(p.argmax())]
                for p, v in zip(probs, novelty if novelty is not None else [0.0] * len(probs))]
        if scene == "arrows":
            out["kept"] = float(np.mean([s == t for s, t in zip(said, truth)]))
            out["known_unknown"] = float(np.mean([s == UNKNOWN_LABEL for s in said]))
        else:
            out[f"unknown_{scene}"] = float(np.mean([s == UNKNOWN_LABEL for s in said]))
        if novelty is not None:
            out[f"novelty_{scene}_median"] = round(float(np.median(novelty)), 4)
    return out


def train_model_on(data: Path, out: Path, arch: str) -> tuple[Path, float, dict]:
    from train.config import TrainConfig
    from train.trainer import train_model

    t = time.perf_counter()
    result = train_model(TrainConfig(data=data, output=out, arch=arch, mode="head", device="cpu"), progress=False)
    return out / "model.pt", time.perf_counter() - t, result.metrics.get("novelty") or {}


def teach_model_on(data: Path, out: Path, arch: str) -> tuple[Path, float, dict]:
    from edge.teach.dataset import TeachDataset
    from edge.teach.features import FeatureCache
    from edge.teach.jobs import Jobs

    class Live:
        def go_live(self, model: Path) -> int:
            return 1

        def live_at(self, version: int) -> float | None:
            return None

    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(arch, views=4, device="cpu").start()
    try:
        cache.ready.wait(300)
        cache.collect([str(p) for p in sorted(data.rglob("*.jpg"))])  # as snapped: features computed meanwhile
        jobs = Jobs(TeachDataset(data), cache, Live(), out)
        t = time.perf_counter()
        jobs.start_train({})
        while jobs.train.state == "running":
            time.sleep(0.05)
        seconds = time.perf_counter() - t
        if jobs.train.state != "done":
            raise SystemExit(f"teach training failed: {jobs.train.error}")
    finally:
        cache.close()
    metrics = json.loads((out / "metrics.json").read_text())
    return out / "model.pt", seconds, metrics.get("novelty") or {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--live", type=int, default=60, help="live frames per scene (default 60)")
    p.add_argument("--video-fps", type=float, default=15.0, help="frames a second of the video dataset (default 15)")
    p.add_argument("--only", choices=("bursts", "video"), help="one dataset only")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        makers = {"bursts": ("burst snapshots", bursts),
                  "video": ("video frames", lambda root: video(root, fps=a.video_fps))}
        for name, make in [makers[a.only]] if a.only else makers.values():
            data = Path(tmp) / name.replace(" ", "-") / "data"
            setup = make(data)
            for tool, fit in (("train", train_model_on), ("teach", teach_model_on)):
                model, seconds, novelty = fit(data, data.parent / f"model-{tool}", a.arch)
                row = {"dataset": name, "what": setup["what"], "tool": tool, "fit_s": round(seconds, 2),
                       "calibration": novelty.get("calibration"), "note": novelty.get("note"),
                       "val_near_copy_fraction": novelty.get("val_near_copy_fraction"),
                       **score(model, setup, a.live)}
                rows.append(row)
                if not a.json:
                    print(_line(row), flush=True)
    if a.json:
        print(json.dumps(rows))


def _line(r: dict) -> str:
    ok = r["kept"] >= 0.9 and min(r["unknown_empty"], r["unknown_shapes"]) >= 0.8
    near = r["val_near_copy_fraction"]
    return (f"{r['dataset']:>15} {r['tool']:>5}: threshold {r['threshold']:.4f} ({r['calibration']}); "
            f"later live frames keep their label {r['kept']:.0%} (unknown {r['known_unknown']:.0%}, novelty median "
            f"{r.get('novelty_arrows_median')}); untaught scene unknown: empty {r['unknown_empty']:.0%} (median "
            f"{r.get('novelty_empty_median')}), shapes {r['unknown_shapes']:.0%} (median "
            f"{r.get('novelty_shapes_median')}); val near-copies {'-' if near is None else f'{near:.0%}'}; fit "
            f"{r['fit_s']:.1f} s [{'meets' if ok else 'MISSES'} >= 90% kept, >= 80% unknown]")


if __name__ == "__main__":
    main()
