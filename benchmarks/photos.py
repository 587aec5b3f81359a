"""Photos/s of a folder of photos through ``dpstream.anonymize`` (stills, method dp by default).

    python benchmarks/photos.py [--photos 1000] [--method dp] [--link-people]

The folder holds links to the first N LFW eval photos (250x250, one or more faces each). The
models and the pipeline's threads start once per run, not per photo: the start-up (call to
first photo written) is printed apart from the steady rate. Writes benchmarks/results/photos.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dpstream  # noqa: E402

SHARED = Path(os.environ.get("DPSTREAM_SHARED", REPO.parent / "shared"))


def lfw_eval_photos(count: int) -> list[Path]:
    with open(SHARED / "data" / "lfw_split.tsv", newline="") as handle:
        people = sorted(row["identity"] for row in csv.DictReader(handle, delimiter="\t") if row["split"] == "eval")
    photos = [path for person in people for path in sorted((SHARED / "data" / "lfw" / person).glob("*.jpg"))]
    return photos[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--method", default="dp")
    parser.add_argument("--link-people", action="store_true")
    args = parser.parse_args()
    photos = lfw_eval_photos(args.photos)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "photos"
        folder.mkdir()
        for photo in photos:
            (folder / photo.name).symlink_to(photo)
        written: list[float] = []
        started = time.perf_counter()
        summary = dpstream.anonymize(
            folder, Path(work) / "out", method=args.method, link_people=args.link_people or None,
            on_frame=lambda result, _: written.append(time.perf_counter()),
        )
        total = time.perf_counter() - started
    startup = written[0] - started
    steady = (len(written) - 1) / (written[-1] - written[0]) if len(written) > 1 else 0.0
    figures = summary.method_figures
    line = (
        f"{summary.frames} photos, {summary.faces} faces ({figures.get('faces_rendered', '-')} dp faces, "
        f"{summary.fallbacks} fallbacks), method {args.method}{' linked' if args.link_people else ''}: "
        f"{total:.1f} s, {summary.frames / total:.1f} photos/s overall; start-up {startup:.1f} s once, "
        f"then {steady:.1f} photos/s ({os.cpu_count()} CPUs)"
    )
    print(line)
    (REPO / "benchmarks" / "results" / "photos.md").write_text(
        "# Photos/s: a folder of LFW eval photos (250x250)\n\n"
        f"{line}\n\nCommand: `python benchmarks/photos.py {' '.join(sys.argv[1:])}`\n"
    )


if __name__ == "__main__":
    main()
