"""End-to-end throughput and peak memory: decode → anonymize → encode, per method and input,
and deface (the most used face-blurring CLI) on the same inputs in the same run.

    python benchmarks/throughput.py [--cases talking,480p-1,...] [--methods dp,blur,...]
                                    [--recall normal,high] [--frames 150] [--repeats 1] [--no-deface] [--no-stages]

Inputs: the real 720p one-face clip (``talking``) and composed clips ``<res>-<faces>`` (480p,
720p, 1080p × 1, 3, 10 faces) made by tiling the shared one-face videos (benchmarks/compose.py).
Each method runs at each ``detector_recall`` (``--recall``), in its own child process so its peak RSS is its own. deface is installed on
first use into benchmarks/.deface-venv (its pins clash with ours). A per-stage breakdown of the
dp method (stages run one after another in one thread) follows the table. Figures are noisy on
shared machines: compare the ratios, which come from the same run; with ``--repeats N`` every
method and deface run N times, one after another, and the table gives the median frames/s and
the median of the N ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compose import VIDEOS, grid_frames, write_video

REPO = Path(__file__).resolve().parents[1]
DEFACE_VENV = REPO / "benchmarks" / ".deface-venv"
RESOLUTIONS = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
ALL_CASES = ("talking", *(f"{res}-{faces}" for res in RESOLUTIONS for faces in (1, 3, 10)))

CHILD = """
import json, sys, dpstream

def peak_rss_mb():
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
summary = dpstream.anonymize(sys.argv[1], sys.argv[2], method=sys.argv[3], detector_recall=sys.argv[4], overwrite=True)
print(json.dumps({"frames": summary.frames, "seconds": summary.seconds, "fallbacks": summary.fallbacks,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def case_video(case: str, frames: int, workdir: Path) -> Path:
    if case == "talking":
        return VIDEOS / "talking_720p_s18.mp4"
    resolution, faces = case.split("-")
    width, height = RESOLUTIONS[resolution]
    return write_video(grid_frames(int(faces), width, height, frames), workdir / f"{case}.mp4")


def run_method(video: Path, method: str, recall: str, workdir: Path) -> dict:
    output = workdir / f"out-{method}.mp4"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(video), str(output), method, recall], capture_output=True, text=True, check=True
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
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
    subprocess.run([str(deface), str(video), "-o", str(workdir / "deface.mp4"), "--keep-audio"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds}


def run_stages(video: Path, workdir: Path) -> dict:
    child = (
        "import json, sys; sys.path.insert(0, sys.argv[3]); from stages import stage_times; "
        "from dpstream.config import Config; from pathlib import Path; "
        "print(json.dumps(stage_times(Path(sys.argv[1]), Path(sys.argv[2]), Config())))"
    )
    output = workdir / "stages.mp4"
    result = subprocess.run(
        [sys.executable, "-c", child, str(video), str(output), str(Path(__file__).parent)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_figures(runs: list[dict], deface_runs: list[dict] | None) -> dict:
    """One row from repeated runs: median frames/s, highest peak RSS, median ratio to the deface
    run of the same repeat."""
    row = {**runs[-1], "fps": statistics.median(run["fps"] for run in runs)}
    if "peak_rss_mb" in row:
        row["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    if deface_runs:
        row["ratio"] = statistics.median(run["fps"] / deface["fps"] for run, deface in zip(runs, deface_runs))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(ALL_CASES))
    parser.add_argument("--methods", default="dp,blur,mosaic,solid,dp-pix")
    parser.add_argument("--recall", default="high", help="detector_recall values, e.g. normal,high")
    parser.add_argument("--frames", type=int, default=150, help="length of the composed clips")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method and of deface (medians reported)")
    parser.add_argument("--no-deface", action="store_true")
    parser.add_argument("--no-stages", action="store_true")
    args = parser.parse_args()
    table, stages = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for case in args.cases.split(","):
            video = case_video(case, args.frames, workdir)
            runs: dict[str, list[dict]] = {}
            for _ in range(args.repeats):
                for method in args.methods.split(","):
                    for recall in args.recall.split(","):
                        name = f"{method} ({recall})"
                        runs.setdefault(name, []).append(run_method(video, method, recall, workdir))
                        print(f"{case} {name}: {runs[name][-1]['fps']:.1f} frames/s", file=sys.stderr)
                if not args.no_deface:
                    runs.setdefault("deface", []).append(run_deface(video, workdir, next(iter(runs.values()))[-1]["frames"]))
                    print(f"{case} deface: {runs['deface'][-1]['fps']:.1f} frames/s", file=sys.stderr)
            rows = {name: median_figures(figures, runs.get("deface")) for name, figures in runs.items()}
            if not args.no_stages:
                stages[case] = run_stages(video, workdir)
            table.append((case, rows))
    print(f"\n{os.cpu_count()} cores; composed clips {args.frames} frames\n")
    print("| input | method (detector_recall) | frames/s | × deface | peak RSS (MB) | fallbacks |")
    print("|---|---|---|---|---|---|")
    for case, rows in table:
        for name, figures in rows.items():
            ratio = f"{figures['ratio']:.2f}" if "ratio" in figures else "-"
            rss = f"{figures['peak_rss_mb']:.0f}" if "peak_rss_mb" in figures else "-"
            print(f"| {case} | {name} | {figures['fps']:.1f} | {ratio} | {rss} | {figures.get('fallbacks', '-')} |")
    if stages:
        print("\nmethod dp, detector_recall high (the default), milliseconds per frame, stages one after another in one thread\n")
        names = next(iter(stages.values())).keys()
        print("| input | " + " | ".join(names) + " | sum |")
        print("|---|" + "---|" * (len(names) + 1))
        for case, times in stages.items():
            print(f"| {case} | " + " | ".join(f"{v:.1f}" for v in times.values()) + f" | {sum(times.values()):.1f} |")


if __name__ == "__main__":
    main()
