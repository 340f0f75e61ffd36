"""What a new user reads: every CLI's wrong flag (the error and one hint, no usage block), defaults in --help, and the
wording of messages that used to mislead (last.pt, a folder given as a model, a non-empty --output, no output)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import make_checkpoint, run_cli
from serve_helpers import brightness_model

from edge.cli import SUBCOMMANDS
from edge.core.errors import EdgeError
from edge.core.metadata import load_checkpoint

# every command, by the name its help and errors use (`edge train` and `edge capture` are `train` and `capture`)
PROGS = {**{f"edge {n}": m for n, (m, _) in SUBCOMMANDS.items() if n not in ("train", "capture")},
         "train": "train.cli", "capture": "capture.cli"}


@pytest.mark.parametrize("prog", sorted(PROGS))
def test_a_wrong_flag_is_the_error_and_one_hint(prog, capsys):
    main = importlib.import_module(PROGS[prog]).main
    with pytest.raises(SystemExit) as e:
        main(["--no-such-flag"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2
    assert len(err) == 2 and err[0].startswith("error: "), err  # (a missing required flag may be named first)
    assert err[1] == f"see `{prog} --help` for the options", err


@pytest.mark.parametrize("prog, shows", [
    ("train", ["--epochs EPOCHS", "(default: 20)", "default efficientnet_lite0"]),
    ("edge synth", ["(default: 100)", "(default: 160)"]),
    ("edge demo", ["(default: 80)", "(default: 8)", "(default: 12.0)"]),
    ("edge bench", ["(default: 300)"]),
])
def test_help_shows_the_defaults(prog, shows, capsys):
    main = importlib.import_module(PROGS[prog]).main
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in shows:
        assert text in out, (text, out)
    assert "(see above)" not in out


def test_last_pt_is_named_for_what_it_is(tmp_path):
    """train's resume state is not 'not written by train': it says what it is and which file to use."""
    last = tmp_path / "last.pt"
    torch.save({"model": {}, "optimizer": {}, "scaler": {}, "stage": "head", "epoch": 1}, last)
    with pytest.raises(EdgeError) as e:
        load_checkpoint(last)
    assert "resume state" in str(e.value) and "model.pt" in str(e.value)
    assert "not a checkpoint written" not in str(e.value)


def test_export_of_a_folder_points_at_the_model_in_it(tmp_path, capsys):
    run = tmp_path / "runs" / "m"
    run.mkdir(parents=True)
    make_checkpoint(run / "model.pt", "squeezenet1_1")
    rc, _, err = run_cli(capsys, run)
    assert rc == 2 and "is a folder" in err and f"edge export {run / 'model.pt'}" in err, err
    assert "not found" not in err


def test_synth_refuses_a_non_empty_output_without_force(tmp_path, capsys):
    from edge.cli import synth

    out = tmp_path / "data"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "photo.jpg").write_bytes(b"x")
    assert synth.main(["--output", str(out), "--per-class", "2", "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.rglob("*")) == ["mine", "photo.jpg"]  # nothing written
    assert synth.main(["--output", str(out), "--per-class", "2", "--size", "32", "--force"]) == 0
    assert len(list((out / "up").glob("*.jpg"))) == 2


def test_serve_without_any_output_says_so_at_start(tmp_path):
    brightness_model(tmp_path / "model.pt", np.full((120, 160, 3), 128, np.uint8))
    r = subprocess.run([sys.executable, "-m", "edge", "serve", "--model", str(tmp_path / "model.pt"), "--source",
                        "test://?width=64&height=48&frames=3&fps=30"], capture_output=True, text=True, timeout=300)
    said = [ln for ln in (r.stdout + r.stderr).splitlines() if "no output configured" in ln]
    assert r.returncode == 0 and len(said) == 1 and "--http" in said[0], r.stderr[-2000:]


def test_doctor_says_what_it_checks_before_it_starts(capsys, monkeypatch):
    from edge.cli import doctor
    from edge.service.doctor_checks import PASS, CheckResult

    first = None

    def checks(machine):
        nonlocal first
        first = capsys.readouterr().out  # printed before any check ran
        return [CheckResult("python", PASS, "3.11")]

    monkeypatch.setattr(doctor, "run_checks", checks)
    doctor.main([])
    assert first is not None and first.startswith("checking this machine"), first


def test_teach_label_errors_use_no_command_line_flags(tmp_path):
    from capture.labels import check_label

    for name in ("train", "val", ""):
        with pytest.raises(EdgeError) as e:
            check_label(name, flag_hints=False)
        assert "--" not in str(e.value), e.value
    with pytest.raises(EdgeError, match="--split train"):  # the CLI keeps its flag advice
        check_label("train")


def test_record_log_says_what_the_counts_are(tmp_path, caplog):
    from edge.runtime.outputs.record import RecordOutput
    from edge.runtime.prediction import Prediction

    caplog.set_level("INFO")
    rec = RecordOutput(tmp_path / "r.avi", fps=10, realtime=False, fourcc="MJPG")
    frame = np.zeros((48, 64, 3), np.uint8)
    rec.write(frame, Prediction("a", 1.0, {}, frame_id=0, timestamp=0.0, fps=10.0, infer_ms=1.0, latency_ms=1.0,
                                frame_age_ms=1.0))
    rec.close()
    assert "video frames" in caplog.text and "dropped by the recorder" in caplog.text


def test_files_helpers_name_a_folder_as_a_folder(tmp_path):
    from edge.core.files import load_torch_file

    with pytest.raises(EdgeError, match="is a folder, not a file"):
        load_torch_file(tmp_path, "model file")
    assert Path(tmp_path).is_dir()


def test_export_says_what_it_does_before_the_long_part(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "model.pt", "squeezenet1_1")
    rc, out, err = run_cli(capsys, ckpt, "--verify-images", "2")
    lines = out.splitlines()
    assert rc == 0, err
    assert lines[0].startswith("exporting model.pt to ONNX and checking it against PyTorch"), lines
    assert any(ln.startswith("wrote ") for ln in lines[1:])


def test_bench_reports_progress_while_it_runs(tmp_path, caplog, monkeypatch):
    from edge.cli import bench

    brightness_model(tmp_path / "model.pt", np.full((120, 160, 3), 128, np.uint8))
    monkeypatch.setattr(bench, "PROGRESS_EVERY_S", 0.0)
    caplog.set_level("INFO")
    bench.run_bench(str(tmp_path / "model.pt"), "test://?width=64&height=48", 5, "auto", "cpu", 2, False, "sync")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bench: ")]
    assert said[0].startswith("bench: loading") and any("of 7 frames" in s for s in said), said
