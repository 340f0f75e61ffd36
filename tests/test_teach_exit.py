"""Ctrl-C (SIGINT) or SIGTERM ends `edge teach` as it ends `edge serve` (aimed at 5 s; asserted: before systemd's
stop timeout, whatever the machine's load), even while it is busy caching the backbone features of a dataset."""

from __future__ import annotations

import signal
import time

import pytest
from serve_helpers import STOP_LIMIT_S
from teach_helpers import Teach

from edge.core.synthetic import make_dataset


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_teach_stops_within_5_s_while_caching_features(tmp_path, sig):
    make_dataset(tmp_path / "data", per_class=60, size=(320, 240), seed=5)  # minutes of feature caching on a CPU
    teach = Teach(tmp_path, ["--source", "test://?width=160&height=120&fps=10", "--data", "data"]).start()
    try:
        teach.wait_for("features being cached", lambda: (f := teach.ok("GET", "api/dataset")["features"])
                       and f.get("ready") and f.get("pending"), 180)
        t0 = time.monotonic()
        teach.proc.send_signal(sig)
        rc = teach.proc.wait(30)
        took = time.monotonic() - t0
    finally:
        teach.stop()
    print(f"{sig.name}: exit {rc} after {took:.2f} s")
    assert rc in (0, 130) and took < STOP_LIMIT_S, (rc, took, teach.log()[-3000:])
