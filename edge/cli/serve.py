"""`edge serve --model PATH --source SRC [outputs...]`: the always-on camera service (thin CLI)."""

from __future__ import annotations

import argparse
import json
import sys

from edge.core.cli_parser import CliParser
from edge.core.errors import cli_entry
from edge.core.logs import setup_logging
from edge.service.config import add_arguments, config_from_args

EPILOG = """\
outputs (any combination): --display, --record FILE, --http [HOST:]PORT, --events FILE|-, --on-change CMD,
--mqtt mqtt://[USER@]HOST[/ROOT] (state, label changes, availability, snapshots; Home Assistant discovery).
HTTP endpoints: / (live page), /stream.mjpg, /snapshot.jpg, /api/prediction, /api/cameras, /healthz, /metrics;
requests whose Host is not an IP address, localhost, the --http host or one of --allowed-hosts get 403 (DNS rebinding).
Several cameras: --source A --source B (camera 0, 1; `source = ["A", "B"]` in the file), one model batching the
newest frame of each; ?camera=N on /stream.mjpg, /snapshot.jpg and /api/prediction (default 0); --record run.mp4
writes run.cam0.mp4, run.cam1.mp4...; events and --on-change ($EDGE_CAMERA) say which camera; /healthz is 503
while any camera is down. On CPU onnxruntime add --max-batch 1 (batching does not pay there).
A wrong --source (scheme, option, missing file, csi:// without GStreamer) exits 2 at start; a camera or stream
that is absent is waited for (READY=1 to systemd anyway; its state in STATUS= and /healthz).
Signals: SIGTERM/SIGINT stop cleanly (exit 0), SIGHUP reloads the model file (a bad file keeps the old model).
Every option can also be set in a TOML file (--config; keys are the option names, e.g. `threshold = 0.6`);
flags override the file.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="edge serve", description="Classify a live video source and serve the results, unattended.",
        epilog=EPILOG,
    )
    add_arguments(parser)
    parser.add_argument("--print-config", action="store_true",
                        help="print the validated configuration as JSON (token hidden) and exit")
    parser.add_argument("--mqtt-discovery-remove", action="store_true",
                        help="remove this device's Home Assistant discovery configs from the --mqtt broker and exit")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.mqtt_discovery_remove:
        from edge.service.mqtt_setup import remove_discovery_from_args

        print(remove_discovery_from_args(ns))
        return 0
    cfg = config_from_args(ns)
    if ns.print_config:
        print(json.dumps(cfg.redacted(), indent=2))
        return 0
    setup_logging(cfg.log_level, timestamps=True, force=True)  # the journal adds its own timestamps
    from edge.service.app import (
        serve,  # heavy imports (torch, cv2) only once the config is known to be good
    )

    return serve(cfg)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
