"""Novelty calibrated on images unseen in time: bursts from capture times, leave-one-burst-out, one-burst classes.

Generated features shaped like burst-collected snapshots: each burst is one scene (the class's look plus a
per-burst variation) and its frames are near-copies of each other; later live frames are new bursts.
"""

from __future__ import annotations

import datetime
import logging
import os

import numpy as np
import pytest
import torch

from capture.dataset import new_name
from train.bursts import burst_ids, capture_times, holdout_groups, name_time
from train.novelty import calibrate

D = 64
CENTRES = torch.rand(2, D, generator=torch.Generator().manual_seed(0)) * 4


def burst(c: int, n: int, seed: int, scene: float = 0.6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    look = CENTRES[c] + scene * torch.randn(D, generator=g)
    return (look + 0.05 * torch.randn(n, D, generator=g)).relu()


def stamp(t: float) -> str:
    return f"/data/x/{datetime.datetime.fromtimestamp(t):%Y%m%d-%H%M%S-%f}-0a1b2c.jpg"


def burst_dataset(bursts: int = 4, per: int = 15, seed: int = 0):
    """2 classes x `bursts` bursts x `per` frames 0.5 s apart (bursts minutes apart), randomly split 80/20."""
    feats, labels, times = [], [], []
    for c in range(2):
        for b in range(bursts):
            feats.append(burst(c, per, 100 * c + b))
            labels += [c] * per
            times += [1.7e9 + c * 3600 + b * 120 + i * 0.5 for i in range(per)]
    f, y, names = torch.cat(feats), np.array(labels), [stamp(t) for t in times]
    perm = np.random.default_rng(seed).permutation(len(f))
    val, train = np.sort(perm[:len(f) // 5]), np.sort(perm[len(f) // 5:])
    return f, y, names, train, val


def rates(fit, known: torch.Tensor, unknown: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        return (float((fit.scorer(known) <= fit.report.threshold).float().mean()),
                float((fit.scorer(unknown) > fit.report.threshold).float().mean()))


LIVE = torch.cat([burst(c, 15, 999 + 7 * c + j) for c in range(2) for j in range(5)])  # later takes of both classes
STRANGE = torch.rand(100, D, generator=torch.Generator().manual_seed(5)) * 4  # a scene never taught


def test_capture_names_give_the_time_and_other_files_their_modification_time(tmp_path):
    name = new_name()
    assert abs(name_time(name) - datetime.datetime.now().timestamp()) < 5
    assert name_time("up_00012.jpg") is None and name_time("20261399-999999-000000-abcdef.jpg") is None
    plain = tmp_path / "photo.jpg"
    plain.write_bytes(b"x")
    os.utime(plain, (1_000_000.0, 1_000_000.0))
    got = capture_times([tmp_path / name, plain, tmp_path / "gone.jpg"])
    assert got[0] == pytest.approx(name_time(name)) and got[1] == 1_000_000.0 and np.isnan(got[2])


def test_bursts_split_at_pauses_per_class_and_a_time_lapse_is_one_burst():
    t = np.array([0, 0.5, 1.0, 60, 60.5, 0.2, 0.7, 1000, 1005, 1010, 1015])
    y = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    ids = burst_ids(t, y)
    assert len(set(ids[:3])) == 1 and len(set(ids[3:5])) == 1 and ids[0] != ids[3]
    assert ids[5] == ids[6] and ids[5] not in ids[:5]  # classes never share a burst, even at the same time
    assert len(set(ids[7:])) == 1  # one frame every 5 s: a time-lapse, one burst
    assert len(set(burst_ids(np.array([np.nan, np.nan, 3.0]), np.array([0, 0, 0])))) >= 1


def test_a_threshold_from_a_random_val_split_of_bursts_rejects_later_frames_and_leave_burst_out_keeps_them():
    f, y, names, train, val = burst_dataset()
    naive = calibrate(f[train], f[val], 0.95, y[train].tolist())
    kept, _ = rates(naive, LIVE, STRANGE)
    assert naive.report.calibration == "val" and kept < 0.5  # the bug: later frames of known classes `unknown`
    fit = calibrate(f[train], f[val], 0.95, y[train].tolist(), train_paths=[names[i] for i in train],
                    val_paths=[names[i] for i in val], val_labels=y[val].tolist(), class_names=["up", "down"])
    kept, rejected = rates(fit, LIVE, STRANGE)
    assert fit.report.calibration == "time-holdout" and fit.report.calibration_images == len(f)
    assert kept >= 0.9 and rejected >= 0.9
    assert "8 bursts" in fit.report.note and "2 class(es) leave-one-burst-out" in fit.report.note
    # the val images are near-copies of training images, and train says so
    assert fit.val_near_copies / len(val) > 0.8 and "overstates" in fit.near_copy_summary()
    assert fit.metrics()["val_near_copy_fraction"] > 0.8


def test_val_images_from_other_takes_are_not_called_near_copies():
    f, y, names, _, _ = burst_dataset()
    take = np.array([i // 15 for i in range(len(f))])
    val = np.flatnonzero(take % 4 == 3)  # the last take of each class validates
    train = np.flatnonzero(take % 4 != 3)
    fit = calibrate(f[train], f[val], 0.95, y[train].tolist(), train_paths=[names[i] for i in train],
                    val_paths=[names[i] for i in val], val_labels=y[val].tolist())
    assert fit.val_near_copies / len(val) < 0.3 and "overstates" not in fit.near_copy_summary()


def test_a_class_captured_in_one_burst_holds_out_its_last_stretch_with_a_guard(caplog):
    # one class: 50 frames of one take (a video, 0.1 s apart); the other: three takes
    times = np.array([100.0 + 0.1 * i for i in range(50)] + [5000.0 + 300 * b + 0.5 * i for b in range(3)
                                                              for i in range(10)])
    labels = np.array([0] * 50 + [1] * 30)
    h = holdout_groups(times, labels, np.empty(0), [], ["video", "takes"])
    held = h.points[h.points < 50]
    assert list(held) == list(range(40, 50))  # the last 20% in time calibrates
    hidden = np.flatnonzero(h.train_key[:50] >= 0)
    assert hidden.min() < 40 and 49 in hidden and 0 not in hidden  # ... and frames just before it leave the bank
    assert (h.points >= 50).sum() == 30  # the multi-take class: every image, leave-one-burst-out
    assert h.single == [0] and "video captured in one burst" in h.summary()
    f = torch.cat([burst(0, 50, 1, scene=0.0) + 0.02 * torch.arange(50)[:, None] / 50, burst(1, 10, 2),
                   burst(1, 10, 3), burst(1, 10, 4)])
    with caplog.at_level(logging.INFO, logger="train.novelty"):
        fit = calibrate(f, f[:0], 0.95, labels.tolist(), train_paths=[stamp(t) for t in times], val_paths=[],
                        val_labels=[])
    assert fit.report.calibration == "time-holdout" and fit.report.calibration_images == 40
    assert "one burst" in caplog.text


def test_a_class_too_small_to_hold_out_falls_back_with_one_warning(caplog):
    f = torch.cat([burst(0, 1, 1), burst(1, 1, 2)])
    with caplog.at_level(logging.WARNING, logger="train.novelty"):
        # each class: one image in the bank, nothing else of it apart in time (the val image came first)
        fit = calibrate(f, burst(0, 1, 3), 0.95, [0, 1], train_paths=[stamp(1e9 + 0.5), stamp(2e9)],
                        val_paths=[stamp(1e9)], val_labels=[0])
    assert fit.report.calibration == "val" and "cannot be calibrated reliably" in caplog.text
    assert fit.near_copy_summary() is None


# ---------------------------------------------------------------------------------------------- test:// scenes
def test_the_test_camera_shows_a_scene_never_taught_and_schedules_it():
    from edge.runtime.sources import open_source
    from edge.runtime.sources.base import SourceConfigError

    def frames(uri: str) -> list[np.ndarray]:
        with open_source(uri, realtime=False) as src:
            return [src.read() for _ in range(4)]

    arrows = frames("test://?width=64&height=48&fps=2")
    empty = frames("test://?width=64&height=48&fps=2&scene=empty")
    shapes = frames("test://?width=64&height=48&fps=2&scene=shapes")
    switch = frames("test://?width=64&height=48&fps=2&scene=arrows:1,empty")  # 1 s of arrows, then empty
    assert arrows[0].shape == empty[0].shape == shapes[0].shape == (48, 64, 3)
    assert not np.array_equal(arrows[1], empty[1]) and not np.array_equal(empty[1], shapes[1])
    assert np.array_equal(switch[1], arrows[1]) and np.array_equal(switch[3], empty[3])
    for bad in ("scene=cats", "scene=empty,arrows", "scene=arrows:-1,empty"):
        with pytest.raises(SourceConfigError, match="scene"):
            frames(f"test://?{bad}")


def test_augmented_views_of_training_images_set_a_floor_under_the_threshold():
    f, y, names, train, val = burst_dataset()
    paths = dict(train_paths=[names[i] for i in train], val_paths=[names[i] for i in val], val_labels=y[val].tolist())
    plain = calibrate(f[train], f[val], 0.95, y[train].tolist(), **paths)
    g = torch.Generator().manual_seed(9)
    wider = f[train] + 2.0 * torch.randn(len(train), D, generator=g)  # views further out than any new burst
    fit = calibrate(f[train], f[val], 0.95, y[train].tolist(), augmented=wider, **paths)
    assert fit.report.threshold > plain.report.threshold and "raised" in fit.report.note
    close = calibrate(f[train], f[val], 0.95, y[train].tolist(), augmented=f[train], **paths)
    assert close.report.threshold == plain.report.threshold  # a floor only: never lowers it
