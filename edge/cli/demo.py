"""`edge demo [--output DIR]`: the whole loop on a fresh machine, no camera, no network, a few minutes on a CPU.

1. writes the synthetic up/down arrow dataset (`edge.core.synthetic.make_dataset`);
2. trains EfficientNet-Lite0 from its offline ImageNet weights, head mode (`train`);
3. exports a verified ONNX file with embedded labels and preprocessing (`edge export`);
4. runs the real-time pipeline on the `test://` camera (its arrow flips up/down every 3 s) with smoothing and the
   overlay, recording the annotated video;
5. writes the video, DIR/metrics.json, DIR/report.md and preview PNGs, and prints where they are.

The video is one a browser plays: DIR/demo.mp4 in H.264 where this OpenCV can encode it (e.g. builds with
FFmpeg's libx264 or OpenH264), else DIR/demo.webm in VP8 (pip's opencv-python has libvpx but no H.264
encoder); failing both, DIR/demo.mp4 in MPEG-4 Part 2 (mp4v), with a line on how to view or convert it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.core.cli_parser import CliParser
from edge.core.errors import EdgeError, cli_entry
from edge.core.fsutil import (
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
)
from edge.core.logs import setup_logging
from edge.runtime.outputs import video as videofmt
from edge.runtime.outputs.base import Output
from edge.runtime.outputs.video import mpeg4_part2_hint
from edge.runtime.timings import TimingWindow

log = logging.getLogger(__name__)

DEMO_ARCH = "efficientnet_lite0"
BROWSER_VIDEO, FALLBACK_VIDEO = videofmt.BROWSER_VIDEO, videofmt.FALLBACK_VIDEO


def video_format(folder: str | Path) -> tuple[str, str]:
    """(suffix, fourcc): the first of BROWSER_VIDEO this OpenCV writes and reads back (tried in `folder`), else
    FALLBACK_VIDEO."""
    for suffix, fourcc in BROWSER_VIDEO:
        if videofmt.writes_and_reads_back(Path(folder), suffix, fourcc):
            return suffix, fourcc
    return FALLBACK_VIDEO


def video_hint(video: str | Path, fourcc: str) -> str | None:
    """How to watch a recording that browsers cannot play (None when they can)."""
    if (Path(video).suffix.lower(), fourcc) in BROWSER_VIDEO:
        return None
    return mpeg4_part2_hint(video, fourcc)


class _Snapshots(Output):
    """Keeps the first annotated frame shown with each label (after a warm-up) as PNG bytes."""

    name = "snapshots"

    def __init__(self, skip: int = 5) -> None:
        super().__init__()
        self.skip = skip
        self.seen = 0
        self.frames: dict[str, bytes] = {}
        self._since: dict[str, int] = {}

    def write(self, frame: np.ndarray, prediction) -> None:
        self.seen += 1
        label = prediction.label
        # a label held for a few frames, so the overlay's numbers have settled
        self._since[label] = self._since.get(label, 0) + 1
        for other in list(self._since):
            if other != label:
                self._since[other] = 0
        if self.seen > self.skip and label not in self.frames and self._since[label] >= 8:
            ok, buf = cv2.imencode(".png", frame)
            if ok:
                self.frames[label] = buf.tobytes()


class _Recorder:
    """Listener: per-frame timings and agreement with the test scene's true label (scene time = frame_id / fps)."""

    def __init__(self, scene, fps: float) -> None:
        self.scene, self.fps = scene, fps
        self.timings = TimingWindow(("infer_ms", "e2e_ms", "frame_age_ms"), size=None)
        self.correct_smoothed = 0
        self.correct_raw = 0
        self.timeline: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __call__(self, pred, timings: dict[str, float]) -> None:
        truth = self.scene.label_at(pred.frame_id / self.fps)
        with self._lock:
            self.timings.add(timings)
            self.correct_smoothed += pred.label == truth
            self.correct_raw += pred.raw_label == truth
            if not self.timeline or self.timeline[-1][1] != pred.label:
                self.timeline.append((round(pred.frame_id / self.fps, 2), pred.label))


def add_camera_snapshots(data: Path, scene, per_label: int, start_s: float = 1000.0) -> None:
    """`per_label` frames of each label of the `test://` scene, from scene times the demo run itself never shows."""
    rng = np.random.default_rng(1)
    counts = {"up": 0, "down": 0}
    while min(counts.values()) < per_label:
        t = start_s + float(rng.uniform(0, 600))
        label = scene.label_at(t)
        if counts[label] >= per_label:
            continue
        ok, buf = cv2.imencode(".jpg", scene.render(t), [cv2.IMWRITE_JPEG_QUALITY, 92])
        atomic_write_bytes(data / label / f"camera_{counts[label]:05d}.jpg", buf.tobytes())
        counts[label] += 1


def run_demo(
    output: str | Path = "demo-output",
    per_class: int = 80,
    epochs: int = 8,
    seconds: float = 12.0,
    fps: float = 15.0,
    cache_views: int = 1,
    size: tuple[int, int] = (640, 480),
    bars: bool | None = None,
) -> dict[str, Any]:
    """Run the demo into `output`; returns the metrics dict also written to output/metrics.json.

    `bars`: training's tqdm bars (None: when stdout is a terminal); without them each stage is one line."""
    bars = sys.stdout.isatty() if bars is None else bars
    from edge.core.synthetic import SceneRenderer, make_dataset
    from edge.runtime.backends import load_backend
    from edge.runtime.camera import Camera
    from edge.runtime.outputs.record import RecordOutput
    from edge.runtime.pipeline import Pipeline
    from edge.runtime.smoothing import Smoother

    if per_class < 5:
        raise EdgeError(f"--per-class must be >= 5 (training needs a validation split), got {per_class}")
    if seconds <= 0 or fps <= 0:
        raise EdgeError(f"--seconds and --fps must be > 0, got {seconds} and {fps}")
    out = ensure_writable_dir(output, "demo output directory")
    t_all = time.monotonic()
    stages: dict[str, float] = {}

    # 1. data
    t = time.monotonic()
    data = out / "data"
    log.info("[1/4] writing the synthetic up/down dataset (%d images per class: %d drawn + %d test-camera "
             "snapshots) to %s", per_class + per_class // 2, per_class, per_class // 2, data)
    make_dataset(data, per_class=per_class, classes=("up", "down"), seed=0)
    # plus snapshots of the demo camera itself, as `capture --source test://` takes them: a model knows its own
    # camera's scene (without them it calls the camera's frames `unknown`, which is its novelty score doing its job)
    add_camera_snapshots(data, SceneRenderer(*size), per_class // 2)
    stages["dataset_s"] = round(time.monotonic() - t, 2)

    # 2. train
    t = time.monotonic()
    model_dir = out / "model"
    log.info("[2/4] training %s (ImageNet weights, head mode, %d epochs)", DEMO_ARCH, epochs)
    try:
        from train.cli import main as train_main
    except ImportError as e:
        raise EdgeError(f"the demo needs the `train` package of this project ({e}); "
                        "reinstall with pip install -e .") from e
    rc = train_main([
        "--data", str(data), "--arch", DEMO_ARCH, "--weights", "imagenet", "--mode", "head",
        "--epochs", str(epochs), "--cache-views", str(cache_views), "--output", str(model_dir),
        *([] if bars else ["--no-progress"]),
    ])
    if rc:
        raise EdgeError(f"training failed (exit code {rc}; its error is printed above)")
    checkpoint = model_dir / "model.pt"
    stages["train_s"] = round(time.monotonic() - t, 2)

    # 3. export
    t = time.monotonic()
    log.info("[3/4] exporting %s to ONNX (verified against PyTorch)", checkpoint)
    try:
        from export.onnx_export import export_onnx_verified
        from export.options import ExportOptions
    except ImportError as e:
        raise EdgeError(f"the demo needs the `export` package of this project ({e}); "
                        "reinstall with pip install -e .") from e
    onnx_path, verify = export_onnx_verified(checkpoint, ExportOptions(output=model_dir / "model.onnx"))
    stages["export_s"] = round(time.monotonic() - t, 2)

    # 4. serve: the real pipeline on the test camera, recorded
    t = time.monotonic()
    w, h = size
    uri = f"test://?width={w}&height={h}&fps={fps:g}"
    log.info("[4/4] running the pipeline on %s for %.0f s", uri, seconds)
    backend = load_backend(onnx_path, "auto")
    names = backend.meta.class_names
    smoother = Smoother(names, smoothing=0.5, threshold=0.6, hysteresis=0.1, min_dwell=3)
    suffix, fourcc = video_format(out)
    video = out / f"demo{suffix}"
    recorder = RecordOutput(video, fps=fps, fourcc=fourcc)
    snaps = _Snapshots()
    stats = _Recorder(SceneRenderer(w, h), fps)
    cam = Camera(uri, realtime=True)
    pipe = Pipeline(cam, backend, smoother=smoother, outputs=[recorder, snaps], listeners=[stats], top_k=2)
    try:
        pipe.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and pipe.running:
            time.sleep(0.05)
    finally:
        pipe.stop()
        cam.stop()
        backend.close()
    run_stats = pipe.stats
    stages["serve_s"] = round(time.monotonic() - t, 2)
    if not stats.timings:
        raise EdgeError("the pipeline produced no frames from the test camera; run with -v to see why")

    previews = {}
    for label, png in snaps.frames.items():
        p = out / f"preview_{label}.png"
        atomic_write_bytes(p, png)
        previews[label] = str(p)

    n = len(stats.timings)
    infer50, infer95 = stats.timings.percentiles("infer_ms", ndigits=2)
    e2e50, e2e95 = stats.timings.percentiles("e2e_ms", ndigits=2)
    (age50,) = stats.timings.percentiles("frame_age_ms", (50,), ndigits=2)
    train_metrics = (json.loads((model_dir / "metrics.json").read_text())
                     if (model_dir / "metrics.json").is_file() else {})
    stages["total_s"] = round(time.monotonic() - t_all, 2)
    metrics: dict[str, Any] = {
        "wall_s": stages,
        "dataset": {"path": str(data), "classes": names, "images_per_class": per_class + per_class // 2,
                    "drawn_per_class": per_class, "camera_snapshots_per_class": per_class // 2},
        "training": {
            "arch": DEMO_ARCH,
            "epochs": epochs,
            "val_accuracy": train_metrics.get("val_accuracy"),
            "checkpoint": str(checkpoint),
        },
        "export": {"onnx": str(onnx_path),
                   "verification": verify.summary() if hasattr(verify, "summary") else str(verify)},
        "run": {
            "source": uri,
            "backend": run_stats["backend"],
            "frames": n,
            "drops": run_stats["drops"],
            "fps": round(n / max(stages["serve_s"], 1e-6), 2),
            "camera_fps": fps,
            "infer_ms_p50": infer50,
            "infer_ms_p95": infer95,
            "latency_ms_p50": e2e50,
            "latency_ms_p95": e2e95,
            "frame_age_ms_p50": age50,
            "agreement_with_scene": round(stats.correct_smoothed / n, 3),
            "agreement_with_scene_raw": round(stats.correct_raw / n, 3),
            "label_timeline": stats.timeline,
            "smoothing": {"ema": smoother.smoothing, "threshold": smoother.threshold,
                          "hysteresis": smoother.hysteresis, "min_dwell": smoother.min_dwell},
            "recorded_frames": recorder.frames_written,
            "record_dropped": recorder.dropped,
            "video_codec": fourcc,
        },
        "files": {"video": str(video), "video_hint": video_hint(video, fourcc), "metrics": str(out / "metrics.json"),
                  "report": str(out / "report.md"),
                  "model": str(checkpoint), "onnx": str(onnx_path), "previews": previews},
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "report.md", _report(metrics))
    return metrics


def _report(m: dict[str, Any]) -> str:
    r, tr, st = m["run"], m["training"], m["wall_s"]
    changes = ", ".join(f"{t:g}s {label}" for t, label in r["label_timeline"])
    va = tr["val_accuracy"]
    return "\n".join([
        "# edge demo report",
        "",
        f"- Dataset: synthetic arrows, {m['dataset']['images_per_class']} images per class "
        f"({', '.join(m['dataset']['classes'])}), written in {st['dataset_s']} s.",
        f"- Training: {tr['arch']} from ImageNet weights, head mode, {tr['epochs']} epochs, "
        f"validation accuracy {va if va is None else format(va, '.3f')}, {st['train_s']} s.",
        f"- Export: `{Path(m['export']['onnx']).name}` with embedded labels and preprocessing, {st['export_s']} s. "
        f"{m['export']['verification']}",
        f"- Run: {r['frames']} frames from `{r['source']}` on {r['backend']} at {r['fps']} fps "
        f"(camera {r['camera_fps']:g} fps), {r['drops']} dropped; inference p50 {r['infer_ms_p50']} ms, "
        f"frame-to-overlay latency p50 {r['latency_ms_p50']} ms / p95 {r['latency_ms_p95']} ms.",
        f"- Smoothed label agrees with the scene's true arrow on {r['agreement_with_scene'] * 100:.1f}% of frames "
        f"(raw per-frame argmax: {r['agreement_with_scene_raw'] * 100:.1f}%; the smoothed label lags each flip "
        f"by a few frames on purpose).",
        f"- Label timeline (scene time): {changes}.",
        f"- Total wall time: {st['total_s']} s.",
        "",
        f"Video: `{m['files']['video']}` ({r['recorded_frames']} frames at the camera's rate, {r['video_codec']}: "
        f"the recording follows the wall clock, so it repeats a frame where the pipeline dropped one). "
        f"Metrics: `{m['files']['metrics']}`.",
        *(["", f"{m['files']['video_hint']}."] if m["files"]["video_hint"] else []),
        "",
    ])


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="edge demo", description=__doc__.split("\n")[0].split(": ", 1)[-1])
    p.add_argument("--output", default="demo-output", help="directory for data, model, video and report")
    p.add_argument("--per-class", type=int, default=80, help="synthetic images per class")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (head mode)")
    p.add_argument("--seconds", type=float, default=12.0, help="how long the pipeline runs on the test camera")
    p.add_argument("--fps", type=float, default=15.0, help="test camera frame rate")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    terminal = sys.stdout.isatty()
    if not terminal and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # a pipe or a log file sees each stage as it starts
    # on a terminal every step's log lines and tqdm bars; elsewhere one line per stage (and warnings), unless -v
    setup_logging(logging.DEBUG if a.verbose else logging.INFO if terminal else logging.WARNING, stream=sys.stdout,
                  plain=True)
    if not a.verbose:
        log.setLevel(logging.INFO)
    m = run_demo(a.output, per_class=a.per_class, epochs=a.epochs, seconds=a.seconds, fps=a.fps)
    r, f = m["run"], m["files"]
    print()
    va = m["training"]["val_accuracy"]
    print(f"demo done in {m['wall_s']['total_s']:.0f} s: val accuracy {va if va is None else format(va, '.3f')}, "
          f"{r['fps']} fps on {r['backend']}, label agrees with the scene on {r['agreement_with_scene'] * 100:.0f}% "
          f"of frames")
    print(f"  video    {f['video']}")
    if f["video_hint"]:
        print(f"           ({f['video_hint']})")
    print(f"  metrics  {f['metrics']}")
    print(f"  report   {f['report']}")
    for label, path in f["previews"].items():
        print(f"  preview  {path} ({label})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
