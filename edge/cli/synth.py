"""`edge synth`: write the synthetic orientation dataset."""

from __future__ import annotations

from pathlib import Path

from edge.core.cli_parser import CliParser
from edge.core.errors import EdgeError, cli_entry
from edge.core.fsutil import ensure_writable_dir
from edge.core.synthetic import DEFAULT_CLASSES, DIRECTIONS, make_dataset


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="edge synth", description="Write a synthetic arrow-orientation ImageFolder dataset.")
    p.add_argument("--output", required=True, help="dataset directory to create")
    p.add_argument("--per-class", type=int, default=100, help="images per class")
    p.add_argument("--classes", default=",".join(DEFAULT_CLASSES),
                   help=f"comma list from {sorted(DIRECTIONS)} and none")
    p.add_argument("--size", type=int, default=160, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same images")
    p.add_argument("--split", action="store_true", help="write train/ and val/ subfolders")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty (files of the same "
                   "name are replaced, others stay and mix with the new ones)")
    a = p.parse_args(argv)
    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    if a.per_class < 1:
        raise EdgeError(f"--per-class must be >= 1, got {a.per_class}")
    out = Path(a.output)
    if out.is_dir() and not a.force and any(out.iterdir()):
        raise EdgeError(f"--output {a.output!r} is not empty: its files would mix with the new dataset; "
                        "choose a new folder, or pass --force to write into it anyway")
    ensure_writable_dir(a.output, "dataset directory")
    try:
        make_dataset(a.output, a.per_class, classes, (a.size, a.size), a.seed, a.split)
    except ValueError as e:
        raise EdgeError(str(e)) from e
    print(f"wrote {a.per_class} images x {len(classes)} classes ({', '.join(classes)}) to {a.output}")
    return 0
