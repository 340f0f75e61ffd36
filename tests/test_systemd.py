"""systemd integration: the sd_notify protocol, watchdog gating, the unit file and `edge install-service`."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.service import install
from edge.service.config import ServeConfig
from edge.service.sdnotify import Notifier

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "edge-camera.service"


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
    from edge.service import app as service_mod

    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # 0.4 s: pings every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(service_mod, "TICK_S", 0.02)
    svc = service_mod.Service(ServeConfig(model="m.pt", source="test://"))
    pred = SimpleNamespace(label="up", timestamp=time.time())
    svc.pipeline = SimpleNamespace(latest=pred, heartbeat=time.monotonic(), running=True)
    svc.camera = SimpleNamespace(state="streaming", frame_time=time.monotonic())
    t = threading.Thread(target=svc._supervise, daemon=True)
    t.start()
    try:
        for _ in range(40):  # healthy loop for 0.8 s
            svc.pipeline.heartbeat = time.monotonic()
            pred.timestamp = time.time()
            svc.camera.frame_time = time.monotonic()
            time.sleep(0.02)
        healthy = _recv_all(srv)
        time.sleep(0.3)  # the loop hangs: heartbeat no longer moves (a ping may still go out meanwhile)
        _recv_all(srv)
        time.sleep(0.8)
        hung = _recv_all(srv)
    finally:
        svc._stop_signal = "SIGTERM"
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


def test_unit_has_the_required_settings():
    s = _unit_settings(UNIT.read_text())
    expect = {
        "Type": "notify", "Restart": "on-failure", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "StateDirectory": "edge-camera", "DevicePolicy": "closed",
        "SupplementaryGroups": "video", "User": "edge-camera", "KillMode": "mixed",
    }
    for k, v in expect.items():
        assert s.get(k) == [v], k
    assert int(s["WatchdogSec"][0]) >= 10
    assert "StartLimitIntervalSec" in s and "StartLimitBurst" in s
    assert "PrivateDevices" not in s  # would hide the camera and the GPU
    allowed = s["DeviceAllow"]
    assert "char-video4linux rw" in allowed
    for node in ("/dev/nvhost-ctrl", "/dev/nvhost-ctrl-gpu", "/dev/nvhost-prof-gpu", "/dev/nvhost-gpu",
                 "/dev/nvhost-as-gpu", "/dev/nvmap"):
        assert f"{node} rw" in allowed
    assert "AF_UNIX" in s["RestrictAddressFamilies"][0]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["EnvironmentFile"] == ["-/etc/edge-camera/edge-camera.env"]
    assert "--config /etc/edge-camera/config.toml" in s["ExecStart"][0]


def test_example_config_is_valid():
    from edge.service.config import build_config, load_config_file

    values = load_config_file(ROOT / "systemd" / "config.toml")
    cfg = build_config(values, {}, env={})
    assert cfg.model.startswith("/var/lib/edge-camera/") and cfg.http == "127.0.0.1:8080"


def _rendered(tmp_path: Path) -> Path:
    p = tmp_path / "edge-camera.service"
    p.write_text(install.render_unit(UNIT.read_text(), install.edge_executable()))
    return p


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
    text = install.render_unit(UNIT.read_text(), Path("/opt/edge/venv/bin/edge"), user="cam")
    s = _unit_settings(text)
    assert s["ExecStart"][0].startswith("/opt/edge/venv/bin/edge serve --config ")
    assert s["User"] == ["cam"] and s["Group"] == ["cam"] and s["ProtectHome"] == ["yes"]
    # a program under /home would be hidden by ProtectHome=yes
    assert _unit_settings(install.render_unit(UNIT.read_text(), Path("/home/u/venv/bin/edge")))["ProtectHome"] == \
        ["read-only"]


def test_install_service_into_a_root_dir(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really a model")
    root = tmp_path / "root"
    rc = install.main(["--root", str(root), "--model", str(model), "--source", "csi://0", "--http", "8080"])
    out = capsys.readouterr().out
    assert rc == 0, out
    unit = root / "etc/systemd/system/edge-camera.service"
    assert unit.is_file() and str(install.edge_executable()) in unit.read_text()
    cfg = root / "etc/edge-camera/config.toml"
    assert 'model = "/var/lib/edge-camera/model.onnx"' in cfg.read_text() and 'source = "csi://0"' in cfg.read_text()
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
    env = root / "etc/edge-camera/edge-camera.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o640 and "EDGE_TOKEN" in env.read_text()
    assert (root / "var/lib/edge-camera/model.onnx").read_bytes() == b"not really a model"
    assert "run: systemctl enable edge-camera.service" in out  # listed, not run, under --root
    # a second run keeps the user's edited env file
    env.write_text("EDGE_TOKEN=mine\n")
    assert install.main(["--root", str(root)]) == 0
    assert env.read_text() == "EDGE_TOKEN=mine\n"


def test_install_service_dry_run_changes_nothing(tmp_path, capsys):
    root = tmp_path / "root"
    assert install.main(["--root", str(root), "--dry-run", "--source", "0"]) == 0
    out = capsys.readouterr().out
    assert "would write /etc/systemd/system/edge-camera.service" in out
    assert not root.exists()


def test_install_service_rejects_bad_input(tmp_path, capsys):
    assert install.main(["--root", str(tmp_path), "--model", str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert install.main(["--root", str(tmp_path), "--source", "0", "--http", "0.0.0.0:99999"]) == 2
    assert "out of range" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root")
def test_install_service_needs_root_for_the_real_system(capsys):
    assert install.main([]) == 2
    assert "sudo edge install-service" in capsys.readouterr().err


def test_install_service_cli_is_wired():
    r = subprocess.run([sys.executable, "-m", "edge", "install-service", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--root" in r.stdout
