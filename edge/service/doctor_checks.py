"""The checks behind `edge doctor`: is this machine set up for capture, training, export and the service?

Each check returns a CheckResult (pass / warn / fail, what was found, and for a non-pass the fix in one line).
System files are read under `Machine.root`, so tests run every check against a fake Jetson tree
(etc/nv_tegra_release, dev/video0, tmp/argus_socket, proc/meminfo, ...). What cannot be faked by files (the
installed packages, the user's groups, free disk, systemctl, a CUDA kernel) goes through the small probe
functions below, which tests replace. No check loads a model; the slowest part is importing torch.
"""

from __future__ import annotations

import grp
import importlib
import os
import platform
import pwd
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from edge.core.errors import EdgeError, brief
from edge.service.config import load_config_file
from edge.service.install import CONFIG_FILE, ENV_FILE, STATE_DIR, UNIT_FILE, UNIT_NAME
from edge.service.install_files import model_files, read_env_var

PASS, WARN, FAIL = "pass", "warn", "fail"
GiB = 1 << 30
MIN_TORCH, MIN_TORCHVISION = (2, 1), (0, 16)
# distributions that each install the same `onnxruntime` module: two of them overwrite each other's files
ONNXRUNTIME_DISTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-rocm", "onnxruntime-qnn", "onnxruntime-training")
OPENCV_DISTS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # pass, warn or fail
    detail: str
    fix: str | None = None  # one line, for warn and fail

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass(frozen=True)
class Machine:
    """Where the checks look: every system path is read under `root`; `data_dir` is where datasets and runs go."""

    root: Path = Path("/")
    data_dir: Path = Path(".")
    mqtt: str | None = None  # a broker URL to check (default: the installed service's `mqtt`, if any)

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    @property
    def is_jetson(self) -> bool:
        return self.path("/etc/nv_tegra_release").is_file()


# ----------------------------------------------------------------------------- probes (tests replace these)
def installed_distributions() -> set[str]:
    """Normalized names of the distributions installed in this environment."""
    return {re.sub(r"[-_.]+", "-", (d.metadata["Name"] or "")).lower() for d in metadata.distributions()}


def user_and_groups() -> tuple[str, int, set[str]]:
    """(user name, uid, names of the groups this process has)."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    groups = set()
    for gid in {os.getegid(), *os.getgroups()}:
        try:
            groups.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            pass
    return name, uid, groups


def python_environment() -> tuple[str | None, bool]:
    """(the venv this Python runs in, or None; whether that venv sees the system's site-packages)."""
    if sys.prefix == sys.base_prefix:
        return None, True
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    text = cfg.read_text(errors="replace") if cfg.is_file() else ""
    return sys.prefix, re.search(r"include-system-site-packages\s*=\s*true", text, re.I) is not None


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def systemctl_is_active(machine: Machine, unit: str) -> str:
    """`systemctl is-active UNIT` (active, inactive, failed, ...); "unknown" off the real system or without systemd."""
    if machine.root != Path("/") or shutil.which("systemctl") is None:
        return "unknown"
    try:
        r = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return r.stdout.strip() or "unknown"


def cuda_probe() -> tuple[bool, str]:
    """(CUDA usable, what was seen): runs one tiny kernel on the GPU when torch sees one."""
    import torch

    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA GPU"
    x = torch.arange(1024, device="cuda", dtype=torch.float32)
    total = float((x * 2).sum().item())
    if total != 1024 * 1023:
        raise RuntimeError(f"a test kernel returned {total}, expected {1024 * 1023}")
    free, size = torch.cuda.mem_get_info()
    return True, (f"CUDA {torch.version.cuda} on {torch.cuda.get_device_name(0)}: a test kernel ran; "
                  f"GPU memory {free / GiB:.1f} of {size / GiB:.1f} GiB free")


def opencv_build_information() -> str:
    import cv2

    return cv2.getBuildInformation()


# ------------------------------------------------------------------------------------------------- checks
def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:2])


def check_jetpack(m: Machine) -> CheckResult:
    release = m.path("/etc/nv_tegra_release")
    if not release.is_file():
        if platform.machine() == "aarch64":
            return CheckResult("jetpack", WARN, "no /etc/nv_tegra_release: not a Jetson, or L4T is not installed",
                               "on a Jetson, flash JetPack 6 (L4T R36) with NVIDIA's SDK Manager")
        return CheckResult("jetpack", PASS, f"not a Jetson ({platform.machine()}): PC set-up")
    text = release.read_text(errors="replace")
    found = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not found:
        return CheckResult("jetpack", WARN, f"cannot read the L4T release from {release}: {text.strip()[:80]!r}",
                           "reinstall the nvidia-l4t-core package (sudo apt install --reinstall nvidia-l4t-core)")
    major = int(found.group(1))
    l4t = f"L4T R{major}.{found.group(2)}"
    if major >= 36:
        return CheckResult("jetpack", PASS, f"{l4t} (JetPack 6)")
    jetpack = "JetPack 5" if major == 35 else "JetPack 4 or older"
    return CheckResult("jetpack", WARN if major == 35 else FAIL,
                       f"{l4t} ({jetpack}): this project needs Python >= 3.10 and torch >= 2.1 (JetPack 6)",
                       "upgrade to JetPack 6 (L4T R36)")


def check_python(m: Machine) -> CheckResult:
    venv, sees_system = python_environment()
    detail = f"{platform.python_version()} ({sys.executable}{', a venv' if venv else ''})"
    if sys.version_info < (3, 10):
        return CheckResult("python", FAIL, detail, "use Python 3.10 or newer")
    if m.is_jetson and venv and not sees_system:
        return CheckResult("python", WARN, detail + " without system site-packages: JetPack's TensorRT and OpenCV "
                           "are invisible here", f"recreate it: python3 -m venv --system-site-packages {venv}")
    return CheckResult("python", PASS, detail)


def check_torch(m: Machine) -> CheckResult:
    try:
        import torch
    except ImportError as e:
        return CheckResult("torch", FAIL, f"cannot import torch ({brief(e)})", _torch_fix(m))
    if _version_tuple(torch.__version__) < MIN_TORCH:
        return CheckResult("torch", FAIL, f"torch {torch.__version__} is older than {'.'.join(map(str, MIN_TORCH))}",
                           _torch_fix(m))
    return CheckResult("torch", PASS, f"torch {torch.__version__}")


def _torch_fix(m: Machine) -> str:
    if m.is_jetson:
        return "install NVIDIA's PyTorch for Jetson wheel for your JetPack (pip's aarch64 torch has no CUDA)"
    return "pip install -e '.[dev]' (brings torch from PyPI; for an NVIDIA GPU see pytorch.org for a CUDA build)"


def torch_cuda_build() -> str | None:
    """The CUDA version this torch was built for (torch.version.cuda); None for a CPU-only build."""
    import torch

    return torch.version.cuda


def check_cuda(m: Machine) -> CheckResult:
    try:
        usable, detail = cuda_probe()
    except ImportError:
        return CheckResult("cuda", FAIL, "torch is not installed", _torch_fix(m))
    except Exception as e:  # noqa: BLE001 - a broken driver/runtime raises anything; that is the finding
        return CheckResult("cuda", FAIL, f"CUDA is visible but a test kernel failed ({brief(e)})",
                           "install the torch build made for this JetPack/driver (torch.version.cuda must match)")
    if usable:
        return CheckResult("cuda", PASS, detail)
    if m.is_jetson:
        return CheckResult("cuda", FAIL, detail + " on a Jetson (a CPU-only torch?)", _torch_fix(m))
    built_for = torch_cuda_build()
    if built_for:  # the advice must match what is installed: the CUDA build is here, the GPU or driver is not
        return CheckResult("cuda", WARN, f"{detail} (this torch is a CUDA {built_for} build): training and the torch "
                           "backend run on the CPU",
                           "with an NVIDIA GPU: install or fix its driver (`nvidia-smi` must list the GPU); without "
                           "one, the CPU build of torch is about 3 GB smaller (pip install torch --index-url "
                           "https://download.pytorch.org/whl/cpu)")
    return CheckResult("cuda", WARN, detail + ": training and the torch backend run on the CPU",
                       "for an NVIDIA GPU: install a CUDA build of torch (pytorch.org) and the NVIDIA driver")


def check_torchvision(m: Machine) -> CheckResult:
    try:
        import torch
        import torchvision
    except ImportError as e:
        return CheckResult("torchvision", FAIL, f"cannot import torchvision ({brief(e)})",
                           "install the torchvision release made for your torch (pip install torchvision)")
    if _version_tuple(torchvision.__version__) < MIN_TORCHVISION:
        return CheckResult("torchvision", FAIL, f"torchvision {torchvision.__version__} is older than "
                           f"{'.'.join(map(str, MIN_TORCHVISION))}", "pip install 'torchvision>=0.16'")
    try:  # a torchvision built for another torch imports fine but its compiled operators do not load
        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except Exception as e:  # noqa: BLE001 - any failure of the compiled operators is this check's answer
        return CheckResult("torchvision", FAIL, f"torchvision {torchvision.__version__} does not match torch "
                           f"{torch.__version__}: {brief(e)}", "install the torchvision release made for this torch "
                           "(on a Jetson: build it from source against NVIDIA's torch)")
    return CheckResult("torchvision", PASS, f"torchvision {torchvision.__version__} (compiled ops load)")


def check_tensorrt(m: Machine) -> CheckResult:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        if m.is_jetson:
            return CheckResult("tensorrt", WARN, "TensorRT's Python API is not importable: .engine models and "
                               "`edge export --format engine` need it", "sudo apt install python3-libnvinfer "
                               "(and create venvs with --system-site-packages)")
        return CheckResult("tensorrt", PASS, "not installed (optional: only .engine models need it)")
    return CheckResult("tensorrt", PASS, f"TensorRT {getattr(trt, '__version__', '?')}")


def check_onnxruntime(m: Machine) -> CheckResult:
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        return CheckResult("onnxruntime", WARN, "not installed: .onnx models and export verification need it",
                           "pip install -e '.[cpu]' (a CUDA PC: '.[gpu]'; a Jetson: NVIDIA's onnxruntime-gpu wheel)")
    providers = list(ort.get_available_providers())
    detail = f"onnxruntime {ort.__version__}, providers: {', '.join(providers)}"
    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(providers)
    if m.is_jetson and not gpu:
        return CheckResult("onnxruntime", WARN, detail + " (CPU only on a Jetson)",
                           "pip uninstall onnxruntime, then install NVIDIA's onnxruntime-gpu wheel for your JetPack")
    return CheckResult("onnxruntime", PASS, detail)


def check_onnxruntime_packages(m: Machine) -> CheckResult:
    found = [d for d in ONNXRUNTIME_DISTS if d in installed_distributions()]
    if len(found) > 1:
        keep = "onnxruntime-gpu" if "onnxruntime-gpu" in found else found[-1]
        return CheckResult("onnxruntime-packages", WARN, f"{' and '.join(found)} are all installed: they share the "
                           "`onnxruntime` module and the last one installed overwrote the other's files",
                           f"pip uninstall -y {' '.join(found)} && pip install {keep}")
    return CheckResult("onnxruntime-packages", PASS, f"one runtime package: {found[0]}" if found else "none installed")


def check_opencv(m: Machine) -> CheckResult:
    try:
        cv2 = importlib.import_module("cv2")
    except ImportError as e:
        fix = "sudo apt install python3-opencv (JetPack's, with GStreamer)" if m.is_jetson else "pip install -e ."
        return CheckResult("opencv", FAIL, f"cannot import cv2 ({brief(e)})", fix)
    gstreamer = re.search(r"GStreamer:\s*YES", opencv_build_information()) is not None
    detail = f"OpenCV {cv2.__version__}, GStreamer: {'yes' if gstreamer else 'no'}"
    wheels = [d for d in OPENCV_DISTS if d in installed_distributions()]
    if m.is_jetson and not gstreamer:
        return CheckResult("opencv", FAIL, detail + ": csi:// cameras need OpenCV with GStreamer",
                           f"pip uninstall {' '.join(wheels) or 'opencv-python opencv-python-headless'} so JetPack's "
                           "OpenCV (with GStreamer) is used")
    if len(wheels) > 1:
        return CheckResult("opencv", WARN, detail + f"; {' and '.join(wheels)} are all installed and overwrite each "
                           "other's cv2", f"pip uninstall -y {' '.join(wheels)} && pip install {wheels[-1]}")
    return CheckResult("opencv", PASS, detail + ("" if gstreamer else " (only csi:// needs it)"))


def check_cameras(m: Machine) -> CheckResult:
    devices = sorted(m.path("/dev").glob("video*"), key=lambda p: (len(p.name), p.name))
    if not devices:
        return CheckResult("cameras", WARN, "no camera device (/dev/video*)", "connect a USB camera, or a CSI camera "
                           "and reboot; test:// and video files work without one")
    names = ", ".join("/dev/" + d.name for d in devices)
    refused = ["/dev/" + d.name for d in devices if not os.access(d, os.R_OK | os.W_OK)]
    if refused:
        return CheckResult("cameras", WARN, f"{names}; no permission for {', '.join(refused)}",
                           "sudo usermod -aG video $USER, then log out and in again")
    return CheckResult("cameras", PASS, names)


def _process_running(m: Machine, name: str) -> bool:
    for comm in m.path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                return True
        except OSError:  # the process ended while we looked
            continue
    return False


def check_argus(m: Machine) -> CheckResult:
    if not m.is_jetson:
        return CheckResult("argus", PASS, "not a Jetson (csi:// cameras need one)")
    sock = m.path("/tmp/argus_socket")
    running = _process_running(m, "nvargus-daemon")
    is_socket = sock.exists() and stat.S_ISSOCK(sock.stat().st_mode)
    if not running:
        return CheckResult("argus", WARN, "nvargus-daemon is not running: csi:// cameras cannot open",
                           "sudo systemctl enable --now nvargus-daemon")
    if not is_socket:
        return CheckResult("argus", WARN, "nvargus-daemon runs but /tmp/argus_socket is missing: csi:// cannot "
                           "reach it", "sudo systemctl restart nvargus-daemon")
    return CheckResult("argus", PASS, "nvargus-daemon running, /tmp/argus_socket present")


def check_video_group(m: Machine) -> CheckResult:
    user, uid, groups = user_and_groups()
    if uid == 0:
        return CheckResult("video-group", PASS, "running as root")
    if "video" in groups:
        return CheckResult("video-group", PASS, f"{user} is in the video group")
    return CheckResult("video-group", WARN, f"{user} is not in the video group: cameras (and the Jetson GPU) "
                       "may be refused", f"sudo usermod -aG video {user}, then log out and in again")


def check_disk(m: Machine) -> CheckResult:
    places = [m.data_dir.resolve()] + [p for p in (m.path(STATE_DIR),) if p.is_dir()]
    free = {str(p): free_bytes(p) for p in places}
    where, least = min(free.items(), key=lambda kv: kv[1])
    detail = "; ".join(f"{v / GiB:.1f} GiB free in {k}" for k, v in free.items())
    if least < 1 * GiB:
        return CheckResult("disk", FAIL, detail, f"free space in {where}: datasets, checkpoints and TensorRT builds "
                           "need a few GiB (`du -sh runs data ~/.cache`)")
    if least < 5 * GiB:
        return CheckResult("disk", WARN, detail + " (training and TensorRT builds like 5 GiB or more)",
                           f"free space in {where} (`du -sh runs data ~/.cache`) or use a larger disk")
    return CheckResult("disk", PASS, detail)


def check_memory(m: Machine) -> CheckResult:
    meminfo = m.path("/proc/meminfo")
    if not meminfo.is_file():
        return CheckResult("memory", PASS, "no /proc/meminfo (not Linux): not checked")
    kib = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+)\s*kB", meminfo.read_text(), re.M)}
    total, avail, swap = (kib.get(k, 0) * 1024 for k in ("MemTotal", "MemAvailable", "SwapTotal"))
    detail = (f"RAM {total / GiB:.1f} GiB ({avail / GiB:.1f} GiB available), swap {swap / GiB:.1f} GiB"
              + (", RAM shared by CPU and GPU" if m.is_jetson else ""))
    if avail < GiB // 2:
        return CheckResult("memory", WARN, detail + ": too little available to train or build an engine",
                           "close other programs "
                           "(a desktop takes ~1 GiB: sudo systemctl set-default multi-user.target)")
    if total < 6 * GiB and swap == 0:
        return CheckResult("memory", WARN, detail + ": a small board without swap runs out while training",
                           "add swap: sudo fallocate -l 4G /swapfile && sudo chmod 600 /swapfile && sudo mkswap "
                           "/swapfile && sudo swapon /swapfile")
    return CheckResult("memory", PASS, detail)


def check_service(m: Machine) -> CheckResult:
    unit = m.path(UNIT_FILE)
    if not unit.is_file():
        return CheckResult("service", PASS, "edge-camera.service is not installed (sudo edge install-service ...)")
    exec_start = re.search(r"^ExecStart=(\S+)", unit.read_text(), re.M)
    program = exec_start.group(1) if exec_start else "?"
    if not m.path(program).is_file():
        return CheckResult("service", FAIL, f"edge-camera.service runs {program}, which does not exist",
                           "re-run `sudo edge install-service` from the environment the service should use")
    problem = _service_model_problem(m)
    if problem:
        return CheckResult("service", FAIL, problem, "sudo edge install-service --model FILE (copies the model "
                           "and its sidecar)")
    state = systemctl_is_active(m, UNIT_NAME)
    detail = f"edge-camera.service installed, {state}"
    if state in ("active", "activating", "reloading"):
        return CheckResult("service", PASS, detail)
    if state == "failed":
        return CheckResult("service", FAIL, detail, "journalctl -u edge-camera -n 50 says why; after fixing it: "
                           "sudo systemctl restart edge-camera")
    if state == "unknown":
        return CheckResult("service", WARN, detail + " (systemctl not available here)", "systemctl status edge-camera")
    return CheckResult("service", WARN, detail, "sudo systemctl enable --now edge-camera")


def _service_model_problem(m: Machine) -> str | None:
    """What is wrong with the model the installed config names (None when fine or the config is unreadable)."""
    config = m.path(CONFIG_FILE)
    if not config.is_file() or not os.access(config, os.R_OK):
        return None  # mode 0640 root:edge-camera: only root and the service read it
    try:
        model = load_config_file(config).get("model")
        if isinstance(model, str):
            path = m.path(model) if model.startswith("/") else m.path(STATE_DIR) / model
            model_files(path, what="model")
    except EdgeError as e:
        return f"the service's config {CONFIG_FILE}: {e}"
    return None


def mqtt_probe(target: Any, ca_file: str | None) -> str | None:
    """Connect to the broker once: None when it accepts the credentials, else what went wrong."""
    from edge.runtime.outputs.mqtt import connect_check

    return connect_check(target, ca_file, timeout=5.0)


def check_mqtt(m: Machine) -> CheckResult:
    """The broker of `edge doctor --mqtt URL` or of the installed service's config: reachable, credentials work."""
    from edge.service.mqtt_setup import mqtt_target

    url, values, env = m.mqtt, {}, dict(os.environ)
    config = m.path(CONFIG_FILE)
    if url is None and config.is_file() and os.access(config, os.R_OK):
        try:
            values = load_config_file(config)
        except EdgeError:
            values = {}  # the service check reports a broken config
        url = values.get("mqtt")
        env_file = m.path(ENV_FILE)
        if env_file.is_file() and os.access(env_file, os.R_OK):
            password = read_env_var(env_file.read_text(encoding="utf-8", errors="replace"), "EDGE_MQTT_PASSWORD")
            env = {"EDGE_MQTT_PASSWORD": password} if password else {}
    if not url:
        return CheckResult("mqtt", PASS, "no MQTT broker configured (edge serve --mqtt URL; check one with "
                                         "edge doctor --mqtt URL)")
    try:
        target = mqtt_target(str(url), values.get("mqtt_password_file"), env)
        problem = mqtt_probe(target, values.get("mqtt_ca"))
    except EdgeError as e:
        return CheckResult("mqtt", FAIL, str(e), "fix the mqtt URL / options (edge serve --help)")
    if problem:
        return CheckResult("mqtt", FAIL, f"broker {target.display}: {problem}",
                           "check that the broker runs and its host/port, and the user and password "
                           "(EDGE_MQTT_PASSWORD or --mqtt-password-file)")
    return CheckResult("mqtt", PASS, f"broker {target.display} accepts our connection")


CHECKS: tuple[Callable[[Machine], CheckResult], ...] = (
    check_jetpack, check_python, check_torch, check_cuda, check_torchvision, check_tensorrt, check_onnxruntime,
    check_onnxruntime_packages, check_opencv, check_cameras, check_argus, check_video_group, check_disk,
    check_memory, check_service, check_mqtt,
)


def run_checks(machine: Machine | None = None) -> list[CheckResult]:
    """Every check, in order; a check that crashes is reported as failed, never raised."""
    machine = machine or Machine()
    results = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_").replace("_", "-")
        try:
            results.append(check(machine))
        except Exception as e:  # noqa: BLE001 - one broken probe must not hide the other checks
            results.append(CheckResult(name, FAIL, f"the check itself failed: {brief(e)}",
                                       "run `edge doctor` again; if it repeats, report it with this line"))
    return results
