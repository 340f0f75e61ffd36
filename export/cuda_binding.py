"""CUDA from Python for the engine builder, through PyTorch (JetPack's CUDA build): GPU 0's identity for the engine
cache key, and device buffers for INT8 calibration batches.

PyTorch is the one CUDA binding: the TensorRT runtime backend (edge.runtime.backends.tensorrt_backend) already
needs it, so no second binding (cuda-python, pycuda) is worth installing on a Jetson.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edge.core.errors import EdgeError, brief

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "8.7"


class DeviceBuffer:
    """A CUDA allocation held by a torch uint8 tensor: `ptr` for TensorRT, `copy_from(host array)` to fill it."""

    def __init__(self, torch, nbytes: int):
        self._tensor = torch.empty(max(1, nbytes), dtype=torch.uint8, device="cuda")
        self._torch = torch
        self.ptr = int(self._tensor.data_ptr())

    def copy_from(self, arr: np.ndarray) -> None:
        src = self._torch.from_numpy(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
        self._tensor[: src.numel()].copy_(src)  # from pageable host memory: done when this returns


class TorchCudaBinding:
    """CUDA through PyTorch; EdgeError (one line) when this torch has no usable CUDA GPU."""

    name = "torch"

    def __init__(self):
        try:
            import torch

            usable = torch.cuda.is_available()
        except Exception as e:  # a broken torch/driver install counts as no CUDA
            raise EdgeError(f"building a TensorRT engine needs PyTorch with CUDA; "
                            f"importing it failed ({brief(e)})") from e
        if not usable:
            raise EdgeError(
                "building a TensorRT engine needs a CUDA GPU visible to PyTorch, and torch.cuda.is_available() is "
                "False; on a Jetson install JetPack's CUDA-enabled PyTorch (a PyPI wheel has no CUDA for Tegra)"
            )
        self.torch = torch

    def device_info(self) -> DeviceInfo:
        from edge.runtime.backends.tensorrt_backend import cuda_device_identity

        return DeviceInfo(*cuda_device_identity())

    def alloc(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(self.torch, nbytes)


_BINDING: TorchCudaBinding | None = None


def cuda_binding() -> TorchCudaBinding:
    """The process's CUDA binding (created on first use); EdgeError saying what is missing when there is no GPU."""
    global _BINDING
    if _BINDING is None:
        _BINDING = TorchCudaBinding()
    return _BINDING
