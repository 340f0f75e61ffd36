"""How many CPU threads torch's intra-op pool gets: the cores actually free for the work, never more.

PyTorch's OpenMP threads meet at a barrier after every operator. When another process (or another busy thread of
ours: the camera, the live model) takes a core, one of them is descheduled and the others wait for it, spinning:
beside two busy processes a 2-thread EfficientNet-Lite0 pass ran at half the speed of a 1-thread one, and a
head-mode `train` took 22x its quiet time. Two measures, used by every command that computes with torch on the
CPU (train, teach's feature extraction, `edge bench`/`predict`/`serve` with the torch backend):

- `yield_when_waiting()`: OMP_WAIT_POLICY=PASSIVE and KMP_BLOCKTIME=0 (unless the user set them), so threads
  that wait sleep instead of spinning on the cores the others need. OpenMP reads them when torch is imported:
  the CLI entry points call it before that.
- `torch_threads(requested, reserved)`: `requested` (`--threads`) when given, else `free_cores(reserved)`:
  the cores this process may run on (sched_getaffinity, cgroup-agnostic) minus those other processes keep busy
  (measured from /proc/stat over a short window, our own CPU time taken out; the 1-minute load average where
  /proc/stat is missing) minus `reserved`, the cores our own other busy threads need. Always within
  [1, usable cores]. `ThreadPolicy` re-measures now and then during a long computation (feature extraction),
  so a load that starts or stops midway is followed.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
SAMPLE_SECONDS = 0.15  # the first measurement's window (later ones measure since the previous one)
REFRESH_SECONDS = 3.0  # ThreadPolicy: re-measure at most this often
BUSY_CORE = 0.5  # a core another process keeps busier than this is not free


def yield_when_waiting() -> None:
    """Waiting OpenMP threads sleep instead of spin (effective when called before torch is imported)."""
    for name, value in WAIT_ENV.items():
        os.environ.setdefault(name, value)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_totals() -> tuple[float, float] | None:
    """(busy, all) CPU seconds of the whole machine since boot, from /proc/stat's first line; None without it."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = sum(ticks[:8])  # guest time is already counted in user
    return (total - idle) / hz, total / hz


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class _Sample:
    wall: float
    machine: tuple[float, float] | None
    own: float


class BusyMeter:
    """Cores kept busy by everything but this process, measured between successive calls."""

    def __init__(self) -> None:
        self._last = self._sample()

    @staticmethod
    def _sample() -> _Sample:
        return _Sample(time.monotonic(), _cpu_totals(), _own_cpu())

    def others_busy(self, min_window: float = SAMPLE_SECONDS) -> float:
        """Cores others kept busy since the last call (waiting until `min_window` seconds have passed)."""
        wait = self._last.wall + min_window - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        now, last = self._sample(), self._last
        self._last = now
        if now.machine is None or last.machine is None:
            try:  # runnable tasks, ours included: take our own CPU share out
                load = os.getloadavg()[0]
            except OSError:
                return 0.0
            return max(0.0, load - (now.own - last.own) / max(now.wall - last.wall, 1e-3))
        busy = now.machine[0] - last.machine[0]
        elapsed_all = now.machine[1] - last.machine[1]  # CPU-seconds of all cores in the window
        if elapsed_all <= 0:
            return 0.0
        cores = elapsed_all / max(now.wall - last.wall, 1e-3)  # all online cores (affinity may be fewer)
        others = max(0.0, busy - (now.own - last.own))
        return min(cores, others / elapsed_all * cores)


def free_cores(reserved: float = 0.0, meter: BusyMeter | None = None) -> int:
    """Cores free for one computation: usable cores - those others keep busy - `reserved`, within [1, usable]."""
    usable = usable_cores()
    others = (meter or BusyMeter()).others_busy()
    # others' load spreads over all online cores; only the part on ours takes cores from us
    online = max(usable, os.cpu_count() or usable)
    taken = others * usable / online
    free = usable - math.floor(taken + (1.0 - BUSY_CORE)) - math.ceil(max(0.0, reserved) - 1e-9)
    return max(1, min(usable, free))


def torch_threads(requested: int | None = None, reserved: float = 0.0) -> int:
    """The intra-op thread count to use: `requested` (--threads) when given, else `free_cores(reserved)`."""
    if requested:
        return max(1, int(requested))
    return free_cores(reserved)


def apply_torch_threads(requested: int | None = None, reserved: float = 0.0) -> int:
    """Set torch's intra-op threads to `torch_threads(requested, reserved)` and return the count."""
    import torch

    n = torch_threads(requested, reserved)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.info("torch CPU threads: %d (%s)", n, "--threads" if requested else f"free of {usable_cores()} cores")
    return n


class ThreadPolicy:
    """Keeps torch's intra-op threads at the free cores during a long computation: call `refresh()` between
    batches; it re-measures at most every `every` seconds (a fixed `requested` count is set once and kept)."""

    def __init__(self, requested: int | None = None, reserved: float = 0.0, every: float = REFRESH_SECONDS):
        self.requested, self.reserved, self.every = requested, reserved, every
        self._meter = BusyMeter()
        self._next = 0.0
        self.threads = 0

    def refresh(self) -> int:
        """The thread count now in force (set on torch when it changed)."""
        import torch

        now = time.monotonic()
        if self.requested:
            n = max(1, int(self.requested))
        elif now < self._next:
            return self.threads
        else:
            n = free_cores(self.reserved, self._meter)
            self._next = now + self.every
        if n != self.threads or torch.get_num_threads() != n:
            if n != self.threads:
                log.debug("torch CPU threads: %d -> %d", self.threads, n)
            torch.set_num_threads(n)
            self.threads = n
        return n
