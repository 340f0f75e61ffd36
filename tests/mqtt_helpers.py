"""Helpers for the MQTT tests: a real Mosquitto broker in a temporary folder, a subscriber that records what it
gets, and an ONNX model that tells the test:// scene's arrows apart (a linear template, no training)."""

from __future__ import annotations

import getpass
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
FPS, PERIOD = 10.0, 3.0  # the scene: the arrow flips every 3 s
SOURCE = f"test://?width=160&height=120&fps={FPS:g}&period={PERIOD:g}"


def need_mosquitto() -> str:
    if MOSQUITTO is None:
        pytest.skip("needs the mosquitto broker (Debian: apt install mosquitto); not installed")
    try:
        import paho.mqtt  # noqa: F401 - imported only to see whether it is installed
    except ImportError:
        pytest.skip("needs paho-mqtt (pip install -e '.[mqtt]')")
    return MOSQUITTO


class Broker:
    """One mosquitto process on 127.0.0.1:`port`; `users` = {name: password} turns anonymous access off."""

    def __init__(self, workdir: Path, port: int, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        self.port = port
        self.dir = workdir / f"mosquitto-{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        # persistence: a subscriber's session (and what was queued for it) survives a broker restart
        # `user`: as root mosquitto would drop to the `mosquitto` user, which cannot write our temporary folder
        lines = [f"listener {port} 127.0.0.1", "persistence true", f"persistence_location {self.dir}/",
                 "log_dest stderr", f"user {getpass.getuser()}"]
        if tls:  # (CA, server certificate, server key)
            lines += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        if users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True,
                               capture_output=True)
            pw.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self._log = open(self.dir / "broker.log", "ab")
        self.proc = subprocess.Popen([need_mosquitto(), "-c", str(self.conf)], stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"mosquitto did not listen on {self.port}: {(self.dir / 'broker.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None


class Subscriber:
    """Records every message on `topics` (list of (time, topic, payload bytes, retain)). With `client_id`, a
    persistent session (QoS 1): messages published while it is away are kept for it by the broker."""

    def __init__(self, port: int, topics: list[str], client_id: str = "") -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[float, str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not client_id)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: [c.subscribe(t, qos=1) for t in topics]
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for _, t, p, _ in self.messages if t == topic]

    def json(self, topic: str) -> list[dict]:
        return [json.loads(p) for p in self.on(topic) if p]

    def last(self, topic: str) -> bytes | None:
        got = self.on(topic)
        return got[-1] if got else None

    def wait(self, what: str, cond, timeout: float = 60.0, log=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = cond()
            if got:
                return got
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}" + (f":\n{log()[-3000:]}" if log else ""))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost (openssl): (ca, cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key, cert, key, csr = (folder / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr"))
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=edge test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))
    return ca, cert, key


def arrow_model(path: Path, size: int = 16, k: float = 10.0) -> Path:
    """ONNX classifier up/down for the test:// scene (SOURCE): a linear model (ridge regression on the scene's
    own first 100 s of frames, no training run) that gets every frame of them right."""
    import onnx
    from onnx import TensorProto, helper

    from edge.core.metadata import ONNX_META_KEY, ModelMeta
    from edge.core.preprocess import PreprocessSpec, preprocess_image
    from edge.core.synthetic import SceneRenderer

    spec = PreprocessSpec(size, size, (0.5,) * 3, (0.5,) * 3)
    scene = SceneRenderer(160, 120, period_s=PERIOD)
    frames = range(int(100 * FPS))
    x = np.array([preprocess_image(scene.render(i / FPS, i), spec).ravel() for i in frames], np.float64)
    y = np.array([1.0 if scene.label_at(i / FPS) == "up" else -1.0 for i in frames])
    a = np.c_[x, np.ones(len(x))]
    wb = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ y)
    w, b = wb[:-1], wb[-1]
    weights = np.stack([k * w, -k * w], 1).astype(np.float32)
    bias = np.array([k * b, -k * b], np.float32)
    n = 3 * size * size
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "arrows", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [n, 2], weights.flatten()),
                     helper.make_tensor("b", TensorProto.FLOAT, [2], bias)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    prop = model.metadata_props.add()
    prop.key = ONNX_META_KEY
    prop.value = ModelMeta("arrows", ["up", "down"], spec).to_json()
    onnx.save(model, str(path))
    return path
