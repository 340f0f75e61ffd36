"""Where PyTorch runs: the one `--device` decision (auto, cpu, cuda, cuda:N) of training and the torch backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.core.errors import EdgeError

if TYPE_CHECKING:
    import torch

NO_CUDA = "--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto"


def torch_device(name: str) -> "torch.device":
    """`auto` -> the GPU when PyTorch sees one, else the CPU; `cuda`/`cuda:N` without a GPU -> EdgeError (one
    line: what to use instead)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeError(NO_CUDA)
    return torch.device(name)
