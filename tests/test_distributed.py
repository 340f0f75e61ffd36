"""`torchrun -m train`: two gloo processes on the CPU train as one, and only rank 0 writes.

Every run goes through `python -m torch.distributed.run --standalone --nproc-per-node 2 -m train`, the command a
user types (as `torchrun`). A sitecustomize module on the subprocesses' PYTHONPATH records, with an audit hook, each
file each rank creates or renames into the output directory, so "only rank 0 writes, each file once" is observed,
not inferred from the logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from edge.core.fsutil import is_temp_name
from edge.core.metadata import ModelMeta, load_checkpoint, save_checkpoint
from edge.core.registry import create_model, get_arch
from edge.core.synthetic import make_dataset
from train.cli import main as train_main

pytestmark = pytest.mark.slow  # each torchrun start costs a few seconds of imports per process

REPO = Path(__file__).resolve().parents[1]

# Records (rank, event, path) for files created or renamed under $AUDIT_OUTPUT; written to $AUDIT_DIR at exit.
SITECUSTOMIZE = textwrap.dedent("""
    import atexit, json, os, sys

    _out, _dir = os.environ.get("AUDIT_OUTPUT"), os.environ.get("AUDIT_DIR")
    _events = []
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def _inside(path):
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(os.path.realpath(_out) + os.sep)
        except (TypeError, ValueError):
            return False

    def _hook(event, args):
        if event == "open" and args[0] is not None and _inside(args[0]):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & _WRITE:
                _events.append(["write", os.path.basename(os.fsdecode(args[0]))])
        elif event == "os.rename" and _inside(args[1]):
            _events.append(["rename", os.path.basename(os.fsdecode(args[1]))])

    def _dump():
        with open(os.path.join(_dir, "rank%s.json" % os.environ.get("RANK", "none")), "w") as f:
            json.dump(_events, f)

    if _out and _dir:
        sys.addaudithook(_hook)
        atexit.register(_dump)
""")


@pytest.fixture(scope="module")
def arrows(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("arrows") / "data", per_class=24, seed=11)


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory):
    """EfficientNet-Lite0's ImageNet backbone with one fixed random head: both runs start from the same weights."""
    path = tmp_path_factory.mktemp("start") / "start.pt"
    model = create_model("efficientnet_lite0", 2, "imagenet")
    save_checkpoint(path, model.state_dict(), ModelMeta("efficientnet_lite0", ["down", "up"],
                                                        get_arch("efficientnet_lite0").preprocess))
    return path


def torchrun(args: list[str], out: Path, tmp_path: Path, nproc: int = 2,
             timeout: float = 240) -> tuple[subprocess.CompletedProcess, dict]:
    """`torchrun --standalone --nproc-per-node nproc -m train ARGS --output OUT` -> (result, rank -> events)."""
    hooks, audit = tmp_path / "hooks", tmp_path / "audit"
    hooks.mkdir(exist_ok=True)
    audit.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "AUDIT_OUTPUT": str(out), "AUDIT_DIR": str(audit), "MPLBACKEND": "Agg"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "train", *args, "--output", str(out), "--no-progress"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    events = {int(p.stem[4:]): json.loads(p.read_text()) for p in audit.glob("rank[0-9]*.json")}
    return result, events


def files_of(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def assert_rank0_wrote_each_file_once(events: dict, out: Path) -> None:
    assert sorted(events) == [0, 1], events
    assert events[1] == [], f"rank 1 wrote into the output directory: {events[1]}"
    renamed = Counter(name for kind, name in events[0] if kind == "rename")
    assert renamed and set(renamed.values()) == {1}, renamed
    assert sorted(renamed) == files_of(out)  # every output arrived by one atomic rename
    assert not [name for name in files_of(out) if is_temp_name(name)]


def test_two_processes_train_as_one_and_only_rank0_writes(arrows, start_weights, tmp_path):
    """Head mode: the feature cache is extracted half per process and gathered in order, and gradients are
    averaged, so 2 processes sharing --batch-size 8 (4 each) follow the single-process run epoch by epoch."""
    common = ["--data", str(arrows), "--arch", "efficientnet_lite0", "--weights", str(start_weights), "--mode", "head",
              "--epochs", "4", "--cache-views", "1"]
    single_out, ddp_out = tmp_path / "single", tmp_path / "ddp"
    assert train_main([*common, "--batch-size", "8", "--output", str(single_out), "--no-progress", "-q"]) == 0
    result, events = torchrun([*common, "--batch-size", "8"], ddp_out, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    single = json.loads((single_out / "metrics.json").read_text())
    ddp = json.loads((ddp_out / "metrics.json").read_text())
    assert (single["world_size"], ddp["world_size"]) == (1, 2)
    # 10 val images, and other feature noise in each process (below): one image apart is the same training
    assert abs(ddp["val_accuracy"] - single["val_accuracy"]) <= 0.1 + 1e-9
    assert (ddp["train_images"], ddp["val_images"]) == (single["train_images"], single["val_images"])
    assert [e["epoch"] for e in ddp["epochs"]] == [1, 2, 3, 4]
    # the losses are not compared epoch by epoch: head mode augments the cached features with noise drawn from each
    # process's own generator, so two processes see other noise than one (same images, same steps)
    assert load_checkpoint(ddp_out / "model.pt")[1].class_names == ["down", "up"]

    assert files_of(ddp_out) == files_of(single_out)
    assert_rank0_wrote_each_file_once(events, ddp_out)
    log = result.stdout
    for epoch in range(1, 5):
        assert log.count(f"epoch {epoch}/4 [head]") == 1, log
    assert log.count(f"cached features of {single['train_images']} train images") == 1
    assert log.count("data-parallel over 2 processes: 8 images per step (4 each)") == 1
    assert log.count("model written to") == 1


@pytest.mark.timeout(1200)  # two finetune runs of EfficientNet-Lite0 on a CPU: minutes on a loaded machine
@pytest.mark.xfail(strict=False, reason="issue 17, open: seen 0.750 with 2 processes vs 0.875 with one on 24 val "
                   "images (3 images apart) after --batch-size became the global batch; not yet understood")
def test_two_process_finetune_reaches_the_single_process_accuracy(start_weights, tmp_path):
    """--batch-size is the global batch: 2 processes take the single process's optimizer steps, so the same
    epochs give the same accuracy (not chance, as when each process stepped on its own --batch-size)."""
    data = make_dataset(tmp_path / "data", per_class=40, seed=3)
    common = ["--data", str(data), "--arch", "efficientnet_lite0", "--weights", str(start_weights), "--val-fraction",
              "0.3", "--mode", "finetune", "--epochs", "5", "--batch-size", "16", "--device", "cpu", "--no-novelty"]
    single_out, ddp_out = tmp_path / "single", tmp_path / "ddp"
    assert train_main([*common, "--output", str(single_out), "--no-progress", "-q"]) == 0
    result, _ = torchrun(common, ddp_out, tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single = json.loads((single_out / "metrics.json").read_text())
    ddp = json.loads((ddp_out / "metrics.json").read_text())
    assert ddp["world_size"] == 2
    assert len(ddp["epochs"]) == len(single["epochs"])
    assert abs(ddp["val_accuracy"] - single["val_accuracy"]) <= 0.05, (single["val_accuracy"], ddp["val_accuracy"])


def test_a_global_batch_smaller_than_the_processes_is_one_error_line(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=4, seed=5)
    result, _ = torchrun(["--data", str(data), "--arch", "mobilenet_v3_small", "--weights", "none",
                          "--batch-size", "1"], tmp_path / "out", tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "global batch" in errors[0], result.stderr[-3000:]


def test_two_process_finetune_writes_one_set_of_outputs(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=8, seed=5)
    out = tmp_path / "out"
    result, events = torchrun(["--data", str(data), "--arch", "mobilenet_v3_small", "--weights", "none",
                               "--mode", "finetune", "--epochs", "1", "--batch-size", "8"], out, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert [(e["stage"], e["epoch"]) for e in metrics["epochs"]] == [("finetune", 1)]
    assert metrics["epochs"][0]["images_per_s"] > 0
    assert_rank0_wrote_each_file_once(events, out)
    assert {"model.pt", "last.pt", "labels.txt", "metrics.json"} <= set(files_of(out))
    assert result.stdout.count("epoch 1/1 [finetune]") == 1


def test_bad_input_is_one_error_line_from_rank0(tmp_path):
    out = tmp_path / "out"
    result, _ = torchrun(["--data", str(tmp_path / "missing"), "--arch", "mobilenet_v3_small",
                          "--weights", "none"], out, tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "missing" in errors[0], result.stderr[-3000:]
    assert not out.exists()


def test_every_step_covers_the_same_images_whatever_the_number_of_processes():
    from train.distributed import GlobalBatchSampler

    for n, batch in ((64, 16), (70, 16), (10, 16)):
        single = GlobalBatchSampler(n, batch, seed=1)
        for epoch in (1, 2):
            single.set_epoch(epoch)
            shares = [GlobalBatchSampler(n, batch // 2, seed=1, rank=r, world_size=2) for r in range(2)]
            for s in shares:
                s.set_epoch(epoch)
            steps = list(single)
            assert len(steps) == len(shares[0]) == len(shares[1]) == max(1, n // batch)
            for step, mine, theirs in zip(steps, *shares):
                assert sorted(mine + theirs) == sorted(step)
