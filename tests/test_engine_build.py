"""TensorRT engines: the engine cache and key, the builder against a small fake `tensorrt` module (verification runs
through the serving TensorRTBackend), INT8 calibration, and the real-TensorRT tests (marked `tensorrt`, skipped with a
reason where TensorRT is missing).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_helpers import CLASSES, leftovers, parse_summary, run_cli
from fake_tensorrt import FakeCuda, fake_tensorrt

from edge.core.errors import EdgeError
from edge.core.metadata import ModelMeta, load_checkpoint, sha256_file
from edge.core.model_files import (
    INPUT_NAME,
    NOVELTY_OUTPUT,
    OUTPUT_NAME,
    EngineKey,
    read_engine_sidecar,
    read_onnx_meta,
    sidecar_path,
)
from edge.core.preprocess import preprocess_image
from edge.core.registry import get_arch
from edge.runtime.backends import tensorrt_backend
from edge.runtime.backends.tensorrt_backend import TensorRTBackend
from export import cache, calibration, cuda_binding, engine_build, engine_progress
from export.options import ExportOptions, output_path
from export.verify import (
    find_images,
    read_image_bgr,
    verification_inputs,
)

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
    t = cache.timing_cache_path("/c", "8.5.2.2", "NVIDIA Tegra X1", "5.3")
    assert t == Path("/c/timing-trt8.5.2.2-nvidia-tegra-x1-sm5.3.cache")
    assert sidecar_path("/m/model.fp16.engine") == Path("/m/model.fp16.engine.json")


def test_one_function_decides_where_every_export_file_goes(tmp_path):
    pt, onnx_file = tmp_path / "runs" / "model.pt", tmp_path / "runs" / "model.onnx"

    def where(kind, source=pt, **kw):
        return output_path(ExportOptions(**kw), kind, source)

    assert where("onnx") == onnx_file and where("onnx-fp16", fp16=True) == tmp_path / "runs" / "model.fp16.onnx"
    assert where("onnx", output=tmp_path / "x.onnx") == tmp_path / "x.onnx"
    assert where("onnx", output=f"{tmp_path}/out/") == tmp_path / "out" / "model.onnx"  # a directory: default names
    assert where("engine", onnx_file, fmt="all", fp16=True, output=f"{tmp_path}/out/") == \
        tmp_path / "out" / "model.fp16.engine"
    # --format engine -o cam.plan: the engine is that file, the FP32 ONNX it is built from goes beside it
    assert where("engine", onnx_file, fmt="engine", output=tmp_path / "e" / "cam.plan") == tmp_path / "e" / "cam.plan"
    assert where("onnx", fmt="engine", output=tmp_path / "e" / "cam.plan") == tmp_path / "e" / "model.onnx"
    assert where("engine", onnx_file, fmt="engine", int8=True, cache_dir=tmp_path / "c") == \
        tmp_path / "runs" / "model.int8.engine"  # --cache-dir holds caches only


def test_export_options_are_checked_once_when_made():
    for kw, words in [(dict(fmt="tflite"), "unknown format"), (dict(opset=3), "--opset 3"),
                      (dict(int8=True), "--int8 applies to TensorRT engines only"),
                      (dict(fmt="all", output="model.onnx"), "must be a directory"),
                      (dict(fmt="engine", output="model.onnx"), "TensorRT engine must end in"),
                      (dict(max_batch=0), "--max-batch must be an integer >= 1")]:
        with pytest.raises(EdgeError, match=words):
            ExportOptions(**kw)
    assert ExportOptions.engine("int8").precision == "int8" and ExportOptions(fp16=True).precision == "fp16"


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

@pytest.fixture
def fake_trt(monkeypatch):
    trt = fake_tensorrt()
    cuda = FakeCuda()
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
    first = engine_build.build_engine_report(onnx_path, ExportOptions.engine("fp16", verify=False), lines.append)
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

    again = engine_build.build_engine_report(onnx_path, ExportOptions.engine("fp16", verify=False))
    assert not again.built and len(fake_trt.builds) == 1 and "up to date" in again.summary()

    fake_trt.__version__ = "10.4.0"  # JetPack upgrade: never reuse
    upgraded = engine_build.build_engine_report(onnx_path, ExportOptions.engine("fp16", verify=False))
    assert upgraded.built and "tensorrt_version" in upgraded.reason and len(fake_trt.builds) == 2
    assert timing.with_name(timing.name.replace("10.3.0", "10.4.0")).is_file()

    proto = onnx.load(str(onnx_path))
    proto.doc_string += " (re-exported)"
    onnx.save(proto, str(onnx_path))  # a re-exported ONNX file: other bytes
    rebuilt = engine_build.build_engine_report(onnx_path, ExportOptions.engine("fp16", verify=False))
    assert rebuilt.built and "onnx_sha256" in rebuilt.reason

    fp32 = engine_build.build_engine(onnx_path, ExportOptions.engine("fp32", verify=False))
    assert fp32 == tmp_path / "model.fp32.engine" and "TF32" not in fake_trt.builds[-1]["config"].flags

    # --cache-dir holds the caches; the engine stays beside the ONNX file (where `edge export` says it is)
    cached = engine_build.build_engine(onnx_path, ExportOptions.engine("fp16", cache_dir=tmp_path / "cache",
                                                                       verify=False, force=True))
    assert cached == tmp_path / "model.fp16.engine" and read_engine_sidecar(cached).key.precision == "fp16"
    assert list((tmp_path / "cache").glob("timing-*.cache"))


def test_int8_calibrates_on_real_images_and_caches_the_table(fake_trt, squeeze_onnx, dataset, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(squeeze_onnx.read_bytes())
    with pytest.raises(EdgeError, match="INT8 needs real calibration images"):
        engine_build.build_engine(onnx_path, ExportOptions.engine("int8", verify=False))
    assert not (tmp_path / "model.int8.engine").exists()

    path = engine_build.build_engine(onnx_path, ExportOptions.engine("int8", calib_data=dataset, verify=False,
                                                                     calib_batch=4))
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

    engine_build.build_engine(onnx_path, ExportOptions.engine("int8", calib_data=dataset, verify=False,
                                                              calib_batch=4, force=True))
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


def test_engine_is_verified_through_the_serving_backend(engine_runs_onnx, fake_trt, squeeze_onnx, dataset, tmp_path,
                                                        capsys):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(squeeze_onnx.read_bytes())
    engine_runs_onnx.onnx = onnx_path
    rc, out, err = run_cli(capsys, onnx_path, "--format", "engine", "--fp16", "--calib-data", dataset,
                           "--max-batch", "3")
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


def test_engine_that_disagrees_with_onnx_is_not_written(engine_runs_onnx, fake_trt, squeeze_onnx, dataset, tmp_path,
                                                        capsys):
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
        engine_build.build_engine(onnx_path, ExportOptions.engine("fp16", output=tmp_path / "model.bin", verify=False))
    assert fake_trt.builds == [] and leftovers(tmp_path) == ["model.onnx"]
    rc, out, err = run_cli(capsys, onnx_path, "--format", "engine", "-o", tmp_path / "cam.plan", "--verify-images", "1")
    plan = tmp_path / "cam.plan"
    assert rc == 0, err
    assert f"wrote {plan}" in out and read_engine_sidecar(plan).key.precision == "fp32"
    assert parse_summary(out)["verdict"] == "PASS"


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
        return ("TensorRT's Python API is not installed "
                "(JetPack ships it; run these on a Jetson or a CUDA PC with tensorrt)")
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
    first = engine_build.build_engine_report(onnx_path, ExportOptions.engine(precision, calib_data=dataset, **kw))
    assert first.built and first.path.is_file()
    if precision != "int8":
        assert first.report is not None and first.report.passed, first.report and first.report.summary()
        print(first.report.summary(), file=sys.stderr)
    side = read_engine_sidecar(first.path)
    import tensorrt as trt

    assert side.key.tensorrt_version == trt.__version__ and side.key.precision == precision
    again = engine_build.build_engine_report(onnx_path, ExportOptions.engine(precision, calib_data=dataset, **kw))
    assert not again.built
    assert any((tmp_path / "cache").glob("timing-*.cache"))
