"""Issue 18: teach's API against hostile input, in-process: links out of --data, odd labels, deep JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from capture.dataset import DatasetWriter
from edge.service.http import Request
from edge.teach.api import TeachApi
from edge.teach.dataset import TeachDataset


def _api(data: Path) -> TeachApi:
    dataset = TeachDataset(data)
    service = SimpleNamespace(teach=SimpleNamespace(arch="efficientnet_lite0", output=data.parent / "model"),
                              dataset=dataset, features=None, jobs=None, model_info=lambda: None,
                              newest_frame=lambda: (np.zeros((8, 8, 3), np.uint8), 1))
    return TeachApi(service)


def _call(api: TeachApi, method: str, path: str, body=None, raw: bytes | None = None):
    data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
    r = api.handle(Request(method, path, {}, data))
    assert r is not None, f"{method} {path} not handled"
    return r.status, (json.loads(r.body) if r.content_type == "application/json" else r.body)


def _jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((16, 16, 3), 128, np.uint8))
    return path


@pytest.fixture
def outside_link(tmp_path):
    """--data holds a real label 'up' and a label folder 'evil' that is a link to a folder outside --data."""
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    _jpeg(data / "up" / "a.jpg")
    _jpeg(data / "up" / "b.jpg")
    precious = _jpeg(elsewhere / "precious.jpg")
    os.symlink(elsewhere, data / "evil")
    os.symlink(precious, data / "up" / "link.jpg")  # an image link out of the folder, too
    return data, precious


def test_a_linked_label_folder_is_never_read_or_deleted(outside_link):
    data, precious = outside_link
    api = _api(data)
    status, listing = _call(api, "GET", "/api/dataset")
    assert status == 200 and listing["labels"] == ["up"] and listing["counts"] == {"up": 2}
    status, answer = _call(api, "DELETE", "/api/labels/evil")
    assert 400 <= status < 500 and "outside" in answer["error"], answer
    for sid in ("precious", "link"):
        for method, path in (("GET", f"/api/snapshots/{sid}"), ("GET", f"/api/snapshots/{sid}.jpg"),
                             ("DELETE", f"/api/snapshots/{sid}")):
            assert _call(api, method, path)[0] == 404
    assert precious.is_file() and (data / "evil").is_symlink()


def test_delete_label_of_an_absolute_path_lists_nothing_outside(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _jpeg(data / "up" / "a.jpg")
    api = _api(data)
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": (listed.append(str(p)), real_scandir(p))[1])
    for path in ("/api/labels/%2Fetc", "/api/labels/..%2F..", f"/api/labels/{'%2F'.join(['', 'tmp'])}"):
        status, answer = _call(api, "DELETE", path)
        assert status == 400, answer
    assert not [p for p in listed if not p.startswith(str(data))]


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/labels", {"name": "\ud800"}),  # a lone surrogate
    ("DELETE", "/api/labels/%ED%A0%80", None),  # its (invalid) UTF-8 bytes
    ("DELETE", "/api/labels/" + "x" * 5000, None),
    ("DELETE", "/api/snapshots/" + "x" * 5000, None),
    ("POST", "/api/labels", None),  # deeply nested JSON: raw below
])
def test_hostile_labels_and_bodies_are_4xx(tmp_path, method, path, body):
    api = _api(tmp_path / "data")
    (tmp_path / "data").mkdir()
    raw = b"[" * 100000 + b"]" * 100000 if body is None and method == "POST" else None
    status, answer = _call(api, method, path, body, raw)
    assert 400 <= status < 500, answer
    assert "error" in answer


def test_a_label_folder_that_is_not_utf8_is_left_out(tmp_path):
    data = tmp_path / "data"
    _jpeg(data / "up" / "a.jpg")
    odd = os.path.join(os.fsencode(data), b"caf\xe9")  # written by a tool with another locale
    os.mkdir(odd)
    with open(os.path.join(odd, b"a.jpg"), "wb") as f:
        f.write((data / "up" / "a.jpg").read_bytes())
    writer = DatasetWriter(data, None, 95)
    assert writer.known_labels() == ["up"]
    writer.sync_labels()
    assert (data / "labels.txt").read_text(encoding="utf-8") == "up\n"
    status, listing = _call(_api(data), "GET", "/api/dataset")
    assert status == 200 and listing["labels"] == ["up"]
