"""What `edge teach` and `capture --web` run with: edge serve's validated configuration (the same rules: token,
loopback by default, allowed hosts, source checks) plus the dataset folder and where trained models go."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.core.errors import EdgeError
from edge.service.config import OPTIONS, ServeConfig, build_config, load_config_file

DEFAULT_ARCH = "efficientnet_lite0"  # accurate, and its ImageNet weights ship with a package (no download)
DEFAULT_EPOCHS = 30
DEFAULT_VIEWS = 4
_SERVE_OPTIONS = {o.name for o in OPTIONS}


@dataclass(frozen=True)
class TeachConfig:
    serve: ServeConfig  # camera, HTTP, token, overlay... as `edge serve` takes them
    data: Path  # the ImageFolder dataset snapshots go to (DIR/LABEL/)
    output: Path | None  # where model.pt and its metrics go; None: no training (capture --web)
    arch: str = DEFAULT_ARCH
    initial_model: str | None = None  # served until the first training (--model)
    quality: int = 95  # JPEG quality of snapshots
    cache_views: int = DEFAULT_VIEWS  # features per image: 1 clean + (n - 1) augmented
    epochs: int = DEFAULT_EPOCHS  # head training epochs when the page does not say
    first_label: str | None = None  # created at start (capture --web --label)

    @property
    def can_train(self) -> bool:
        return self.output is not None


def default_output(data: Path) -> Path:
    """Beside the dataset, never inside it (a folder in DIR would be a class): data -> data-model."""
    real = data.resolve()
    return real.parent / f"{real.name}-model"


def add_teach_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("teaching")
    group.add_argument("--data", required=True, metavar="DIR", help="dataset folder: snapshots go to DIR/LABEL/ "
                       "(created if missing)")
    group.add_argument("--arch", default=DEFAULT_ARCH, help=f"backbone to train on (default {DEFAULT_ARCH}; "
                       "`edge models` lists them)")
    group.add_argument("--output", metavar="DIR", help="where model.pt, labels.txt, metrics.json and the "
                       "confusion matrix go (default: DIR-model beside the dataset)")
    group.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                       help=f"head training epochs (default {DEFAULT_EPOCHS}; the page may ask for others)")
    group.add_argument("--cache-views", type=int, default=DEFAULT_VIEWS,
                       help=f"features kept per snapshot: 1 clean + N-1 augmented views (default {DEFAULT_VIEWS})")
    group.add_argument("--quality", type=int, default=95, help="JPEG quality of snapshots 1-100 (default 95)")


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def config_from_args(ns: argparse.Namespace, env: dict[str, str] | None = None) -> TeachConfig:
    """`edge teach` flags (and --config file) -> TeachConfig; EdgeError naming anything wrong."""
    from edge.core.registry import get_arch
    from train.config import BOUNDS

    file_values: dict[str, Any] = load_config_file(ns.config) if getattr(ns, "config", None) else {}
    cli = {k: v for k, v in vars(ns).items() if k in _SERVE_OPTIONS}
    merged = {**file_values, **cli}
    for name in ("events", "on_change"):
        if merged.get(name):
            raise EdgeError(f"edge teach does not take --{name.replace('_', '-')}: labels come and go while you "
                            "teach; run `edge serve` with the trained model for events")
    if merged.get("backend", "auto") != "auto":
        raise EdgeError(f"edge teach picks the backend itself (torch for a new model.pt, onnxruntime or TensorRT "
                        f"after Export); drop --backend {merged['backend']}")
    data = Path(ns.data)
    output = Path(ns.output).absolute() if ns.output else default_output(data)
    if _inside(output, data):
        raise EdgeError(f"--output {str(output)!r} is inside --data {str(data)!r}, where every folder is a label; "
                        "put it beside the dataset")
    get_arch(ns.arch)
    for name in ("epochs", "cache_views"):
        problem = BOUNDS[name].problem(getattr(ns, name))
        if problem:
            raise EdgeError(f"--{name.replace('_', '-')} {problem}, got {getattr(ns, name)}")
    if not 1 <= ns.quality <= 100:
        raise EdgeError(f"--quality must be 1-100, got {ns.quality}")
    initial = merged.get("model")
    # the service's model file: the one given, else the one training will write (loaded once it exists)
    cli["model"] = initial or str(output / "model.pt")
    where = f"config file {ns.config!r}" if getattr(ns, "config", None) else "config file"
    serve = build_config(file_values, cli, env, where_file=where)
    if len(serve.sources) > 1:
        raise EdgeError(f"edge teach takes one --source (got {len(serve.sources)}): you teach with one camera; "
                        "serve the trained model on several with `edge serve`")
    if serve.http is None:
        raise EdgeError("edge teach needs --http [HOST:]PORT: the page is where you teach (e.g. --http 8080, "
                        "then open http://127.0.0.1:8080/)")
    return TeachConfig(serve, data, output, ns.arch, initial, ns.quality, ns.cache_views, ns.epochs)


def web_config(*, data: str | os.PathLike, source: str, http: str, label: str | None = None, quality: int = 95,
               env: dict[str, str] | None = None, **serve: Any) -> TeachConfig:
    """`capture --web`: the page without training. `serve`: more edge serve options (token, allowed_hosts,
    allow_no_token, width, height, fps), None meaning unset."""
    cli = {"model": "(none)", "source": source, "http": http, **{k: v for k, v in serve.items() if v is not None}}
    return TeachConfig(build_config({}, cli, env), Path(data), None, quality=quality, first_label=label)
