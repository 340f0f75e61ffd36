"""Install `edge serve` as the systemd service edge-camera.service (`edge install-service`).

`plan_install(options)` checks everything first (the model and every file it needs, the source, the HTTP
address and token, the final config exactly as `edge serve` will read it, the unit with `systemd-analyze verify`)
and returns the steps; nothing is written until every check has passed, so a refusal leaves no file behind.
The steps:
1. the system user `edge-camera` (no login, no home) in the `video` group;
2. /etc/systemd/system/edge-camera.service (root:root 0644), with ExecStart pointing at this environment's `edge`;
3. /etc/edge-camera/ (root:edge-camera 0750) with config.toml and edge-camera.env (root:edge-camera 0640): an
   existing file is kept, and only the keys the flags name change in it (--force starts again from the files of the
   top-level `systemd/` folder);
   secrets (the HTTP token, the MQTT password) go to the environment file, never the config;
4. the model and the files it needs (an engine's JSON sidecar) copied (root:edge-camera 0640) into the state
   directory /var/lib/edge-camera (edge-camera 0750; the service cannot read /home);
5. `systemctl daemon-reload`, `systemctl enable` and `systemctl restart` (unless --no-start).
Ownership: everything is root's; the service user reads its config and model through its group and writes only
its state directory (it can never rewrite its own unit or config and so never gain root).
Before the first write a real install checks root, a running systemd and the commands it needs; a step that fails
undoes what this run wrote (files restored or removed, directories and the user it created removed).
With `root` other than / the files go under that directory and no system command runs (packaging, tests); run as
root there, owners are set as on a real system when the service user exists here.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from edge.core.errors import EdgeError
from edge.core.fsutil import atomic_copy, atomic_write, atomic_write_text
from edge.runtime.sources import SourceConfigError, validate_source_uri
from edge.runtime.sources.csi import NO_GSTREAMER
from edge.service.config import MQTT_PASSWORD_ENV, TOKEN_ENV, build_config, load_config_file
from edge.service.install_files import config_model_path, model_files, read_env_var, set_config_keys, set_env_var

UNIT_NAME = "edge-camera.service"
SERVICE_USER = "edge-camera"
STATE_DIR = "/var/lib/edge-camera"
CONFIG_DIR = "/etc/edge-camera"
CONFIG_FILE = f"{CONFIG_DIR}/config.toml"
ENV_FILE = f"{CONFIG_DIR}/edge-camera.env"
UNIT_DIR = "/etc/systemd/system"
UNIT_FILE = f"{UNIT_DIR}/{UNIT_NAME}"
SYSTEMD_RUN_DIR = Path("/run/systemd/system")  # exists exactly when systemd is the running init (sd_booted)
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
    mqtt: str | None = None  # its password (or $EDGE_MQTT_PASSWORD) goes to the environment file
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
    undo: Callable[[], None] | None = None  # reverses `action` when a later step fails (run steps)


@dataclass
class InstallPlan:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False

    def lines(self) -> list[str]:
        """What the plan does, one line per step: "would ..." for what this run does not do itself."""
        return [("would " if self.dry_run or s.action is None else "") + f"{s.verb} {s.text}" for s in self.steps]

    def apply(self, report: Callable[[str], None]) -> None:
        """Run the steps; when one fails, undo what the earlier ones did (newest first) and raise one EdgeError."""
        undo: list[Callable[[], None]] = []
        for line, step in zip(self.lines(), self.steps, strict=True):
            report(line)
            if step.action is None or self.dry_run:
                continue
            try:
                step.action()
            except (OSError, EdgeError, subprocess.SubprocessError) as e:
                failed = _rollback(undo)
                left = f"; could not undo: {'; '.join(failed)}" if failed else "; undid what this run had written"
                raise EdgeError(f"{step.verb} {step.text} failed: {e}{left}") from e
            if step.undo is not None:
                undo.append(step.undo)


def _rollback(undo: list[Callable[[], None]]) -> list[str]:
    """Run the undo actions newest first; what could not be undone, one phrase each."""
    failed = []
    for action in reversed(undo):
        try:
            action()
        except (OSError, EdgeError, subprocess.SubprocessError) as e:
            failed.append(str(e))
    return failed


class _Target:
    """Paths and owners on the system being installed (/ or a --root directory)."""

    def __init__(self, root: Path, user: str) -> None:
        self.root = root
        self.system = root == Path("/")
        self.user = user

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def owner(self, service: bool) -> tuple[int, int] | None:
        """(uid, gid) for a path: the service user's (its state directory) or root with the service group.

        None where owners cannot be set: not root (a --root install as a user), or under --root for a user that does
        not exist on this machine (the files stay root's, as they are written).
        """
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            if self.system:  # useradd ran earlier in this run, so it must exist now
                raise EdgeError(f"the service user {self.user!r} does not exist") from None
            return None
        return (entry.pw_uid, entry.pw_gid) if service else (0, entry.pw_gid)

    def chown(self, p: Path, service: bool = False, group: bool = True) -> None:
        ids = self.owner(service)
        if ids is not None:
            os.chown(p, ids[0], ids[1] if group else 0)

    def makedirs(self, d: Path, undo: list[Callable[[], None]]) -> None:
        """mkdir -p `d`, remembering (in `undo`) each directory this created, to remove it on a later failure."""
        missing = []
        while not d.exists():
            missing.append(d)
            d = d.parent
        for m in reversed(missing):
            m.mkdir(mode=0o755)  # never group- or world-writable, whatever the umask
            undo.append(lambda m=m: m.rmdir())


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise EdgeError(f"`{' '.join(argv)}` failed: {' '.join((r.stderr or r.stdout).strip().splitlines()[-1:])}")


def _run_step(target: _Target, *argv: str, undo: tuple[str, ...] | None = None) -> Step:
    return Step("run:", " ".join(argv), (lambda: _run(*argv)) if target.system else None,
                (lambda: _run(*undo)) if undo and target.system else None)


class _FileUndo:
    """What writing one file changed: the directories it created and the file it replaced (or that it was new)."""

    def __init__(self, target: _Target, p: Path) -> None:
        self.p = p
        self.dirs: list[Callable[[], None]] = []
        target.makedirs(p.parent, self.dirs)
        self.old: tuple[bytes, os.stat_result] | None = (p.read_bytes(), p.stat()) if p.is_file() else None

    def __call__(self) -> None:
        if self.old is None:
            self.p.unlink(missing_ok=True)
        else:
            data, st = self.old
            _restore_file(self.p, data, st)
        for rm in reversed(self.dirs):
            rm()


def _restore_file(p: Path, data: bytes, st: os.stat_result) -> None:
    """Put back a file as it was (content, mode, owner)."""
    with atomic_write(p, "wb", stat.S_IMODE(st.st_mode)) as f:
        f.write(data)
    if os.geteuid() == 0:
        os.chown(p, st.st_uid, st.st_gid)


def _file_step(target: _Target, verb: str, text: str, p: Path, write: Callable[[], None],
               owner: Callable[[], None]) -> Step:
    step = Step(verb, text, None)

    def action() -> None:
        undo = _FileUndo(target, p)
        step.undo = undo
        try:
            write()
            owner()
        except BaseException:
            undo()
            raise

    step.action = action
    return step


def _write_step(target: _Target, dest: str, text: str, mode: int, group: bool = True) -> Step:
    """A root-owned file: group `group` (the service group, else root's) reads it where mode allows."""
    p = target.path(dest)
    return _file_step(target, "write", f"{p} (mode {mode:o})", p,
                      # never briefly world-readable (the env file may hold a token)
                      lambda: atomic_write_text(p, text, permissions=mode),
                      lambda: target.chown(p, group=group))


def _user_steps(target: _Target) -> list[Step]:
    try:
        pwd.getpwnam(target.user)
    except KeyError:
        return [_run_step(target, "useradd", "--system", "--no-create-home", "--home-dir", STATE_DIR, "--shell",
                          "/usr/sbin/nologin", "--user-group", "--groups", "video", target.user,
                          undo=("userdel", target.user))]
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


def preflight(user: str) -> None:
    """What a real install needs, checked before its first write: EdgeError naming what is missing."""
    if not SYSTEMD_RUN_DIR.is_dir():
        raise EdgeError(f"systemd is not running here ({SYSTEMD_RUN_DIR} is missing): edge-camera.service needs it; "
                        f"run `edge serve` directly, or --root DIR to write the files for another machine")
    tools = ["systemctl"]
    try:
        pwd.getpwnam(user)
        tools.append("usermod")
    except KeyError:
        tools.append("useradd")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise EdgeError(f"cannot install: {', '.join(missing)} not found on PATH")


def plan_install(opts: InstallOptions) -> InstallPlan:
    """Check everything `opts` asks for and return the steps that install it; EdgeError (nothing written) if not."""
    target = _Target(Path(opts.root).resolve(), opts.user)
    if target.system and not opts.dry_run and os.geteuid() != 0:
        raise EdgeError("installing a system service needs root: run `sudo edge install-service ...` "
                        "(or --dry-run to see the steps, --root DIR to write the files elsewhere)")
    if target.system and not opts.dry_run:
        preflight(opts.user)
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
    mqtt_password = None
    if opts.mqtt is not None:
        from edge.runtime.outputs.mqtt_topics import split_password

        config_keys["mqtt"], mqtt_password = split_password(opts.mqtt)

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
    mqtt_password = mqtt_password or (os.environ.get(MQTT_PASSWORD_ENV) if opts.mqtt else None)
    if mqtt_password:
        new_env = set_env_var(new_env, MQTT_PASSWORD_ENV, mqtt_password)
    _check_config(target, new_config, new_env, plan.notes)

    plan.steps += _user_steps(target)
    plan.steps.append(_write_step(target, UNIT_FILE, unit, 0o644, group=False))
    plan.steps.append(_dir_step(target, CONFIG_DIR, service=False))
    if new_config != config_text:
        plan.steps.append(_write_step(target, CONFIG_FILE, new_config, 0o640))
    if new_env != env_text:
        plan.steps.append(_write_step(target, ENV_FILE, new_env, 0o640))
    plan.steps.append(_dir_step(target, STATE_DIR, service=True))
    plan.steps += [_copy_step(target, src, dest) for src, dest in copies]
    model_in_config = config_model_path(new_config)
    if model_in_config and not copies and not target.path(model_in_config).is_file():
        plan.notes.append(f"the config's model {target.path(model_in_config)} does not exist yet: copy one there "
                          f"or pass --model (the service will not start without it)")
    plan.steps.append(_run_step(target, "systemctl", "daemon-reload"))
    plan.steps.append(_run_step(target, "systemctl", "enable", UNIT_NAME, undo=("systemctl", "disable", UNIT_NAME)))
    if opts.start:
        plan.steps.append(_run_step(target, "systemctl", "restart", UNIT_NAME))
    return plan


def _dir_step(target: _Target, dest: str, service: bool) -> Step:
    """/etc/edge-camera (root, the service group may enter) or the state directory (the service user's own)."""
    p = target.path(dest)
    step = Step("create", f"{p} (mode 750, owner {target.user if service else 'root'}, group {target.user})", None)

    def create() -> None:
        created: list[Callable[[], None]] = []
        old = p.stat() if p.is_dir() else None
        target.makedirs(p, created)

        def undo() -> None:
            if old is not None:
                os.chmod(p, stat.S_IMODE(old.st_mode))
                if os.geteuid() == 0:
                    os.chown(p, old.st_uid, old.st_gid)
            for rm in reversed(created):
                rm()

        step.undo = undo
        os.chmod(p, 0o750)
        target.chown(p, service=service)

    step.action = create
    return step


def _copy_step(target: _Target, src: Path, dest: str) -> Step:
    p = target.path(dest)
    # a service reload never sees half a model; root's, so the service can read but never replace it in place
    return _file_step(target, "copy", f"{src} -> {p}", p, lambda: atomic_copy(src, p, permissions=0o640),
                      lambda: target.chown(p))
