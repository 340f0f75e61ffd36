"""Issue 18: teach's memory returns after a full training (finetune runs in a child process)."""

from __future__ import annotations

import time

import pytest
from teach_helpers import SOURCE, Teach


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_teach_memory_after_a_finetune_is_back_within_20_percent(tmp_path):
    teach = Teach(tmp_path, ["--source", SOURCE, "--data", "data", "--output", "model", "--cache-views", "2"]).start()
    try:
        for label in ("up", "down"):
            teach.ok("POST", "api/labels", {"name": label}, want=201)
            for _ in range(6):
                teach.ok("POST", "api/snapshots", {"label": label}, want=201)
        teach.wait_for("the features", lambda: (lambda f: f["ready"] and not f["pending"] and not f["augmenting"])(
            teach.ok("GET", "api/dataset")["features"]), 180, 0.5)
        assert teach.train()["state"] == "done"  # head mode: the service as a user has it before a finetune
        time.sleep(2)
        before = rss_bytes(teach.proc.pid)
        result = teach.train({"mode": "finetune", "epochs": 2}, timeout=600)
        assert result["state"] == "done", result
        assert "epoch" in teach.log()  # the child's progress lines reach the service's log
        time.sleep(2)
        after = rss_bytes(teach.proc.pid)
        print(f"teach RSS before the finetune {before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB")
        assert after <= 1.2 * before, f"RSS {before / 2**20:.0f} MiB before, {after / 2**20:.0f} MiB after"
        assert teach.ok("GET", "api/prediction")["label"] in ("up", "down")  # the finetuned model is live
    finally:
        assert teach.stop() == 0, teach.log()[-2000:]
