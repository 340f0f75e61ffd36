"""`edge teach` through its HTTP API (no browser): labels, snapshots, Train going live, Export, bad input.

Every service here is a real `edge teach` (or `capture --web`) subprocess on the synthetic camera `test://`,
whose arrow flips up/down every PERIOD seconds; the camera numbers its frames as the scene renders them, so
the true arrow of any frame id is known (teach_helpers.true_arrow). Tests pass in any order (pytest-randomly):
a shared service is only used with labels of the test's own, and a test that trains or breaks a service
starts its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from teach_helpers import REPO, SOURCE, Teach, free_port, true_arrow

slow = pytest.mark.slow  # every test here but the in-process HTTP one starts an `edge teach`
TOKEN = "teach-token-42"
CAPTURE_NAME = re.compile(r"\d{8}-\d{6}-\d{6}-[0-9a-f]{6}\.jpg")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One teach service with a token, for tests that only add labels of their own."""
    work = tmp_path_factory.mktemp("teach-shared")
    teach = Teach(work, ["--source", SOURCE, "--data", "data", "--token", TOKEN, "--cache-views", "2"],
                  token=TOKEN).start()
    yield teach
    assert teach.stop() == 0, teach.log()[-2000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A teach service taught up/down from 10 true snapshots each, then trained (head mode)."""
    work = tmp_path_factory.mktemp("teach-trained")
    teach = Teach(work, ["--source", SOURCE, "--data", "data", "--output", "model", "--cache-views", "2"]).start()
    for label in ("up", "down"):
        teach.ok("POST", "api/labels", {"name": label}, want=201)
    snaps = teach.snap_true(10)
    assert teach.call("GET", "api/prediction")[1]["label"] is None  # still no model
    teach.ok("POST", "api/train", {}, want=202)
    second = teach.call("POST", "api/train", {})  # while the first one runs
    # done = the new model is swapped in; live_seconds follows with its first prediction (a frame later)
    result = teach.wait_for("the training and its first live prediction", lambda: (
        lambda t: t if t["state"] == "failed" or (t["state"] == "done" and t["live_seconds"] is not None) else None)(
        teach.ok("GET", "api/train")), 240, 0.2)
    live = teach.ok("GET", "api/prediction")  # before any other test retrains or exports
    yield SimpleNamespace(teach=teach, work=work, snaps=snaps, result=result, second=second, live=live)
    assert teach.stop() == 0, teach.log()[-2000:]


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------- the HTTP seam
def test_extra_routes_see_requests_after_the_host_check_and_token_only():
    """edge serve's HTTP server with an extra handler, in-process: what teach's API relies on."""
    import http.client

    from edge.runtime.outputs.stream import StreamOutput
    from edge.service.http import HttpServer, Response

    class App:
        stream = StreamOutput()

        def prediction_json(self):
            return None

        def health(self):
            return True, {"status": "ok"}

        def metrics(self):
            return b"", "text/plain"

    seen = []

    def extra(request):
        seen.append((request.method, request.path, request.body))
        if request.path == "/boom":
            raise RuntimeError("a bug in a route")
        return Response.json(200, {"ok": True}) if request.path.startswith("/api/x") else None

    app = App()
    server = HttpServer("127.0.0.1", 0, app, token=TOKEN)
    server.start()
    try:
        def call(method, path, body=b"", **headers):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
            headers.setdefault("Authorization", f"Bearer {TOKEN}")
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            status, payload = r.status, r.read()
            conn.close()
            return status, payload

        assert call("POST", "/api/x", b"{}", **{"Content-Type": "application/json"})[0] == 404  # no handler: no POST
        server.extra_handler = extra
        assert call("POST", "/api/x", b'{"a": 1}', **{"Content-Type": "application/json"}) == (200, b'{"ok": true}\n')
        assert call("DELETE", "/api/x/1")[0] == 200 and call("GET", "/api/x")[0] == 200
        assert seen == [("POST", "/api/x", b'{"a": 1}'), ("DELETE", "/api/x/1", b""), ("GET", "/api/x", b"")]
        assert call("POST", "/elsewhere")[0] == 405 and call("GET", "/healthz")[0] == 200  # built-ins still there
        seen.clear()
        assert call("POST", "/api/x", Authorization="")[0] == 401
        assert call("POST", "/api/x", Host="evil.example")[0] == 403
        assert call("POST", "/api/x", Origin="http://evil.example")[0] == 403
        assert call("POST", "/api/x", b"name=x", **{"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
        assert call("POST", "/api/x", b"{}", **{"Content-Type": "application/json", "Content-Length": str(2 << 20)}
                    )[0] == 413  # refused from the header, before reading it
        assert seen == []  # none of those reached the route
        status, payload = call("GET", "/boom")
        assert status == 500 and b"a bug in a route" in payload and call("GET", "/api/x")[0] == 200
    finally:
        server.stop()
        app.stream.close()


# ---------------------------------------------------------------------------------------------- before a model
@slow
def test_before_any_model_healthz_is_ok_and_predictions_have_no_label(shared):
    assert shared.call("GET", "healthz", headers={"Authorization": ""})[0] == 200  # /healthz needs no token
    first = shared.ok("GET", "api/prediction")
    time.sleep(0.5)
    later = shared.ok("GET", "api/prediction")
    assert first["label"] is None and later["label"] is None and later["probabilities"] == {}
    assert later["frame"] > first["frame"] and not later["stale"]


@slow
def test_the_token_host_and_origin_rules_of_edge_serve_hold(shared):
    no_token = {"Authorization": ""}
    assert shared.call("GET", "api/dataset", headers=no_token)[0] == 401
    assert shared.call("POST", "api/labels", {"name": "intruder"}, headers=no_token)[0] == 401
    assert shared.call("GET", "api/dataset", headers={"Host": "evil.example"})[0] == 403
    # a page elsewhere cannot make the browser on the device change the dataset (cross-site request forgery)
    status, answer = shared.call("POST", "api/labels", {"name": "forged"}, headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in answer["error"]
    status, answer = shared.call("POST", "api/labels", raw=b'{"name": "form"}', headers={"Content-Type": "text/plain"})
    assert status == 415
    assert "forged" not in shared.ok("GET", "api/dataset")["labels"]
    page = shared.call("GET", "")[1]
    assert b"edge teach" in page and b'id="train"' in page and b'id="snap"' in page


# ---------------------------------------------------------------------------------------------- labels
@slow
@pytest.mark.parametrize("label, rule", [
    ("", "empty"), ("x" * 65, "limit is 64"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("..", "'..'"), ("new\nline", "control character"), (".hidden", "starts with '.'"),
    (" padded", "whitespace"), ("train", "reserved"), ("Unknown", "reserved"),
])
def test_label_rules_are_capture_s(shared, label, rule):
    before = files(shared.workdir / "data")
    status, answer = shared.call("POST", "api/labels", {"name": label})
    assert status == 400 and rule in answer["error"]
    assert files(shared.workdir / "data") == before


@slow
def test_malformed_label_requests_are_400(shared):
    for body in ({}, {"name": 7}, {"name": "ok-1", "extra": 1}, ["ok-2"]):
        status, answer = shared.call("POST", "api/labels", body)
        assert status == 400 and answer["error"], body
    status, answer = shared.call("POST", "api/labels", raw=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and "JSON" in answer["error"]


@slow
def test_add_snap_delete_and_remove_a_label(shared):
    data = shared.workdir / "data"
    assert shared.ok("POST", "api/labels", {"name": "café ☕"}, want=201)["created"]
    assert not shared.ok("POST", "api/labels", {"name": "café ☕"})["created"]  # adding again changes nothing
    before = shared.frame()
    snap = shared.ok("POST", "api/snapshots", {"label": "café ☕"}, want=201)
    path = Path(snap["path"])
    assert path.parent == data / "café ☕" and CAPTURE_NAME.fullmatch(path.name)
    assert snap["label"] == "café ☕" and snap["counts"]["café ☕"] == 1 and snap["id"] == path.stem
    assert before <= snap["frame"] <= shared.frame()  # the camera frame id, numbered as in /api/prediction
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (120, 160, 3)
    assert "café ☕" in (data / "labels.txt").read_text().splitlines()
    listing = shared.ok("GET", "api/dataset")
    assert listing["counts"]["café ☕"] == 1 and listing["recent"]["café ☕"] == [snap["id"]]
    assert shared.ok("GET", f"api/snapshots/{snap['id']}")["frame"] == snap["frame"]
    thumb = shared.call("GET", f"api/snapshots/{snap['id']}.jpg")[1]
    assert cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR).shape[1] == 80  # half of 160, <= 160
    assert shared.ok("DELETE", f"api/snapshots/{snap['id']}")["counts"]["café ☕"] == 0
    assert not path.exists() and shared.call("GET", f"api/snapshots/{snap['id']}.jpg")[0] == 404
    assert shared.call("DELETE", f"api/snapshots/{snap['id']}")[0] == 404
    for _ in range(2):
        shared.ok("POST", "api/snapshots", {"label": "café ☕"}, want=201)
    removed = shared.ok("DELETE", "api/labels/caf%C3%A9%20%E2%98%95")
    assert removed["removed"] == 2 and "café ☕" not in removed["labels"] and not (data / "café ☕").exists()
    assert "café ☕" not in (data / "labels.txt").read_text().splitlines()


@slow
def test_unknown_labels_are_4xx_and_write_nothing(shared):
    before = files(shared.workdir / "data")
    status, answer = shared.call("POST", "api/snapshots", {"label": "never-added"})
    assert status == 404 and "add it first" in answer["error"]
    assert shared.call("POST", "api/snapshots", {"label": "../escape"})[0] == 400
    assert shared.call("DELETE", "api/labels/never-added")[0] == 404
    assert shared.call("DELETE", "api/labels/..")[0] == 400
    assert shared.call("DELETE", "api/snapshots/no-such-id")[0] == 404
    assert files(shared.workdir / "data") == before


@slow
def test_a_label_folder_with_other_files_is_not_removed(shared):
    shared.ok("POST", "api/labels", {"name": "keep-notes"}, want=201)
    shared.ok("POST", "api/snapshots", {"label": "keep-notes"}, want=201)
    notes = shared.workdir / "data" / "keep-notes" / "notes.txt"
    notes.write_text("mine")
    status, answer = shared.call("DELETE", "api/labels/keep-notes")
    assert status == 409 and "notes.txt" in answer["error"] and "nothing was deleted" in answer["error"]
    assert len(files(notes.parent)) == 2


# ---------------------------------------------------------------------------------------------- train
@slow
def test_training_goes_live_and_the_label_follows_the_arrow(trained):
    teach, result = trained.teach, trained.result
    assert result["state"] == "done", result
    assert result["val_accuracy"] >= 0.75 and result["classes"] == ["down", "up"]
    matrix = np.asarray(result["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == 4 and np.trace(matrix) >= 3  # 2 of each 10 validate
    # the first prediction of the new model: the first frame read after the swap, a frame or two later
    assert result["timings"]["swapped"] < result["live_seconds"] < result["timings"]["swapped"] + 3.0
    assert set(trained.live["probabilities"]) == {"up", "down"} and trained.live["model"]["backend"] == "torch"
    agree, total = teach.agreement(8)
    assert total >= 20 and agree >= 0.9 * total, (agree, total)
    assert all(true_arrow(s["frame"]) == s["label"] for s in trained.snaps)


@slow
def test_a_second_training_while_one_runs_is_409(trained):
    status, answer = trained.second
    assert status == 409 and "already running" in answer["error"]


@slow
def test_the_model_and_the_dataset_are_what_train_serve_and_export_take(trained):
    from edge.core.metadata import load_checkpoint
    from train.dataset import scan_dataset

    teach, work = trained.teach, trained.work
    result = teach.ok("GET", "api/train")  # the newest training (another test may have retrained)
    _, meta, _ = load_checkpoint(work / "model" / "model.pt")
    assert meta.class_names == ["down", "up"] and meta.arch == "efficientnet_lite0"
    assert meta.training["mode"] == "head" and meta.metrics["val_accuracy"] == result["val_accuracy"]
    assert (work / "model" / "labels.txt").read_text().split() == ["down", "up"]
    metrics = json.loads((work / "model" / "metrics.json").read_text())
    assert metrics["confusion_matrix"] == result["confusion_matrix"]
    png = teach.call("GET", "api/train/confusion_matrix.png")[1]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    info = scan_dataset(work / "data")  # `train --data DIR` reads the snapshots as they are
    counts = teach.ok("GET", "api/dataset")["counts"]
    assert info.classes == ["down", "up"] and not info.skipped
    assert {c: info.counts("train")[c] + info.counts("val")[c] for c in info.classes} == counts
    assert all(CAPTURE_NAME.fullmatch(p.name) for p in files(work / "data") if p.suffix == ".jpg")
    assert not [p for p in files(work) if p.name.startswith(".tmp-")]


@slow
def test_deleted_snapshots_leave_the_cache_before_a_retraining(trained):
    teach, work = trained.teach, trained.work
    listing = teach.ok("GET", "api/dataset")
    for sid in listing["recent"]["up"][:2]:
        teach.ok("DELETE", f"api/snapshots/{sid}")
    on_disk = sorted((work / "data" / "down").glob("*.jpg"))
    on_disk[0].unlink()  # deleted by hand, not through the page
    result = teach.train()
    assert result["state"] == "done", result
    metrics = json.loads((work / "model" / "metrics.json").read_text())
    total = teach.ok("GET", "api/dataset")["total"]
    assert metrics["train_images"] + metrics["val_images"] == total == 17
    assert teach.ok("GET", "api/dataset")["features"]["cached"] == total


@slow
def test_export_swaps_in_the_verified_onnx(trained):
    teach, work = trained.teach, trained.work
    teach.ok("POST", "api/export", {}, want=202)
    assert teach.call("POST", "api/train", {})[0] == 409  # one job at a time
    assert teach.call("POST", "api/export", {})[0] == 409
    done = teach.wait_for("the export", lambda: (lambda e: e if e["state"] != "running" else None)(
        teach.ok("GET", "api/export")), 300, 0.5)
    assert done["state"] == "done", done
    onnx = next(f for f in done["files"] if f["kind"] == "onnx")
    assert Path(onnx["path"]) == work / "model" / "model.onnx" and "PASS" in onnx["verify"]
    teach.wait_for("onnxruntime serving", lambda: teach.ok("GET", "api/prediction")["model"]["backend"] ==
                   "onnxruntime", 10)
    agree, total = teach.agreement(5)
    assert total >= 10 and agree >= 0.9 * total


@slow
def test_train_requests_that_cannot_train_are_400_and_write_nothing(tmp_path):
    teach = Teach(tmp_path, ["--source", SOURCE, "--data", "data", "--output", "model"]).start()
    try:
        def refused(body=None, status=400):
            got, answer = teach.call("POST", "api/train", {} if body is None else body)
            assert got == status, answer
            return answer["error"]

        assert "at least 2 labels" in refused()
        assert "unknown mode" in refused({"mode": "magic"})
        assert "epochs" in refused({"epochs": 0}) and "epochs" in refused({"epochs": "ten"})
        assert "unknown field" in refused({"lr": 1})
        for label in ("up", "down"):
            teach.ok("POST", "api/labels", {"name": label}, want=201)
        for _ in range(3):
            teach.ok("POST", "api/snapshots", {"label": "up"}, want=201)
        assert "at least 2 labels" in refused()  # one class with examples
        teach.ok("POST", "api/snapshots", {"label": "down"}, want=201)
        assert "'down' has 1" in refused()  # fewer than 2 examples of a label
        status, answer = teach.call("POST", "api/export", {})
        assert status == 409 and "train a model first" in answer["error"]
        idle = teach.ok("GET", "api/train")
        assert idle["state"] == "idle" and idle["val_accuracy"] is None and idle["model"] is None
        assert files(tmp_path / "model") == []
        assert teach.call("GET", "healthz")[0] == 200
    finally:
        assert teach.stop() == 0


# ---------------------------------------------------------------------------------------------- faults
@slow
def test_a_snapshot_before_the_camera_has_a_frame_is_409(tmp_path):
    # nothing listens on this port: the camera keeps reconnecting and never has a frame
    teach = Teach(tmp_path, ["--source", f"http://127.0.0.1:{free_port()}/stream.mjpg", "--data", "data"])
    teach.start(ready="api/dataset")  # the camera never gets healthy
    try:
        teach.ok("POST", "api/labels", {"name": "up"}, want=201)
        status, answer = teach.call("POST", "api/snapshots", {"label": "up"})
        assert status == 409 and "no camera frame yet" in answer["error"]
        assert files(tmp_path / "data" / "up") == []
        assert teach.call("GET", "healthz")[0] == 503 and teach.proc.poll() is None
    finally:
        assert teach.stop() == 0


@slow
def test_a_deleted_data_dir_is_409_and_the_service_goes_on(tmp_path):
    teach = Teach(tmp_path, ["--source", SOURCE, "--data", "data", "--output", "model"]).start()
    try:
        teach.ok("POST", "api/labels", {"name": "up"}, want=201)
        teach.ok("POST", "api/snapshots", {"label": "up"}, want=201)
        shutil.rmtree(tmp_path / "data")
        for method, path, body in (("GET", "api/dataset", None), ("POST", "api/labels", {"name": "down"}),
                                   ("POST", "api/snapshots", {"label": "up"}), ("POST", "api/train", {}),
                                   ("DELETE", "api/labels/up", None)):
            status, answer = teach.call(method, path, body)
            assert status == 409 and "is gone" in answer["error"], (method, path, status, answer)
        assert not (tmp_path / "data").exists()  # not silently recreated
        assert teach.call("GET", "healthz")[0] == 200 and teach.ok("GET", "api/prediction")["label"] is None
        (tmp_path / "data").mkdir()  # put back: teaching goes on
        teach.ok("POST", "api/labels", {"name": "down"}, want=201)
    finally:
        assert teach.stop() == 0


# ---------------------------------------------------------------------------------------------- capture --web
@slow
def test_capture_web_serves_the_page_without_training(tmp_path):
    teach = Teach(tmp_path, ["--label", "thumbs_up", "--source", SOURCE, "--data", "data"], command=("capture",))
    teach.start()
    try:
        listing = teach.ok("GET", "api/dataset")
        assert listing["labels"] == ["thumbs_up"] and listing["train"] is False and listing["features"] is None
        snap = teach.ok("POST", "api/snapshots", {"label": "thumbs_up"}, want=201)
        assert Path(snap["path"]).is_file()
        status, answer = teach.call("POST", "api/train", {})
        assert status == 404 and "edge teach" in answer["error"]
        assert b'id="snap"' in teach.call("GET", "")[1]
    finally:
        assert teach.stop() == 0


# ---------------------------------------------------------------------------------------------- the command line
def _teach_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", "teach", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


@slow
@pytest.mark.parametrize("args, words", [
    (["--source", SOURCE, "--data", "D"], "needs --http"),
    (["--source", SOURCE, "--data", "D", "--http", "0.0.0.0:0"], "without authentication"),
    (["--source", SOURCE, "--data", "D", "--http", "0", "--output", "D/model"], "inside --data"),
    (["--source", SOURCE, "--data", "D", "--http", "0", "--events", "-"], "--events"),
    (["--source", SOURCE, "--data", "D", "--http", "0", "--backend", "onnxruntime"], "picks the backend"),
    (["--source", SOURCE, "--data", "D", "--http", "0", "--arch", "vgg99"], "unknown arch"),
    (["--source", SOURCE, "--data", "D", "--http", "0", "--epochs", "0"], "--epochs"),
    (["--source", "nope://x", "--data", "D", "--http", "0"], "nope"),
])
def test_bad_command_lines_are_one_line_exit_2_and_create_nothing(tmp_path, args, words):
    r = _teach_cli(tmp_path, *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


@slow
def test_a_split_dataset_is_refused(tmp_path):
    (tmp_path / "D" / "train" / "up").mkdir(parents=True)
    r = _teach_cli(tmp_path, "--source", SOURCE, "--data", "D", "--http", "0")
    assert r.returncode == 2 and "train/ or val/" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@slow
@pytest.mark.parametrize("args, words", [
    (["--web", "0.0.0.0:0"], "--web 0.0.0.0:0 exposes the camera"),
    (["--web", "0", "--label", "a/b"], "path separator"),
    (["--web", "0", "--count", "3"], "--count does not apply with --web"),
    (["--label", "up", "--token", "t"], "--token only applies with --web"),
    ([], "--label is required"),
])
def test_capture_web_bad_command_lines_are_one_line_exit_2(tmp_path, args, words):
    r = subprocess.run([sys.executable, "-m", "capture", "--source", SOURCE, "--data", "D", *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and words in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
