"""Atomic writes survive a power cut: the file is fsynced before the rename and its directory after it."""

from __future__ import annotations

import os
import stat

from edge.core import fsutil


def _record_fsyncs_and_replaces(monkeypatch) -> list[tuple]:
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_atomic_write_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    events = _record_fsyncs_and_replaces(monkeypatch)
    target = tmp_path / "model.onnx"
    fsutil.atomic_write_bytes(target, b"weights")
    assert target.read_bytes() == b"weights"
    kinds = [e[:2] for e in events]
    assert kinds == [("fsync", "file"), ("replace", str(target)), ("fsync", "dir")], events
    assert events[2][2] == os.stat(tmp_path).st_ino  # the directory holding the new name, not another one


def test_atomic_copy_is_durable_and_keeps_permissions(tmp_path, monkeypatch):
    src = tmp_path / "a.engine"
    src.write_bytes(b"x" * 3_000_000)
    dest_dir = tmp_path / "state"
    dest_dir.mkdir()
    events = _record_fsyncs_and_replaces(monkeypatch)
    fsutil.atomic_copy(src, dest_dir / "a.engine", permissions=0o640)
    assert (dest_dir / "a.engine").read_bytes() == src.read_bytes()
    assert stat.S_IMODE(os.stat(dest_dir / "a.engine").st_mode) == 0o640
    assert events[-1] == ("fsync", "dir", os.stat(dest_dir).st_ino)
    assert sorted(os.listdir(dest_dir)) == ["a.engine"]  # no temporary file left


def test_fsync_dir_tolerates_filesystems_that_refuse(tmp_path, monkeypatch):
    def refuse(fd):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "fsync", refuse)
    fsutil.fsync_dir(tmp_path)  # no exception: the rename already happened, durability is best effort there
    fsutil.fsync_dir(tmp_path / "missing")
