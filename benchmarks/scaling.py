"""How cost grows: frames/s against the number of faces (720p) and against resolution (one face),
and resident memory against video length (it must stay flat).

    python benchmarks/scaling.py [--method dp] [--frames 120] [--long-frames 1800]

Writes benchmarks/results/scaling.png and prints the figures as Markdown tables. Inputs are
composed from the shared one-face videos (benchmarks/compose.py); each point runs in its own
child process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from compose import grid_frames, write_video

RESULTS = Path(__file__).resolve().parent / "results"
FACE_COUNTS = (1, 2, 3, 5, 10)
RESOLUTIONS = {"360p": (640, 360), "480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}

CHILD = """
import json, sys, dpstream

def peak_rss_mb():
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

rss = []

def sample(result, summary):
    if summary.frames % 30 == 0:
        with open("/proc/self/statm") as statm:
            rss.append((summary.frames, int(statm.read().split()[1]) * 4096 / 2**20))

summary = dpstream.anonymize(sys.argv[1], sys.argv[2], method=sys.argv[3], overwrite=True, on_frame=sample)
print(json.dumps({"fps": summary.fps, "frames": summary.frames, "rss": rss,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def run(video: Path, method: str, workdir: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(video), str(workdir / "out.mp4"), method], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="dp")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--long-frames", type=int, default=1800, help="length of the memory run (720p, 1 face)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        by_faces = {}
        for faces in FACE_COUNTS:
            video = write_video(grid_frames(faces, 1280, 720, args.frames), workdir / "in.mp4")
            by_faces[faces] = run(video, args.method, workdir)
            print(f"720p, {faces} faces: {by_faces[faces]['fps']:.1f} frames/s", file=sys.stderr)
        by_resolution = {}
        for name, (width, height) in RESOLUTIONS.items():
            video = write_video(grid_frames(1, width, height, args.frames), workdir / "in.mp4")
            by_resolution[name] = run(video, args.method, workdir)
            print(f"{name}, 1 face: {by_resolution[name]['fps']:.1f} frames/s", file=sys.stderr)
        video = write_video(grid_frames(1, 1280, 720, args.long_frames), workdir / "in.mp4")
        long_run = run(video, args.method, workdir)
    print(f"\nmethod {args.method}; {args.frames}-frame composed clips\n")
    print("| faces (720p) | " + " | ".join(map(str, FACE_COUNTS)) + " |")
    print("|---|" + "---|" * len(FACE_COUNTS))
    print("| frames/s | " + " | ".join(f"{by_faces[n]['fps']:.1f}" for n in FACE_COUNTS) + " |")
    print("| peak RSS (MB) | " + " | ".join(f"{by_faces[n]['peak_rss_mb']:.0f}" for n in FACE_COUNTS) + " |")
    print("\n| resolution (1 face) | " + " | ".join(RESOLUTIONS) + " |")
    print("|---|" + "---|" * len(RESOLUTIONS))
    print("| frames/s | " + " | ".join(f"{by_resolution[r]['fps']:.1f}" for r in RESOLUTIONS) + " |")
    print("| peak RSS (MB) | " + " | ".join(f"{by_resolution[r]['peak_rss_mb']:.0f}" for r in RESOLUTIONS) + " |")
    samples = long_run["rss"]
    quarter = [samples[int(f * (len(samples) - 1))] for f in (0.25, 0.5, 0.75, 1.0)]
    print(f"\nRSS over a {long_run['frames']}-frame 720p run (frame: MB): " + ", ".join(f"{f}: {m:.0f}" for f, m in quarter))
    plot(by_faces, by_resolution, samples, args.method)


def plot(by_faces: dict, by_resolution: dict, rss: list, method: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(list(by_faces), [r["fps"] for r in by_faces.values()], "o-")
    axes[0].set(xlabel="faces in a 720p frame", ylabel="frames/s", title=f"{method}: cost per face")
    pixels = [w * h / 1e6 for w, h in RESOLUTIONS.values()]
    axes[1].plot(pixels, [r["fps"] for r in by_resolution.values()], "o-")
    for x, name, r in zip(pixels, RESOLUTIONS, by_resolution.values()):
        axes[1].annotate(name, (x, r["fps"]), textcoords="offset points", xytext=(4, 4))
    axes[1].set(xlabel="megapixels per frame (1 face)", ylabel="frames/s", title=f"{method}: cost per pixel")
    axes[2].plot([f for f, _ in rss], [m for _, m in rss], "-")
    axes[2].set(xlabel="frames processed (720p, 1 face)", ylabel="resident memory (MB)", title="memory over a long run")
    axes[2].set_ylim(bottom=0)
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    figure.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    figure.savefig(RESULTS / "scaling.png", dpi=110)


if __name__ == "__main__":
    main()
