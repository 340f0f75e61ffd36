"""Teach mode, timed as a user meets it: snapshots through the API, Train, the first live prediction.

    python benchmarks/bench_teach.py [--per-label 30] [--interval 0.25] [--arch efficientnet_lite0] [--json]

Runs `edge teach` (a subprocess, as from the command line) on the synthetic camera (`test://`, whose arrow flips
up/down every --period seconds), adds the labels `up` and `down`, snaps --per-label examples of each, one every
--interval seconds (the page's Burst), each while the scene shows that arrow, then asks for a training and
polls /api/prediction until the new model's first prediction. Prints:

- train -> live: from the train request to the first prediction of the new model (the prediction's own time);
- first snapshot -> live: from the first snapshot request to that same moment;
- what the service measured (its timings: scan, features, fit, save, swap), the feature backlog at the train
  request, val accuracy, and how often the live label then names the scene's true arrow.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.core.synthetic import SceneRenderer  # noqa: E402 - after the path: runs from a checkout


class Api:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/"

    def __call__(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except OSError:
            return 0, {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-label", type=int, default=30)
    p.add_argument("--interval", type=float, default=0.25, help="seconds between snapshots (default 0.25)")
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--cache-views", type=int, default=4)
    p.add_argument("--period", type=float, default=3.0, help="seconds between arrow flips (default 3)")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--check-seconds", type=float, default=10.0, help="how long to compare the live label")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    scene = SceneRenderer(8, 8, period_s=a.period)

    def truth(frame: int) -> str:
        return scene.label_at(frame / a.fps)

    def phase_left(frame: int) -> float:
        return a.period - (frame / a.fps) % a.period

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = Api(port)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "edge", "teach", "--source",
               f"test://?width=320&height=240&fps={a.fps:g}&period={a.period:g}", "--data", f"{tmp}/data",
               "--http", f"127.0.0.1:{port}", "--arch", a.arch, "--cache-views", str(a.cache_views),
               "--log-level", "warning"]
        log = open(Path(tmp) / "teach.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            results = _run(a, api, truth, phase_left, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            log.close()
            if proc.returncode not in (0, None):
                print((Path(tmp) / "teach.log").read_text()[-3000:], file=sys.stderr)
    if a.json:
        print(json.dumps(results))
        return
    t = results["server"]
    print(f"edge teach, {a.arch}, test:// 320x240 at {a.fps:g} fps, 2 labels x {a.per_label} snapshots, one every "
          f"{a.interval:g} s, {os.cpu_count()} CPU cores")
    print(f"  train request -> first live prediction: {results['train_to_live_s']:.2f} s")
    print(f"  first snapshot -> first live prediction: {results['first_snapshot_to_live_s']:.2f} s "
          f"(snapping took {results['snapping_s']:.1f} s)")
    print(f"  at the train request {results['backlog']['pending']} snapshot(s) still waited for features, "
          f"{results['backlog']['augmenting']} for augmented views")
    print(f"  service timings (s since the request): {t['timings']}; val accuracy {t['val_accuracy']:.3f}")
    print(f"  live label = the scene's arrow in {results['agreement'][0]}/{results['agreement'][1]} predictions")


def _run(a, api: Api, truth, phase_left, proc) -> dict:
    deadline = time.monotonic() + 120
    while api("GET", "healthz")[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("edge teach did not start")
        time.sleep(0.2)
    while not api("GET", "api/dataset")[1].get("features", {}).get("ready"):
        time.sleep(0.2)  # the backbone loads once per session, before the user's first snapshot
    for label in ("up", "down"):
        api("POST", "api/labels", {"name": label})
    counts = {"up": 0, "down": 0}
    first = None
    while min(counts.values()) < a.per_label:
        started = time.monotonic()
        frame = api("GET", "api/prediction")[1]["frame"]
        label = truth(frame)
        if counts[label] < a.per_label and phase_left(frame) > 0.5:
            first = first or time.time()
            status, snap = api("POST", "api/snapshots", {"label": label})
            assert status == 201, snap
            if truth(snap["frame"]) == label:
                counts[label] += 1
            else:  # the arrow flipped between the two requests: not an example of `label`
                api("DELETE", f"api/snapshots/{snap['id']}")
        time.sleep(max(0.0, a.interval - (time.monotonic() - started)))
    backlog = api("GET", "api/dataset")[1]["features"]
    requested = time.time()
    status, answer = api("POST", "api/train", {})
    assert status == 202, answer
    while True:
        pred = api("GET", "api/prediction")[1]
        if pred.get("label") is not None:
            live = pred["timestamp"]
            break
        time.sleep(0.01)
    while (server := api("GET", "api/train")[1])["state"] == "running":
        time.sleep(0.1)
    assert server["state"] == "done", server
    agree = total = 0
    end = time.monotonic() + a.check_seconds
    while time.monotonic() < end:
        pred = api("GET", "api/prediction")[1]
        if 0.3 < phase_left(pred["frame"]) < a.period - 0.3:
            total += 1
            agree += pred["label"] == truth(pred["frame"])
        time.sleep(0.1)
    return {"train_to_live_s": round(live - requested, 3), "first_snapshot_to_live_s": round(live - first, 3),
            "snapping_s": round(requested - first, 3), "backlog": backlog, "agreement": [agree, total],
            "server": {k: server.get(k) for k in ("timings", "val_accuracy", "live_seconds", "seconds")}}


if __name__ == "__main__":
    main()
