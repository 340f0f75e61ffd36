"""`edge serve` configuration: one typed object, from a config file (TOML or JSON) and/or flags, validated once.

Every option has one entry in `OPTIONS` (name, type, default, help, check); the argparse flags and the config
file keys both come from it, so they cannot drift. Precedence: built-in defaults < config file < `EDGE_TOKEN`
(token only) < command-line flags. Any unknown key or bad value is one `EdgeError` naming it and the valid choices.

`source` is repeatable: `--source A --source B` (or `source = ["A", "B"]` in the file) serves several cameras with
one model; flags given on the command line replace the file's list. `ServeConfig.sources` is always the list.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from edge.core.bounds import Bounds
from edge.core.errors import EdgeError
from edge.runtime.backends import BACKEND_CHOICES, DEVICE_CHOICES

LOG_LEVELS = ("debug", "info", "warning", "error")
TOKEN_ENV = "EDGE_TOKEN"
MQTT_PASSWORD_ENV = "EDGE_MQTT_PASSWORD"


@dataclass(frozen=True)
class Option:
    name: str  # dataclass field and config key (flag: --name-with-dashes)
    type: type  # str, int, float or bool
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns what is wrong, or None
    metavar: str | None = None
    nullable: bool = False  # None allowed (optional value)
    repeatable: bool = False  # the flag may be given several times; the file may hold a list


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
           kind: type = float) -> Callable[[Any], str | None]:
    """An option's check: edge.core.bounds.Bounds, the range checker train uses too."""
    return Bounds(kind, lo, hi, lo_open, hi_open).problem


def _nonempty(v: str) -> str | None:
    return "must not be empty" if not v.strip() else None


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def split_hosts(text: str) -> tuple[str, ...]:
    """`a.local, B.example.com.` -> ('a.local', 'b.example.com'): host names compare case-insensitively and
    without the root dot."""
    return tuple(n.strip().lower().rstrip(".") for n in text.split(",") if n.strip())


def _host_list(v: str) -> str | None:
    names = [n.strip() for n in v.split(",")]
    if not any(names):
        return "must not be empty"
    for name in names:
        if not (_HOST_NAME.fullmatch(name) or is_ip_address(name.strip("[]"))):
            return (f"has {name!r}, which is not a host name; write names without scheme or port, comma-separated, "
                    "e.g. jetson.local,cam.example.com (IP addresses are always allowed)")
    return None


OPTIONS: tuple[Option, ...] = (
    Option("model", str, None, "model file: model.pt from `train`, an exported .onnx or a TensorRT .engine",
           check=_nonempty, metavar="PATH"),
    Option("source", str, None, "video source: 0, /dev/video0, csi://0, a video file, rtsp://..., http(s)://... "
           "(e.g. another `edge serve`'s /stream.mjpg), an image folder or test://; repeat it for several cameras "
           "(camera 0, 1, ... in that order), classified together by one model", check=_nonempty, metavar="SRC",
           repeatable=True),
    Option("width", int, None, "capture width (cameras)", check=_range(1, kind=int), nullable=True),
    Option("height", int, None, "capture height (cameras)", check=_range(1, kind=int), nullable=True),
    Option("fps", float, None, "capture frame rate (cameras; files play at their own rate)",
           check=_range(0, lo_open=True), nullable=True),
    Option("loop", bool, False, "repeat a video file / image folder forever"),
    Option("max_batch", int, None, "at most N frames per inference call (default: the newest frame of every camera "
           "in one call); 1 = one call per frame, best for CPU onnxruntime, where batching does not pay",
           check=_range(1, kind=int), metavar="N", nullable=True),
    Option("backend", str, "auto", "inference backend", choices=BACKEND_CHOICES),
    Option("device", str, "auto", "where the torch/onnxruntime backends run (auto = the GPU when usable)",
           choices=DEVICE_CHOICES),
    Option("smoothing", float, 0.0, "EMA over class probabilities: 0 = off, 0.9 = heavy",
           check=_range(0, 1, hi_open=True)),
    Option("threshold", float, 0.0, "show `unknown` when the (smoothed) top probability is below this",
           check=_range(0, 1)),
    Option("novelty_threshold", float, None, "show `unknown` when the frame's novelty (how unlike the training "
           "images it is: 0 = identical, 1 = unlike all) is above this (default: the threshold `train` calibrated "
           "into the model; ignored by models without a novelty score)", check=_range(0, 2), metavar="T",
           nullable=True),
    Option("hysteresis", float, 0.0, "a shown label keeps its place down to threshold - hysteresis",
           check=_range(0, 1, hi_open=True)),
    Option("min_dwell", int, 1, "frames a new label must win in a row before it is shown", check=_range(1, kind=int)),
    Option("top_k", int, 0, "also draw the top-k classes on the overlay (0 = off)", check=_range(0, kind=int)),
    Option("overlay", bool, True, "draw label/confidence/FPS onto the video outputs"),
    Option("display", bool, False, "show a window (needs a desktop session and an OpenCV with GUI support)"),
    Option("record", str, None, "record the overlaid video to this file (.mp4/.avi/.mkv), finalized on exit",
           check=_nonempty, metavar="FILE", nullable=True),
    Option("http", str, None, "serve the live page, MJPEG stream, JSON API, /healthz and /metrics on [HOST:]PORT "
           "(HOST defaults to 127.0.0.1)", metavar="[HOST:]PORT", nullable=True),
    Option("token", str, None, f"require this bearer token on HTTP (header `Authorization: Bearer T` or ?token=T); "
           f"also read from ${TOKEN_ENV}", check=_nonempty, metavar="TOKEN", nullable=True),
    Option("allow_no_token", bool, False,
           "allow --http on a non-loopback address without --token (trusted networks only)"),
    Option("allowed_hosts", str, None, "HTTP answers requests whose Host header is an IP address, localhost or the "
           "--http host; add the names the page is opened by (e.g. jetson.local), comma-separated. Any other Host "
           "gets 403 (a web page using DNS rebinding to read the camera)", check=_host_list, metavar="NAME[,NAME...]",
           nullable=True),
    Option("events", str, None, "append a JSON line per label change to FILE (`-` = stdout)", check=_nonempty,
           metavar="FILE|-", nullable=True),
    Option("on_change", str, None, "run this shell command on a label change (label in $EDGE_LABEL and $1); "
           "never blocks the pipeline", check=_nonempty, metavar="CMD", nullable=True),
    Option("on_change_interval", float, 2.0, "at most one --on-change run per this many seconds", check=_range(0)),
    Option("on_change_timeout", float, 30.0, "kill an --on-change command running longer than this",
           check=_range(0, lo_open=True)),
    Option("mqtt", str, None, "publish state, label changes, availability and snapshots to an MQTT broker (Home "
           "Assistant, Node-RED): mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/TOPIC/ROOT] (root default edge/HOSTNAME); "
           f"the password may come from ${MQTT_PASSWORD_ENV} or --mqtt-password-file instead", metavar="URL",
           nullable=True),
    Option("mqtt_password_file", str, None, "read the MQTT password from this file (keeps it out of `ps`)",
           check=_nonempty, metavar="FILE", nullable=True),
    Option("mqtt_ca", str, None, "CA certificate file for mqtts:// (default: the system's CAs)", check=_nonempty,
           metavar="FILE", nullable=True),
    Option("mqtt_discovery", bool, True, "publish Home Assistant MQTT discovery configs (one device per camera)"),
    Option("mqtt_discovery_prefix", str, "homeassistant", "Home Assistant's discovery prefix", check=_nonempty,
           metavar="PREFIX"),
    Option("mqtt_images", bool, True, "publish the annotated JPEG on each label change (Home Assistant image entity)"),
    Option("stall_timeout", float, 5.0, "reopen the source when no frame arrives for this many seconds",
           check=_range(0, lo_open=True)),
    Option("max_backoff", float, 10.0, "cap of the exponential backoff between reopen attempts (seconds)",
           check=_range(0, lo_open=True)),
    Option("health_max_age", float, 3.0, "/healthz is 200 only while the newest frame and prediction are younger "
           "than this (seconds)", check=_range(0, lo_open=True)),
    Option("jpeg_quality", int, 80, "JPEG quality of the HTTP stream", check=_range(1, 100, kind=int)),
    Option("log_level", str, "info", "log level", choices=LOG_LEVELS),
)
_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class ServeConfig:
    """The validated configuration of one `edge serve` process."""

    model: str
    source: str | tuple[str, ...]  # as written: one URI, or a tuple of several (see `sources`)
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    loop: bool = False
    max_batch: int | None = None
    backend: str = "auto"
    device: str = "auto"
    smoothing: float = 0.0
    threshold: float = 0.0
    novelty_threshold: float | None = None
    hysteresis: float = 0.0
    min_dwell: int = 1
    top_k: int = 0
    overlay: bool = True
    display: bool = False
    record: str | None = None
    http: str | None = None
    token: str | None = None
    allow_no_token: bool = False
    allowed_hosts: str | None = None
    events: str | None = None
    on_change: str | None = None
    on_change_interval: float = 2.0
    on_change_timeout: float = 30.0
    mqtt: str | None = None
    mqtt_password_file: str | None = None
    mqtt_ca: str | None = None
    mqtt_discovery: bool = True
    mqtt_discovery_prefix: str = "homeassistant"
    mqtt_images: bool = True
    stall_timeout: float = 5.0
    max_backoff: float = 10.0
    health_max_age: float = 3.0
    jpeg_quality: int = 80
    log_level: str = "info"

    @property
    def sources(self) -> tuple[str, ...]:
        """Every camera's source URI, camera 0 first (one for a single camera)."""
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    @property
    def http_address(self) -> tuple[str, int] | None:
        return None if self.http is None else parse_http_address(self.http)

    @property
    def allowed_host_names(self) -> tuple[str, ...]:
        return split_hosts(self.allowed_hosts or "")

    def redacted(self) -> dict[str, Any]:
        """The config as a dict for logs, without the token."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d["token"]:
            d["token"] = "***"
        if d["mqtt"] and "@" in d["mqtt"]:  # mqtt://user:password@host: keep the user, hide the password
            scheme, _, rest = d["mqtt"].partition("://")
            creds, _, host = rest.rpartition("@")
            d["mqtt"] = f"{scheme}://{creds.split(':', 1)[0]}{':***' if ':' in creds else ''}@{host}"
        return d


assert [f.name for f in fields(ServeConfig)] == [o.name for o in OPTIONS], "OPTIONS and ServeConfig must match"


def parse_http_address(text: str) -> tuple[str, int]:
    """`PORT`, `:PORT`, `HOST:PORT` or `[IPv6]:PORT` -> (host, port); host defaults to 127.0.0.1 (loopback only)."""
    t = text.strip()
    host, sep, port = t.rpartition(":")
    if not sep:
        host, port = "", t
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise EdgeError(f"http: bad address {text!r}; write IPv6 hosts in brackets, e.g. [::1]:8080")
    try:
        p = int(port)
    except ValueError:
        raise EdgeError(f"http: bad address {text!r}; expected [HOST:]PORT, e.g. 8080 or 0.0.0.0:8080") from None
    if not 0 <= p <= 65535:
        raise EdgeError(f"http: port {p} out of range 0-65535")
    return host or "127.0.0.1", p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _coerce(opt: Option, value: Any, where: str) -> Any:
    """Type-check one value from a config file (strict: no silent str->int conversions, bools are not ints); a list
    for a repeatable option (`source = ["0", "rtsp://..."]`)."""
    if opt.repeatable and isinstance(value, list):
        return [_coerce_one(opt, v, where) for v in value]
    return _coerce_one(opt, value, where)


def _coerce_one(opt: Option, value: Any, where: str) -> Any:
    if value is None and opt.nullable:
        return None
    ok = (
        isinstance(value, bool) if opt.type is bool
        else isinstance(value, int) and not isinstance(value, bool) if opt.type is int
        else isinstance(value, (int, float)) and not isinstance(value, bool) if opt.type is float
        else isinstance(value, str)
    )
    if (opt.type is str and isinstance(value, (int, float)) and not isinstance(value, bool)
            and opt.name in ("source", "http")):
        value, ok = str(value), True  # `source = 0` and `http = 8080` are natural to write
    if opt.name == "allowed_hosts" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        value, ok = ",".join(value), True  # a TOML list of names reads as naturally as "a,b"
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[opt.type]
        raise EdgeError(f"{where}: {opt.name} must be {kind}, got {value!r}")
    return float(value) if opt.type is float else value


def _check(opt: Option, value: Any, where: str) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        if not value:
            raise EdgeError(f"{where}: {opt.name} must not be an empty list")
        for v in value:
            _check(opt, v, where)
        return
    if opt.choices is not None and value not in opt.choices:
        raise EdgeError(f"{where}: {opt.name} must be one of {', '.join(opt.choices)}; got {value!r}")
    if opt.check is not None:
        problem = opt.check(value)
        if problem:
            raise EdgeError(f"{where}: {opt.name} {problem}; got {value!r}")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML (or, by suffix, JSON) config file -> {option name: value}, keys and types checked."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise EdgeError(f"cannot read config file {str(p)!r}: {e.strerror}") from e
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EdgeError(f"config file {str(p)!r} is not valid JSON: {e}") from e
    else:
        try:
            import tomllib  # Python 3.11+
        except ModuleNotFoundError:  # pragma: no cover - Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise EdgeError(
                    f"reading TOML config {str(p)!r} on Python < 3.11 needs `pip install tomli`; or use a .json config"
                ) from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise EdgeError(f"config file {str(p)!r} is not valid TOML: {e}") from e
    if not isinstance(data, dict):
        raise EdgeError(f"config file {str(p)!r} must hold a table of options")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        opt = _BY_NAME.get(name)
        if opt is None:
            close = difflib.get_close_matches(name, _BY_NAME, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise EdgeError(
                f"config file {str(p)!r}: unknown key {key!r}{hint}; valid keys: {', '.join(_BY_NAME)}"
            )
        if isinstance(value, dict):
            raise EdgeError(f"config file {str(p)!r}: {key!r} is a table; options are plain top-level keys")
        out[name] = _coerce(opt, value, f"config file {str(p)!r}")
    return out


def build_config(file_values: dict[str, Any], cli_values: dict[str, Any], env: dict[str, str] | None = None,
                 where_file: str = "config file") -> ServeConfig:
    """Merge defaults < file < $EDGE_TOKEN < flags, validate every value and the combinations -> ServeConfig."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {o.name: o.default for o in OPTIONS}
    origin: dict[str, str] = {o.name: "default" for o in OPTIONS}
    for k, v in file_values.items():
        values[k], origin[k] = v, where_file
    if env.get(TOKEN_ENV):
        values["token"], origin["token"] = env[TOKEN_ENV], f"${TOKEN_ENV}"
    for k, v in cli_values.items():
        values[k], origin[k] = v, f"--{k.replace('_', '-')}"
    for opt in OPTIONS:
        _check(opt, values[opt.name], origin[opt.name])
    for required in ("model", "source"):
        if values[required] is None:
            raise EdgeError(f"no {required} given: pass --{required} or set `{required} = ...` in the --config file")
    values["source"] = _one_or_several_sources(values["source"], origin["source"])
    cfg = ServeConfig(**values)
    if cfg.display and len(cfg.sources) > 1:
        raise EdgeError("--display shows one camera; with several --source use --http (its page shows every camera)")
    if cfg.http is not None:
        host, _ = parse_http_address(cfg.http)
        if not is_loopback(host) and not cfg.token and not cfg.allow_no_token:
            raise EdgeError(
                f"--http {cfg.http} exposes the camera beyond this machine without authentication; set --token "
                f"(or ${TOKEN_ENV}), or pass --allow-no-token if the network is trusted"
            )
    elif cfg.token:
        raise EdgeError("--token is set but --http is not; add --http [HOST:]PORT or drop the token")
    elif cfg.allowed_hosts:
        raise EdgeError("--allowed-hosts is set but --http is not; add --http [HOST:]PORT or drop --allowed-hosts")
    if cfg.mqtt is not None:
        from edge.runtime.outputs.mqtt_topics import parse_mqtt_url

        parse_mqtt_url(cfg.mqtt)  # its own message: the URL may hold a password, so it is not quoted
    elif (cfg.mqtt_ca or cfg.mqtt_password_file):
        raise EdgeError("--mqtt-ca / --mqtt-password-file are set but --mqtt is not; add --mqtt URL or drop them")
    return cfg


def _same_source_key(uri: str) -> str:
    """What two spellings of one source have in common (`0` and `/dev/video0` are the same camera)."""
    uri = uri.strip()
    return f"/dev/video{int(uri)}" if uri.isdigit() else uri


def _one_or_several_sources(value: Any, where: str) -> str | tuple[str, ...]:
    """A list of one source is that source (a single camera, as before); several must all differ."""
    if not isinstance(value, (list, tuple)):
        return value
    if len(value) == 1:
        return value[0]
    first_camera: dict[str, int] = {}
    for camera, uri in enumerate(value):
        earlier = first_camera.setdefault(_same_source_key(uri), camera)
        if earlier != camera:
            # credentials (user:pw@, ?token=) must not reach the terminal: such a URI is not quoted
            shown = "" if "@" in uri or "?" in uri else f" {uri.strip()!r}"
            raise EdgeError(f"{where}: cameras {earlier} and {camera} have the same source{shown}; "
                            f"each camera needs its own (or drop the duplicate)")
    return tuple(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option; defaults are SUPPRESSed so only flags given on the command line override the file."""
    parser.add_argument("--config", metavar="FILE", help="read options from a TOML (or .json) file; flags override it")
    for opt in OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        default_txt = ("" if opt.default is None
                       else f" (default: {str(opt.default).lower() if opt.type is bool else opt.default})")
        if opt.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=opt.help + default_txt)
        elif opt.repeatable:
            parser.add_argument(flag, type=_flag_type(opt), action="append", default=argparse.SUPPRESS,
                                metavar=opt.metavar, help=opt.help + default_txt)
        else:
            parser.add_argument(flag, type=_flag_type(opt), default=argparse.SUPPRESS, metavar=opt.metavar,
                                choices=opt.choices, help=opt.help + default_txt)


def _flag_type(opt: Option) -> Callable[[str], Any]:
    def conv(text: str) -> Any:
        try:
            return opt.type(text)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(opt.type, opt.type.__name__)
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None

    conv.__name__ = opt.type.__name__
    return conv


def config_from_args(ns: argparse.Namespace, env: dict[str, str] | None = None) -> ServeConfig:
    cli = {k: v for k, v in vars(ns).items() if k in _BY_NAME}
    file_values: dict[str, Any] = {}
    where = "config file"
    if getattr(ns, "config", None):
        file_values = load_config_file(ns.config)
        where = f"config file {ns.config!r}"
    return build_config(file_values, cli, env, where_file=where)
