"""`edge doctor` on a fake Jetson tree: every check passes on a healthy one and names the fix for each fault."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from edge.cli import doctor as doctor_cli
from edge.core.metadata import ModelMeta
from edge.core.model_files import EngineKey, EngineSidecar
from edge.core.registry import get_arch
from edge.service import doctor_checks as dc
from edge.service import install

GiB = 1 << 30
L4T_36 = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 2024\n"
MEMINFO = ("MemTotal:        7994000 kB\nMemFree:         2000000 kB\nMemAvailable:    5000000 kB\n"
           "SwapTotal:       3997000 kB\n")


def _fake_module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch looks modules up with find_spec
    module.__dict__.update(attrs)
    return module


class FakeJetson:
    """A healthy Orin: files under `root`, and the probes that cannot be files answering like one."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.mp = monkeypatch
        self.write("etc/nv_tegra_release", L4T_36)
        self.write("dev/video0", "")
        self.write("proc/4242/comm", "nvargus-daemon\n")
        self.write("proc/meminfo", MEMINFO)
        self.argus = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        (root / "tmp").mkdir()
        self.argus.bind(str(root / "tmp/argus_socket"))
        self.write("opt/edge/bin/edge", "#!/bin/sh\n")
        unit = install.render_unit(install.template_text("edge-camera.service"), Path("/opt/edge/bin/edge"))
        self.write("etc/systemd/system/edge-camera.service", unit)
        self.write("etc/edge-camera/config.toml", 'model = "/var/lib/edge-camera/m.engine"\nsource = "csi://0"\n')
        self.write("var/lib/edge-camera/m.engine", "engine")
        meta = ModelMeta(arch="squeezenet1_1", class_names=["a", "b"], preprocess=get_arch("squeezenet1_1").preprocess)
        key = EngineKey("0" * 64, "10.3.0", "Orin", "8.7", "fp16", (1, 3, 224, 224), 1)
        side = EngineSidecar(key, meta, hashlib.sha256(b"engine").hexdigest(), 6)
        self.write("var/lib/edge-camera/m.engine.json", side.to_json())
        self.probe("cuda_probe", lambda: (True, "CUDA 12.6 on Orin: a test kernel ran"))
        self.probe("installed_distributions", lambda: {"onnxruntime-gpu", "numpy", "torch"})
        self.probe("user_and_groups", lambda: ("nvidia", 1000, {"nvidia", "video"}))
        self.probe("free_bytes", lambda path: 40 * GiB)
        self.probe("systemctl_is_active", lambda m, unit: "active")
        self.probe("opencv_build_information", lambda: "  Video I/O:\n    GStreamer:  YES (1.20.3)\n")
        self.probe("python_environment", lambda: ("/opt/edge", True))
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_module("tensorrt", __version__="10.3.0"))
        import onnxruntime

        monkeypatch.setattr(onnxruntime, "get_available_providers",
                            lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])

    def write(self, rel: str, text: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def probe(self, name: str, fn) -> None:
        self.mp.setattr(dc, name, fn)

    @property
    def machine(self) -> dc.Machine:
        return dc.Machine(root=self.root, data_dir=self.root)

    def check(self, name: str) -> dc.CheckResult:
        return getattr(dc, "check_" + name.replace("-", "_"))(self.machine)


@pytest.fixture
def jetson(tmp_path, monkeypatch):
    j = FakeJetson(tmp_path / "jetson", monkeypatch)
    yield j
    j.argus.close()


def test_a_healthy_jetson_passes_every_check(jetson, capsys):
    results = dc.run_checks(jetson.machine)
    assert {r.name for r in results} == {"jetpack", "python", "torch", "cuda", "torchvision", "tensorrt", "onnxruntime",
                                          "onnxruntime-packages", "opencv", "cameras", "argus", "video-group", "disk",
                                          "memory", "service", "mqtt"}
    assert [(r.name, r.detail) for r in results if r.status != dc.PASS] == []
    by_name = {r.name: r.detail for r in results}
    assert by_name["jetpack"] == "L4T R36.3.0 (JetPack 6)"
    assert "GStreamer: yes" in by_name["opencv"] and "/dev/video0" in by_name["cameras"]
    assert "RAM 7.6 GiB" in by_name["memory"] and "shared by CPU and GPU" in by_name["memory"]
    assert doctor_cli.main(["--root", str(jetson.root), "--data", str(jetson.root)]) == 0


# (what breaks, the check, its status, a piece of the fix)
FAULTS = {
    "jetpack 5": (lambda j: j.write("etc/nv_tegra_release", L4T_36.replace("R36", "R35")), "jetpack", "warn",
                  "JetPack 6"),
    "jetpack 4": (lambda j: j.write("etc/nv_tegra_release", L4T_36.replace("R36", "R32")), "jetpack", "fail",
                  "JetPack 6"),
    "unreadable release": (lambda j: j.write("etc/nv_tegra_release", "garbage"), "jetpack", "warn", "nvidia-l4t-core"),
    "venv hides JetPack": (lambda j: j.probe("python_environment", lambda: ("/opt/edge", False)), "python", "warn",
                           "--system-site-packages"),
    "CPU-only torch": (lambda j: j.probe("cuda_probe", lambda: (False, "torch sees no CUDA GPU")), "cuda", "fail",
                       "PyTorch for Jetson"),
    "broken CUDA": (lambda j: j.probe("cuda_probe", _raise(RuntimeError("CUDA error: no kernel image"))), "cuda",
                    "fail", "torch build made for this JetPack"),
    "old torch": (lambda j: j.mp.setattr("torch.__version__", "2.0.1"), "torch", "fail", "PyTorch for Jetson"),
    "old torchvision": (lambda j: j.mp.setattr("torchvision.__version__", "0.15.2"), "torchvision", "fail",
                        "torchvision>=0.16"),
    "mismatched torchvision": (lambda j: j.mp.setattr("torchvision.ops.nms", _raise(
        RuntimeError("operator torchvision::nms does not exist"))), "torchvision", "fail", "made for this torch"),
    "no TensorRT": (lambda j: j.mp.setitem(sys.modules, "tensorrt", None), "tensorrt", "warn", "python3-libnvinfer"),
    "CPU onnxruntime": (lambda j: j.mp.setattr("onnxruntime.get_available_providers", lambda: ["CPUExecutionProvider"]),
                        "onnxruntime", "warn", "onnxruntime-gpu"),
    "no onnxruntime": (lambda j: j.mp.setitem(sys.modules, "onnxruntime", None), "onnxruntime", "warn", ".[cpu]"),
    "CPU and GPU onnxruntime": (lambda j: j.probe("installed_distributions",
                                                  lambda: {"onnxruntime", "onnxruntime-gpu"}),
                                "onnxruntime-packages", "warn",
                                "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"),
    "pip OpenCV": (lambda j: (j.probe("opencv_build_information", lambda: "GStreamer: NO\n"),
                              j.probe("installed_distributions", lambda: {"opencv-python"})), "opencv", "fail",
                   "pip uninstall opencv-python"),
    "no camera": (lambda j: (j.root / "dev/video0").unlink(), "cameras", "warn", "test://"),
    "argus daemon down": (lambda j: (j.root / "proc/4242/comm").write_text("bash\n"), "argus", "warn",
                          "systemctl enable --now nvargus-daemon"),
    "argus socket gone": (lambda j: (j.root / "tmp/argus_socket").unlink(), "argus", "warn",
                          "restart nvargus-daemon"),
    "not in video": (lambda j: j.probe("user_and_groups", lambda: ("nvidia", 1000, {"nvidia"})), "video-group",
                     "warn", "usermod -aG video nvidia"),
    "disk nearly full": (lambda j: j.probe("free_bytes", lambda p: GiB // 2), "disk", "fail", "free space"),
    "disk tight": (lambda j: j.probe("free_bytes", lambda p: 3 * GiB), "disk", "warn", "free space"),
    "4 GB without swap": (lambda j: j.write("proc/meminfo", MEMINFO.replace("7994000", "3964000").replace(
        "3997000", "0")), "memory", "warn", "mkswap"),
    "memory exhausted": (lambda j: j.write("proc/meminfo", MEMINFO.replace("5000000", "200000")), "memory", "warn",
                         "close other programs"),
    "service failed": (lambda j: j.probe("systemctl_is_active", lambda m, u: "failed"), "service", "fail",
                       "journalctl -u edge-camera"),
    "service stopped": (lambda j: j.probe("systemctl_is_active", lambda m, u: "inactive"), "service", "warn",
                        "enable --now edge-camera"),
    "venv of the service removed": (lambda j: (j.root / "opt/edge/bin/edge").unlink(), "service", "fail",
                                    "install-service"),
    "engine sidecar missing": (lambda j: (j.root / "var/lib/edge-camera/m.engine.json").unlink(), "service", "fail",
                               "--model"),
}


def _raise(exc):
    def fn(*a, **k):
        raise exc

    return fn


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_found_with_its_fix(jetson, fault, capsys):
    breaks, name, status, fix = FAULTS[fault]
    breaks(jetson)
    result = jetson.check(name)
    assert result.status == status, result
    assert fix in (result.fix or ""), result
    others = [r for r in dc.run_checks(jetson.machine) if r.name != name and r.status != dc.PASS]
    assert others == [] or fault in ("no onnxruntime",), others  # one fault, one finding
    rc = doctor_cli.main(["--root", str(jetson.root), "--data", str(jetson.root)])
    out = capsys.readouterr().out.splitlines()
    line = next(i for i, ln in enumerate(out) if ln.split()[:2] == [status.upper(), name])
    assert out[line + 1].split("fix: ", 1)[1] == result.fix  # the fix, on the line after the finding
    assert rc == (1 if status == "fail" else 0)


def test_on_a_pc_jetson_parts_are_not_required(jetson):
    for rel in ("etc/nv_tegra_release", "tmp/argus_socket", "etc/systemd/system/edge-camera.service"):
        (jetson.root / rel).unlink()
    jetson.mp.setitem(sys.modules, "tensorrt", None)
    jetson.mp.setattr("platform.machine", lambda: "x86_64")
    jetson.probe("cuda_probe", lambda: (False, "torch sees no CUDA GPU"))
    jetson.probe("torch_cuda_build", lambda: None)  # a CPU-only torch
    jetson.probe("opencv_build_information", lambda: "GStreamer: NO\n")
    results = {r.name: r for r in dc.run_checks(jetson.machine)}
    assert results["jetpack"].status == "pass" and "not a Jetson" in results["jetpack"].detail
    assert results["tensorrt"].status == "pass" and results["argus"].status == "pass"
    assert results["opencv"].status == "pass" and results["service"].status == "pass"
    assert results["cuda"].status == "warn" and "CUDA build of torch" in results["cuda"].fix


def test_a_crashing_check_is_reported_not_raised(jetson):
    jetson.probe("free_bytes", _raise(PermissionError(13, "Permission denied")))
    results = {r.name: r for r in dc.run_checks(jetson.machine)}
    assert results["disk"].status == "fail" and "PermissionError" in results["disk"].detail
    assert results["memory"].status == "pass"  # the checks after it still ran


def test_json_output(jetson, capsys):
    jetson.probe("systemctl_is_active", lambda m, u: "failed")
    rc = doctor_cli.main(["--root", str(jetson.root), "--data", str(jetson.root), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in data["checks"])
    service = next(c for c in data["checks"] if c["name"] == "service")
    assert service["status"] == "fail" and "journalctl" in service["fix"]
    assert all(c["fix"] is None for c in data["checks"] if c["status"] == "pass")


def test_doctor_is_an_edge_command_and_runs_here():
    r = subprocess.run([sys.executable, "-m", "edge", "--help"], capture_output=True, text=True, timeout=60)
    assert "doctor" in r.stdout
    r = subprocess.run([sys.executable, "-m", "edge", "doctor", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    checks = json.loads(r.stdout)["checks"]
    assert len(checks) == len(dc.CHECKS) and {c["status"] for c in checks} <= {"pass", "warn", "fail"}
    assert "--root" not in subprocess.run([sys.executable, "-m", "edge", "doctor", "--help"], capture_output=True,
                                          text=True, timeout=60).stdout  # a test hook, not a user option


def test_a_cuda_torch_without_a_gpu_is_not_told_to_install_a_cuda_torch(jetson):
    """On a CPU-only PC, pip's torch is a CUDA build: the advice is about the driver or the smaller CPU build."""
    (jetson.root / "etc/nv_tegra_release").unlink()
    jetson.mp.setattr("platform.machine", lambda: "x86_64")
    jetson.probe("cuda_probe", lambda: (False, "torch 2.9.0 sees no CUDA GPU"))
    jetson.probe("torch_cuda_build", lambda: "12.8")
    cuda = next(r for r in dc.run_checks(jetson.machine) if r.name == "cuda")
    assert cuda.status == "warn" and "CUDA 12.8 build" in cuda.detail
    assert "install a CUDA build" not in cuda.fix and "driver" in cuda.fix and "CPU build" in cuda.fix
