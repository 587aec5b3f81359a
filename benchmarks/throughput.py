"""End-to-end throughput and peak memory: decode → anonymize → encode, per method, and
deface (the most used face-blurring CLI) on the same file in the same run.

    python benchmarks/throughput.py [--video PATH] [--methods dp,blur,...] [--no-deface]

Each method runs in its own child process so its peak RSS is its own. deface is installed
on first use into benchmarks/.deface-venv (its pins clash with ours: opencv, onnxruntime).
Prints a Markdown table; figures are noisy on shared machines, compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DPSTREAM_SHARED", REPO.parent / "shared"))
DEFAULT_VIDEO = SHARED / "data" / "videos" / "talking_720p_s18.mp4"
DEFACE_VENV = REPO / "benchmarks" / ".deface-venv"

CHILD = """
import json, resource, sys, dpstream
summary = dpstream.anonymize(sys.argv[1], sys.argv[2], method=sys.argv[3], overwrite=True)
print(json.dumps({"frames": summary.frames, "seconds": summary.seconds, "fallbacks": summary.fallbacks,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_method(video: Path, method: str, workdir: Path) -> dict:
    output = workdir / f"{method}.mp4"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(video), str(output), method], capture_output=True, text=True, check=True
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["wall_seconds"] = time.perf_counter() - started  # includes start-up and model loading
    figures["fps"] = figures["frames"] / figures["seconds"]
    return figures


def ensure_deface() -> Path:
    deface = DEFACE_VENV / "bin" / "deface"
    if not deface.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DEFACE_VENV)], check=True)
        subprocess.run([str(DEFACE_VENV / "bin" / "pip"), "install", "-q", "deface"], check=True)
    return deface


def run_deface(video: Path, workdir: Path, frames: int) -> dict:
    deface = ensure_deface()
    started = time.perf_counter()
    subprocess.run(
        [str(deface), str(video), "-o", str(workdir / "deface.mp4"), "--keep-audio"],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--methods", default="dp,blur,mosaic,solid,dp-pix")
    parser.add_argument("--no-deface", action="store_true")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        for method in args.methods.split(","):
            rows[method] = run_method(args.video, method, Path(workdir))
            print(f"{method}: {rows[method]['fps']:.1f} frames/s", file=sys.stderr)
        if not args.no_deface:
            frames = next(iter(rows.values()))["frames"]
            rows["deface (blur)"] = run_deface(args.video, Path(workdir), frames)
    deface_fps = rows.get("deface (blur)", {}).get("fps")
    print(f"\n{args.video.name}, {os.cpu_count()} cores\n")
    print("| method | frames/s | × deface | peak RSS (MB) | fallbacks |")
    print("|---|---|---|---|---|")
    for name, figures in rows.items():
        ratio = f"{figures['fps'] / deface_fps:.2f}" if deface_fps else "-"
        rss = f"{figures['peak_rss_mb']:.0f}" if "peak_rss_mb" in figures else "-"
        print(f"| {name} | {figures['fps']:.1f} | {ratio} | {rss} | {figures.get('fallbacks', '-')} |")


if __name__ == "__main__":
    main()
