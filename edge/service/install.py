"""`edge install-service`: install `edge serve` as the systemd service edge-camera.service.

Steps (each skipped when already done; `--dry-run` only prints them):
1. the system user `edge-camera` (no login, no home) in the `video` group;
2. /etc/systemd/system/edge-camera.service, with ExecStart pointing at this environment's `edge`;
3. /etc/edge-camera/config.toml (from --model/--source/--http, or the example) and edge-camera.env (mode 0640),
   kept if they exist (unless --force);
4. the model copied into the state directory /var/lib/edge-camera (the service cannot read /home);
5. `systemd-analyze verify`, `systemctl daemon-reload`, and `systemctl enable --now` (unless --no-start).
`--root DIR` writes the files under DIR instead of / and runs no system commands (packaging, tests).
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from edge.core.errors import EdgeError, cli_entry
from edge.core.fsutil import atomic_write_text
from edge.service.config import build_config

UNIT_NAME = "edge-camera.service"
SERVICE_USER = "edge-camera"
STATE_DIR = "/var/lib/edge-camera"
CONFIG_DIR = "/etc/edge-camera"
UNIT_DIR = "/etc/systemd/system"


def systemd_dir() -> Path:
    """The repository's systemd/ folder (unit, env and config examples)."""
    here = Path(__file__).resolve().parents[2] / "systemd"
    if not (here / UNIT_NAME).is_file():
        raise EdgeError(f"cannot find {UNIT_NAME} next to the package ({here}); run from a source checkout")
    return here


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


def _toml_str(s: str) -> str:
    # a JSON string is a valid TOML basic string, control characters escaped included
    return json.dumps(s, ensure_ascii=False)


def render_config(model: str, source: str, http: str | None, extra: dict[str, str | float | bool]) -> str:
    lines = ["# /etc/edge-camera/config.toml, written by `edge install-service` (keys: `edge serve --help`)",
             f"model = {_toml_str(model)}", f"source = {_toml_str(source)}"]
    if http:
        lines.append(f"http = {_toml_str(http)}")
    for k, v in extra.items():
        lines.append(f"{k} = {_toml_str(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}")
    return "\n".join(lines) + "\n"


class Installer:
    def __init__(self, root: Path, dry_run: bool, force: bool, user: str) -> None:
        self.root = root
        self.system = root == Path("/")
        self.dry_run = dry_run
        self.force = force
        self.user = user

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def say(self, msg: str) -> None:
        print(("would " if self.dry_run else "") + msg)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess | None:
        self.say("run: " + " ".join(argv))
        if self.dry_run or not self.system:
            return None
        r = subprocess.run(argv, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise EdgeError(f"`{' '.join(argv)}` failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        return r

    def write(self, dest: str, text: str, mode: int, keep_existing: bool = False) -> None:
        p = self.path(dest)
        if keep_existing and p.exists() and not self.force:
            print(f"keeping existing {dest} (--force to overwrite)")
            return
        self.say(f"write {dest} (mode {mode:o})")
        if self.dry_run:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, text, permissions=mode)  # never briefly world-readable (the env file may hold a token)

    def ensure_user(self) -> None:
        try:
            pwd.getpwnam(self.user)
            exists = True
        except KeyError:
            exists = False
        if not exists:
            self.run("useradd", "--system", "--no-create-home", "--home-dir", STATE_DIR, "--shell", "/usr/sbin/nologin",
                     "--user-group", "--groups", "video", self.user)
        else:
            try:
                in_video = self.user in grp.getgrnam("video").gr_mem
            except KeyError:
                in_video = False
            if not in_video:
                self.run("usermod", "--append", "--groups", "video", self.user)

    def chown(self, dest: str, group_only: bool = False) -> None:
        if self.dry_run or not self.system:
            return
        shutil.chown(self.path(dest), user=None if group_only else self.user, group=self.user)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge install-service", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--model", help="model file to serve (copied into /var/lib/edge-camera)")
    p.add_argument("--source", help="video source (default: keep the config's, csi://0 in the example)")
    p.add_argument("--http", help="[HOST:]PORT for the web view/API (default 127.0.0.1:8080)")
    p.add_argument("--user", default=SERVICE_USER, help=f"service user (default {SERVICE_USER})")
    p.add_argument("--root", default="/", help="install under this directory instead of / (no system commands)")
    p.add_argument("--force", action="store_true", help="overwrite an existing config and environment file")
    p.add_argument("--no-start", action="store_true", help="install and enable, but do not start now")
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root).resolve()
    inst = Installer(root, args.dry_run, args.force, args.user)
    if inst.system and not args.dry_run and os.geteuid() != 0:
        raise EdgeError("installing a system service needs root: run `sudo edge install-service ...` "
                        "(or --dry-run to see the steps, --root DIR to write the files elsewhere)")
    src = systemd_dir()
    edge_bin = edge_executable()
    unit = render_unit((src / UNIT_NAME).read_text(), edge_bin, args.user)

    config_text = (src / "config.toml").read_text()
    model_dest = None
    if args.model:
        model = Path(args.model).expanduser().resolve()
        if not model.is_file():
            raise EdgeError(f"--model {args.model!r}: no such file")
        model_dest = f"{STATE_DIR}/{model.name}"
    if args.model or args.source or args.http:
        source = args.source or "csi://0"
        http = args.http or "127.0.0.1:8080"
        # validate exactly as `edge serve` will, so a typo fails now and not at the first boot
        build_config({}, {"model": model_dest or f"{STATE_DIR}/model.onnx", "source": source, "http": http},
                     env={"EDGE_TOKEN": "x"})
        config_text = render_config(model_dest or f"{STATE_DIR}/model.onnx", source, http,
                                    {"events": f"{STATE_DIR}/events.jsonl"})

    inst.ensure_user()
    inst.write(f"{UNIT_DIR}/{UNIT_NAME}", unit, 0o644)
    inst.write(f"{CONFIG_DIR}/config.toml", config_text, 0o640, keep_existing=not (args.model or args.source))
    inst.chown(f"{CONFIG_DIR}/config.toml", group_only=True)
    inst.write(f"{CONFIG_DIR}/edge-camera.env", (src / "edge-camera.env").read_text(), 0o640, keep_existing=True)
    inst.chown(f"{CONFIG_DIR}/edge-camera.env", group_only=True)
    state = inst.path(STATE_DIR)
    inst.say(f"create {STATE_DIR} (owner {args.user})")
    if not args.dry_run:
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o750)
        inst.chown(STATE_DIR)
    if args.model and model_dest:
        inst.say(f"copy {args.model} -> {model_dest}")
        if not args.dry_run:
            shutil.copy2(Path(args.model).expanduser(), inst.path(model_dest))
            inst.chown(model_dest)
    if shutil.which("systemd-analyze") and not args.dry_run:
        r = subprocess.run(["systemd-analyze", "verify", str(inst.path(f"{UNIT_DIR}/{UNIT_NAME}"))],
                           capture_output=True, text=True)
        problems = [ln for ln in (r.stderr + r.stdout).splitlines() if UNIT_NAME in ln]
        if r.returncode != 0 or problems:
            raise EdgeError(f"systemd-analyze verify rejected the unit: {'; '.join(problems) or r.stderr.strip()}")
        print("systemd-analyze verify: ok")
    inst.run("systemctl", "daemon-reload")
    inst.run("systemctl", "enable", UNIT_NAME)
    if not args.no_start:
        inst.run("systemctl", "restart", UNIT_NAME)
    if inst.system and not args.dry_run:
        print(f"installed. status: systemctl status edge-camera; logs: journalctl -u edge-camera -f; "
              f"config: {CONFIG_DIR}/config.toml")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
