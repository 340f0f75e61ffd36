"""When each image was captured, and which images belong to one burst (a take): for calibrating on new moments.

`capture --count 100 --interval 0.5`, the teach page's Burst and the frames of a video are near-duplicates of
their neighbours in time. A novelty threshold calibrated on images whose neighbours are in the bank is far too
tight (every later live frame is `unknown`), and val accuracy on them is optimistic. So the trainer calibrates
on images the bank has not seen *in time*:

- a capture time per image: capture's time-stamped name (`capture.dataset.new_name`, YYYYmmdd-HHMMSS-ffffff-...)
  or else the file's modification time;
- bursts per class: sorted by time, a gap longer than `burst_gap` (at least MIN_GAP_S, or GAP_FACTOR times the
  class's median interval) starts a new burst;
- `holdout_groups`: a class with two bursts or more is calibrated leave-one-burst-out (each image scored against
  the bank without its own burst); a class captured in a single burst holds out its last SINGLE_HOLDOUT of images
  in time and leaves the frames of the GUARD x that span before them out of the bank too (frames a moment apart
  are near-copies): the threshold is rougher then, and the trainer says so.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_GAP_S = 2.0  # a pause this long (at least) between two images of a class starts a new burst
GAP_FACTOR = 4.0  # ... or this many times the class's median interval (a time-lapse is one burst)
SINGLE_HOLDOUT = 0.2  # a one-burst class: the last 20% of its images (in time) calibrate
GUARD = 0.5  # ... and the images within half that span before them stay out of the bank too
_NAME_TIME = re.compile(r"(?<!\d)(\d{8})-(\d{6})-(\d{6})(?!\d)")


def name_time(name: str) -> float | None:
    """Seconds since the epoch from capture's time-stamped file name (local time), or None."""
    m = _NAME_TIME.search(os.path.basename(name))
    if m is None:
        return None
    try:
        stamp = datetime.datetime.strptime("".join(m.groups()), "%Y%m%d%H%M%S%f")
    except ValueError:
        return None
    return stamp.timestamp()


def capture_times(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Capture time of each file: its time-stamped name, else its modification time (NaN when unreadable)."""
    out = np.full(len(paths), math.nan)
    for i, p in enumerate(paths):
        t = name_time(str(p))
        if t is None:
            try:
                t = os.stat(p).st_mtime
            except OSError:
                continue
        out[i] = t
    return out


def burst_gap(times: np.ndarray) -> float:
    """The pause that separates two bursts of these (one class's) times."""
    steps = np.diff(np.sort(times[np.isfinite(times)]))
    steps = steps[steps > 0]
    return max(MIN_GAP_S, GAP_FACTOR * float(np.median(steps))) if len(steps) else MIN_GAP_S


def burst_ids(times: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """A burst number per image (unique over classes): images of a class closer in time than its burst_gap chain
    into one burst. Images without a time form one burst per class."""
    times, labels = np.asarray(times, float), np.asarray(labels)
    out = np.empty(len(times), np.int64)
    next_id = 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        t = times[members]
        order = members[np.argsort(np.where(np.isfinite(t), t, np.inf), kind="stable")]
        gap = burst_gap(t)
        previous = math.nan
        for i in order:
            if not (abs(times[i] - previous) <= gap):  # also true for the first image and a missing time
                next_id += 1
            out[i] = next_id - 1
            previous = times[i]
    return out


@dataclass
class Holdout:
    """Which images calibrate and which bank images each must not see.

    point_key[i] (calibration image i) and train_key[j] (training image j): image i is scored against the bank
    without the training images of the same key (>= 0); train_key -1: never left out. `points` indexes the
    calibration candidates (train images first, then val images) that calibrate.
    """

    points: np.ndarray
    point_key: np.ndarray
    train_key: np.ndarray
    bursts: dict[int, int] = field(default_factory=dict)  # class -> bursts
    single: list[int] = field(default_factory=list)  # classes captured in one burst
    class_names: list[str] = field(default_factory=list)

    def summary(self) -> str:
        multi = sum(1 for c, n in self.bursts.items() if n > 1)
        text = (f"calibrated on {len(self.points)} images unseen in time: {sum(self.bursts.values())} bursts, "
                f"{multi} class(es) leave-one-burst-out")
        if self.single:
            names = [self.class_names[c] if c < len(self.class_names) else str(c) for c in self.single]
            text += (f", {', '.join(names)} captured in one burst (last {SINGLE_HOLDOUT:.0%} held out): capture "
                     f"{'it' if len(names) == 1 else 'them'} again at another time for a steadier threshold")
        return text


def holdout_groups(train_times: np.ndarray, train_labels: Sequence[int], val_times: np.ndarray,
                   val_labels: Sequence[int], class_names: Sequence[str] = ()) -> Holdout:
    """Leave-one-burst-out keys for every image of a multi-burst class; the last stretch of a one-burst class."""
    times = np.concatenate([np.asarray(train_times, float), np.asarray(val_times, float)])
    labels = np.concatenate([np.asarray(train_labels, np.int64), np.asarray(val_labels, np.int64)])
    n = len(train_times)
    burst = burst_ids(times, labels)
    point_key = burst.copy()
    train_key = burst[:n].copy()
    keep = np.ones(len(times), bool)
    counts, single = {}, []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        counts[int(c)] = len(np.unique(burst[members]))
        if counts[int(c)] > 1:
            continue
        single.append(int(c))
        t = np.where(np.isfinite(times[members]), times[members], np.inf)
        order = members[np.argsort(t, kind="stable")]
        held = max(1, math.ceil(len(order) * SINGLE_HOLDOUT))
        if len(order) - held < 1 or not (order[:-held] < n).any():
            keep[members] = False  # nothing would be left in the bank: this class cannot calibrate
            continue
        cut = times[order[-held]]
        span = (times[order[-1]] - cut) if math.isfinite(cut) else 0.0
        keep[order[:-held]] = False
        guarded = order[:-held][times[order[:-held]] >= cut - GUARD * span]
        # leave out the guard but never the whole bank of the class
        guarded = guarded if (np.setdiff1d(order[:-held], guarded) < n).any() else guarded[:0]
        out = members[members < n]
        train_key[out] = -1
        train_key[np.intersect1d(np.concatenate([order[-held:], guarded]), out)] = burst[members[0]]
    points = np.flatnonzero(keep)
    return Holdout(points, point_key[points], train_key, counts, single, list(class_names))
