"""What `edge install-service` copies and edits: a model's files, config keys and environment-file variables.

Edits are surgical: an installed config.toml or edge-camera.env keeps every line the user wrote (comments, tuned
thresholds) and only the keys the installer's flags name change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

from edge.core.errors import EdgeError
from edge.core.model_files import read_engine_sidecar, sidecar_path
from edge.runtime.backends import backend_for_file

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def model_files(model: Path, what: str = "--model") -> list[tuple[Path, str]]:
    """Every file `edge serve` needs to load `model`, as (source path, name relative to the model's folder).

    The model first; then a TensorRT engine's JSON sidecar (labels, preprocessing), or an ONNX file's external
    weight files. EdgeError (one line) when the model or one of its files is missing or unreadable.
    """
    if not model.is_file():
        raise EdgeError(f"{what} {str(model)!r}: no such file")
    files = [(model, model.name)]
    kind = backend_for_file(model)
    try:
        if kind == "tensorrt":
            read_engine_sidecar(model)  # missing or corrupt: the service would refuse the engine on every start
            files.append((sidecar_path(model), sidecar_path(model).name))
        elif kind == "onnxruntime":
            files += [(model.parent / rel, rel) for rel in _onnx_external_data(model)]
    except EdgeError as e:
        raise EdgeError(f"{what} {str(model)!r}: {e}") from e
    for src, rel in files[1:]:
        if not src.is_file():
            raise EdgeError(f"{what} {str(model)!r} needs {rel!r} beside it, which is missing")
    return files


def _onnx_external_data(model: Path) -> list[str]:
    """Relative names of the external weight files an ONNX model refers to (none for `edge export`'s files)."""
    import onnx

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception as e:  # any decoding failure means "not a usable ONNX file"
        raise EdgeError(f"cannot read it as ONNX ({type(e).__name__})") from e
    names: list[str] = []
    for tensor in graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        rel = PurePosixPath(location)
        if not location or rel.is_absolute() or ".." in rel.parts:
            raise EdgeError(f"external data location {location!r} is not a file beside the model")
        if location not in names:
            names.append(location)
    return names


# ------------------------------------------------------------------------------------------------ config.toml
def toml_value(value: object) -> str:
    """A TOML literal for a str, bool, int or float."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _split_comment(rhs: str) -> tuple[str, str]:
    """`"a # b"   # note` -> ('"a # b"', '   # note'): the first `#` after which the value parses is the comment."""
    for i, ch in enumerate(rhs):
        if ch == "#":
            try:
                tomllib.loads("v = " + rhs[:i])
            except tomllib.TOMLDecodeError:
                continue
            value = rhs[:i].rstrip()
            return value, rhs[len(value):]
    return rhs.rstrip(), ""


def config_model_path(text: str) -> str | None:
    """The absolute `model` path a config names (None when relative or absent)."""
    model = tomllib.loads(text).get("model")
    return model if isinstance(model, str) and model.startswith("/") else None


def set_config_keys(text: str, values: dict[str, object]) -> str:
    """`text` with each key's value replaced where it is set (its comment kept), else appended; nothing else changes."""
    lines = text.splitlines()
    for key, value in values.items():
        pattern = re.compile(rf"^(\s*)({re.escape(key)}|{re.escape(key.replace('_', '-'))})(\s*=\s*)(.*)$")
        for i, line in enumerate(lines):
            m = pattern.match(line)
            if m:
                _, comment = _split_comment(m.group(4))
                lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)}{toml_value(value)}{comment}"
                break
        else:
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- edge-camera.env
_PLAIN = re.compile(r"[A-Za-z0-9._~+/=:@%,-]+")


def _env_line(key: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*(#\s*)?{re.escape(key)}=(.*)$")


def read_env_var(text: str, key: str) -> str | None:
    """The value an EnvironmentFile sets for `key` (the last assignment wins, as in systemd), or None."""
    value = None
    for line in text.splitlines():
        m = _env_line(key).match(line)
        if m and not m.group(1):
            raw = m.group(2).strip()
            if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
                raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            value = raw
    return value or None


def set_env_var(text: str, key: str, value: str) -> str:
    """`text` with `key=value` set: the active line replaced, else the commented example, else appended."""
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise EdgeError(f"{key} must be one word of printable characters (no spaces or line breaks)")
    literal = value if _PLAIN.fullmatch(value) else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = text.splitlines()
    matches = [(i, m) for i, line in enumerate(lines) if (m := _env_line(key).match(line))]
    active = [i for i, m in matches if not m.group(1)]
    if active:
        for i in active[:-1]:  # one assignment only, so the file says what the service gets
            lines[i] = "#" + lines[i]
        lines[active[-1]] = f"{key}={literal}"
    elif matches:
        lines[matches[0][0]] = f"{key}={literal}"
    else:
        lines.append(f"{key}={literal}")
    return "\n".join(lines) + "\n"
