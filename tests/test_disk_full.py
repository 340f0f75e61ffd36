"""Issue 18: a full disk, a symlink loop and a non-UTF-8 class folder are one clear line, never a traceback."""

from __future__ import annotations

import os
import shutil

import pytest
from serve_helpers import mounted_tmpfs

from edge.core.errors import DiskFullError, EdgeError
from edge.core.fsutil import atomic_write_bytes
from train.dataset import scan_dataset


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs (root only, where mounting is allowed); skipped elsewhere."""
    with mounted_tmpfs(tmp_path, "1m") as where:
        yield where


def test_an_atomic_write_to_a_full_disk_is_a_disk_full_error_and_leaves_nothing(full_disk):
    with pytest.raises(DiskFullError) as e:
        atomic_write_bytes(full_disk / "big.bin", b"x" * (2 << 20))
    assert isinstance(e.value, OSError) and "no space left" in str(e.value)
    assert list(full_disk.iterdir()) == []


def test_edge_export_to_a_full_disk_says_so(full_disk, tiny_checkpoint, capsys):
    from export.cli import main as export_main

    rc = export_main([str(tiny_checkpoint()), "--output", str(full_disk / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no space left" in err[0] and "opset" not in err[0], err
    assert not [p for p in full_disk.iterdir()]


@pytest.mark.slow
def test_train_to_a_full_disk_is_one_line(full_disk, synthetic_dataset, capsys):
    from train.cli import main as train_main

    rc = train_main(["--data", str(synthetic_dataset), "--arch", "squeezenet1_1", "--weights", "none", "--epochs", "1",
                     "--output", str(full_disk / "out"), "--no-progress", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no space left" in err[0], err


def test_a_symlink_loop_in_the_dataset_is_skipped(synthetic_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    os.symlink("loop", data / "loop")  # a class folder that is a link to itself
    os.symlink("self.jpg", data / "up" / "self.jpg")
    info = scan_dataset(data)
    assert info.classes == ["down", "up"]


def test_a_class_folder_that_is_not_utf8_is_one_line(synthetic_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    os.rename(data / "up", os.path.join(os.fsencode(data), b"caf\xe9"))
    with pytest.raises(EdgeError, match="not valid UTF-8"):
        scan_dataset(data)
