"""Issue 18: a training never waits forever for a snapshot deleted after Train was pressed; stale temporaries of
a killed export are cleaned when teach starts."""

from __future__ import annotations

import os
import threading
import time

import cv2
import numpy as np
import pytest
import torch
from teach_helpers import SOURCE, Teach

from edge.teach.features import FeatureCache

slow = pytest.mark.slow


class _FakeCache(FeatureCache):
    """The feature cache without a backbone: every image's features are four zeros."""

    def _load(self) -> None:
        pass

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(0.01)
        return torch.zeros(len(batch), 4, dtype=torch.float16)


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}.jpg"
        cv2.imwrite(str(p), np.full((16, 16, 3), i * 9 % 255, np.uint8))
        paths.append(str(p))
    return paths


def test_collect_finishes_when_files_are_deleted_after_the_scan(tmp_path):
    """The wedge: Train scans 26 files, one is deleted (and forgotten) before its features are in."""
    paths = _images(tmp_path / "a", 26)
    cache = _FakeCache("efficientnet_lite0", views=2).start()
    try:
        cache.collect(paths[:25])
        gone = [paths[3], paths[25]]  # one cached, one never computed
        for p in gone:
            (tmp_path / "a" / p.rsplit("/", 1)[1]).unlink()
        cache.forget(gone)
        done: dict = {}
        t = threading.Thread(target=lambda: done.update(cache.collect(paths)), daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "collect waits forever for deleted files"
        assert set(done) == set(paths)
        assert all(done[p].clean is None for p in gone)
        assert all(done[p].clean is not None for p in paths if p not in gone)
    finally:
        cache.close()


@slow
def test_deleting_during_a_training_never_wedges_teach_and_training_again_works(tmp_path):
    stale = tmp_path / "model" / ".tmp-abc123.onnx"  # left by an export killed with kill -9
    stale.parent.mkdir()
    stale.write_bytes(b"half an onnx")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    teach = Teach(tmp_path, ["--source", SOURCE, "--data", "data", "--output", "model", "--cache-views", "2"]).start()
    try:
        assert not stale.exists()  # cleaned at start
        for label in ("up", "down"):
            teach.ok("POST", "api/labels", {"name": label}, want=201)
            for _ in range(6):
                teach.ok("POST", "api/snapshots", {"label": label}, want=201)
        listing = teach.ok("GET", "api/dataset")
        teach.ok("POST", "api/train", {}, want=202)
        teach.ok("DELETE", f"api/snapshots/{listing['recent']['up'][0]}")  # right after pressing Train
        teach.ok("DELETE", f"api/snapshots/{listing['recent']['down'][0]}")
        first = teach.wait_for("the first training to end", lambda: (
            lambda t: t if t["state"] != "running" else None)(teach.ok("GET", "api/train")), 240, 0.2)
        assert first["state"] in ("done", "failed"), first
        again = teach.train()
        assert again["state"] == "done", again
        assert teach.ok("GET", "api/dataset")["total"] == 10
    finally:
        assert teach.stop() == 0, teach.log()[-2000:]
