"""`train`: real transfer learning on the synthetic dataset, end-to-end runs, dataset validation, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from edge.core.metadata import load_checkpoint, load_model
from edge.core.preprocess import preprocess_batch
from edge.core.synthetic import make_dataset
from train.cli import main as train_main
from train.dataset import scan_dataset
from train.trainer import TrainConfig, train_model


@pytest.fixture(scope="module")
def arrows(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("arrows") / "data", per_class=80, seed=11)


@pytest.fixture(scope="module")
def trained(arrows, tmp_path_factory):
    """efficientnet_lite0 with its offline ImageNet weights, head mode: the quickstart's path."""
    out = tmp_path_factory.mktemp("run") / "model"
    rc = train_main(["--data", str(arrows), "--arch", "efficientnet_lite0", "--weights", "imagenet", "--mode", "head",
                     "--output", str(out), "--no-progress", "--cache-views", "3"])
    assert rc == 0
    return out


def test_transfer_learning_reaches_95_percent(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["val_accuracy"] >= 0.95
    assert metrics["val_images"] == 32
    for key in ("per_class", "confusion_matrix", "epochs", "seconds"):
        assert key in metrics
    assert set(metrics["per_class"]) == {"down", "up"}
    assert {"precision", "recall"} <= set(metrics["per_class"]["up"])
    assert np.asarray(metrics["confusion_matrix"]).sum() == 32


def test_pretrained_features_are_what_makes_it_work(arrows, tmp_path):
    """Same data and recipe from random init stays far below: the test above measures real transfer."""
    result = train_model(TrainConfig(data=arrows, output=tmp_path / "rand", arch="efficientnet_lite0", weights="none",
                                     mode="head", cache_views=1), progress=False)
    assert result.metrics["val_accuracy"] < 0.9


def test_outputs_are_complete_and_loadable(trained):
    assert (trained / "labels.txt").read_text().split() == ["down", "up"]
    png = cv2.imread(str(trained / "confusion_matrix.png"))
    assert png is not None and png.shape[0] > 100
    raw = torch.load(trained / "model.pt", map_location="cpu", weights_only=True)  # no pickled code
    assert raw["meta"]["arch"] == "efficientnet_lite0"
    _, meta, _ = load_checkpoint(trained / "model.pt")
    assert meta.class_names == ["down", "up"]
    assert meta.preprocess.mean == (0.5, 0.5, 0.5)
    assert meta.training["mode"] == "head"
    assert not [p for p in trained.iterdir() if p.name.startswith(".tmp-")]


def test_model_learned_orientation_not_colors(trained, tmp_path):
    """Vertically flipped arrows get the *other* label: the label lives in the orientation (why no vflip aug)."""
    model, meta = load_model(trained / "model.pt")
    fresh = make_dataset(tmp_path / "fresh", per_class=15, seed=99)
    images, labels = [], []
    for idx, name in enumerate(meta.class_names):
        for f in sorted((fresh / name).glob("*.jpg")):
            images.append(cv2.imread(str(f)))
            labels.append(idx)
    labels = np.asarray(labels)
    with torch.inference_mode():
        upright = model(torch.from_numpy(preprocess_batch(images, meta.preprocess))).argmax(1).numpy()
        flipped = model(torch.from_numpy(preprocess_batch([im[::-1] for im in images], meta.preprocess)))
        flipped = flipped.argmax(1).numpy()
    assert (upright == labels).mean() >= 0.9
    assert (flipped == labels).mean() <= 0.1


@pytest.mark.parametrize("arch", ["alexnet", "squeezenet1_1"])
def test_random_init_end_to_end_on_cpu(arch, synthetic_dataset, tmp_path):
    out = tmp_path / arch
    rc = train_main(["--data", str(synthetic_dataset), "--arch", arch, "--weights", "none", "--mode", "finetune",
                     "--epochs", "1", "--batch-size", "8", "--output", str(out), "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and metrics["epochs"][0]["stage"] == "finetune"
    model, meta = load_model(out / "model.pt")
    assert meta.arch == arch and meta.class_names == ["down", "up"]


def test_two_stage_then_resume_continues(synthetic_dataset, tmp_path):
    out = tmp_path / "two"
    base = ["--data", str(synthetic_dataset), "--arch", "mobilenet_v3_small", "--weights", "none",
            "--mode", "two-stage", "--batch-size", "8", "--output", str(out), "--no-progress", "--cache-views", "1"]
    assert train_main(base + ["--epochs", "1"]) == 0
    first = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [e["stage"] for e in first] == ["head", "finetune"]
    assert train_main(base + ["--epochs", "1", "--finetune-epochs", "2", "--resume"]) == 0
    second = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [(e["stage"], e["epoch"]) for e in second] == [("head", 1), ("finetune", 1), ("finetune", 2)]


def test_continue_from_older_model_after_adding_a_class(synthetic_dataset, tmp_path, caplog):
    out1 = tmp_path / "two_classes"
    assert train_main(["--data", str(synthetic_dataset), "--arch", "resnet18", "--weights", "none", "--epochs", "1",
                       "--output", str(out1), "--no-progress", "--cache-views", "1"]) == 0
    data3 = tmp_path / "three"
    shutil.copytree(synthetic_dataset, data3)
    make_dataset(data3, per_class=10, classes=("left",), seed=5)
    out2 = tmp_path / "three_classes"
    caplog.clear()
    caplog.set_level("INFO")
    assert train_main(["--data", str(data3), "--arch", "resnet18", "--weights", str(out1 / "model.pt"), "--epochs", "1",
                       "--output", str(out2), "--no-progress", "--cache-views", "1"]) == 0
    log = caplog.text
    assert "left fresh" in log and "fc.weight" in log and "fc.bias" in log
    assert load_checkpoint(out2 / "model.pt")[1].class_names == ["down", "left", "up"]


# ------------------------------------------------------------------ dataset validation

def test_bad_images_are_skipped_and_counted_not_fatal(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=6, seed=1)
    good = (data / "up" / "up_00000.jpg").read_bytes()
    (data / "up" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (data / "down" / "garbage.jpg").write_bytes(b"\x00" * 100)
    (data / "down" / ".tmp-half-written.jpg").write_bytes(good[:50])  # capture's temp names are ignored
    (data / "empty_class").mkdir()
    info = scan_dataset(data, 0.2, 0)
    assert sorted(p for p, _ in info.skipped) == sorted([str(data / "down" / "garbage.jpg"),
                                                         str(data / "up" / "truncated.jpg")])
    assert info.classes == ["down", "up"]
    assert any("empty_class" in w for w in info.warnings)
    assert sum(info.counts("train").values()) + sum(info.counts("val").values()) == 12
    lines = "\n".join(info.summary_lines())
    assert "skipped 2 unreadable" in lines


def test_stratified_seeded_split_and_imbalance_flag(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=10, seed=1)
    make_dataset(data, per_class=40, classes=("left",), seed=2)
    a, b = scan_dataset(data, 0.2, 7), scan_dataset(data, 0.2, 7)
    assert [s.path for s in a.val] == [s.path for s in b.val]
    assert a.counts("val") == {"down": 2, "left": 8, "up": 2}
    assert any("imbalance" in w for w in a.warnings)


def test_presplit_train_val_folders_are_used(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=10, seed=1, split=True)
    info = scan_dataset(data, 0.5, 0)
    assert info.presplit and info.counts("val") == {"down": 2, "up": 2}
    assert all("/val/" in s.path for s in info.val)


# ------------------------------------------------------------------ bad input: one line, non-zero, nothing written

def _run_train_cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["missing_data", "single_class", "unknown_arch", "bad_weights", "unwritable_output"])
def test_bad_input_is_one_clear_line(case, tmp_path, synthetic_dataset):
    out = tmp_path / "out"
    args = ["--data", str(synthetic_dataset), "--arch", "squeezenet1_1", "--weights", "none", "--epochs", "1",
            "--output", str(out)]
    expect = ""
    if case == "missing_data":
        args[1] = str(tmp_path / "nope")
        expect = "not found"
    elif case == "single_class":
        one = tmp_path / "one"
        shutil.copytree(synthetic_dataset / "up", one / "up")
        args[1] = str(one)
        expect = "at least 2 classes"
    elif case == "unknown_arch":
        args[3] = "resnet9000"
        expect = "unknown arch"
    elif case == "bad_weights":
        bad = tmp_path / "w.pth"
        bad.write_bytes(b"\x80\x02garbage")
        args[5] = str(bad)
        expect = "cannot read weights file"
    elif case == "unwritable_output":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out"
        args[-1] = str(out)
        expect = "ro"
        if os.geteuid() == 0:  # root writes anywhere: use a path under a regular file instead
            blocker = tmp_path / "file"
            blocker.write_text("x")
            out = blocker / "out"
            args[-1] = str(out)
            expect = "cannot create output directory"
    proc = _run_train_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


def test_phone_photo_exif_orientation_is_applied_in_training_and_predict(tmp_path):
    """A photo stored sideways with an EXIF rotation is trained on (and predicted) the way the user sees it."""
    import io

    from PIL import Image

    from edge.core.files import read_image_bgr as read_image
    from train.dataset import load_rgb

    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:10] = (255, 0, 0)  # red band on top of the upright picture
    stored = np.rot90(rgb, 1)  # the camera stored it turned by 90 degrees...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and says: rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buf, "JPEG", exif=exif, quality=95)
    path = tmp_path / "phone.jpg"
    path.write_bytes(buf.getvalue())

    trained_on = np.asarray(load_rgb(str(path)))
    predicted_on = read_image(path)[..., ::-1]
    for seen in (trained_on, predicted_on):
        assert seen.shape[:2] == (40, 60)
        assert seen[:8, :, 0].mean() > 200 and seen[-20:, :, 0].mean() < 50


def test_resume_a_finished_head_run_with_more_epochs(synthetic_dataset, tmp_path):
    out = tmp_path / "head"
    base = ["--data", str(synthetic_dataset), "--arch", "squeezenet1_1", "--weights", "none", "--output", str(out),
            "--no-progress", "--cache-views", "1", "--patience", "10"]
    assert train_main(base + ["--epochs", "2"]) == 0
    assert train_main(base + ["--epochs", "4", "--resume"]) == 0
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]


def test_resume_without_a_previous_run_is_one_clear_line(synthetic_dataset, tmp_path, capsys):
    rc = train_main(["--data", str(synthetic_dataset), "--arch", "squeezenet1_1", "--weights", "none",
                     "--output", str(tmp_path / "new"), "--resume"])
    assert rc == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_resume_with_another_mode_is_one_clear_line(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "head"
    base = ["--data", str(synthetic_dataset), "--arch", "squeezenet1_1", "--weights", "none", "--output", str(out),
            "--no-progress", "--cache-views", "1", "--epochs", "1"]
    assert train_main(base) == 0
    capsys.readouterr()
    assert train_main(base + ["--mode", "finetune", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "same --mode" in err[0]


# ------------------------------------------------------------------ symlinks: each real image once, never outside DATA

def _real(paths):
    return [os.path.realpath(p) for p in paths]


def test_symlink_loops_and_duplicates_count_each_image_once(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=12, seed=1)
    real_files = sorted(str(p.resolve()) for p in data.rglob("*.jpg"))
    (data / "up" / "loop").symlink_to("..")  # DATA/up/loop -> DATA: a loop through every class
    (data / "down" / "again").symlink_to(".")  # a loop onto itself
    (data / "up" / "alias.jpg").symlink_to(data / "up" / "up_00000.jpg")
    os.link(data / "down" / "down_00000.jpg", data / "down" / "hardlink.jpg")
    elsewhere = make_dataset(tmp_path / "elsewhere", per_class=3, seed=2)
    (data / "down" / "outside").symlink_to(elsewhere / "up")  # a link leaving DATA is never followed
    (data / "up" / "outside.jpg").symlink_to(elsewhere / "down" / "down_00000.jpg")

    info = scan_dataset(data, 0.2, 0)
    train, val = _real(s.path for s in info.train), _real(s.path for s in info.val)
    assert sorted(train + val) == real_files  # 24 images, each once: no val image leaks into training
    assert info.counts("train") == {"down": 10, "up": 10} and info.counts("val") == {"down": 2, "up": 2}
    assert all(os.path.realpath(s.path).startswith(str(data.resolve() / "up")) == (s.target == 1)
               for s in info.train + info.val)  # an image keeps its own folder's label, not a link's
    warnings = "\n".join(info.warnings)
    assert "2 symlink(s) leading outside" in warnings and "used once" in warnings


def test_an_image_linked_into_both_train_and_val_stays_in_val(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=10, seed=1, split=True)
    leak = data / "train" / "up" / "leak.jpg"
    leak.symlink_to(next((data / "val" / "up").glob("*.jpg")))
    (data / "train" / "down" / "val_again").symlink_to(data / "val" / "down")
    info = scan_dataset(data, 0.2, 0)
    train, val = set(_real(s.path for s in info.train)), set(_real(s.path for s in info.val))
    assert not train & val
    assert info.counts("val") == {"down": 2, "up": 2} and info.counts("train") == {"down": 8, "up": 8}


# ------------------------------------------------------------------ numeric flags: checked when parsed

@pytest.mark.parametrize("flag,value,valid", [
    ("--seed", "-1", "between 0 and 4294967295"),
    ("--finetune-epochs", "-1", ">= 1"),
    ("--patience", "-1", ">= 1"),
    ("--epochs", "0", ">= 1"),
    ("--batch-size", "0", ">= 1"),
    ("--cache-views", "0", ">= 1"),
    ("--workers", "-1", ">= 0"),
    ("--lr", "nan", "> 0"),
    ("--lr", "0", "> 0"),
    ("--val-fraction", "1", "between 0 and 1 (exclusive)"),
    ("--epochs", "2.5", "an integer"),
])
def test_bad_numeric_flag_is_one_line_naming_it(flag, value, valid, synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:  # argparse's exit code 2, with the error and one hint line
        train_main(["--data", str(synthetic_dataset), "--weights", "none", "--output", str(out), "--mode",
                    "two-stage", flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2
    assert len(err) == 2 and err[0].startswith(f"error: argument {flag}: must be ") and valid in err[0], err
    assert err[1] == "see `train --help` for the options"
    assert not out.exists()


def test_train_model_names_the_bad_setting_too(synthetic_dataset, tmp_path):
    from edge.core.errors import EdgeError

    with pytest.raises(EdgeError, match="^--finetune-epochs must be an integer >= 1, got -1$"):
        train_model(TrainConfig(data=synthetic_dataset, output=tmp_path / "o", weights="none", finetune_epochs=-1))
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ confusion matrix labels in any script

def test_confusion_matrix_draws_cjk_labels(tmp_path):
    import warnings

    from matplotlib import font_manager

    from train.report import plot_confusion_matrix

    labels = ["猫", "犬"]

    def covers(entry) -> bool:
        try:
            charmap = font_manager.get_font(entry.fname).get_charmap()
        except Exception:  # noqa: BLE001 - a broken font file covers nothing
            return False
        return all(ord(c) in charmap for c in "".join(labels))

    if not any(covers(e) for e in font_manager.fontManager.ttflist):
        pytest.skip("no installed font has CJK glyphs (e.g. Debian's fonts-noto-cjk)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion_matrix([[3, 1], [0, 4]], labels, tmp_path / "cm.png", "猫 / 犬 val acc 0.875")
    assert not [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert cv2.imread(str(tmp_path / "cm.png")) is not None


# ------------------------------------------------------------------------------------------------ novelty + pictures

def test_novelty_is_fitted_on_the_cached_features_and_reported(trained, arrows):
    from edge.core.novelty import CHECKPOINT_BANK_KEY, ClassifierWithNovelty

    metrics = json.loads((trained / "metrics.json").read_text())
    novelty = metrics["novelty"]
    assert novelty["calibration"] == "time-holdout" and novelty["val_images"] == 32 and novelty["keep"] == 0.95
    assert novelty["bank_size"] == metrics["train_images"] == 128 and novelty["threshold"] > 0
    assert 0 <= novelty["val_unknown"] <= 3 and novelty["val_unknown_fraction"] == novelty["val_unknown"] / 32
    state, meta, raw = load_checkpoint(trained / "model.pt")
    assert meta.novelty["threshold"] == novelty["threshold"] == meta.novelty_threshold
    assert raw[CHECKPOINT_BANK_KEY].shape == (128, 1280)
    model, _ = load_model(trained / "model.pt", with_novelty=True)
    assert isinstance(model, ClassifierWithNovelty)
    plain, _ = load_model(trained / "model.pt")  # without asking: logits, as before
    assert not isinstance(plain, ClassifierWithNovelty)
    # the val images the threshold was calibrated on: the stored model scores them as metrics.json says (give or
    # take an image on the threshold: the bank and threshold come from the float16 feature cache)
    from train.dataset import eval_batch

    info = scan_dataset(arrows, 0.2, 0)
    with torch.inference_mode():
        _, val_novelty = model(torch.from_numpy(eval_batch(info.val, meta.preprocess)))
    assert abs(int((val_novelty > meta.novelty_threshold).sum()) - novelty["val_unknown"]) <= 1
    assert float(val_novelty.median()) == pytest.approx(novelty["val_novelty_median"], abs=2e-3)


def test_training_curves_and_mistakes_pictures(trained, tmp_path):
    for name in ("training_curves.png", "mistakes.png"):
        png = cv2.imread(str(trained / name))
        assert png is not None and png.shape[0] > 100 and png.shape[1] > 300, name

    from train.report import Mistake, plot_mistakes

    none, some = tmp_path / "none.png", tmp_path / "some.png"
    plot_mistakes([], 40, none)
    img = next((trained.parent.parent).glob("**/up_*.jpg"))
    plot_mistakes([Mistake(str(img), "up", "down", 0.8, 0.41), Mistake(str(tmp_path / "gone.jpg"), "down", "up", 0.6)],
                  40, some, novelty_threshold=0.3)
    a, b = cv2.imread(str(none)), cv2.imread(str(some))
    assert a is not None and b is not None and b.shape[1] > a.shape[1]  # a grid, not the "no mistakes" card
    assert not list(tmp_path.glob(".tmp-*"))


def test_finetune_refits_novelty_on_the_final_weights(synthetic_dataset, tmp_path):
    from edge.core.novelty import normalize_rows
    from edge.core.registry import get_arch
    from train.dataset import load_rgb
    from train.presets import EvalTransform

    result = train_model(TrainConfig(data=synthetic_dataset, output=tmp_path / "ft", arch="squeezenet1_1",
                                     weights="none", mode="finetune", epochs=1, batch_size=8), progress=False)
    model, meta = load_model(tmp_path / "ft" / "model.pt", with_novelty=True)
    spec = get_arch("squeezenet1_1")
    info = scan_dataset(synthetic_dataset, 0.2, 0)
    x = torch.stack([EvalTransform(spec.preprocess)(load_rgb(s.path)) for s in info.train])
    with torch.inference_mode():
        final = normalize_rows(spec.features(model.net, x))
        fresh = normalize_rows(spec.features(create_model_like(meta), x))
    bank = model.scorer.bank.float()
    assert bank.shape == final.shape == (32, 512)
    assert (bank - final).abs().max() < 5e-3  # the bank holds the final weights' features (cached in fp16)...
    assert (bank - fresh).abs().max() > 5e-2  # ...not those of the weights training started from
    assert result.metrics["novelty"]["bank_size"] == 32


def create_model_like(meta):
    from edge.core.registry import create_model

    torch.manual_seed(0)  # train_model seeds the same way before building the model
    return create_model(meta.arch, meta.num_classes, "none").eval()


def test_no_novelty_flag_and_reserved_class_name(synthetic_dataset, tmp_path, capsys):
    from edge.core.novelty import CHECKPOINT_BANK_KEY

    out = tmp_path / "plain"
    assert train_main(["--data", str(synthetic_dataset), "--arch", "squeezenet1_1", "--weights", "none",
                       "--epochs", "1", "--output", str(out), "--no-progress", "--cache-views", "1",
                       "--no-novelty"]) == 0
    _, meta, raw = load_checkpoint(out / "model.pt")
    assert meta.novelty is None and CHECKPOINT_BANK_KEY not in raw
    assert json.loads((out / "metrics.json").read_text())["novelty"] is None
    assert "would be called 'unknown'" not in capsys.readouterr().out

    data = tmp_path / "reserved"
    shutil.copytree(synthetic_dataset / "up", data / "up")
    shutil.copytree(synthetic_dataset / "down", data / "Unknown")
    rc = train_main(["--data", str(data), "--weights", "none", "--output", str(tmp_path / "x"), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'Unknown' uses the reserved label 'unknown'" in err[0]
    assert not (tmp_path / "x").exists()


def test_the_cli_builds_its_config_from_the_dataclass_fields(tmp_path):
    """Flags map onto TrainConfig by name: with no flags the config is TrainConfig's own defaults; each flag
    lands in its field (no hand-kept copy list to forget one in)."""
    from dataclasses import fields

    from train.cli import build_parser
    from train.presets import AugmentSpec

    def config(*argv):
        a = build_parser().parse_args(["--data", str(tmp_path), *argv])
        return TrainConfig.from_mapping(vars(a), augment=AugmentSpec(hflip=a.hflip))

    assert config() == TrainConfig(data=tmp_path)
    given = config("--epochs", "3", "--seed", "7", "--novelty-keep", "0.9", "--no-novelty", "--resume",
                   "--workers", "2", "--cache-views", "2", "--mode", "finetune", "--no-hflip")
    assert (given.epochs, given.seed, given.novelty_keep, given.novelty, given.resume, given.workers,
            given.cache_views, given.mode, given.augment.hflip) == (3, 7, 0.9, False, True, 2, 2, "finetune", False)
    flags = {a.dest for a in build_parser()._actions}
    assert {f.name for f in fields(TrainConfig)} - flags == {"augment", "backbone_lr_factor", "weight_decay"}
