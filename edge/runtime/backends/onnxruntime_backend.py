"""onnxruntime backend: an `edge export` ONNX file on TensorRT -> CUDA -> CPU execution providers (what exists).

Labels and preprocessing come from the file's metadata (`metadata_props[ONNX_META_KEY]`). The exporter ends the
graph with a Softmax, so outputs are probabilities; a graph without one (exported elsewhere) gets softmax here.
A model with a novelty score has a second output, `novelty` (N float32), computed inside the graph.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from edge.core.errors import EdgeError, brief
from edge.core.metadata import ModelMeta
from edge.core.model_files import NOVELTY_OUTPUT, OUTPUT_NAME, meta_from_metadata_props
from edge.runtime.backends.base import Backend, Outputs, as_probabilities, check_batch, softmax

log = logging.getLogger(__name__)

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = PROVIDER_ORDER[:2]


def default_threads() -> int:
    """intra-op threads: all cores up to 4 (more rarely helps a batch-1 CNN and starves the capture thread)."""
    env = os.environ.get("EDGE_ORT_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError as e:
            raise EdgeError(f"EDGE_ORT_THREADS must be a whole number, got {env!r}") from e
    return max(1, min(4, os.cpu_count() or 1))


def trt_cache_dir() -> Path | None:
    """A writable directory for onnxruntime's TensorRT engine cache (None if none can be had)."""
    from edge.core.fsutil import ensure_writable_dir

    base = os.environ.get("EDGE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "jetson-edge-classifier")
    try:
        return ensure_writable_dir(Path(base) / "ort-trt", "TensorRT engine cache directory")
    except EdgeError as e:
        log.warning("%s; the TensorRT provider will rebuild its engine at every start", e)
        return None


def select_providers(available: list[str], device: str) -> list[str]:
    """Providers to ask for, fastest first, filtered by what this onnxruntime build has."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    chosen = [p for p in PROVIDER_ORDER if p in available]
    if device == "cuda" and not any(p in GPU_PROVIDERS for p in chosen):
        raise EdgeError(
            f"--device cuda asked for, but this onnxruntime has no GPU provider (has: {', '.join(available)}); "
            f"install onnxruntime-gpu (on a Jetson: NVIDIA's Jetson wheel), or use --backend tensorrt or torch"
        )
    return chosen or ["CPUExecutionProvider"]


def read_meta(path: Path, custom: dict[str, str]) -> ModelMeta:
    """ModelMeta from the session's metadata map (the exporter's reader, so messages match `edge export`)."""
    return meta_from_metadata_props(custom, source=repr(str(path)))


_PASS_THROUGH = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Transpose"}


def _ends_in_softmax(path: Path, output_name: str) -> bool | None:
    """Is the graph's output a Softmax (possibly followed by shape-only ops)? None when it cannot be told."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - inspection is best effort; fall back to looking at the values
        return None
    producer = {o: n for n in graph.node for o in n.output}
    name = output_name
    for _ in range(16):
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "Softmax":
            return True
        if node.op_type not in _PASS_THROUGH or not node.input:
            return False
        name = node.input[0]
    return None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 spinning: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EdgeError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime "
                            "(or use --backend torch / tensorrt)") from e
        path = Path(path)
        providers = select_providers(ort.get_available_providers(), device)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(threads) if threads else default_threads()
        opts.inter_op_num_threads = 1
        # busy-waiting workers burn the cores the capture thread and the overlay need between inferences
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.log_severity_level = 3
        provider_args: list = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                trt_opts: dict[str, object] = {"trt_fp16_enable": True}
                cache = trt_cache_dir()
                if cache is not None:
                    trt_opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache))
                provider_args.append((p, trt_opts))
            else:
                provider_args.append(p)
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=provider_args)
        except Exception as e:  # ORT raises its own exception types for corrupt/invalid models
            raise EdgeError(f"cannot load ONNX model {str(path)!r} (corrupt, truncated or not ONNX): {brief(e)}") from e
        meta = read_meta(path, sess.get_modelmeta().custom_metadata_map)
        used = sess.get_providers()
        if device != "cpu" and providers[0] != used[0]:
            log.warning("onnxruntime could not start %s; running on %s", providers[0], used[0])
        dev = "cuda" if used[0] in GPU_PROVIDERS else "cpu"
        super().__init__(meta, device=dev, providers=used)
        inp = sess.get_inputs()[0]
        outputs = {o.name: o for o in sess.get_outputs()}
        out = outputs.get(OUTPUT_NAME) or sess.get_outputs()[0]
        self._sess = sess
        self._input = inp.name
        self._output = out.name
        self.has_novelty = NOVELTY_OUTPUT in outputs and meta.novelty is not None
        self._outputs = [out.name, NOVELTY_OUTPUT] if self.has_novelty else [out.name]
        self._fp16_input = inp.type == "tensor(float16)"
        batch_dim = inp.shape[0] if inp.shape else None
        self.max_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        shape = [d for d in inp.shape[1:]] if inp.shape else []
        if len(shape) == 3 and all(isinstance(d, int) for d in shape) and tuple(shape) != (3, self.input_size,
                                                                                          self.input_size):
            raise EdgeError(f"{str(path)!r} takes input {shape} but its metadata says 3x{self.input_size}x"
                            f"{self.input_size}; re-export it with `edge export`")
        self._has_softmax = _ends_in_softmax(path, out.name)
        self.threads = opts.intra_op_num_threads

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        x = batch.astype(np.float16) if self._fp16_input else batch
        ys = self._sess.run(self._outputs, {self._input: x})
        return [np.asarray(y, np.float32).reshape(batch.shape[0], -1) for y in ys]

    def run(self, batch: np.ndarray) -> Outputs:
        if self._sess is None:
            raise RuntimeError("backend is closed")
        batch = check_batch(batch, self.input_size)
        step = self.max_batch or max(1, batch.shape[0])
        chunks = [self._run(batch[i:i + step]) for i in range(0, batch.shape[0], step)] or [self._run(batch)]
        y = np.concatenate([c[0] for c in chunks])
        novelty = np.concatenate([c[1] for c in chunks]).reshape(-1) if self.has_novelty else None
        if self._has_softmax is False:
            return softmax(y), novelty
        return (as_probabilities(y) if self._has_softmax is None else y), novelty

    def close(self) -> None:
        self._sess = None
