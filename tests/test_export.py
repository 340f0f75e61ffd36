"""Export: checkpoint -> verified ONNX (FP32/FP16) with embedded metadata; engine cache and builder logic.

CPU only, random-init checkpoints, synthetic images. TensorRT itself is not installable here: the builder's
orchestration runs against a small fake `tensorrt` module, and the real-TensorRT tests (marked `tensorrt`) skip
with a reason where it is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import CLASSES, leftovers, make_checkpoint, parse_summary, run_cli

from edge.core.errors import EdgeError
from edge.core.metadata import ModelMeta, load_checkpoint, load_model, save_checkpoint, sha256_file
from edge.core.model_files import (
    INPUT_NAME,
    NOVELTY_OUTPUT,
    OUTPUT_NAME,
    meta_from_metadata_props,
    read_engine_sidecar,
    read_onnx_export_info,
    read_onnx_meta,
)
from edge.core.preprocess import preprocess_image
from edge.core.registry import create_model, get_arch
from export import engine_build
from export.onnx_export import half_precision_runs_on_cpu
from export.verify import (
    ONNX_TOLERANCES,
    find_images,
    load_image_batch,
    read_image_bgr,
    verification_inputs,
)

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
    # stdout says what was being tried (the phase line, printed before the checkpoint is read), nothing was written
    assert rc == 2 and all(line.startswith(f"exporting {name} to ONNX") for line in out.splitlines())
    assert "wrote" not in out
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

    with pytest.raises(EdgeError, match="ends in '.pt'"):  # the library checks its options the same way
        export_onnx(squeeze, squeeze)
    odd = tmp_path / "odd.onnx"  # a checkpoint under an ONNX name: the output path's own guard
    odd.write_bytes(before)
    with pytest.raises(EdgeError, match="is the checkpoint itself"):
        export_onnx(odd, odd)
    assert odd.read_bytes() == before
    odd.unlink()

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
def test_output_whose_suffix_serve_would_refuse_is_refused_before_any_work(argv, name, expect, squeeze, tmp_path,
                                                                            capsys):
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
        outputs = onnx.load(str(tmp_path / "model.fp16.onnx")).graph.output
        assert [o.name for o in outputs] == [OUTPUT_NAME, NOVELTY_OUTPUT]


def test_novelty_that_disagrees_fails_verification_and_writes_nothing(novelty_models, tmp_path, capsys, monkeypatch):
    import export.verify as verify

    real = verify.onnxruntime_outputs
    monkeypatch.setattr(verify, "onnxruntime_outputs",
                        lambda path, batch: (real(path, batch)[0], real(path, batch)[1] + 1e-3))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(novelty_models[0].read_bytes())
    rc, out, err = run_cli(capsys, ckpt, "--verify-images", "3")
    assert rc == 3 and err.count("\n") == 1 and "novelty max abs diff 0.001 > tolerance 0.0001" in err
    assert leftovers(tmp_path) == []


