"""`capture`: snapshots into DIR/LABEL, label rules, atomic writes, source errors, preview keys, photo import."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import capture.cli as cli
from capture import display as display_mod
from capture.dataset import DatasetWriter
from edge.core.fsutil import is_temp_name
from edge.runtime.sources import open_source

TEST_SRC = "test://?width=96&height=72"
PREVIEW_SRC = "test://?width=320&height=240"  # not the 640x480 "waiting for camera" placeholder


def run_capture(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([*map(str, args), "--headless"])
    out, err = capsys.readouterr()
    return code, out, err


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def decodes(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return im.format == "JPEG"
    except OSError:
        return False


def write_video(path: Path, frames: int, fps: float = 10, static: bool = False) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 100 if static else (i * 8) % 256, np.uint8))
    writer.release()
    return path


def test_python_dash_m_capture_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "capture", "--help"], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: capture") and "--label" in r.stdout


# ---- the "done" criteria ------------------------------------------------------------------------------------


def test_twenty_snapshots_from_test_source(tmp_path, capsys):
    data = tmp_path / "D"
    code, out, _ = run_capture(capsys, "--label", "thumbs_up", "--source", "test://", "--count", 20, "--data", data)
    assert code == 0
    files = images(data / "thumbs_up")
    assert len(files) == 20 and all(f.suffix == ".jpg" and decodes(f) for f in files)
    assert "thumbs_up 20" in out.splitlines()[-1]  # the per-class totals
    assert (data / "labels.txt").read_text() == "thumbs_up\n"


def test_twenty_snapshots_from_a_video_file(tmp_path, capsys):
    video = write_video(tmp_path / "clip.avi", frames=60, fps=20)
    data = tmp_path / "D"
    code, out, _ = run_capture(capsys, "--label", "thumbs_up", "--source", video, "--count", 20,
                               "--interval", 0.1, "--data", data)
    assert code == 0
    files = images(data / "thumbs_up")
    assert len(files) == 20 and all(decodes(f) for f in files)
    means = [np.asarray(Image.open(f)).mean() for f in files]
    assert means[1] - means[0] == pytest.approx(16, abs=4)  # every 2nd frame: 0.1 s of a 20 fps video


def test_split_layout_and_totals_across_labels(tmp_path, capsys):
    data = tmp_path / "D"
    assert run_capture(capsys, "--label", "up", "--source", TEST_SRC, "--count", 2, "--data", data,
                       "--split", "val")[0] == 0
    code, out, _ = run_capture(capsys, "--label", "down", "--source", TEST_SRC, "--count", 3, "--data", data,
                               "--split", "val")
    assert code == 0
    assert len(images(data / "val" / "up")) == 2 and len(images(data / "val" / "down")) == 3
    assert "down 3, up 2" in out
    assert (data / "labels.txt").read_text() == "down\nup\n"


def test_a_short_video_ends_early_with_exit_code_1(tmp_path, capsys):
    video = write_video(tmp_path / "short.avi", frames=5)
    code, out, _ = run_capture(capsys, "--label", "a", "--source", video, "--count", 20, "--interval", 0,
                               "--data", tmp_path / "D")
    assert code == 1 and "end of" in out
    assert len(images(tmp_path / "D" / "a")) == 5


def test_min_change_skips_a_still_scene(tmp_path, capsys):
    video = write_video(tmp_path / "still.avi", frames=15, static=True)
    code, out, _ = run_capture(capsys, "--label", "a", "--source", video, "--count", 5, "--interval", 0,
                               "--min-change", 0.02, "--data", tmp_path / "D")
    assert len(images(tmp_path / "D" / "a")) == 1
    assert "skipped 14 near-duplicate" in out and code == 1


def test_headless_live_source_takes_the_latest_frame_every_interval(tmp_path, capsys, monkeypatch):
    def live(uri, **kw):
        src = open_source("test://?width=64&height=48&fps=100", realtime=True)
        src.is_live = True  # behave like a camera: capture goes through Camera and the wall clock
        return src

    monkeypatch.setattr(cli, "open_source", live)
    t0 = time.monotonic()
    code, out, _ = run_capture(capsys, "--label", "a", "--source", "0", "--count", 3, "--interval", 0.2,
                               "--data", tmp_path / "D")
    assert code == 0 and len(images(tmp_path / "D" / "a")) == 3
    assert time.monotonic() - t0 >= 0.4


# ---- label rules: refused before the camera opens, nothing written ------------------------------------------


@pytest.mark.parametrize(
    "label, rule",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 65, "limit is 64"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        ("x..y", "'..'"),
        ("nul\x00byte", "control character"),
        ("new\nline", "control character"),
        ("tab\there", "control character"),
        ("\x1b[31mred", "control character"),
        (".hidden", "starts with '.'"),
        (" padded", "whitespace"),
        ("train", "reserved"),
        ("unknown", "reserved"),
        ("Unknown", "reserved"),
    ],
)
def test_bad_labels_are_refused_before_anything_happens(tmp_path, capsys, monkeypatch, label, rule):
    monkeypatch.setattr(cli, "open_source", lambda *a, **k: pytest.fail("the source was opened"))
    data = tmp_path / "D"
    code, out, err = run_capture(capsys, "--label", label, "--source", "test://", "--count", 1, "--data", data)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: label") and rule in lines[0]
    assert list(tmp_path.iterdir()) == []  # not even DIR was created


def test_label_that_resolves_outside_the_dataset_through_a_symlink(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "open_source", lambda *a, **k: pytest.fail("the source was opened"))
    data, elsewhere = tmp_path / "D", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    (data / "cats").symlink_to(elsewhere)
    code, _, err = run_capture(capsys, "--label", "cats", "--source", "test://", "--count", 1, "--data", data)
    assert code == 2 and "resolves outside" in err and len(err.strip().splitlines()) == 1
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in data.iterdir()) == ["cats"]


def test_max_length_label_is_accepted(tmp_path, capsys):
    code, _, _ = run_capture(capsys, "--label", "é" * 64, "--source", TEST_SRC, "--count", 1, "--data", tmp_path)
    assert code == 0 and len(images(tmp_path / ("é" * 64))) == 1


# ---- source and disk errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source, words", [
    ("missing.mp4", ["missing.mp4", "valid sources"]),
    ("/dev/video97", ["/dev/video97", "v4l2-ctl"]),
    ("bogus://cam", ["bogus://", "test://"]),
    ("csi://0", ["GStreamer"]),
])
def test_source_that_cannot_be_opened_is_one_line_and_writes_nothing(tmp_path, capsys, source, words):
    code, _, err = run_capture(capsys, "--label", "a", "--source", source, "--count", 1, "--data", tmp_path / "D")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words)
    assert not (tmp_path / "D" / "a").exists()  # no empty class folder left for the trainer


def test_disk_full_is_a_clear_error_and_leaves_nothing_partial(tmp_path, capsys, monkeypatch):
    data = tmp_path / "D"
    real_fsync = os.fsync
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 3:  # a few files fit (images and labels.txt), then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = run_capture(capsys, "--label", "a", "--source", TEST_SRC, "--count", 10, "--data", data,
                               "--interval", 0)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: cannot write") and "disk is full" in err
    files = [p.name for p in (data / "a").iterdir()]
    assert 1 <= len(files) < 10 and not any(is_temp_name(n) for n in files)
    assert all(decodes(data / "a" / n) for n in files)


def test_read_only_data_dir_is_a_clear_error(tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)  # the writability probe
    code, _, err = run_capture(capsys, "--label", "a", "--source", TEST_SRC, "--count", 1, "--data", tmp_path / "D")
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_data_dir_for_real(tmp_path, capsys):
    data = tmp_path / "D"
    data.mkdir()
    data.chmod(0o555)
    try:
        code, _, err = run_capture(capsys, "--label", "a", "--source", TEST_SRC, "--count", 1, "--data", data)
    finally:
        data.chmod(0o755)
    assert code == 2 and "error:" in err and list(data.iterdir()) == []


def test_data_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "D").write_text("oops")
    code, _, err = run_capture(capsys, "--label", "a", "--source", TEST_SRC, "--count", 1, "--data", tmp_path / "D")
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1


# ---- killed mid-run: only complete images -------------------------------------------------------------------


def _spawn(data: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    code = "import sys; from capture.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, "--label", "a", "--source", "test://?width=320&height=240", "--data", str(data),
         "--interval", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_files(folder: Path, n: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and len(list(folder.iterdir())) >= n:
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"capture did not write {n} files: {proc.communicate()}")


def test_a_capture_killed_mid_run_leaves_only_valid_images(tmp_path):
    data = tmp_path / "D"
    proc = _spawn(data)
    _wait_for_files(data / "a", 40, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    names = [p.name for p in (data / "a").iterdir()]
    finals = [n for n in names if not is_temp_name(n)]
    assert len(finals) >= 30
    assert all(decodes(data / "a" / n) for n in finals)  # at most a .tmp-* file, which readers skip


def test_sigterm_stops_cleanly_with_totals(tmp_path):
    data = tmp_path / "D"
    proc = _spawn(data)
    _wait_for_files(data / "a", 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    names = [p.name for p in images(data / "a")]
    assert f"totals in {data}: a {len(names)} ({len(names)} images)" in out, names
    assert not any(is_temp_name(p.name) for p in (data / "a").iterdir())


# ---- interactive preview, through the display seam ----------------------------------------------------------


class FakeDisplay:
    """Plays a key script once camera frames are on screen (the first images may be the 640x480 placeholder)."""

    def __init__(self, keys):
        self.keys = list(keys)
        self.shown: list[np.ndarray] = []
        self.closed = False

    def show(self, image):
        self.shown.append(image)

    def wait_key(self, ms):
        if self.shown[-1].shape != (240, 320, 3):
            assert len(self.shown) < 500, "no camera frame reached the preview"
            return -1
        return self.keys.pop(0) if self.keys else ord("q")

    def is_open(self):
        return not self.closed

    def close(self):
        self.closed = True


def run_interactive(monkeypatch, capsys, keys, *args):
    fake = FakeDisplay(keys)
    monkeypatch.setattr(display_mod, "display_present", lambda: True)
    monkeypatch.setattr(display_mod, "gui_available", lambda: True)
    monkeypatch.setattr(display_mod, "open_display", lambda title: fake)
    code = cli.main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, fake


def seed_label(data: Path, label: str) -> None:
    (data / label).mkdir(parents=True)
    cv2.imwrite(str(data / label / "old.jpg"), np.zeros((8, 8, 3), np.uint8))


SPACE, TAB, ESC = ord(" "), 9, 27
WAIT = [-1] * 3


def test_preview_space_snaps_u_undoes_q_quits(tmp_path, monkeypatch, capsys):
    data = tmp_path / "D"
    code, out, fake = run_interactive(monkeypatch, capsys, [SPACE, SPACE, SPACE, ord("u"), ord("q")],
                                      "--label", "a", "--source", PREVIEW_SRC, "--data", data)
    assert code == 0 and fake.closed
    assert len(images(data / "a")) == 2 and "undone" in out
    means = [img.mean() for img in fake.shown if img.shape == (240, 320, 3)]
    assert max(means) > means[0] + 40  # the capture flash (the first frame came before any key)


def test_preview_label_switching_with_tab_and_digits(tmp_path, monkeypatch, capsys):
    data = tmp_path / "D"
    seed_label(data, "b")
    seed_label(data, "c")
    keys = [SPACE, TAB, SPACE, TAB, TAB, SPACE, ord("3"), SPACE, ord("9"), ESC]  # labels: a b c
    code, out, _ = run_interactive(monkeypatch, capsys, keys, "--label", "a", "--source", PREVIEW_SRC, "--data", data)
    assert code == 0
    assert [len(images(data / x)) for x in "abc"] == [2, 2, 2]  # a: 2 new; b and c: old + 1
    assert "no label 9" in out
    assert (data / "labels.txt").read_text() == "a\nb\nc\n"


def test_preview_burst_takes_a_series(tmp_path, monkeypatch, capsys):
    data = tmp_path / "D"
    keys = [ord("b"), *[-1] * 15, ord("b"), *WAIT, ord("q")]
    code, out, _ = run_interactive(monkeypatch, capsys, keys, "--label", "a", "--source", PREVIEW_SRC, "--data", data,
                                   "--interval", 0)
    n = len(images(data / "a"))
    assert code == 0 and n >= 5 and "burst on" in out and "burst off" in out


def test_preview_undo_of_the_only_shot_removes_the_label_everywhere(tmp_path, monkeypatch, capsys):
    data = tmp_path / "D"
    code, _, _ = run_interactive(monkeypatch, capsys, [SPACE, ord("u"), ord("u"), ord("q")], "--label", "a",
                                 "--source", PREVIEW_SRC, "--data", data)
    assert code == 0 and not (data / "a").exists() and (data / "labels.txt").read_text() == ""


def test_no_gui_opencv_falls_back_to_headless(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(display_mod, "display_present", lambda: True)
    monkeypatch.setattr(display_mod, "gui_available", lambda: False)
    monkeypatch.setattr(display_mod, "open_display", lambda title: pytest.fail("opened a window"))
    video = write_video(tmp_path / "v.avi", frames=4)
    code = cli.main(["--label", "a", "--source", str(video), "--data", str(tmp_path / "D"), "--interval", "0"])
    assert code == 0 and "no preview" in capsys.readouterr().err
    assert len(images(tmp_path / "D" / "a")) == 4


# ---- importing photos ---------------------------------------------------------------------------------------


def jpeg_bytes(w, h, orientation=None) -> bytes:
    img = Image.new("RGB", (w, h), (200, 30, 30))
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def test_import_photo_folder(tmp_path, capsys):
    photos = tmp_path / "phone"
    (photos / "DCIM").mkdir(parents=True)
    plain = jpeg_bytes(40, 30)
    (photos / "IMG_1.jpg").write_bytes(plain)
    (photos / "IMG_2.JPG").write_bytes(jpeg_bytes(40, 30, orientation=6))  # taken holding the phone upright
    Image.new("RGBA", (20, 10), (0, 0, 255, 128)).save(photos / "DCIM" / "shot.png")
    (photos / "broken.jpg").write_bytes(plain[: len(plain) // 2])
    (photos / ".tmp-x.jpg").write_bytes(plain)
    (photos / "notes.txt").write_text("hello")
    data = tmp_path / "D"
    code, out, err = run_capture(capsys, "--label", "cat", "--source", photos, "--data", data)
    assert code == 0
    files = images(data / "cat")
    assert len(files) == 3 and all(decodes(f) for f in files)
    assert sum(f.read_bytes() == plain for f in files) == 1  # an upright JPEG is copied byte for byte
    sizes = sorted(Image.open(f).size for f in files)
    assert sizes == [(20, 10), (30, 40), (40, 30)]  # EXIF rotation applied; PNG re-encoded
    assert "broken.jpg" in out and "skipped 1 unreadable" in err
    assert "cat 3" in out and (data / "labels.txt").read_text() == "cat\n"


def test_import_respects_label_rules(tmp_path, capsys):
    (tmp_path / "phone").mkdir()
    (tmp_path / "phone" / "a.jpg").write_bytes(jpeg_bytes(8, 8))
    code, _, err = run_capture(capsys, "--label", "../escape", "--source", tmp_path / "phone", "--data",
                               tmp_path / "D")
    assert code == 2 and "path separator" in err and not (tmp_path / "D").exists()


# ---- the writer -----------------------------------------------------------------------------------------------


def test_names_never_collide_even_within_a_microsecond(tmp_path):
    writer = DatasetWriter(tmp_path, quality=50)
    writer.prepare("a")
    frame = np.zeros((8, 8, 3), np.uint8)
    paths = {writer.save("a", frame) for _ in range(200)}
    assert len(paths) == 200 and len(images(tmp_path / "a")) == 200


def test_counts_match_what_the_trainer_sees(tmp_path):
    from train.dataset import _list_class_files

    writer = DatasetWriter(tmp_path, quality=50)
    folder = writer.prepare("a")
    writer.save("a", np.zeros((8, 8, 3), np.uint8))
    for name in ("._mac-resource.jpg", ".tmp-partial.jpg", "notes.txt", "scan.PGM", "b.ppm"):
        (folder / name).write_bytes(b"x")
    assert DatasetWriter(tmp_path).count("a") == 3 == len(_list_class_files(tmp_path)["a"])


def test_quality_setting_changes_the_file_size(tmp_path):
    frame = open_source("test://", realtime=False).read()
    sizes = []
    for q in (30, 95):
        writer = DatasetWriter(tmp_path / str(q), quality=q)
        writer.prepare("a")
        sizes.append(writer.save("a", frame).stat().st_size)
    assert sizes[0] < sizes[1]


def test_bad_quality_is_refused(tmp_path, capsys):
    code, _, err = run_capture(capsys, "--label", "a", "--source", TEST_SRC, "--count", 1, "--data", tmp_path / "D",
                               "--quality", 0)
    assert code == 2 and "--quality" in err and not (tmp_path / "D").exists()
