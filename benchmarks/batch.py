"""Batch throughput on Ray: a folder of shared clips with 1 and 2 workers, and one long video
whole against split into key-frame parts, beside a single-process run of each in this script.

    python benchmarks/batch.py [--long-seconds 30] [--chunk-seconds 5]

Prints frames/s per configuration and the speed-up against the single-process run; writes
``benchmarks/results/batch.md``. Each configuration starts its own local Ray (its start-up is
in the time: what a user waits for).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpstream.batch import batch  # noqa: E402
from dpstream.pipeline import anonymize  # noqa: E402

SHARED = Path(os.environ.get("DPSTREAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CLIPS = ("walking_3people_480x270.mp4", "headpose_2people_480x270.mp4", "asl_again_640x480.mkv",
         "asl_thanks_640x480.mkv", "closeup_512_d3.mp4", "multiface_640x360_hamilton.mp4")
RESULTS = Path(__file__).parent / "results" / "batch.md"


def long_video(target: Path, seconds: float, key_every: float) -> Path:
    """The talking clip at 640x360, looped to ``seconds`` with a key frame every ``key_every`` s."""
    with av.open(str(SHARED / "data/videos/talking_720p_s18.mp4")) as reader:
        frames = [f.reformat(640, 360).to_ndarray(format="rgb24") for f in reader.decode(video=0)]
    with av.open(str(target), "w") as writer:
        stream = writer.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(round(30 * key_every)), "keyint_min": str(round(30 * key_every))}
        for index in range(round(seconds * 30)):
            loop, at = divmod(index, len(frames))
            image = frames[at] if loop % 2 == 0 else frames[len(frames) - 1 - at]  # back and forth: no jump
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                writer.mux(packet)
        for packet in stream.encode(None):
            writer.mux(packet)
    return target


def timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-seconds", type=float, default=30.0)
    parser.add_argument("--chunk-seconds", type=float, default=5.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        folder = work / "clips"
        folder.mkdir()
        for name in CLIPS:
            shutil.copy(SHARED / "data/videos" / name, folder / name)
        single = 0.0
        frames = 0
        for name in CLIPS:
            seconds, summary = timed(lambda: anonymize(folder / name, work / f"single_{name}"))
            single += seconds
            frames += summary.frames
        rows.append(("6 clips", "one process, one file after another", frames, single))
        for workers in (1, 2):
            seconds, summary = timed(lambda: batch(folder, work / f"out{workers}", workers=workers, chunk_seconds=None))
            rows.append(("6 clips", f"batch, {workers} worker(s), whole files", summary.frames, seconds))
        video = long_video(work / "long.mp4", args.long_seconds, args.chunk_seconds)
        seconds, summary = timed(lambda: anonymize(video, work / "long_single.mp4"))
        rows.append((f"{args.long_seconds:g}-s 640x360 video", "one process", summary.frames, seconds))
        for chunk in (None, args.chunk_seconds):
            seconds, summary = timed(lambda: batch([video], work / f"long_{chunk}", workers=2, chunk_seconds=chunk))
            what = f"batch, 2 workers, {summary.parts} parts of ~{chunk:g} s" if chunk else "batch, 2 workers, whole"
            rows.append((f"{args.long_seconds:g}-s 640x360 video", what, summary.frames, seconds))
    lines = ["| input | run | frames | seconds | frames/s | vs one process |", "|---|---|---|---|---|---|"]
    baseline = {}
    for inp, what, n, seconds in rows:
        baseline.setdefault(inp, n / seconds)
        lines.append(f"| {inp} | {what} | {n} | {seconds:.1f} | {n / seconds:.1f} | {n / seconds / baseline[inp]:.2f}x |")
    text = "\n".join(lines)
    print(text)
    RESULTS.write_text(
        "# Batch throughput (`python benchmarks/batch.py`)\n\n"
        f"{os.cpu_count()} cores; method dp (default config); batch times include starting a local Ray.\n\n" + text + "\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
