"""Decompression bombs: time and peak memory of each image reader given a 30000x30000 PNG (issue 18).

    python benchmarks/bench_image_limits.py [--side 30000]

Writes a grey PNG of `side` x `side` zeros (a few MB), then in a fresh interpreter per reader (so each peak RSS is
its own) asks the reader for it: the header check, the folder source, a teach thumbnail, train's image check,
capture's import (`edge predict`, which needs a model: tests/test_image_limits.py, about 135 MiB). Target: every one
refuses in under a second of its own work, with its
peak RSS what the interpreter and libraries take (no image decoded); decoding it costs 6-8.5 GB.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

READERS = {
    "header check": "from edge.core.images import pixel_problem; assert pixel_problem(BOMB)",
    "folder source": ("from edge.runtime.sources import open_source\n"
                      "try:\n    open_source(os.path.dirname(BOMB), realtime=False).read()\n"
                      "except Exception as e:\n    assert 'megapixels' in str(e), e"),
    "teach thumbnail": ("import shutil; from pathlib import Path; "
                        "from edge.teach.dataset import TeachDataset, snapshot_id\n"
                        "d = Path(TMP) / 'data' / 'up'; d.mkdir(parents=True, exist_ok=True); "
                        "shutil.copy(BOMB, d / 'b.png')\n"
                        "try:\n    TeachDataset(d.parent).thumbnail(snapshot_id('up', Path('b.png')))\n"
                        "except Exception as e:\n    assert 'megapixels' in str(e), e"),
    "train check_image": "from train.dataset import check_image; assert 'megapixels' in check_image(BOMB)",
    "capture import": ("from capture.dataset import DatasetWriter; from capture.importer import import_photos\n"
                       "w = DatasetWriter(os.path.join(TMP, 'cap'), None, 90); w.prepare('up')\n"
                       "try:\n    import_photos(os.path.dirname(BOMB), w, 'up', out=lambda s: None)\n"
                       "except Exception as e:\n    pass"),
}


def write_bomb(path: Path, side: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(1)
    rows = 1000
    block = bytes((side + 1) * rows)
    data = b"".join(z.compress(block) for _ in range(side // rows)) + z.compress(bytes((side + 1) * (side % rows)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data + z.flush()) + chunk(b"IEND", b""))


def measure(code: str, bomb: Path, tmp: str) -> tuple[float, float, float]:
    """(seconds of the reader's own work, seconds of imports, peak RSS in MiB) in a fresh interpreter."""
    script = (f"import os, resource, time\nBOMB, TMP = {str(bomb)!r}, {tmp!r}\n"
              "t0 = time.perf_counter()\nimport edge.core.images, train.dataset, edge.teach.dataset, capture.importer\n"
              "import edge.runtime.sources\nt1 = time.perf_counter()\n"
              f"{code}\n"
              "t2 = time.perf_counter()\n"
              "print(t2 - t1, t1 - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=30000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bomb"
        folder.mkdir()
        bomb = folder / "bomb.png"
        write_bomb(bomb, a.side)
        print(f"{bomb.name}: {a.side}x{a.side}, {bomb.stat().st_size / 1e6:.1f} MB on disk")
        for name, code in READERS.items():
            work, imports, rss = measure(code, bomb, tmp)
            print(f"{name:18s} refused in {work * 1000:7.1f} ms (imports {imports:4.1f} s), peak RSS {rss:6.0f} MiB")


if __name__ == "__main__":
    main()
