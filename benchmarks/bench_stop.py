"""How long `edge serve` takes to stop on SIGTERM: the 5 s the service aims for (SHUTDOWN_GRACE_S).

    python benchmarks/bench_stop.py [--rounds 5] [--cameras 1]

Each round starts `edge serve` on `test://` (a random-init SqueezeNet 1.1 checkpoint, --http on a free port), waits
for its first prediction, sends SIGTERM and times until the process is gone. Prints each round and the median and
worst. The tests only assert that a stop ends before systemd's TimeoutStopSec (15 s), since a loaded machine cannot
promise wall-clock figures; run this on a quiet machine (or beside benchmarks/busy.sh's burners to see the load's
effect).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(folder: Path) -> Path:
    from edge.core.metadata import ModelMeta, save_checkpoint
    from edge.core.preprocess import PreprocessSpec
    from edge.core.registry import create_model

    path = folder / "model.pt"
    save_checkpoint(path, create_model("squeezenet1_1", 2, "none").state_dict(),
                    ModelMeta(arch="squeezenet1_1", class_names=["up", "down"],
                              preprocess=PreprocessSpec(input_size=96, resize_size=96)))
    return path


def stop_time(model: Path, cameras: int, timeout: float = 120.0) -> float:
    """Seconds from SIGTERM to the end of one `edge serve` that has classified at least one frame."""
    port = _free_port()
    sources = [a for i in range(cameras) for a in ("--source", f"test://?fps=15&seed={i}")]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "edge", "serve", "--model", str(model), *sources,
                             "--http", f"127.0.0.1:{port}", "--backend", "torch"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/prediction", timeout=2) as r:
                    if json.loads(r.read()).get("label"):
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"edge serve ended early (exit {proc.returncode})")
            time.sleep(0.2)
        else:
            raise RuntimeError("edge serve gave no prediction in time")
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        return time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cameras", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(Path(tmp))
        times = []
        for i in range(a.rounds):
            times.append(stop_time(model, a.cameras))
            print(f"round {i + 1}: stopped in {times[-1]:.2f} s", flush=True)
    load = os.getloadavg()[0]
    print(f"SIGTERM -> exit, {a.cameras} camera(s): median {statistics.median(times):.2f} s, worst {max(times):.2f} s "
          f"(target 5 s; load average {load:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
