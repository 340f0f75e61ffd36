"""systemd integration: the sd_notify protocol, watchdog gating and what the unit lets the service do.

`edge install-service` itself is tested in test_install.py.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.service import install
from edge.service.config import ServeConfig
from edge.service.sdnotify import Notifier


def _recv_all(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


# ---------------------------------------------------------------------------------------------- sd_notify
def test_notifier_is_a_noop_without_systemd():
    n = Notifier(env={})
    assert not n.enabled and n.watchdog_s is None
    assert n.ready() is False and n.watchdog() is False


def test_notifier_path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
        assert n.enabled and n.watchdog_s == 4.0
        assert n.ready("serving")
        assert n.watchdog() and n.reloading() and n.stopping()
        msgs = _recv_all(srv)
        n.close()
    assert msgs[0] == "READY=1\nSTATUS=serving"
    assert msgs[1] == "WATCHDOG=1"
    assert msgs[2].startswith("RELOADING=1\nMONOTONIC_USEC=") and int(msgs[2].split("=")[-1]) > 0
    assert msgs[3] == "STOPPING=1"


def test_notifier_abstract_socket():
    name = f"edge-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(b"\0" + name.encode())
        n = Notifier(env={"NOTIFY_SOCKET": "@" + name})
        assert n.notify("STATUS=hello")
        assert _recv_all(srv) == ["STATUS=hello"]


def test_watchdog_pid_must_be_ours():
    assert Notifier(env={"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None or os.getpid() == 1
    assert Notifier(env={"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 0.001


def test_notifier_survives_a_vanished_socket(tmp_path, caplog):
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False and n.watchdog() is False  # logged once, never raised


def test_watchdog_pings_only_while_the_pipeline_loops(tmp_path, monkeypatch):
    """A hung inference loop (stale heartbeat) stops the WATCHDOG=1 pings, so systemd restarts the service."""
    from edge.service import supervisor as supervisor_mod
    from edge.service.app import Service

    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # 0.4 s: pings every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(supervisor_mod, "TICK_S", 0.02)
    svc = Service(ServeConfig(model="m.pt", source="test://"))
    camera = SimpleNamespace(state="streaming", frame_time=time.monotonic(), last_error="")
    pipeline = SimpleNamespace(heartbeat=time.monotonic(), running=True)
    svc.state.cameras = [camera]
    svc.state.on_prediction(SimpleNamespace(camera=0))
    running = supervisor_mod.Running(pipeline, [camera], svc.sources)
    t = threading.Thread(target=svc.supervisor.supervise, args=(running,), daemon=True)
    t.start()
    try:
        for _ in range(40):  # healthy loop for 0.8 s
            pipeline.heartbeat = time.monotonic()
            svc.state.on_prediction(SimpleNamespace(camera=0))
            camera.frame_time = time.monotonic()
            time.sleep(0.02)
        healthy = _recv_all(srv)
        time.sleep(0.3)  # the loop hangs: heartbeat no longer moves (a ping may still go out meanwhile)
        _recv_all(srv)
        time.sleep(0.8)
        hung = _recv_all(srv)
    finally:
        svc.supervisor.stop_signal = "SIGTERM"
        t.join(2)
        srv.close()
    assert healthy[0].startswith("READY=1")  # first prediction present -> ready
    assert sum(m == "WATCHDOG=1" for m in healthy) >= 2
    assert "WATCHDOG=1" not in hung


# ---------------------------------------------------------------------------------------------- the unit
def _unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def _rendered_text() -> str:
    return install.render_unit(install.template_text("edge-camera.service"), install.edge_executable())


def _rendered(tmp_path: Path) -> Path:
    p = tmp_path / "edge-camera.service"
    p.write_text(_rendered_text())
    return p


def _yes(s: dict[str, list[str]], key: str) -> bool:
    return s.get(key, ["no"])[-1].strip().lower() in ("yes", "true", "on", "1")


def _paths(s: dict[str, list[str]], *keys: str) -> list[str]:
    """The paths listed under `keys` (prefixes - and + dropped, src:dest pairs as their destination)."""
    out = []
    for key in keys:
        for value in s.get(key, []):
            for item in value.split():
                parts = item.lstrip("-+").split(":")
                out.append(parts[1] if len(parts) > 1 and parts[1].startswith("/") else parts[0])
    return out


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _host_path_visible(s: dict[str, list[str]], path: str) -> bool:
    """Whether `path` in the service's mount namespace is the host's own (a socket there is then reachable)."""
    if _under(path, _paths(s, "InaccessiblePaths")):
        return False
    if path in _paths(s, "BindPaths", "BindReadOnlyPaths"):
        return True
    hidden = _paths(s, "TemporaryFileSystem") + (["/tmp", "/var/tmp"] if _yes(s, "PrivateTmp") else [])
    return not _under(path, hidden)


def test_service_can_reach_the_argus_socket():
    """csi:// talks to nvargus-daemon over /tmp/argus_socket: a private /tmp without the socket hides the camera."""
    s = _unit_settings(_rendered_text())
    assert _host_path_visible(s, "/tmp/argus_socket"), "the service would not see /tmp/argus_socket"
    assert "AF_UNIX" in s.get("RestrictAddressFamilies", ["AF_UNIX"])[-1].split()
    assert "nvargus-daemon.service" in " ".join(s.get("After", []))  # the daemon is up before the first open


def test_service_has_a_private_writable_temp_dir():
    """ProtectSystem=strict makes / read-only: temporary files need a directory systemd makes writable for us."""
    s = _unit_settings(_rendered_text())
    env = dict(item.split("=", 1) for value in s.get("Environment", []) for item in value.split())
    if "TMPDIR" not in env:
        assert _yes(s, "PrivateTmp")  # the private /tmp then is the temp dir
        return
    tmpdir = env["TMPDIR"].replace("%t", "/run")
    owned = {"/run/" + d: s.get("RuntimeDirectoryMode", ["0755"])[-1] for d in _paths(s, "RuntimeDirectory")}
    owned.update({"/var/lib/" + d: s.get("StateDirectoryMode", ["0755"])[-1] for d in _paths(s, "StateDirectory")})
    assert tmpdir in owned, f"TMPDIR={tmpdir} is not a directory systemd creates writable for the service"
    assert int(owned[tmpdir], 8) & 0o007 == 0, "the temp dir must not be open to other users"


# the device nodes a CSI camera pipeline and CUDA on a Jetson (JetPack 5 names) open
JETSON_NODES = ("/dev/video0", "/dev/nvhost-ctrl", "/dev/nvhost-ctrl-gpu", "/dev/nvhost-prof-gpu", "/dev/nvhost-gpu",
                "/dev/nvhost-as-gpu", "/dev/nvmap", "/dev/nvhost-vic")


def _device_allowed(s: dict[str, list[str]], node: str) -> bool:
    if _yes(s, "PrivateDevices"):
        return False
    if s.get("DevicePolicy", ["auto"])[-1] == "auto" and "DeviceAllow" not in s:
        return True
    for rule in s.get("DeviceAllow", []):
        spec, _, access = rule.partition(" ")
        if "r" in access and "w" in access and (spec == node or spec == "char-video4linux" and
                                                node.startswith("/dev/video")):
            return True
    return False


def test_service_may_open_the_camera_and_the_jetson_gpu():
    s = _unit_settings(_rendered_text())
    assert [n for n in JETSON_NODES if not _device_allowed(s, n)] == []


def test_unit_reads_the_files_install_service_writes():
    s = _unit_settings(_rendered_text())
    assert f"--config {install.CONFIG_FILE}" in s["ExecStart"][0]
    assert [p.lstrip("-") for p in s["EnvironmentFile"]] == [install.ENV_FILE]


def test_example_config_is_valid(tmp_path):
    from edge.service.config import build_config, load_config_file

    (tmp_path / "config.toml").write_text(install.template_text("config.toml"))
    cfg = build_config(load_config_file(tmp_path / "config.toml"), {}, env={})
    assert cfg.model.startswith("/var/lib/edge-camera/") and cfg.http == "127.0.0.1:8080"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    unit = _rendered(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "edge-camera.service" in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_security_exposure(tmp_path):
    unit = _rendered(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout + r.stderr)
    if r.returncode != 0 and not m:
        pytest.skip(f"this systemd-analyze has no offline security check: {r.stderr.strip()[:200]}")
    assert m and float(m.group(1)) <= 4.5, r.stdout[-2000:]


def test_render_unit_points_at_this_environment():
    template = install.template_text("edge-camera.service")
    text = install.render_unit(template, Path("/opt/edge/venv/bin/edge"), user="cam")
    s = _unit_settings(text)
    assert s["ExecStart"][0].startswith("/opt/edge/venv/bin/edge serve --config ")
    assert s["User"] == ["cam"] and s["Group"] == ["cam"] and s["ProtectHome"] == ["yes"]
    # a program under /home would be hidden by ProtectHome=yes
    assert _unit_settings(install.render_unit(template, Path("/home/u/venv/bin/edge")))["ProtectHome"] == \
        ["read-only"]
