"""`capture`: collect labeled snapshots (or import photos) into an ImageFolder dataset."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from edge.core.cli_parser import CliParser
from edge.core.errors import EdgeError, cli_entry
from edge.core.labels import SPLITS
from edge.core.logs import setup_logging
from edge.runtime.camera import Camera
from edge.runtime.sources import SOURCE_HELP, open_source

from . import display as display_mod
from .dataset import DatasetWriter, describe_totals
from .importer import import_photos
from .labels import label_dir
from .session import ChangeFilter, Interactive, Shooter, capture_live, capture_media

HEADLESS_INTERVAL_S, BURST_INTERVAL_S = 1.0, 0.25


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="capture",
        description="Collect labeled camera snapshots into DIR/LABEL/ (an ImageFolder dataset), headless or with a "
        "live preview, or import a folder of existing photos.",
    )
    p.add_argument("--label", help="class name; becomes the folder DIR/LABEL (required, but with --web)")
    p.add_argument("--source", default="0", help=f"video source (default 0): {SOURCE_HELP}; a folder is imported")
    p.add_argument("--data", default="data", help="dataset folder (default: data)")
    p.add_argument("--count", type=int, help="take N snapshots, headless (default: until q / Ctrl-C)")
    p.add_argument("--interval", type=float, help=f"seconds between snapshots (default {HEADLESS_INTERVAL_S:g}; "
                   f"{BURST_INTERVAL_S:g} in burst mode); of video time for files and test://")
    p.add_argument("--split", choices=SPLITS, help="write into DIR/SPLIT/LABEL/")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    p.add_argument("--min-change", type=float, default=0.0, metavar="FRACTION",
                   help="skip frames that differ from the last saved one by less than this (0-1, e.g. 0.02)")
    p.add_argument("--width", type=int, help="camera width")
    p.add_argument("--height", type=int, help="camera height")
    p.add_argument("--fps", type=float, help="camera frame rate")
    p.add_argument("--headless", action="store_true", help="no preview window even when a display is present")
    p.add_argument("-v", "--verbose", action="store_true")
    web = p.add_argument_group("in a browser (headless devices)")
    web.add_argument("--web", metavar="[HOST:]PORT", help="serve the live view with Snap and Burst buttons at "
                     "http://HOST:PORT/ instead (127.0.0.1 unless a host is named); labels are added on the page")
    web.add_argument("--token", help="with --web: require this bearer token (or set $EDGE_TOKEN); needed to "
                     "listen beyond this machine")
    web.add_argument("--allowed-hosts", metavar="NAME[,NAME...]", help="with --web: host names the page is opened "
                     "by (e.g. jetson.local); IP addresses and localhost always work")
    web.add_argument("--allow-no-token", action="store_true", help="with --web: listen beyond this machine without "
                     "a token (trusted networks only)")
    return p


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C or `kill` finish the shot in progress, release the camera and print the totals; a second Ctrl-C
    interrupts at once. (An exception raised mid-write could strand a temporary file.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _check_args(a: argparse.Namespace) -> None:
    if a.label is None:
        raise EdgeError("--label is required (the class to capture), e.g. --label thumbs_up; or use --web and add "
                        "labels on the page")
    label_dir(a.data, a.label, a.split)  # checks the label, before anything touches the disk or the camera
    if a.count is not None and a.count < 1:
        raise EdgeError(f"--count must be >= 1, got {a.count}")
    if a.interval is not None and a.interval < 0:
        raise EdgeError(f"--interval must be >= 0 seconds, got {a.interval}")
    if not a.split and Path(a.data, "train").is_dir():
        raise EdgeError(f"{a.data!r} has train/ and val/ folders; pass --split train or --split val")


def run(a: argparse.Namespace) -> int:
    if a.web is not None:
        return _web(a)
    web_only = [f"--{n.replace('_', '-')}" for n in ("token", "allowed_hosts", "allow_no_token") if getattr(a, n)]
    if web_only:
        raise EdgeError(f"{', '.join(web_only)} only appl{'ies' if len(web_only) == 1 else 'y'} with --web [HOST:]PORT")
    _check_args(a)
    writer = DatasetWriter(a.data, a.split, a.quality)  # checks --quality
    change = ChangeFilter(a.min_change) if a.min_change else None
    source_path = Path(a.source).expanduser()
    if "://" not in a.source and source_path.is_dir():
        return _import(a, source_path, writer)

    interactive = a.count is None and not a.headless and display_mod.display_present()
    if interactive and not display_mod.gui_available():
        print("no preview: this OpenCV has no GUI (opencv-python-headless); capturing headless. For a preview "
              "install opencv-python, or JetPack's OpenCV on a Jetson", file=sys.stderr)
        interactive = False
    kwargs = dict(width=a.width, height=a.height, fps=a.fps)
    first = open_source(a.source, realtime=interactive, loop=interactive, **kwargs)  # fails fast, one line
    try:
        writer.prepare(a.label)
    except BaseException:
        first.close()
        raise
    shooter = Shooter(writer, a.label, change)
    try:
        with _stop_on_signals(shooter.stop):
            if interactive:
                _interactive(a, first, shooter, kwargs)
            elif first.is_live:
                _headless_live(a, first, shooter, kwargs)
            else:
                with first:
                    _announce(a, first.uri, media=True)
                    capture_media(first, shooter, a.count, HEADLESS_INTERVAL_S if a.interval is None else a.interval)
    finally:
        first.close()
        if shooter.stop.is_set():
            print("stopped", file=sys.stderr)
        _finish(a, writer, shooter)
    if a.count is not None and shooter.saved < a.count:
        return 1  # the source ended before N shots: say so in the exit code too
    return 0


def _web(a: argparse.Namespace) -> int:
    """The page instead of keys: `edge teach` without training (edge.teach)."""
    clash = [flag for flag, value in (("--count", a.count), ("--interval", a.interval), ("--split", a.split),
                                      ("--min-change", a.min_change or None), ("--headless", a.headless or None))
             if value is not None]
    if clash:
        raise EdgeError(f"{', '.join(clash)} do{'es' if len(clash) == 1 else ''} not apply with --web: snapshots "
                        "are taken from the page (Snap, space bar, Burst)")
    from edge.teach.config import web_config
    from edge.teach.service import teach

    try:
        cfg = web_config(data=a.data, source=a.source, http=a.web, label=a.label, quality=a.quality, token=a.token,
                         allowed_hosts=a.allowed_hosts, allow_no_token=a.allow_no_token or None, width=a.width,
                         height=a.height, fps=a.fps, log_level="debug" if a.verbose else "info")
    except EdgeError as e:  # edge serve's checks, which name its --http
        raise EdgeError(str(e).replace("--http", "--web")) from e
    logging.getLogger().setLevel(logging.DEBUG if a.verbose else logging.INFO)
    return teach(cfg)


def _import(a: argparse.Namespace, folder: Path, writer: DatasetWriter) -> int:
    imported = 0
    writer.prepare(a.label)
    stop = threading.Event()
    try:
        with _stop_on_signals(stop):
            imported, bad = import_photos(folder, writer, a.label, a.count, stop=stop)
        if bad:
            print(f"skipped {len(bad)} unreadable file(s)", file=sys.stderr)
    finally:
        _tidy(writer)
    print(f"imported {imported} image(s) into {writer.base / a.label}")
    print(describe_totals(writer))
    return 0 if imported else 1


def _tidy(writer: DatasetWriter) -> None:
    """labels.txt up to date, and no empty class folder left behind (the trainer would see an empty class)."""
    writer.remove_empty_folders()
    try:
        writer.sync_labels()
    except EdgeError as e:  # the error that stopped us (e.g. disk full) is the one to report
        logging.getLogger(__name__).debug("labels.txt not updated: %s", e)


def _finish(a: argparse.Namespace, writer: DatasetWriter, shooter: Shooter) -> None:
    """Tidy the dataset and print the totals."""
    _tidy(writer)
    if shooter.skipped:
        print(f"skipped {shooter.skipped} near-duplicate frame(s) (--min-change {a.min_change:g})")
    print(f"saved {shooter.saved} image(s) of {shooter.label!r}")
    print(describe_totals(writer))


def _announce(a: argparse.Namespace, uri: str, media: bool = False) -> None:
    interval = HEADLESS_INTERVAL_S if a.interval is None else a.interval
    what = f"{a.count} snapshot(s)" if a.count else "snapshots until Ctrl-C"
    clock = " of video time" if media else ""
    print(f"capturing {what} of {a.label!r} from {uri}, one every {interval:g} s{clock}")


def _camera(a: argparse.Namespace, first, kwargs, interactive: bool) -> Camera:
    """The already-opened source first; reopened with the same options after a loss."""
    return Camera.from_source(first, a.source, realtime=interactive, loop=interactive, **kwargs)


def _headless_live(a, first, shooter: Shooter, kwargs) -> None:
    _announce(a, first.uri)
    with _camera(a, first, kwargs, False) as cam:
        capture_live(cam, shooter, a.count, HEADLESS_INTERVAL_S if a.interval is None else a.interval)


def _interactive(a, first, shooter: Shooter, kwargs) -> None:
    print("preview: SPACE snap, b burst, 1-9/TAB switch label, u undo, q/ESC quit")
    display = display_mod.open_display(f"capture - {a.data}")
    try:
        with _camera(a, first, kwargs, True) as cam:
            session = Interactive(cam, shooter, display, BURST_INTERVAL_S if a.interval is None else a.interval,
                                  labels=shooter.writer.known_labels())
            session.run()
    finally:
        display.close()


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if a.verbose else logging.WARNING)
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
