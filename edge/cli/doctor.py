"""`edge doctor`: check this machine (JetPack, Python, torch/CUDA, TensorRT, onnxruntime, OpenCV, cameras, disk,
memory, the service, its MQTT broker) and print one line per check with the fix for anything not right. Exit 1 if a
check fails."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.core.cli_parser import CliParser
from edge.core.errors import cli_entry
from edge.service.doctor_checks import FAIL, PASS, WARN, Machine, run_checks


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="edge doctor", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--json", action="store_true", help='print {"checks": [{"name", "status", "detail", "fix"}, ...]}')
    p.add_argument("--data", type=Path, default=Path("."),
                   help="where datasets and runs go (free-space check; default .)")
    p.add_argument("--mqtt", metavar="URL", help="check this MQTT broker (reachable, credentials accepted; "
                   "password also from $EDGE_MQTT_PASSWORD); default: the installed service's, if any")
    p.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)  # a fake system tree (tests)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if not a.json:  # importing torch and probing the GPU and cameras takes seconds: say so first
        print("checking this machine (JetPack, torch, CUDA, TensorRT, onnxruntime, OpenCV, cameras)...", flush=True)
    results = run_checks(Machine(root=a.root, data_dir=a.data, mqtt=a.mqtt))
    if a.json:
        print(json.dumps({"checks": [r.to_dict() for r in results]}, indent=2))
    else:
        width = max(len(r.name) for r in results)
        for r in results:
            print(f"{r.status.upper():<4}  {r.name:<{width}}  {r.detail}")
            if r.status != PASS and r.fix:
                print(f"{'':<4}  {'':<{width}}  fix: {r.fix}")
        counts = {s: sum(r.status == s for r in results) for s in (PASS, WARN, FAIL)}
        print(f"doctor: {counts[PASS]} ok, {counts[WARN]} warnings, {counts[FAIL]} problems")
    return 1 if any(r.status == FAIL for r in results) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
