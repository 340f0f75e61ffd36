"""The CPU thread policy (edge.core.threads): --threads wins; otherwise the free cores, never fewer than 1 nor more
than this process may use; waiting threads are told to yield before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edge.core import threads
from edge.core.threads import ThreadPolicy, apply_torch_threads, free_cores, torch_threads, usable_cores

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_requested_threads_override_the_policy(keep_torch_threads):
    assert torch_threads(3) == 3
    assert apply_torch_threads(1) == 1
    assert torch.get_num_threads() == 1
    policy = ThreadPolicy(requested=1)
    torch.set_num_threads(2)
    assert policy.refresh() == 1 and torch.get_num_threads() == 1


def test_default_is_within_one_and_the_usable_cores(keep_torch_threads):
    n = free_cores()
    assert 1 <= n <= usable_cores()
    assert 1 <= ThreadPolicy().refresh() == torch.get_num_threads() <= usable_cores()
    assert 1 <= free_cores(reserved=64) <= usable_cores()  # our own threads can never push it below one


@pytest.mark.parametrize("others, reserved, expected", [
    (0.0, 0, 4), (0.2, 0, 4), (1.0, 0, 3), (2.0, 0, 2), (3.9, 0, 1), (9.0, 0, 1), (0.0, 1, 3), (1.0, 1, 2),
])
def test_busy_cores_of_other_processes_are_not_used(monkeypatch, others, reserved, expected):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: set(range(4)), raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads.BusyMeter, "others_busy", lambda self, min_window=0.0: others)
    assert free_cores(reserved) == expected


def test_a_busy_process_is_measured():
    """A process spinning beside us is seen as (most of) a busy core."""
    meter = threads.BusyMeter()
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.monotonic() + 3\n"
                             "while time.monotonic() < t: pass"])
    try:
        meter.others_busy(0.0)  # start the window once it runs
        busy = meter.others_busy(1.0)
    finally:
        spin.kill()
        spin.wait()
    assert busy >= 0.4  # at least a share of a core, whatever else the machine runs


def _env_after_import(module: str, env: dict[str, str]) -> str:
    code = f"import os, {module}; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('KMP_BLOCKTIME'))"
    clean = {k: v for k, v in os.environ.items() if k not in threads.WAIT_ENV}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, "PYTHONPATH": str(ROOT), **env},
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.strip()


def test_train_cli_makes_waiting_threads_yield_unless_the_user_chose():
    assert _env_after_import("train.cli", {}) == "PASSIVE 0"
    assert _env_after_import("train.cli", {"OMP_WAIT_POLICY": "ACTIVE"}).startswith("ACTIVE")


def test_train_threads_flag_is_checked():
    out = subprocess.run([sys.executable, "-m", "train", "--data", "x", "--threads", "0"], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode != 0
    assert "--threads" in out.stderr and "Traceback" not in out.stderr
