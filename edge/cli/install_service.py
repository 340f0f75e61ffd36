"""`edge install-service`: install `edge serve` as the systemd service edge-camera.service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.core.cli_parser import CliParser
from edge.core.errors import cli_entry
from edge.service import install
from edge.service.config import MQTT_PASSWORD_ENV, TOKEN_ENV

EPILOG = f"""\
Everything is checked before anything is written (the model and its sidecar, the source, the HTTP address and
token, the config as `edge serve` will read it, the unit): a refusal leaves no file behind.
An installed {install.CONFIG_FILE} and {install.ENV_FILE} are kept; only the keys the flags name
(--model, --source, --http, --token, --allow-no-token, --mqtt) change in them. --force starts again from the examples.
--http beyond localhost needs a token: --token T or ${TOKEN_ENV} (`sudo {TOKEN_ENV}=T edge install-service ...`),
written to {install.ENV_FILE} (mode 0640), or --allow-no-token on a trusted network.
--root DIR writes the files under DIR and runs no system command (it prints them as "would run").
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="edge install-service", description=__doc__.split(": ", 1)[1],
                                epilog=EPILOG)
    p.add_argument("--model", help=f"model file to serve, copied with the files it needs into {install.STATE_DIR}")
    p.add_argument("--source", help="video source (default: keep the config's; csi://0 in the example)")
    p.add_argument("--http", help="[HOST:]PORT for the web view/API (default: keep the config's; 127.0.0.1:8080)")
    p.add_argument("--token", help=f"bearer token for --http beyond localhost (default: ${TOKEN_ENV})")
    p.add_argument("--allow-no-token", action="store_true", help="allow --http beyond localhost without a token")
    p.add_argument("--mqtt", metavar="URL",
                   help="publish to this MQTT broker (Home Assistant): mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/ROOT]; "
                        f"the password (or ${MQTT_PASSWORD_ENV}) is written to the environment file, not the config")
    p.add_argument("--user", default=install.SERVICE_USER, help=f"service user (default {install.SERVICE_USER})")
    p.add_argument("--root", default="/", help="install under this directory instead of / (no system commands)")
    p.add_argument("--force", action="store_true", help="write the config and environment file anew from the examples")
    p.add_argument("--no-start", action="store_true", help="install and enable, but do not start now")
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    opts = install.InstallOptions(
        model=a.model, source=a.source, http=a.http, token=a.token, allow_no_token=a.allow_no_token, mqtt=a.mqtt,
        user=a.user,
        root=Path(a.root), force=a.force, start=not a.no_start, dry_run=a.dry_run,
    )
    plan = install.plan_install(opts)
    for note in plan.notes:
        print(note)
    plan.apply(print)
    if Path(a.root).resolve() == Path("/") and not a.dry_run:
        print(f"installed. status: systemctl status edge-camera; logs: journalctl -u edge-camera -f; "
              f"config: {install.CONFIG_FILE}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
