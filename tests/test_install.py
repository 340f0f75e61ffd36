"""`edge install-service`, into a --root directory: what lands where, what is kept, and what is refused."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge.cli import install_service
from edge.core.metadata import ModelMeta
from edge.core.model_files import EngineKey, EngineSidecar, read_engine_sidecar
from edge.core.registry import get_arch
from edge.service import install
from edge.service.config import build_config, load_config_file
from edge.service.install_files import read_env_var

REPO = Path(__file__).resolve().parents[1]
STATE = "var/lib/edge-camera"


def _install(capsys, root: Path, *args: str) -> tuple[int, str, str]:
    rc = install_service.main(["--root", str(root), *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _service_config(root: Path):
    """The config the installed service would start with (config file + the token from the environment file)."""
    token = read_env_var((root / "etc/edge-camera/edge-camera.env").read_text(), "EDGE_TOKEN")
    return build_config(load_config_file(root / "etc/edge-camera/config.toml"), {},
                        env={"EDGE_TOKEN": token} if token else {})


def _tiny_onnx(path: Path, external_data: str | None = None) -> Path:
    """A valid one-MatMul ONNX file; with `external_data` its weight goes to that file beside it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=external_data is not None,
                    all_tensors_to_one_file=True, location=external_data, size_threshold=0)
    return path


@pytest.fixture
def onnx_model(tmp_path) -> Path:
    return _tiny_onnx(tmp_path / "model.onnx")


@pytest.fixture
def engine_model(tmp_path) -> Path:
    """A TensorRT engine file (fake bytes) with the JSON sidecar `edge export` writes beside it."""
    engine = tmp_path / "thumbs.fp16.engine"
    engine.write_bytes(b"serialized engine")
    meta = ModelMeta(arch="squeezenet1_1", class_names=["up", "down"], preprocess=get_arch("squeezenet1_1").preprocess)
    key = EngineKey("0" * 64, "10.3.0", "Orin", "8.7", "fp16", (1, 3, 224, 224), 1)
    sidecar = EngineSidecar(key, meta, hashlib.sha256(engine.read_bytes()).hexdigest(), engine.stat().st_size)
    (tmp_path / "thumbs.fp16.engine.json").write_text(sidecar.to_json())
    return engine


def test_install_service_into_a_root_dir(tmp_path, capsys, onnx_model):
    root = tmp_path / "root"
    rc, out, err = _install(capsys, root, "--model", str(onnx_model), "--source", "csi://0", "--http", "8080")
    assert rc == 0, err
    unit = root / "etc/systemd/system/edge-camera.service"
    assert unit.is_file() and str(install.edge_executable()) in unit.read_text()
    cfg = root / "etc/edge-camera/config.toml"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
    service = _service_config(root)
    assert service.model == "/var/lib/edge-camera/model.onnx" and service.source == "csi://0"
    assert service.http == "8080"
    env = root / "etc/edge-camera/edge-camera.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o640 and "EDGE_TOKEN" in env.read_text()
    assert (root / STATE / "model.onnx").read_bytes() == onnx_model.read_bytes()
    from edge.runtime.sources.csi import gstreamer_available

    if not gstreamer_available():  # installing for another machine (--root): said, not refused
        assert "this machine's OpenCV has no GStreamer" in out
    # a second run keeps the user's edited env file
    env.write_text("EDGE_TOKEN=mine\n")
    assert _install(capsys, root)[0] == 0
    assert env.read_text() == "EDGE_TOKEN=mine\n"


def test_root_install_says_would_run_and_shows_the_real_paths(tmp_path, capsys, onnx_model):
    root = tmp_path / "root"
    rc, out, _ = _install(capsys, root, "--model", str(onnx_model))
    assert rc == 0
    lines = out.splitlines()
    assert "would run: systemctl enable edge-camera.service" in lines
    assert not [ln for ln in lines if ln.startswith("run:")]  # nothing claims to have run a system command
    assert f"write {root.resolve()}/etc/systemd/system/edge-camera.service (mode 644)" in lines
    assert f"copy {onnx_model} -> {root.resolve()}/{STATE}/model.onnx" in lines


def test_install_service_dry_run_changes_nothing(tmp_path, capsys):
    root = tmp_path / "root"
    rc, out, _ = _install(capsys, root, "--dry-run", "--source", "0")
    assert rc == 0
    assert f"would write {root.resolve()}/etc/systemd/system/edge-camera.service (mode 644)" in out.splitlines()
    assert not root.exists()


def test_engine_model_is_installed_with_its_sidecar(tmp_path, capsys, engine_model):
    root = tmp_path / "root"
    rc, _, err = _install(capsys, root, "--model", str(engine_model), "--no-start")
    assert rc == 0, err
    installed = root / STATE / "thumbs.fp16.engine"
    assert installed.read_bytes() == engine_model.read_bytes()
    assert read_engine_sidecar(installed).meta.class_names == ["up", "down"]  # the service can read its labels
    assert _service_config(root).model == "/var/lib/edge-camera/thumbs.fp16.engine"


def test_onnx_external_weights_are_installed_too(tmp_path, capsys):
    model = _tiny_onnx(tmp_path / "m" / "big.onnx", external_data="big.onnx.data")
    root = tmp_path / "root"
    rc, _, err = _install(capsys, root, "--model", str(model), "--no-start")
    assert rc == 0, err
    assert (root / STATE / "big.onnx.data").read_bytes() == (model.parent / "big.onnx.data").read_bytes()
    assert (root / STATE / "big.onnx").read_bytes() == model.read_bytes()


def test_rerun_keeps_the_users_config_and_changes_only_the_named_keys(tmp_path, capsys, onnx_model, engine_model):
    root = tmp_path / "root"
    assert _install(capsys, root, "--model", str(onnx_model), "--source", "/dev/video1")[0] == 0
    cfg = root / "etc/edge-camera/config.toml"
    cfg.write_text(cfg.read_text().replace("threshold = 0.6", "threshold = 0.85  # tuned on site") + "# my note\n")
    rc, out, err = _install(capsys, root, "--model", str(engine_model))
    assert rc == 0, err
    text = cfg.read_text()
    assert "threshold = 0.85  # tuned on site" in text and "# my note" in text
    service = _service_config(root)
    assert service.model == "/var/lib/edge-camera/thumbs.fp16.engine"
    assert service.source == "/dev/video1" and service.threshold == 0.85  # not reset to the example's
    assert "changing only model" in out
    # no flags: the file stays byte for byte; --force starts again from the example
    before = cfg.read_bytes()
    assert _install(capsys, root)[0] == 0 and cfg.read_bytes() == before
    assert _install(capsys, root, "--force")[0] == 0
    assert _service_config(root).threshold == 0.6


def test_http_beyond_localhost_needs_a_token(tmp_path, capsys, onnx_model, monkeypatch):
    monkeypatch.delenv("EDGE_TOKEN", raising=False)
    root = tmp_path / "root"
    rc, _, err = _install(capsys, root, "--model", str(onnx_model), "--http", "0.0.0.0:8080")
    assert rc == 2 and "--token" in err and "--allow-no-token" in err and len(err.strip().splitlines()) == 1
    assert not root.exists()

    rc, _, err = _install(capsys, root, "--model", str(onnx_model), "--http", "0.0.0.0:8080", "--token", "s3cret")
    assert rc == 0, err
    service = _service_config(root)
    assert service.http == "0.0.0.0:8080" and service.token == "s3cret"
    assert "s3cret" not in (root / "etc/edge-camera/config.toml").read_text()  # the token lives in the 0640 env file

    env = root / "etc/edge-camera/edge-camera.env"
    env.write_text(env.read_text() + "# my note\n")
    assert _install(capsys, root, "--token", "n3w-t0ken")[0] == 0  # a new token replaces only that line
    assert _service_config(root).token == "n3w-t0ken" and env.read_text().count("EDGE_TOKEN=") == 1
    assert "# my note" in env.read_text()

    monkeypatch.setenv("EDGE_TOKEN", "from-env")
    assert _install(capsys, root / "b", "--http", "0.0.0.0:8080")[0] == 0
    assert _service_config(root / "b").token == "from-env"
    monkeypatch.delenv("EDGE_TOKEN")
    assert _install(capsys, root / "c", "--http", "0.0.0.0:8080", "--allow-no-token")[0] == 0
    assert _service_config(root / "c").allow_no_token is True


@pytest.mark.parametrize("args, says", [
    (["--model", "{tmp}/missing.pt"], "no such file"),
    (["--source", "0", "--http", "0.0.0.0:99999"], "out of range"),
    (["--source", "bogus://x"], "unknown source scheme 'bogus://'"),
    (["--source", "csi://front"], "not a number"),
    (["--http", "0.0.0.0:8080"], "--allow-no-token"),
    (["--model", "{tmp}/lonely.engine"], "no sidecar"),
    (["--model", "{tmp}/model.bin"], "unknown type"),
    (["--model", "{tmp}/garbage.onnx"], "cannot read it as ONNX"),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, args, says):
    monkeypatch.delenv("EDGE_TOKEN", raising=False)
    (tmp_path / "lonely.engine").write_bytes(b"engine without its sidecar")
    (tmp_path / "model.bin").write_bytes(b"?")
    (tmp_path / "garbage.onnx").write_bytes(b"not really a model")
    root = tmp_path / "root"
    rc, out, err = _install(capsys, root, *[a.format(tmp=tmp_path) for a in args])
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not root.exists()


def test_a_refusal_leaves_an_existing_install_untouched(tmp_path, capsys, onnx_model, monkeypatch):
    monkeypatch.delenv("EDGE_TOKEN", raising=False)
    root = tmp_path / "root"
    assert _install(capsys, root, "--model", str(onnx_model))[0] == 0
    before = _files(root)
    assert _install(capsys, root, "--model", str(onnx_model), "--http", "0.0.0.0:80")[0] == 2
    assert _install(capsys, root, "--force", "--source", "bogus://x")[0] == 2
    assert _files(root) == before
    # a config the user broke by hand is caught too, before anything is written
    cfg = root / "etc/edge-camera/config.toml"
    cfg.write_text(cfg.read_text().replace('source = "csi://0"', 'source = "cs1://0"'))
    before = _files(root)
    rc, _, err = _install(capsys, root, "--model", str(onnx_model))
    assert rc == 2 and "the service would not start" in err and "cs1://" in err
    assert _files(root) == before


def test_source_is_checked_as_the_service_will_see_it(tmp_path, capsys, onnx_model):
    """A relative file source is relative to the service's working directory, under --root too."""
    root = tmp_path / "root"
    rc, _, err = _install(capsys, root, "--model", str(onnx_model), "--source", "clip.mp4")
    assert rc == 2 and f"{root.resolve()}/{STATE}/clip.mp4" in err and not root.exists()
    (root / STATE).mkdir(parents=True)
    (root / STATE / "clip.mp4").write_bytes(b"video")
    rc, _, err = _install(capsys, root, "--model", str(onnx_model), "--source", "clip.mp4")
    assert rc == 0, err
    assert _service_config(root).source == "clip.mp4"


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root")
def test_install_service_needs_root_for_the_real_system(capsys):
    assert install_service.main([]) == 2
    assert "sudo edge install-service" in capsys.readouterr().err


def test_install_service_cli_is_wired():
    r = subprocess.run([sys.executable, "-m", "edge", "install-service", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--root" in r.stdout and "--allow-no-token" in r.stdout


def _can_build_wheels_here() -> bool:
    import importlib.util

    from packaging.version import Version

    try:
        import setuptools
    except ImportError:
        return False
    return Version(setuptools.__version__) >= Version("70.1") or importlib.util.find_spec("wheel") is not None


@pytest.mark.slow
def test_templates_ship_in_the_wheel_and_install_works_without_a_checkout(tmp_path):
    """A wheel carries the top-level systemd/ folder; from it (no source tree) install-service finds its files."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "build", "tests", "benchmarks")
    shutil.copytree(REPO, src, ignore=ignore)
    # offline with this environment's setuptools when it can build wheels itself (>= 70.1, or with `wheel`);
    # else pip fetches pyproject's build requirements into an isolated environment
    isolation = ["--no-build-isolation"] if _can_build_wheels_here() else []
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"edge/service/systemd/{t}" for t in install.TEMPLATES} <= names
    for t in install.TEMPLATES:  # built from the top-level systemd/ folder: the same bytes, no hand-kept copy
        assert zipfile.ZipFile(wheel).read(f"edge/service/systemd/{t}") == (REPO / "systemd" / t).read_bytes()
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from edge.service import install; import sys; "
            "sys.exit(0 if all(install.template_text(t) for t in install.TEMPLATES) else 1)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------------------------- owners, preflight, undo
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="setting owners needs root")
SERVICE_USER = "daemon"  # an existing user with a group of the same name stands in for edge-camera


def _owner(p: Path) -> tuple[str, str, int]:
    import grp
    import pwd

    st = p.lstat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


@needs_root
def test_installed_files_are_roots_and_the_service_user_writes_only_its_state_dir(tmp_path, capsys, onnx_model):
    import pwd

    pwd.getpwnam(SERVICE_USER)
    root = tmp_path / "root"
    rc, _, err = _install(capsys, root, "--user", SERVICE_USER, "--model", str(onnx_model), "--source", "test://")
    assert rc == 0, err
    g = SERVICE_USER
    expected = {
        "etc/systemd/system/edge-camera.service": ("root", "root", 0o644),
        "etc/edge-camera": ("root", g, 0o750),
        "etc/edge-camera/config.toml": ("root", g, 0o640),
        "etc/edge-camera/edge-camera.env": ("root", g, 0o640),
        STATE: (SERVICE_USER, g, 0o750),
        f"{STATE}/model.onnx": ("root", g, 0o640),
    }
    for rel, want in expected.items():
        assert _owner(root / rel) == want, rel
    for p in root.rglob("*"):  # every other path written (parent folders) is root's and not writable by others
        rel = str(p.relative_to(root))
        if rel not in expected:
            user, group, mode = _owner(p)
            assert (user, group) == ("root", "root") and not mode & 0o022, rel
    assert "User=daemon" in (root / "etc/systemd/system/edge-camera.service").read_text()


@needs_root
def test_a_failing_step_undoes_what_the_run_wrote(tmp_path, capsys, onnx_model, monkeypatch):
    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    root = tmp_path / "root"
    monkeypatch.setattr(install, "atomic_copy", disk_full)  # the model copy comes after the unit and the config
    rc, out, err = _install(capsys, root, "--user", SERVICE_USER, "--model", str(onnx_model))
    assert rc == 2 and "No space left on device" in err and "undid" in err and len(err.strip().splitlines()) == 1
    assert "write" in out and not root.exists()  # the unit and config were written, then removed with their folders
    # over an existing install: every file back as it was (content, owner, mode)
    monkeypatch.undo()
    assert _install(capsys, root, "--user", SERVICE_USER, "--model", str(onnx_model))[0] == 0
    before = {str(p.relative_to(root)): (_owner(p), p.read_bytes() if p.is_file() else b"") for p in root.rglob("*")}
    monkeypatch.setattr(install, "atomic_copy", disk_full)
    other = _tiny_onnx(tmp_path / "other" / "other.onnx")
    rc, _, err = _install(capsys, root, "--user", SERVICE_USER, "--model", str(other), "--source", "test://")
    assert rc == 2, err
    after = {str(p.relative_to(root)): (_owner(p), p.read_bytes() if p.is_file() else b"") for p in root.rglob("*")}
    assert after == before


@needs_root
def test_a_real_install_without_systemd_writes_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(install, "SYSTEMD_RUN_DIR", tmp_path / "no-systemd")
    monkeypatch.setattr(install, "_FileUndo", None)  # any attempt to write would fail loudly
    assert install_service.main(["--source", "test://"]) == 2
    err = capsys.readouterr().err
    assert "systemd is not running" in err and len(err.strip().splitlines()) == 1


def test_the_unit_says_when_ready_comes_as_the_code_does():
    unit = install.template_text("edge-camera.service")
    assert "first frame is classified" not in unit and "HTTP server listens" in unit


def test_mqtt_goes_into_the_config_and_its_password_into_the_env_file(tmp_path, capsys, onnx_model, monkeypatch):
    monkeypatch.delenv("EDGE_MQTT_PASSWORD", raising=False)
    root = tmp_path / "root"
    rc, _, err = _install(capsys, root, "--model", str(onnx_model), "--mqtt", "mqtt://cam:pa55@ha.local/edge/garage")
    assert rc == 0, err
    config = (root / "etc/edge-camera/config.toml").read_text()
    env = (root / "etc/edge-camera/edge-camera.env").read_text()
    assert _service_config(root).mqtt == "mqtt://cam@ha.local/edge/garage" and "pa55" not in config
    assert read_env_var(env, "EDGE_MQTT_PASSWORD") == "pa55"
    rc, _, err = _install(capsys, root / "bad", "--mqtt", "http://ha.local")
    assert rc == 2 and "--mqtt" in err and len(err.strip().splitlines()) == 1 and not (root / "bad").exists()
