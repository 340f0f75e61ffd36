"""glibc malloc tuning (edge.core.memory) is for training only: the service must give freed memory back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs one `edge` command in-process, then frees a 300 MiB array and prints how many MiB went back to the OS.
PROBE = textwrap.dedent("""
    import os, sys
    import numpy as np
    from edge.cli import main

    rc = main(sys.argv[1:])
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    block = np.ones(300 << 20, np.uint8)
    held = rss()
    del block
    print(rc, (held - rss()) >> 20)
""")


def _mib_returned_after(*argv: str) -> tuple[int, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, env=env,
                       cwd=REPO)
    rc, mib = r.stdout.split()[-2:]
    return int(rc), int(mib)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/statm"),
                    reason="glibc/Linux only")
def test_only_training_keeps_freed_memory():
    rc, returned = _mib_returned_after("models")  # any non-training command, as `edge serve` is
    assert rc == 0 and returned > 250, f"a non-training command kept {300 - returned} MiB of freed memory"
    rc, returned = _mib_returned_after("train", "--data", "/nonexistent")  # fails after its setup, before training
    assert rc == 2 and returned < 50, "`edge train` should keep freed blocks for reuse (speed)"
