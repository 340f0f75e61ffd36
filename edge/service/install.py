"""Install `edge serve` as the systemd service edge-camera.service (`edge install-service`).

`plan_install(options)` checks everything first (the model and every file it needs, the source, the HTTP
address and token, the final config exactly as `edge serve` will read it, the unit with `systemd-analyze verify`)
and returns the steps; nothing is written until every check has passed, so a refusal leaves no file behind.
The steps:
1. the system user `edge-camera` (no login, no home) in the `video` group;
2. /etc/systemd/system/edge-camera.service, with ExecStart pointing at this environment's `edge`;
3. /etc/edge-camera/config.toml and edge-camera.env (mode 0640): an existing file is kept, and only the keys the
   flags name change in it (--force starts again from the files of the top-level `systemd/` folder);
4. the model and the files it needs (an engine's JSON sidecar) copied into the state directory /var/lib/edge-camera
   (the service cannot read /home);
5. `systemctl daemon-reload`, `systemctl enable` and `systemctl restart` (unless --no-start).
With `root` other than / the files go under that directory and no system command runs (packaging, tests).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from edge.core.errors import EdgeError
from edge.core.fsutil import atomic_copy, atomic_write_text
from edge.runtime.sources import SourceConfigError, validate_source_uri
from edge.runtime.sources.csi import NO_GSTREAMER
from edge.service.config import TOKEN_ENV, build_config, load_config_file
from edge.service.install_files import config_model_path, model_files, read_env_var, set_config_keys, set_env_var

UNIT_NAME = "edge-camera.service"
SERVICE_USER = "edge-camera"
STATE_DIR = "/var/lib/edge-camera"
CONFIG_DIR = "/etc/edge-camera"
CONFIG_FILE = f"{CONFIG_DIR}/config.toml"
ENV_FILE = f"{CONFIG_DIR}/edge-camera.env"
UNIT_DIR = "/etc/systemd/system"
UNIT_FILE = f"{UNIT_DIR}/{UNIT_NAME}"
TEMPLATES = ("edge-camera.service", "config.toml", "edge-camera.env")  # the files of systemd/
CHECKOUT_SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"


def template_text(name: str) -> str:
    """A file of the checkout's top-level `systemd/` folder (the unit, its environment file, the config example).
    An installed wheel carries that folder as `edge/service/systemd/` (setup.py copies it at build time)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; one of {', '.join(TEMPLATES)}")
    packaged = resources.files("edge.service").joinpath("systemd", name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (CHECKOUT_SYSTEMD_DIR / name).read_text(encoding="utf-8")  # a checkout, or an editable install


def edge_executable() -> Path:
    """The `edge` console script of the running environment (venv), else the one on PATH."""
    cand = Path(sys.executable).parent / "edge"
    if cand.is_file() and os.access(cand, os.X_OK):
        return cand
    found = shutil.which("edge")
    if found:
        return Path(found)
    raise EdgeError("cannot find the `edge` command; install the project (`pip install -e .`) into this environment")


def render_unit(template: str, edge_bin: Path, user: str = SERVICE_USER) -> str:
    """The unit text with this machine's ExecStart path and service user."""
    out = []
    for line in template.splitlines():
        if line.startswith("ExecStart="):
            rest = line.split(" ", 1)[1]
            line = f"ExecStart={edge_bin} {rest}"
        elif line.startswith("User="):
            line = f"User={user}"
        elif line.startswith("Group="):
            line = f"Group={user}"
        elif line.startswith("ProtectHome=") and str(edge_bin).startswith(("/home/", "/root/")):
            # ProtectHome=yes would hide the program itself; read-only is the strictest setting that still runs
            line = "ProtectHome=read-only"
        out.append(line)
    return "\n".join(out) + "\n"


def verify_unit(text: str) -> None:
    """`systemd-analyze verify` the unit text (in a scratch directory) where the tool exists; EdgeError if rejected."""
    if shutil.which("systemd-analyze") is None:
        return
    with tempfile.TemporaryDirectory(prefix="edge-unit-") as d:
        unit = Path(d) / UNIT_NAME
        unit.write_text(text)
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    problems = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if UNIT_NAME in ln]
    if r.returncode != 0 or problems:
        raise EdgeError(f"systemd-analyze verify rejected the unit: {'; '.join(problems) or r.stderr.strip()}")


@dataclass(frozen=True)
class InstallOptions:
    """What `edge install-service` was asked to do; None means "keep what the installed config says"."""

    model: str | None = None
    source: str | None = None
    http: str | None = None
    token: str | None = None
    allow_no_token: bool = False
    user: str = SERVICE_USER
    root: Path = Path("/")
    force: bool = False
    start: bool = True
    dry_run: bool = False


@dataclass
class Step:
    """One change to the system: `text` describes it, `action` does it (None: a command shown, never run here)."""

    verb: str  # "write", "copy", "create", "run:"
    text: str
    action: Callable[[], None] | None


@dataclass
class InstallPlan:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False

    def lines(self) -> list[str]:
        """What the plan does, one line per step: "would ..." for what this run does not do itself."""
        return [("would " if self.dry_run or s.action is None else "") + f"{s.verb} {s.text}" for s in self.steps]

    def apply(self, report: Callable[[str], None]) -> None:
        for line, step in zip(self.lines(), self.steps, strict=True):
            report(line)
            if step.action is not None and not self.dry_run:
                step.action()


class _Target:
    """Paths and owners on the system being installed (/ or a --root directory)."""

    def __init__(self, root: Path, user: str) -> None:
        self.root = root
        self.system = root == Path("/")
        self.user = user

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def chown(self, p: Path, group_only: bool = False) -> None:
        if self.system:  # under --root the service user may not exist here
            shutil.chown(p, user=None if group_only else self.user, group=self.user)


def _run_step(target: _Target, *argv: str) -> Step:
    def run() -> None:
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise EdgeError(f"`{' '.join(argv)}` failed: {' '.join((r.stderr or r.stdout).strip().splitlines()[-1:])}")

    return Step("run:", " ".join(argv), run if target.system else None)


def _write_step(target: _Target, dest: str, text: str, mode: int, group_only: bool = True) -> Step:
    p = target.path(dest)

    def write() -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, text, permissions=mode)  # never briefly world-readable (the env file may hold a token)
        target.chown(p, group_only=group_only)

    return Step("write", f"{p} (mode {mode:o})", write)


def _user_steps(target: _Target) -> list[Step]:
    try:
        pwd.getpwnam(target.user)
    except KeyError:
        return [_run_step(target, "useradd", "--system", "--no-create-home", "--home-dir", STATE_DIR, "--shell",
                          "/usr/sbin/nologin", "--user-group", "--groups", "video", target.user)]
    try:
        in_video = target.user in grp.getgrnam("video").gr_mem
    except KeyError:
        in_video = False
    return [] if in_video else [_run_step(target, "usermod", "--append", "--groups", "video", target.user)]


def _read_existing(p: Path) -> str | None:
    if not p.exists():
        return None
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeError(f"cannot read the installed {p} ({e}); fix it or pass --force to write a new one") from e


def _check_config(target: _Target, config_text: str, env_text: str, notes: list[str]) -> None:
    """Read the config exactly as the service will (keys, types, the token rule, the source) before writing."""
    with tempfile.TemporaryDirectory(prefix="edge-install-") as d:
        p = Path(d) / "config.toml"
        p.write_text(config_text, encoding="utf-8")
        values = load_config_file(p)
    token = read_env_var(env_text, TOKEN_ENV)
    try:
        cfg = build_config(values, {}, env={TOKEN_ENV: token} if token else {}, where_file=CONFIG_FILE)
        for uri in cfg.sources:
            _check_source(target, uri, notes)
    except EdgeError as e:
        raise EdgeError(f"the service would not start: {e}") from e


def _check_source(target: _Target, source: str, notes: list[str]) -> None:
    """validate_source_uri as the service will see it: a relative path is relative to its working directory."""
    uri = source.strip()
    if "://" not in uri and not uri.isdigit() and not uri.startswith("/dev/video"):  # a file or folder
        uri = str(target.path(uri) if uri.startswith("/") else target.path(STATE_DIR) / uri)
    try:
        validate_source_uri(uri)
    except SourceConfigError as e:
        if str(e) != NO_GSTREAMER or target.system:
            raise
        # --root installs for another machine: what matters there is that machine's OpenCV
        notes.append(f"this machine's OpenCV has no GStreamer: {source} works only where OpenCV has it (JetPack's)")


def plan_install(opts: InstallOptions) -> InstallPlan:
    """Check everything `opts` asks for and return the steps that install it; EdgeError (nothing written) if not."""
    target = _Target(Path(opts.root).resolve(), opts.user)
    if target.system and not opts.dry_run and os.geteuid() != 0:
        raise EdgeError("installing a system service needs root: run `sudo edge install-service ...` "
                        "(or --dry-run to see the steps, --root DIR to write the files elsewhere)")
    plan = InstallPlan(dry_run=opts.dry_run)
    unit = render_unit(template_text("edge-camera.service"), edge_executable(), opts.user)
    verify_unit(unit)

    copies: list[tuple[Path, str]] = []
    config_keys: dict[str, object] = {}
    if opts.model:
        files = model_files(Path(opts.model).expanduser().resolve())
        copies = [(f, f"{STATE_DIR}/{rel}") for f, rel in files]
        config_keys["model"] = copies[0][1]
    if opts.source is not None:
        config_keys["source"] = opts.source
    if opts.http is not None:
        config_keys["http"] = opts.http
    if opts.allow_no_token:
        config_keys["allow_no_token"] = True

    config_text = None if opts.force else _read_existing(target.path(CONFIG_FILE))
    env_text = None if opts.force else _read_existing(target.path(ENV_FILE))
    if config_text is not None and not config_keys:
        plan.notes.append(f"keeping {target.path(CONFIG_FILE)} as it is (--force to start again from the example)")
    elif config_text is not None:
        plan.notes.append(f"keeping {target.path(CONFIG_FILE)}; changing only {', '.join(config_keys)}")
    new_config = set_config_keys(config_text if config_text is not None else template_text("config.toml"), config_keys)
    token = opts.token or os.environ.get(TOKEN_ENV) or None
    new_env = env_text if env_text is not None else template_text("edge-camera.env")
    if token:
        new_env = set_env_var(new_env, TOKEN_ENV, token)
    _check_config(target, new_config, new_env, plan.notes)

    plan.steps += _user_steps(target)
    plan.steps.append(_write_step(target, UNIT_FILE, unit, 0o644, group_only=False))
    if new_config != config_text:
        plan.steps.append(_write_step(target, CONFIG_FILE, new_config, 0o640))
    if new_env != env_text:
        plan.steps.append(_write_step(target, ENV_FILE, new_env, 0o640))
    plan.steps.append(_state_dir_step(target))
    plan.steps += [_copy_step(target, src, dest) for src, dest in copies]
    model_in_config = config_model_path(new_config)
    if model_in_config and not copies and not target.path(model_in_config).is_file():
        plan.notes.append(f"the config's model {target.path(model_in_config)} does not exist yet: copy one there "
                          f"or pass --model (the service will not start without it)")
    plan.steps.append(_run_step(target, "systemctl", "daemon-reload"))
    plan.steps.append(_run_step(target, "systemctl", "enable", UNIT_NAME))
    if opts.start:
        plan.steps.append(_run_step(target, "systemctl", "restart", UNIT_NAME))
    return plan


def _state_dir_step(target: _Target) -> Step:
    p = target.path(STATE_DIR)

    def create() -> None:
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, 0o750)
        target.chown(p)

    return Step("create", f"{p} (mode 750, owner {target.user})", create)


def _copy_step(target: _Target, src: Path, dest: str) -> Step:
    p = target.path(dest)

    def copy() -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(src, p, permissions=0o640)  # a service reload never sees half a model
        target.chown(p)

    return Step("copy", f"{src} -> {p}", copy)
