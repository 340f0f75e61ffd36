"""INT8 calibration for the engine builder: real images, preprocessed exactly as serving does, fed to TensorRT's
entropy calibrator through a CUDA buffer; the resulting table is cached (written atomically) so rebuilds skip it.
Random data is never used: it would quantize badly."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edge.core.errors import EdgeError
from edge.core.files import read_image_bgr
from edge.core.fsutil import atomic_write_bytes
from edge.core.preprocess import PreprocessSpec, preprocess_image

from .cuda_binding import TorchCudaBinding
from .engine_progress import BuildProgress

log = logging.getLogger(__name__)

DEFAULT_CALIB_IMAGES = 512
DEFAULT_CALIB_BATCH = 8
MIN_CALIB_IMAGES = 32  # fewer than this gives a noisy INT8 table: warn


class CalibrationBatches:
    """Real images -> preprocessed Bx3xSxS float32 batches for INT8 calibration (same preprocessing as serving).

    Images are read lazily, one batch at a time (a Nano cannot hold hundreds of tensors); unreadable files are
    skipped and counted; only full batches are produced.
    """

    def __init__(self, files: Sequence[Path], spec: PreprocessSpec, batch_size: int):
        if batch_size < 1:
            raise EdgeError(f"calibration batch size must be >= 1, got {batch_size}")
        self.files = list(files)
        self.spec = spec
        self.batch_size = batch_size
        self.skipped = 0
        self.used = 0

    def __len__(self) -> int:
        return len(self.files) // self.batch_size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 3, self.spec.input_size, self.spec.input_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        batch = np.empty(self.shape, np.float32)
        n = 0
        for f in self.files:
            img = read_image_bgr(f)
            if img is None:
                self.skipped += 1
                log.warning("calibration: skipping unreadable image %s", f)
                continue
            preprocess_image(img, self.spec, "BGR", out=batch[n])
            n += 1
            if n == self.batch_size:
                self.used += n
                yield batch
                batch = np.empty(self.shape, np.float32)
                n = 0


def make_calibrator(trt, batches: CalibrationBatches, cache_path: Path, state: BuildProgress, cuda: TorchCudaBinding):
    """An IInt8EntropyCalibrator2 fed from `batches`; its table is cached at `cache_path` (written atomically).

    An exception while reading a batch is kept in `.error` (raising into TensorRT would abort the process) and
    re-raised by the builder once TensorRT returns.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.error: BaseException | None = None
            self._it = iter(batches)
            self._buf = None
            self._count = 0

        def get_batch_size(self):
            return batches.batch_size

        def get_batch(self, names, *args):
            try:
                batch = next(self._it, None)
                if batch is None:
                    return None
                if self._buf is None:
                    self._buf = cuda.alloc(batch.nbytes)
                self._buf.copy_from(batch)
                self._count += 1
                state.set("calibrating", self._count, len(batches))
                return [self._buf.ptr]
            except BaseException as e:  # noqa: BLE001 - never raise into TensorRT; re-raised after the build
                self.error = e
                return None

        def read_calibration_cache(self):
            if cache_path.is_file():
                log.info("using cached INT8 calibration table %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache):
            try:
                atomic_write_bytes(cache_path, bytes(cache))
            except OSError as e:
                log.warning("could not write calibration cache %s: %s", cache_path, e)

    return EntropyCalibrator()
