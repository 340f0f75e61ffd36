"""The JSON API of `edge teach` (and `capture --web`), behind edge serve's HTTP server (its extra_handler).

    GET    /api/dataset                 labels, counts, the newest snapshot ids per label, notes, feature cache
    POST   /api/labels {"name": L}      add a label (201; 200 when it exists); 400 with the rule it breaks
    DELETE /api/labels/L                remove a label with its snapshots
    POST   /api/snapshots {"label": L}  save the newest camera frame -> id, label, path, frame, counts (201)
    GET    /api/snapshots/ID            id, label, path, frame (the camera frame id, when snapped in this session)
    GET    /api/snapshots/ID.jpg        a thumbnail
    DELETE /api/snapshots/ID            delete one snapshot
    POST   /api/train {"mode", "epochs"} 202; GET /api/train: state, progress, val_accuracy, confusion_matrix, ...
    GET    /api/train/confusion_matrix.png
    POST   /api/export {}               202; GET /api/export: state, files (with their verification), live

Errors are JSON `{"error": "what was wrong; what to do"}` with a 4xx status; the service goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import numpy as np

from edge.core.errors import EdgeError
from edge.service.http import Request, Response

from .config import TeachConfig
from .dataset import ApiError, TeachDataset

if TYPE_CHECKING:
    from .features import FeatureCache
    from .jobs import Jobs

log = logging.getLogger(__name__)

IMMUTABLE = {"Cache-Control": "private, max-age=86400"}  # a snapshot id always names the same image


def _segment(text: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"{text!r} is not valid percent-encoded UTF-8") from e


def _json_body(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise ApiError(400, "the body is JSON nested too deeply; send a flat object") from e
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def _field(body: dict[str, Any], name: str, example: str) -> Any:
    if name not in body:
        raise ApiError(400, f"missing field {name!r}; send e.g. {example}")
    extra = sorted(set(body) - {name})
    if extra:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, extra))}; send only {example}")
    return body[name]


class Teaching(Protocol):
    """What the API needs from the service (edge.teach.service.TeachService)."""

    teach: TeachConfig
    dataset: TeachDataset
    features: FeatureCache | None  # None without training
    jobs: Jobs | None  # None without training

    def newest_frame(self) -> tuple[np.ndarray, int]: ...

    def model_info(self) -> dict[str, str] | None: ...


class TeachApi:
    """Routes /api/... requests to the dataset, the jobs and the camera of a TeachService."""

    def __init__(self, service: Teaching) -> None:
        self.service = service
        self.dataset = service.dataset
        self.routes: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("GET", "/api/dataset"): self._dataset,
            ("POST", "/api/labels"): self._add_label,
            ("POST", "/api/snapshots"): self._snap,
            ("POST", "/api/train"): lambda r: self._start("train", r),
            ("GET", "/api/train"): lambda r: self._status("train"),
            ("POST", "/api/export"): lambda r: self._start("export", r),
            ("GET", "/api/export"): lambda r: self._status("export"),
            ("GET", "/api/train/confusion_matrix.png"): self._confusion_png,
        }
        self.prefixed: dict[tuple[str, str], Callable[[str], Response]] = {
            ("DELETE", "/api/labels/"): self._remove_label,
            ("GET", "/api/snapshots/"): self._snapshot,
            ("DELETE", "/api/snapshots/"): self._delete_snapshot,
        }

    def handle(self, request: Request) -> Response | None:
        """The answer to a request under /api/ that this API knows; None for anything else."""
        path = request.path
        if not path.startswith("/api/") or path == "/api/prediction":
            return None
        try:
            route = self.routes.get((request.method, path))
            if route is not None:
                return route(request)
            for (method, prefix), handler in self.prefixed.items():
                if method == request.method and path.startswith(prefix) and len(path) > len(prefix):
                    return handler(_segment(path[len(prefix):]))
            if any(p == path for _, p in self.routes) or any(path.startswith(p) for _, p in self.prefixed):
                return Response.json(405, {"error": f"{request.method} is not allowed on {path}"})
            return None
        except ApiError as e:
            return Response.json(e.status, {"error": str(e)})
        except EdgeError as e:
            return Response.json(400, {"error": str(e)})

    # ------------------------------------------------------------------ dataset
    def _dataset(self, request: Request) -> Response:
        out = self.dataset.listing()
        service = self.service
        out.update({"train": service.jobs is not None, "arch": service.teach.arch if service.jobs else None,
                    "features": service.features.status() if service.features else None,
                    "model": service.model_info()})
        return Response.json(200, out)

    def _add_label(self, request: Request) -> Response:
        name = _field(_json_body(request), "name", '{"name": "thumbs_up"}')
        created = self.dataset.add_label(name)
        answer = {"label": name, "created": created, "labels": self.dataset.labels(), "counts": self.dataset.counts()}
        return Response.json(201 if created else 200, answer)

    def _remove_label(self, label: str) -> Response:
        label = self.dataset.existing_label(label)  # checked before anything is listed
        paths = self.dataset.images(label)
        removed = self.dataset.remove_label(label)
        self._forget(paths)
        return Response.json(200, {"label": label, "removed": removed, "labels": self.dataset.labels(),
                                   "counts": self.dataset.counts()})

    def _snap(self, request: Request) -> Response:
        label = _field(_json_body(request), "label", '{"label": "thumbs_up"}')
        self.dataset.check_root()
        self.dataset.existing_label(label)  # a wrong label is the answer even while the camera has no frame
        frame, frame_id = self.service.newest_frame()
        out = self.dataset.snap(label, frame, frame_id)
        if self.service.features is not None:
            self.service.features.submit([out["path"]])
        return Response.json(201, out)

    def _snapshot(self, name: str) -> Response:
        if name.endswith(".jpg"):
            return Response(200, self.dataset.thumbnail(name[:-4]), "image/jpeg", IMMUTABLE)
        return Response.json(200, self.dataset.describe(name))

    def _delete_snapshot(self, sid: str) -> Response:
        label, path = self.dataset.delete(sid)
        self._forget([path])
        return Response.json(200, {"id": sid, "label": label, "counts": self.dataset.counts()})

    def _forget(self, paths: list[Path]) -> None:
        if self.service.features is not None:
            self.service.features.forget(paths)

    # ------------------------------------------------------------------ jobs
    def _jobs(self):
        jobs = self.service.jobs
        if jobs is None:
            raise ApiError(404, "training is off here (capture --web collects snapshots only); run `edge teach` "
                           "to train from the page")
        return jobs

    def _start(self, kind: str, request: Request) -> Response:
        jobs = self._jobs()
        body = _json_body(request)
        self.dataset.check_root()
        state = jobs.start_train(body) if kind == "train" else jobs.start_export(body)
        return Response.json(202, state)

    def _status(self, kind: str) -> Response:
        return Response.json(200, self._jobs().status(kind))

    def _confusion_png(self, request: Request) -> Response:
        path = self.service.teach.output / "confusion_matrix.png" if self._jobs() else None
        try:
            return Response(200, path.read_bytes(), "image/png")
        except OSError as e:
            raise ApiError(404, "no confusion matrix yet: train a model first") from e
