"""Atomic writes: all or nothing, with the permissions other users (the service) need."""

from __future__ import annotations

import os
import stat

import pytest

from edge.core.fsutil import atomic_write, atomic_write_text, is_temp_name


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_written_file_gets_plain_open_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        import importlib

        import edge.core.fsutil as fsutil

        importlib.reload(fsutil)  # the umask is read once, at import
        fsutil.atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
        importlib.reload(fsutil)
    assert _mode(tmp_path / "a.txt") == 0o644


def test_explicit_permissions(tmp_path):
    atomic_write_text(tmp_path / "secret.env", "TOKEN=x", permissions=0o640)
    assert _mode(tmp_path / "secret.env") == 0o640


def test_failure_leaves_old_content_and_no_temp_file(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert is_temp_name(".tmp-abc.jpg") and not is_temp_name("abc.jpg")
