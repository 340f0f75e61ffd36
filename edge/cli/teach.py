"""`edge teach --source SRC --data DIR --http [HOST:]PORT`: collect, train and go live from a browser (thin CLI)."""

from __future__ import annotations

import argparse
import sys

from edge.core.cli_parser import CliParser
from edge.core.errors import cli_entry
from edge.core.logs import setup_logging
from edge.service.config import add_arguments

EPILOG = """\
Open the page (http://HOST:PORT/, with ?token=T when --token is set): add labels, snap examples of each (the
space bar, or Burst), press Train. Each snapshot's backbone features are computed as it arrives, so Train only
fits the head (seconds), and the new model goes live in the running view without a restart. Snapshots are
written as `capture` writes them (DIR/LABEL/*.jpg), so `train --data DIR` can retrain on them later; the model
is a normal model.pt (with labels.txt, metrics.json, confusion_matrix.png) in --output, for `edge export` and
`edge serve`. Every `edge serve` option works (token, --allowed-hosts, --smoothing...), but --events and
--on-change: run `edge serve` with the trained model for those. --model is optional: the page works without one.
"""


def build_parser() -> argparse.ArgumentParser:
    from edge.teach.config import add_teach_arguments

    parser = CliParser(
        prog="edge teach", description="Collect, train and go live from a browser, on a headless device.",
        epilog=EPILOG,
    )
    add_arguments(parser)
    add_teach_arguments(parser)
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from edge.teach.config import config_from_args

    cfg = config_from_args(build_parser().parse_args(argv))
    setup_logging(cfg.serve.log_level, timestamps=True, force=True)
    from edge.teach.service import teach  # torch, cv2: only once the configuration is known to be good

    return teach(cfg)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
