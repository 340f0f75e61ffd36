"""Training checkpoint -> verified ONNX file with the model's metadata embedded.

The graph: input `input` (Nx3xSxS float32, normalized RGB, dynamic batch) -> network -> softmax -> output
`probabilities` (NxC float32). A checkpoint with a novelty bank adds a second output `novelty` (N float32,
edge.core.novelty.ClassifierWithNovelty: the same backbone pass, the bank as a constant), so every runtime computes
the score from this one file. The FP16 variant keeps float32 input and outputs (a Cast in, the network in
float16, softmax and novelty in float32), so every backend feeds both variants the same batch.

Opset: 11 by default. Every TensorRT that JetPack has shipped parses it (TensorRT 7.1 on JetPack 4.4, which needs
opset <= 11, through 8.2 on the Nano's last JetPack 4.6, 8.5 on JetPack 5 and 10.x on JetPack 6), as do
onnxruntime builds, and the registry's CNNs use nothing newer. `--opset` picks another (9 to 20).
The TorchScript exporter (`dynamo=False`) is used: it writes exactly the opset asked for (the torch.export-based
exporter starts at opset 18 and converts down, which old TensorRT parsers handle poorly) and needs no onnxscript.

The file is written under a temporary name in the output directory, verified (export.verify), and only then
renamed into place: a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge.core.errors import DiskFullError, EdgeError, brief, disk_full
from edge.core.fsutil import TEMP_PREFIX, make_readable
from edge.core.metadata import ONNX_META_KEY, ModelMeta, load_model, sha256_file
from edge.core.model_files import EXPORT_INFO_KEY, INPUT_NAME, NOVELTY_OUTPUT, OUTPUT_NAME
from edge.core.novelty import ClassifierWithNovelty

from .options import MAX_OPSET, MIN_OPSET, ExportOptions, output_path
from .verify import (
    InputBatch,
    VerifyReport,
    require_passed,
    torch_outputs,
    verification_inputs,
    verify_onnx,
)

log = logging.getLogger(__name__)

PRODUCER = "jetson-edge-classifier"


def half_precision_runs_on_cpu() -> bool:
    """Tracing an fp16 model runs it on the CPU; torch < 2.2 has no half-precision convolution there."""
    try:
        torch.nn.functional.conv2d(torch.zeros(1, 1, 2, 2, dtype=torch.half), torch.zeros(1, 1, 1, 1, dtype=torch.half))
    except RuntimeError:
        return False
    return True


class ProbabilityModel(nn.Module):
    """What is exported: the network followed by softmax. FP16: input cast to half, network in half, softmax in FP32."""

    def __init__(self, net: nn.Module, fp16: bool = False):
        super().__init__()
        self.net = copy.deepcopy(net).half() if fp16 else net
        self.fp16 = fp16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp16:
            x = x.half()
        return torch.softmax(self.net(x).float(), dim=1)


def exported_module(model: nn.Module, fp16: bool) -> nn.Module:
    """What goes into the graph: ProbabilityModel, or for a model with novelty the same wrapper in `fp16`."""
    if isinstance(model, ClassifierWithNovelty):
        return ClassifierWithNovelty(model.net, model.features_fn, model.head_fn, model.scorer, fp16).eval()
    return ProbabilityModel(model, fp16).eval()


def _torch_export(module, example, path: Path, opset: int, outputs: list[str]) -> None:
    kwargs = dict(
        input_names=[INPUT_NAME],
        output_names=outputs,
        dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
        opset_version=opset,
        do_constant_folding=True,
        export_params=True,
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: exact low opsets for old TensorRT (see module doc)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings are not for users
        torch.onnx.export(module, (example,), str(path), **kwargs)


def _embed_metadata(path: Path, meta: ModelMeta, info: dict) -> None:
    """Add metadata_props (ModelMeta JSON + export info), check the model, rewrite the file and fsync it."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in ((ONNX_META_KEY, meta.to_json()), (EXPORT_INFO_KEY, json.dumps(info, sort_keys=True))):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    model.producer_name = PRODUCER
    from edge import __version__

    model.producer_version = __version__
    novelty = f", {NOVELTY_OUTPUT} = novelty score (N)" if meta.novelty is not None else ""
    model.doc_string = (
        f"{meta.arch} image classifier ({', '.join(meta.class_names)}); "
        f"input {INPUT_NAME} Nx3x{meta.preprocess.input_size}"
        f"x{meta.preprocess.input_size} normalized RGB, output {OUTPUT_NAME} = softmax{novelty}; metadata in "
        f"{ONNX_META_KEY!r}"
    )
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def export_onnx_verified(
    checkpoint: str | os.PathLike,
    options: ExportOptions | None = None,
    *,
    fp16: bool | None = None,
    inputs: InputBatch | None = None,
) -> tuple[Path, VerifyReport]:
    """Export a training checkpoint to ONNX, verify it against PyTorch, and move it into place -> (path, report).

    `options` (default ExportOptions()) gives the opset, verification images and where the file goes
    (`output_path`); `fp16` overrides options.fp16 (`--format all --fp16` writes both).

    Raises EdgeError (one line) for an unreadable or foreign checkpoint, an unwritable output, an export failure,
    and ExportVerificationError when the file does not match PyTorch within tolerance; nothing is left behind then.
    """
    options = options or ExportOptions()
    fp16 = options.fp16 if fp16 is None else fp16
    opset = options.opset
    checkpoint = Path(checkpoint)
    model, meta = load_model(checkpoint, "cpu", with_novelty=True)
    meta.source_sha256 = sha256_file(checkpoint)
    out = output_path(options, "onnx-fp16" if fp16 else "onnx", checkpoint)
    precision = "fp16" if fp16 else "fp32"
    batch = inputs if inputs is not None else verification_inputs(meta, options.calib_data, options.verify_images)
    reference = torch_outputs(model, batch.data)
    outputs = [OUTPUT_NAME, NOVELTY_OUTPUT] if isinstance(model, ClassifierWithNovelty) else [OUTPUT_NAME]

    size = meta.preprocess.input_size
    info = {
        "precision": precision,
        "opset": opset,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "outputs": outputs,
        "output_kind": "softmax",
        "io_dtype": "float32",
        "input_shape": ["batch", 3, size, size],
        "exporter": f"torch {torch.__version__} torch.onnx (TorchScript)",
    }
    if fp16 and not half_precision_runs_on_cpu():
        raise EdgeError(
            f"--fp16 ONNX export on the CPU needs torch >= 2.2 "
            f"(this is {torch.__version__}, which has no half-precision "
            "convolution on the CPU); export fp32 and build the engine with --fp16 on the device"
        )
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=TEMP_PREFIX, suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        module = exported_module(model, fp16)
        example = torch.from_numpy(batch.data[:2].copy()) if len(batch.data) >= 2 else torch.zeros(2, 3, size, size)
        log.info("exporting %s (%s, opset %d) to %s", meta.arch, precision, opset, out)
        try:
            _torch_export(module, example, tmp, opset, outputs)
            _embed_metadata(tmp, meta, info)
        except EdgeError:
            raise
        except Exception as e:  # exporter and checker errors are many types; the message matters
            if disk_full(e):
                raise DiskFullError(out.parent, e) from e
            raise EdgeError(
                f"could not export {meta.arch} to ONNX opset {opset}: {brief(e, 300)}; try another --opset "
                f"({MIN_OPSET}..{MAX_OPSET})"
            ) from e
        report = verify_onnx(tmp, model, batch, precision, reference=reference, name=out.name)
        require_passed(report, f"verification failed, {out.name} not written")
        make_readable(tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return out, report


def export_onnx(checkpoint: str | os.PathLike, output: str | os.PathLike | None = None, **options: Any) -> Path:
    """Export and verify -> path of the written ONNX file; keywords are ExportOptions fields (opset, fp16,
    calib_data, verify_images)."""
    return export_onnx_verified(checkpoint, ExportOptions(output=output, **options))[0]
