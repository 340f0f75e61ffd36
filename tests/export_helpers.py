"""Helpers shared by the export tests (ONNX export in test_export.py, engines in test_engine_build.py)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from edge.core.metadata import ModelMeta, save_checkpoint
from edge.core.registry import create_model, get_arch
from export.cli import main as export_main

CLASSES = ["up", "down", "none"]
SUMMARY = re.compile(
    r"max abs diff (?P<diff>\S+) \(tolerance (?P<tol>\S+)\), top-1 agreement (?P<agree>[\d.]+)% "
    r"\((?P<n_ok>\d+)/(?P<n>\d+), need (?P<need>[\d.]+)%\)"
    r"(?:, novelty max abs diff (?P<ndiff>\S+) \((?:tolerance (?P<ntol>\S+)|no bound)\))?: (?P<verdict>PASS|FAIL)"
)


def make_checkpoint(path: Path, arch: str, training: dict | None = None, prefix: str = "", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    state = create_model(arch, len(CLASSES), "none").state_dict()
    if prefix:
        state = {prefix + k: v for k, v in state.items()}
    meta = ModelMeta(arch=arch, class_names=list(CLASSES), preprocess=get_arch(arch).preprocess,
                     training=training or {})
    save_checkpoint(path, state, meta)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = export_main([str(a) for a in argv])
    except SystemExit as e:  # a wrong flag: argparse's exit 2 (the error and one hint line on stderr)
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def parse_summary(out: str) -> dict:
    m = SUMMARY.search(out)
    assert m, f"no verification summary in output: {out!r}"
    return m.groupdict()


def leftovers(folder: Path) -> list[str]:
    """Files an export may have left: ONNX/engine outputs and temporary names."""
    return sorted(p.name for p in folder.iterdir()
                  if p.suffix in (".onnx", ".engine", ".json") or p.name.startswith(".tmp-"))


