"""Export: checkpoint -> verified ONNX (FP32/FP16) with embedded metadata; engine cache and builder logic.

CPU only, random-init checkpoints, synthetic images. TensorRT itself is not installable here: the builder's
orchestration runs against a small fake `tensorrt` module, and the real-TensorRT tests (marked `tensorrt`) skip
with a reason where it is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edge.core.errors import EdgeError
from edge.core.metadata import ModelMeta, load_checkpoint, load_model, save_checkpoint, sha256_file
from edge.core.model_files import (
    INPUT_NAME,
    NOVELTY_OUTPUT,
    OUTPUT_NAME,
    EngineKey,
    meta_from_metadata_props,
    read_engine_sidecar,
    read_onnx_export_info,
    read_onnx_meta,
    sidecar_path,
)
from edge.core.preprocess import preprocess_image
from edge.core.registry import create_model, get_arch
from edge.core.synthetic import make_dataset
from edge.runtime.backends import tensorrt_backend
from edge.runtime.backends.tensorrt_backend import TensorRTBackend
from export import cache, calibration, cuda_binding, engine_build, engine_progress
from export.cli import main as export_main
from export.onnx_export import half_precision_runs_on_cpu
from export.verify import (
    ONNX_TOLERANCES,
    find_images,
    load_image_batch,
    read_image_bgr,
    verification_inputs,
)

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
    meta = ModelMeta(arch=arch, class_names=list(CLASSES), preprocess=get_arch(arch).preprocess, training=training or {})
    save_checkpoint(path, state, meta)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", per_class=4, size=(96, 80))  # 8 images


@pytest.fixture(scope="module")
def squeeze(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("sq") / "model.pt", "squeezenet1_1")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = export_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def parse_summary(out: str) -> dict:
    m = SUMMARY.search(out)
    assert m, f"no verification summary in output: {out!r}"
    return m.groupdict()


def leftovers(folder: Path) -> list[str]:
    """Files an export may have left: ONNX/engine outputs and temporary names."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".engine", ".json") or p.name.startswith(".tmp-"))


# ------------------------------------------------------------------------------------------- ONNX export + verify


@pytest.mark.parametrize("arch", ["alexnet", "squeezenet1_1", "efficientnet_lite0"])
def test_export_arch_verified_on_real_images_and_self_describing(arch, tmp_path, dataset, capsys):
    ckpt = make_checkpoint(tmp_path / "model.pt", arch)
    rc, out, err = run_cli(capsys, ckpt, "--calib-data", dataset)
    assert rc == 0, err
    s = parse_summary(out)
    print(f"{arch}: max abs diff {s['diff']}, top-1 agreement {s['agree']}% ({s['n_ok']}/{s['n']})", file=sys.stderr)
    assert s["verdict"] == "PASS" and float(s["agree"]) == 100.0 and s["n"] == "8"
    assert float(s["diff"]) <= ONNX_TOLERANCES["fp32"][0]
    assert "8 images from --calib-data" in out
    onnx_path = tmp_path / "model.onnx"
    assert f"wrote {onnx_path}" in out
    assert leftovers(tmp_path) == ["model.onnx"]

    # model.onnx alone is enough to serve: labels, preprocessing, arch and the source checkpoint's hash
    meta = read_onnx_meta(onnx_path)
    assert meta.class_names == CLASSES and meta.arch == arch
    assert meta.preprocess == get_arch(arch).preprocess
    assert meta.source_sha256 == sha256_file(ckpt)
    assert read_onnx_export_info(onnx_path)["precision"] == "fp32"

    proto = onnx.load(str(onnx_path), load_external_data=False)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 11
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    assert inp.name == INPUT_NAME and outp.name == OUTPUT_NAME
    assert inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, 224, 224]

    # independent check: batch 1 and batch 3 give PyTorch's softmax on real images, through the model's own spec
    files = find_images(dataset)[:3]
    batch, _ = load_image_batch(files, meta.preprocess)
    model, _ = load_model(ckpt)
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(batch)), 1).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got3 = sess.run(None, {INPUT_NAME: batch})[0]
    got1 = sess.run(None, {INPUT_NAME: batch[:1]})[0]
    np.testing.assert_allclose(got3.sum(1), 1.0, atol=1e-5)  # probabilities, not logits
    np.testing.assert_allclose(got3, ref, atol=1e-5)
    np.testing.assert_allclose(got1[0], ref[0], atol=1e-5)


def test_fp16_variant_keeps_float32_io_and_is_verified_with_looser_tolerance(squeeze, dataset, tmp_path, capsys):
    out_path = tmp_path / "cam.fp16.onnx"
    rc, out, err = run_cli(capsys, squeeze, "--fp16", "--calib-data", dataset, "--output", out_path)
    if not half_precision_runs_on_cpu():  # torch < 2.2 (JetPack 6.0's 2.1): one line that says what to do instead
        assert rc == 2 and "needs torch >= 2.2" in err and "build the engine with --fp16" in err
        assert not out_path.exists()
        return
    assert rc == 0, err
    s = parse_summary(out)
    assert "(fp16, onnxruntime CPU)" in out and s["verdict"] == "PASS"
    assert float(s["tol"]) == ONNX_TOLERANCES["fp16"][0] and float(s["need"]) == 99
    assert float(s["diff"]) <= ONNX_TOLERANCES["fp16"][0] and float(s["agree"]) >= 99
    proto = onnx.load(str(out_path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # same feed as FP32
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in proto.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)  # conv weights really are fp16
    assert read_onnx_export_info(out_path)["precision"] == "fp16"
    assert read_onnx_meta(out_path).class_names == CLASSES
    assert leftovers(tmp_path) == ["cam.fp16.onnx"]


def test_verification_inputs_prefer_calib_data_then_training_data_then_seeded_random(tmp_path, dataset, capsys):
    ckpt = make_checkpoint(tmp_path / "model.pt", "squeezenet1_1", training={"data": str(dataset)})
    rc, out, _ = run_cli(capsys, ckpt)
    assert rc == 0 and f"8 images from training data '{dataset}'" in out

    gone = make_checkpoint(tmp_path / "gone.pt", "squeezenet1_1", training={"data": str(tmp_path / "moved")})
    rc, out, _ = run_cli(capsys, gone, "--verify-images", "5")
    assert rc == 0 and "5 seeded random inputs (seed 0; training data" in out and "not found here" in out
    assert parse_summary(out)["n"] == "5"

    meta = read_onnx_meta(tmp_path / "gone.onnx")
    a, b = verification_inputs(meta, None, 4), verification_inputs(meta, None, 4)
    assert not a.real and np.array_equal(a.data, b.data)  # seeded: the same every run

    real = verification_inputs(read_onnx_meta(tmp_path / "model.onnx"), dataset, 3)
    first = preprocess_image(read_image_bgr(find_images(dataset)[0]), meta.preprocess, "BGR")
    assert real.real and real.data.shape == (3, 3, 224, 224) and np.array_equal(real.data[0], first)


def test_distributed_module_prefix_is_stripped(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ddp.pt", "squeezenet1_1", prefix="module.")
    assert all(k.startswith("module.") for k in torch.load(ckpt, weights_only=True)["state_dict"])
    rc, out, err = run_cli(capsys, ckpt, "--verify-images", "4")
    assert rc == 0, err
    assert parse_summary(out)["verdict"] == "PASS"
    assert (tmp_path / "ddp.onnx").is_file()


def test_python_m_export_entry(squeeze):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "export", str(squeeze), "--format", "bogus"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "error: unknown format 'bogus'; choose one of: onnx, engine, all\n"


def test_opset_option(squeeze, tmp_path, capsys):
    rc, out, err = run_cli(capsys, squeeze, "--opset", "13", "-o", tmp_path / "m13.onnx", "--verify-images", "2")
    assert rc == 0, err
    proto = onnx.load(str(tmp_path / "m13.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 13
    rc, _, err = run_cli(capsys, squeeze, "--opset", "4")
    assert rc == 2 and err.count("\n") == 1 and "--opset 4" in err and "9..20" in err


def test_failed_verification_exits_nonzero_and_leaves_no_file(squeeze, tmp_path, capsys, monkeypatch):
    import export.verify as verify

    real = verify.onnxruntime_outputs

    def rolled(path, batch):
        probs, novelty = real(path, batch)
        return np.roll(probs, 1, axis=1), novelty

    monkeypatch.setattr(verify, "onnxruntime_outputs", rolled)
    target = tmp_path / "out" / "model.onnx"
    rc, out, err = run_cli(capsys, squeeze, "--output", target, "--verify-images", "6")
    assert rc == 3
    assert err.startswith("error: verification failed, model.onnx not written") and err.count("\n") == 1
    assert "top-1 agreement" in err and "FAIL" in err
    assert not target.exists() and leftovers(target.parent) == []


# --------------------------------------------------------------------------------------------------- bad input

def _foreign_pth(p: Path) -> None:  # a plain torchvision-style state dict: another tool's file
    torch.save(create_model("squeezenet1_1", 3, "none").state_dict(), p)


@pytest.mark.parametrize(
    "name, make, expect",
    [
        ("corrupt.pt", lambda p: p.write_bytes(os.urandom(4096)), "corrupt, truncated or not a PyTorch checkpoint"),
        ("truncated.pt", "truncate", "corrupt, truncated or not a PyTorch checkpoint"),
        ("other_tool.pth", _foreign_pth, "is not a checkpoint written by `train`"),
        ("missing.pt", None, "not found"),
    ],
)
def test_bad_checkpoint_gives_one_line_and_no_file(name, make, expect, squeeze, tmp_path, capsys):
    bad = tmp_path / name
    if make == "truncate":
        bad.write_bytes(squeeze.read_bytes()[: squeeze.stat().st_size // 2])
    elif make is not None:
        make(bad)
    rc, out, err = run_cli(capsys, bad)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expect in err and "Traceback" not in err
    assert leftovers(tmp_path) == []


def test_checkpoint_whose_weights_do_not_fit_its_arch(tmp_path, capsys):
    state = create_model("squeezenet1_1", 3, "none").state_dict()
    save_checkpoint(tmp_path / "m.pt", state, ModelMeta("alexnet", CLASSES, get_arch("alexnet").preprocess))
    rc, _, err = run_cli(capsys, tmp_path / "m.pt")
    assert rc == 2 and "does not match its declared arch 'alexnet'" in err and err.count("\n") == 1
    assert leftovers(tmp_path) == []


def test_unwritable_output_and_unknown_format(squeeze, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, _, err = run_cli(capsys, squeeze, "--output", blocker / "model.onnx")
    assert rc == 2 and err.count("\n") == 1 and "is a file, not a directory" in err

    before = squeeze.read_bytes()
    rc, _, err = run_cli(capsys, squeeze, "--output", squeeze)  # refused for its suffix before anything runs
    assert rc == 2 and err.count("\n") == 1 and "ends in '.pt'" in err and squeeze.read_bytes() == before
    from export.onnx_export import export_onnx

    with pytest.raises(EdgeError, match="is the checkpoint itself"):  # the library's own guard, any suffix
        export_onnx(squeeze, squeeze)

    rc, out, err = run_cli(capsys, squeeze, "--format", "tflite")
    assert rc == 2 and out == "" and err == "error: unknown format 'tflite'; choose one of: onnx, engine, all\n"

    rc, _, err = run_cli(capsys, squeeze, "--int8")
    assert rc == 2 and "--int8 applies to TensorRT engines only" in err

    rc, _, err = run_cli(capsys, squeeze, "--calib-data", tmp_path / "nope")
    assert rc == 2 and "--calib-data" in err and "is not a directory" in err
    assert leftovers(tmp_path) == [] and leftovers(squeeze.parent) == []


@pytest.mark.parametrize(
    "argv, name, expect",
    [
        ((), "out.txt", "an ONNX file must end in .onnx"),
        (("--fp16",), "model", "ends in '(no suffix)'"),
        (("--format", "engine"), "model.onnx", "a TensorRT engine must end in one of .engine, .plan, .trt"),
        (("--format", "engine", "--int8"), "model.txt", "a TensorRT engine must end in one of"),
    ],
)
def test_output_whose_suffix_serve_would_refuse_is_refused_before_any_work(argv, name, expect, squeeze, tmp_path, capsys):
    """`edge serve` picks the runtime by suffix: an out.txt would be written, verified, then refused at serve time."""
    before = sorted(p.name for p in squeeze.parent.iterdir())
    rc, out, err = run_cli(capsys, squeeze, *argv, "--output", tmp_path / name)
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: --output '{tmp_path / name}'") and expect in err and "edge serve" in err
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in squeeze.parent.iterdir()) == before


@pytest.mark.skipif(engine_build.tensorrt_available(), reason="TensorRT is installed here")
def test_engine_without_tensorrt_says_how_to_get_it(squeeze, capsys):
    before = sorted(p.name for p in squeeze.parent.iterdir())
    rc, out, err = run_cli(capsys, squeeze, "--format", "engine", "--fp16")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "TensorRT" in err and "JetPack" in err
    assert sorted(p.name for p in squeeze.parent.iterdir()) == before  # checked before any work


def test_read_meta_errors_are_one_line(tmp_path, squeeze):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx" * 10)
    with pytest.raises(EdgeError, match="corrupt, truncated or not an ONNX file"):
        read_onnx_meta(junk)
    plain = tmp_path / "plain.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph), str(plain))  # a valid ONNX file from another tool
    with pytest.raises(EdgeError, match="was not written by `edge export`"):
        read_onnx_meta(plain)
    with pytest.raises(EdgeError, match="no 'jetson_edge_meta' metadata"):
        meta_from_metadata_props({}, "x")
    with pytest.raises(EdgeError, match="has no sidecar"):
        read_engine_sidecar(tmp_path / "model.fp16.engine")


# ------------------------------------------------------------------------------------- engine cache (no TensorRT)

def _key(**kw) -> EngineKey:
    base = dict(onnx_sha256="a" * 64, tensorrt_version="8.5.2.2", gpu_name="Orin", compute_capability=(8, 7),
                precision="fp16", input_shape=(1, 3, 224, 224), max_batch=8)
    base.update(kw)
    return cache.engine_cache_key(**base)


def _meta() -> ModelMeta:
    return ModelMeta("squeezenet1_1", CLASSES, get_arch("squeezenet1_1").preprocess)


def test_cache_key_changes_with_every_field_and_names_it():
    k = _key()
    assert k.compute_capability == "8.7" and k.calibration == ""
    variants = {
        "onnx_sha256": _key(onnx_sha256="b" * 64),
        "tensorrt_version": _key(tensorrt_version="10.3.0"),
        "gpu_name": _key(gpu_name="NVIDIA Tegra X1"),
        "compute_capability": _key(compute_capability="5.3"),
        "precision": _key(precision="int8", calibration="8:abc"),
        "input_shape": _key(input_shape=(1, 3, 256, 256)),
        "max_batch": _key(max_batch=4),
    }
    digests = {k.digest()} | {v.digest() for v in variants.values()}
    assert len(digests) == len(variants) + 1
    for field_name, other in variants.items():
        assert any(d.startswith(field_name + ":") for d in k.differences(other)), field_name
    assert EngineKey.from_dict(json.loads(json.dumps(k.to_dict()))) == k
    assert k.environment_mismatch("8.5.2.2", "Orin", "8.7") is None
    assert "TensorRT 8.5.2.2 != 10.3.0" in k.environment_mismatch("10.3.0", "Orin", "8.7")
    with pytest.raises(EdgeError, match="unknown precision 'int4'"):
        _key(precision="int4")


def test_engine_paths():
    assert cache.default_engine_path("/m/model.onnx", "fp16") == Path("/m/model.fp16.engine")
    assert cache.default_engine_path("/m/model.fp16.onnx", "fp16") == Path("/m/model.fp16.engine")
    k = _key()
    p = cache.cached_engine_path("/c", "/m/model.onnx", k)
    assert p.parent == Path("/c") and p.name == f"model.fp16.{k.digest()[:12]}.engine"
    t = cache.timing_cache_path("/c", "8.5.2.2", "NVIDIA Tegra X1", "5.3")
    assert t == Path("/c/timing-trt8.5.2.2-nvidia-tegra-x1-sm5.3.cache")
    assert sidecar_path("/m/model.fp16.engine") == Path("/m/model.fp16.engine.json")


def test_write_engine_and_staleness(tmp_path):
    engine = tmp_path / "model.fp16.engine"
    k = _key()
    assert "no engine" in cache.stale_reason(engine, k)
    cache.write_engine(engine, b"ENGINE-1", k, _meta())
    assert engine.read_bytes() == b"ENGINE-1" and cache.stale_reason(engine, k) is None
    side = read_engine_sidecar(engine)
    assert side.key == k and side.meta.class_names == CLASSES and side.engine_size == 8
    assert side.engine_sha256 == hashlib.sha256(b"ENGINE-1").hexdigest()
    raw = json.loads(sidecar_path(engine).read_text())
    assert raw["key"]["tensorrt_version"] == "8.5.2.2" and raw["key"]["gpu_name"] == "Orin"
    assert raw["key"]["input_shape"] == [1, 3, 224, 224] and raw["key"]["precision"] == "fp16"
    umask = os.umask(0)
    os.umask(umask)
    assert engine.stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600: a service user must be able to read it

    reason = cache.stale_reason(engine, _key(tensorrt_version="10.3.0"))
    assert "tensorrt_version: '8.5.2.2' -> '10.3.0'" in reason
    assert "onnx_sha256" in cache.stale_reason(engine, _key(onnx_sha256="c" * 64))
    engine.write_bytes(b"ENGINE-2")  # same size, other content (e.g. copied over by hand)
    assert "sha256" in cache.stale_reason(engine, k)
    engine.write_bytes(b"ENGINE-22")
    assert "size" in cache.stale_reason(engine, k)
    sidecar_path(engine).write_text("{broken")
    assert "cannot read engine sidecar" in cache.stale_reason(engine, k)
    raw["format_version"] = "two"  # a hand-edited sidecar: a reason to rebuild, not a traceback
    sidecar_path(engine).write_text(json.dumps(raw))
    assert "incomplete" in cache.stale_reason(engine, k)


def test_interrupted_engine_write_never_pairs_engine_with_wrong_sidecar(tmp_path, monkeypatch):
    engine = tmp_path / "model.fp16.engine"
    old = _key()
    cache.write_engine(engine, b"OLD", old, _meta())

    import edge.core.fsutil

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(edge.core.fsutil.os, "replace", boom)
    with pytest.raises(OSError):
        cache.write_engine(engine, b"NEW-ENGINE", _key(onnx_sha256="d" * 64), _meta())
    monkeypatch.undo()
    assert not sidecar_path(engine).exists()  # old sidecar removed first: the old engine will be rebuilt
    assert cache.stale_reason(engine, old) is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_calibration_digest_tracks_the_image_set(dataset, tmp_path):
    files = find_images(dataset)
    assert cache.calibration_digest(files) == cache.calibration_digest(list(files))
    assert cache.calibration_digest(files) != cache.calibration_digest(files[:-1])
    assert cache.calibration_digest(files).startswith(f"{len(files)}:")


# ----------------------------------------------------------------------- engine builder against a fake TensorRT

class _FakeCuda:
    """Stands in for export.cuda_binding.TorchCudaBinding: a fixed GPU, buffers that record what is copied in."""

    name = "fake"

    def __init__(self):
        self.copied: list[np.ndarray] = []

    def device_info(self):
        return cuda_binding.DeviceInfo("Fake Orin", "8.7")

    def alloc(self, nbytes):
        cuda = self

        class Buf:
            ptr = 4096

            def copy_from(self, arr):
                cuda.copied.append(np.array(arr))

        return Buf()


def _fake_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """Just enough of TensorRT's Python API for build_serialized_engine's control flow."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.builds = []
    trt.engines = {}  # serialized engine -> (input name, profile min/opt/max shapes, {output name: shape})
    trt.deserialized = []

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    class Logger(ILogger):
        WARNING = 2

        def __init__(self, severity=2):
            pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self):
            self.inputs, self.outputs = [], []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            model = onnx.load_from_string(data)
            inp = model.graph.input[0]
            dims = [d.dim_value if d.dim_value else -1 for d in inp.type.tensor_type.shape.dim]
            self.network.inputs.append(Tensor(inp.name, dims))
            for out in model.graph.output:
                shape = [d.dim_value or -1 for d in out.type.tensor_type.shape.dim]
                self.network.outputs.append(Tensor(out.name, shape))
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (name, tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+"

    class Config:
        def __init__(self):
            self.flags, self.profiles = {"TF32"}, []  # TensorRT enables TF32 by default
            self.int8_calibrator = None
            self.calibration_profile = None
            self.progress_monitor = None
            self.timing = None

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.flags.discard(f)

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def set_calibration_profile(self, p):
            self.calibration_profile = p

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, tc, ignore_mismatch):
            self.timing = tc
            return True

        def get_timing_cache(self):
            return self.timing

    class Builder:
        platform_has_fast_fp16 = True
        platform_has_fast_int8 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls = {"batches": 0, "calib_from_cache": False}
            if "INT8" in config.flags:
                cal = config.int8_calibrator
                table = cal.read_calibration_cache()
                if table:
                    calls["calib_from_cache"] = True
                else:
                    while cal.get_batch([network.inputs[0].name]) is not None:
                        calls["batches"] += 1
                    cal.write_calibration_cache(b"calibration-table")
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 2)
                config.progress_monitor.step_complete("Building engine", 0)
                time.sleep(0.05)
                config.progress_monitor.phase_finish("Building engine")
            time.sleep(0.05)
            trt.builds.append(dict(config=config, network=network, **calls))
            data = f"ENGINE {sorted(config.flags)} {config.profiles[0].shapes}".encode()
            trt.engines[data] = (*config.profiles[0].shapes, {o.name: tuple(o.shape) for o in network.outputs})
            return data

    class Engine:
        """A deserialized engine, as far as TensorRTBackend's named-tensor I/O setup looks at it."""

        def __init__(self, in_name, lo, opt, hi, outputs):
            self.names, self.profile = [in_name, *outputs], (lo, opt, hi)
            self.shapes = {in_name: (-1, *hi[1:]), **outputs}
            self.num_io_tensors = len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == self.names[0] else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def get_tensor_profile_shape(self, name, profile):
            return self.profile

        def create_execution_context(self):
            return types.SimpleNamespace()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            trt.deserialized.append(bytes(data))
            known = trt.engines.get(bytes(data))
            return Engine(*known) if known else None

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.ILogger, trt.Logger, trt.OnnxParser, trt.Builder = ILogger, Logger, OnnxParser, Builder
    trt.IInt8EntropyCalibrator2, trt.IProgressMonitor = IInt8EntropyCalibrator2, IProgressMonitor
    trt.Runtime, trt.init_libnvinfer_plugins = Runtime, lambda logger, namespace: True
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF")
    trt.nptype = {"FLOAT": np.float32, "HALF": np.float16}.__getitem__
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    trt = _fake_tensorrt()
    cuda = _FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda_binding, "_BINDING", cuda)
    monkeypatch.setattr(tensorrt_backend, "_TRT_LOGGER", None)
    monkeypatch.setattr(engine_progress, "PROGRESS_INTERVAL_S", 0.01)
    trt.cuda = cuda
    return trt


@pytest.fixture(scope="module")
def squeeze_onnx(squeeze, tmp_path_factory) -> Path:
    from export.onnx_export import export_onnx

    return export_onnx(squeeze, tmp_path_factory.mktemp("onnx") / "model.onnx", verify_images=2)


def test_builder_caches_engine_and_rebuilds_on_any_change(fake_trt, squeeze_onnx, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(squeeze_onnx.read_bytes())
    lines: list[str] = []
    first = engine_build.build_engine_report(onnx_path, "fp16", verify=False, progress=lines.append)
    assert first.built and first.path == tmp_path / "model.fp16.engine"
    assert any("building fp16 engine model.fp16.engine" in ln and "elapsed" in ln for ln in lines)
    build = fake_trt.builds[-1]
    assert {"FP16"} <= build["config"].flags
    assert build["config"].profiles[0].shapes == (INPUT_NAME, (1, 3, 224, 224), (1, 3, 224, 224), (8, 3, 224, 224))
    side = read_engine_sidecar(first.path)
    assert side.key.gpu_name == "Fake Orin" and side.key.tensorrt_version == "10.3.0"
    assert side.key.onnx_sha256 == sha256_file(onnx_path) and side.meta.class_names == CLASSES
    timing = cache.timing_cache_path(tmp_path, "10.3.0", "Fake Orin", "8.7")
    assert timing.read_bytes() == b"+"  # timing cache saved for the next build

    again = engine_build.build_engine_report(onnx_path, "fp16", verify=False)
    assert not again.built and len(fake_trt.builds) == 1 and "up to date" in again.summary()

    fake_trt.__version__ = "10.4.0"  # JetPack upgrade: never reuse
    upgraded = engine_build.build_engine_report(onnx_path, "fp16", verify=False)
    assert upgraded.built and "tensorrt_version" in upgraded.reason and len(fake_trt.builds) == 2
    assert timing.with_name(timing.name.replace("10.3.0", "10.4.0")).is_file()

    proto = onnx.load(str(onnx_path))
    proto.doc_string += " (re-exported)"
    onnx.save(proto, str(onnx_path))  # a re-exported ONNX file: other bytes
    rebuilt = engine_build.build_engine_report(onnx_path, "fp16", verify=False)
    assert rebuilt.built and "onnx_sha256" in rebuilt.reason

    fp32 = engine_build.build_engine(onnx_path, "fp32", verify=False)
    assert fp32 == tmp_path / "model.fp32.engine" and "TF32" not in fake_trt.builds[-1]["config"].flags

    cached = engine_build.build_engine(onnx_path, "fp16", cache_dir=tmp_path / "cache", verify=False)
    assert cached.parent == tmp_path / "cache" and read_engine_sidecar(cached).key.precision == "fp16"


def test_int8_calibrates_on_real_images_and_caches_the_table(fake_trt, squeeze_onnx, dataset, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(squeeze_onnx.read_bytes())
    with pytest.raises(EdgeError, match="INT8 needs real calibration images"):
        engine_build.build_engine(onnx_path, "int8", verify=False)
    assert not (tmp_path / "model.int8.engine").exists()

    path = engine_build.build_engine(onnx_path, "int8", dataset, verify=False, calib_batch=4)
    build = fake_trt.builds[-1]
    assert path == tmp_path / "model.int8.engine" and {"INT8", "FP16"} <= build["config"].flags
    assert build["batches"] == 2 and not build["calib_from_cache"]  # 8 images / batch 4
    copied = fake_trt.cuda.copied
    assert [b.shape for b in copied] == [(4, 3, 224, 224)] * 2
    spec = read_onnx_meta(onnx_path).preprocess
    expected = preprocess_image(read_image_bgr(find_images(dataset)[0]), spec, "BGR")
    assert np.array_equal(copied[0][0], expected)  # the serving preprocessing, on real images
    assert build["config"].calibration_profile.shapes[1] == (4, 3, 224, 224)
    assert read_engine_sidecar(path).key.calibration.startswith("8:")
    tables = list(tmp_path.glob("model.int8.*.calib"))
    assert len(tables) == 1 and tables[0].read_bytes() == b"calibration-table"

    engine_build.build_engine(onnx_path, "int8", dataset, verify=False, calib_batch=4, force=True)
    assert fake_trt.builds[-1]["calib_from_cache"]  # the table is reused, not recomputed


@pytest.fixture
def engine_runs_onnx(fake_trt, monkeypatch):
    """TensorRTBackend on a CPU box: the fake TensorRT deserializes the engine and TensorRTBackend sets up its I/O
    as on a device; only the CUDA parts are replaced: no buffers to allocate, and executing a chunk runs the ONNX
    file the engine was built from in onnxruntime (through `transform`, which gets and returns (probabilities,
    novelty or None), to model a bad engine)."""
    from export.verify import onnxruntime_outputs

    state = types.SimpleNamespace(onnx=None, transform=lambda y: y, chunks=[], loaded=[])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def allocate(self):
        state.loaded.append(self)

    def run(self, chunk):  # TensorRTBackend._run: one (n, ...) array per engine output, in self._out_names order
        state.chunks.append(chunk.shape[0])
        probs, novelty = state.transform(onnxruntime_outputs(state.onnx, chunk))
        return [probs] if novelty is None else [probs, novelty.reshape(-1, 1)]

    monkeypatch.setattr(TensorRTBackend, "_allocate", allocate)
    monkeypatch.setattr(TensorRTBackend, "_run", run)
    return state


def test_engine_is_verified_through_the_serving_backend(engine_runs_onnx, fake_trt, squeeze_onnx, dataset, tmp_path, capsys):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(squeeze_onnx.read_bytes())
    engine_runs_onnx.onnx = onnx_path
    rc, out, err = run_cli(capsys, onnx_path, "--format", "engine", "--fp16", "--calib-data", dataset, "--max-batch", "3")
    assert rc == 0, err
    s = parse_summary(out)
    assert "verify TensorRT fp16 engine vs model.onnx in onnxruntime on 8 images from --calib-data" in out
    assert s["verdict"] == "PASS" and s["n"] == "8" and float(s["diff"]) == 0.0
    engine = tmp_path / "model.fp16.engine"
    assert f"wrote {engine}" in out
    # the bytes the serving backend ran are the bytes written, described by the ONNX file's own metadata
    assert fake_trt.deserialized == [engine.read_bytes()]
    (backend,) = engine_runs_onnx.loaded
    assert isinstance(backend, TensorRTBackend) and backend.meta == read_onnx_meta(onnx_path)
    assert backend.max_batch == 3 and engine_runs_onnx.chunks == [3, 3, 2]  # the backend's own batching
    assert backend._context is None  # closed after verification: no GPU memory held while writing


def test_engine_that_disagrees_with_onnx_is_not_written(engine_runs_onnx, fake_trt, squeeze_onnx, dataset, tmp_path, capsys):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(squeeze_onnx.read_bytes())
    engine_runs_onnx.onnx = onnx_path
    engine_runs_onnx.transform = lambda y: (np.roll(y[0], 1, axis=1), y[1])  # every label moves: agreement 0%
    rc, out, err = run_cli(capsys, onnx_path, "--format", "engine", "--fp16", "--calib-data", dataset)
    assert rc == 3 and len(fake_trt.builds) == 1 and len(engine_runs_onnx.chunks) == 1
    assert err.startswith("error: engine verification failed, model.fp16.engine not written") and err.count("\n") == 1
    assert "TensorRT fp16 engine" in err and "FAIL" in err
    assert leftovers(tmp_path) == ["model.onnx"]


def test_engine_output_path_must_be_one_serve_reads(engine_runs_onnx, fake_trt, squeeze_onnx, tmp_path, capsys):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(squeeze_onnx.read_bytes())
    engine_runs_onnx.onnx = onnx_path
    with pytest.raises(EdgeError, match="a TensorRT engine must end in one of .engine, .plan, .trt"):
        engine_build.build_engine(onnx_path, "fp16", output=tmp_path / "model.bin", verify=False)
    assert fake_trt.builds == [] and leftovers(tmp_path) == ["model.onnx"]
    rc, out, err = run_cli(capsys, onnx_path, "--format", "engine", "-o", tmp_path / "cam.plan", "--verify-images", "1")
    plan = tmp_path / "cam.plan"
    assert rc == 0, err
    assert f"wrote {plan}" in out and read_engine_sidecar(plan).key.precision == "fp32"
    assert parse_summary(out)["verdict"] == "PASS"


# ------------------------------------------------------------------------------ novelty: the second output

def test_novelty_checkpoint_exports_both_outputs_verified_with_its_threshold(novelty_models, dataset, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(novelty_models[0].read_bytes())
    rc, out, err = run_cli(capsys, ckpt, "--calib-data", dataset)
    assert rc == 0, err
    s = parse_summary(out)
    assert s["verdict"] == "PASS" and float(s["ntol"]) == 1e-4 and float(s["ndiff"]) <= 1e-4
    onnx_path = tmp_path / "model.onnx"
    proto = onnx.load(str(onnx_path))
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME, NOVELTY_OUTPUT]
    assert all(o.type.tensor_type.shape.dim[0].dim_param for o in proto.graph.output)  # dynamic batch, both
    assert read_onnx_export_info(onnx_path)["outputs"] == [OUTPUT_NAME, NOVELTY_OUTPUT]
    _, ckpt_meta, _ = load_checkpoint(ckpt)
    assert read_onnx_meta(onnx_path).novelty == ckpt_meta.novelty and ckpt_meta.novelty_threshold > 0
    # the novelty computed by the file equals PyTorch's on batch 1 and 3
    batch, _ = load_image_batch(find_images(dataset)[:3], ckpt_meta.preprocess)
    model, _ = load_model(ckpt, with_novelty=True)
    with torch.no_grad():
        ref_probs, ref_novelty = model(torch.from_numpy(batch))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probs3, novelty3 = sess.run(None, {INPUT_NAME: batch})
    np.testing.assert_allclose(probs3, ref_probs.numpy(), atol=1e-5)
    np.testing.assert_allclose(novelty3, ref_novelty.numpy(), atol=1e-5)
    np.testing.assert_allclose(sess.run(None, {INPUT_NAME: batch[:1]})[1], ref_novelty.numpy()[:1], atol=1e-5)

    if half_precision_runs_on_cpu():
        rc, out, err = run_cli(capsys, ckpt, "--fp16", "--calib-data", dataset)
        s = parse_summary(out)
        assert rc == 0 and s["verdict"] == "PASS", err
        assert float(s["ntol"]) == 5e-3 and float(s["ndiff"]) <= 5e-3
        assert [o.name for o in onnx.load(str(tmp_path / "model.fp16.onnx")).graph.output] == [OUTPUT_NAME, NOVELTY_OUTPUT]


def test_novelty_that_disagrees_fails_verification_and_writes_nothing(novelty_models, tmp_path, capsys, monkeypatch):
    import export.verify as verify

    real = verify.onnxruntime_outputs
    monkeypatch.setattr(verify, "onnxruntime_outputs", lambda path, batch: (real(path, batch)[0], real(path, batch)[1] + 1e-3))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(novelty_models[0].read_bytes())
    rc, out, err = run_cli(capsys, ckpt, "--verify-images", "3")
    assert rc == 3 and err.count("\n") == 1 and "novelty max abs diff 0.001 > tolerance 0.0001" in err
    assert leftovers(tmp_path) == []


def test_engine_of_a_novelty_model_verifies_novelty_and_serves_the_threshold(engine_runs_onnx, fake_trt, novelty_models,
                                                                             dataset, tmp_path, capsys):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(novelty_models[1].read_bytes())
    engine_runs_onnx.onnx = onnx_path
    engine_runs_onnx.transform = lambda y: (y[0], y[1] + 0.02)  # an engine whose novelty is off by 0.02
    rc, out, err = run_cli(capsys, onnx_path, "--format", "engine", "--fp16", "--calib-data", dataset)
    assert rc == 3 and "novelty max abs diff 0.02 > tolerance 0.01" in err and leftovers(tmp_path) == ["model.onnx"]

    engine_runs_onnx.transform = lambda y: y
    rc, out, err = run_cli(capsys, onnx_path, "--format", "engine", "--fp16", "--calib-data", dataset)
    s = parse_summary(out)
    assert rc == 0 and s["verdict"] == "PASS" and float(s["ndiff"]) == 0.0 and float(s["ntol"]) == 1e-2, err
    engine = tmp_path / "model.fp16.engine"
    threshold = load_checkpoint(novelty_models[0])[1].novelty_threshold
    assert read_engine_sidecar(engine).meta.novelty_threshold == threshold  # checkpoint -> ONNX -> sidecar

    from edge.runtime.backends import load_backend

    x = verification_inputs(read_onnx_meta(onnx_path), dataset, 5).data
    with load_backend(engine) as trt_backend, load_backend(onnx_path, device="cpu") as ort_backend:
        assert trt_backend.name == "tensorrt" and trt_backend._out_names == [OUTPUT_NAME, NOVELTY_OUTPUT]
        assert trt_backend.has_novelty and trt_backend.novelty_threshold == threshold
        (p_trt, n_trt), (p_ort, n_ort) = trt_backend.run(x), ort_backend.run(x)
    assert n_trt.shape == (5,) and np.array_equal(n_trt, n_ort) and np.array_equal(p_trt, p_ort)


def test_calibration_batches_skip_unreadable_and_yield_full_batches(dataset, tmp_path):
    files = find_images(dataset)[:5]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    spec = get_arch("squeezenet1_1").preprocess
    batches = calibration.CalibrationBatches([files[0], bad, *files[1:]], spec, 2)
    out = [b.copy() for b in batches]
    assert len(out) == 2 and all(b.shape == (2, 3, 224, 224) and b.dtype == np.float32 for b in out)
    assert batches.skipped == 1 and batches.used == 4
    assert np.array_equal(out[1][0], preprocess_image(read_image_bgr(files[2]), spec, "BGR"))


def test_progress_line_follows_nested_phases():
    state = engine_progress.BuildProgress("building fp16 engine")
    state.phase_start("Building", None, 3)
    state.phase_start("Tactic timing", "Building", 10)
    state.step_complete("Tactic timing", 4)
    assert "Tactic timing 5/10" in state.line()
    state.phase_finish("Tactic timing")
    state.step_complete("Building", 0)
    assert re.search(r"^building fp16 engine: Building 1/3, 0:0\d elapsed$", state.line())


# ----------------------------------------------------------------------------------------- real TensorRT (device)

def _trt_skip_reason() -> str | None:
    if not engine_build.tensorrt_available():
        return "TensorRT's Python API is not installed (JetPack ships it; run these on a Jetson or a CUDA PC with tensorrt)"
    try:
        cuda_binding.cuda_binding()
    except EdgeError as e:
        return f"no usable CUDA GPU: {e}"
    return None


@pytest.mark.tensorrt
@pytest.mark.skipif(_trt_skip_reason() is not None, reason=str(_trt_skip_reason()))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_tensorrt_engine_builds_verifies_and_is_cached(precision, squeeze_onnx, dataset, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(squeeze_onnx.read_bytes())
    # a random-init model's near-uniform outputs are no fair test of INT8 agreement: verify fp32/fp16 only
    kw = dict(cache_dir=tmp_path / "cache", output=tmp_path / f"model.{precision}.engine", max_batch=4,
              verify=precision != "int8")
    first = engine_build.build_engine_report(onnx_path, precision, dataset, **kw)
    assert first.built and first.path.is_file()
    if precision != "int8":
        assert first.report is not None and first.report.passed, first.report and first.report.summary()
        print(first.report.summary(), file=sys.stderr)
    side = read_engine_sidecar(first.path)
    import tensorrt as trt

    assert side.key.tensorrt_version == trt.__version__ and side.key.precision == precision
    again = engine_build.build_engine_report(onnx_path, precision, dataset, **kw)
    assert not again.built
    assert any((tmp_path / "cache").glob("timing-*.cache"))
