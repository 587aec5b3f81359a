"""Live latency: 720p30 face videos paced in real time through the live runner (capture, track,
replace and encode threads), per method: capture -> write latency p50/p95/p99, frames dropped
because anonymizing fell behind, and memory after warm-up vs at the end.

    python benchmarks/latency.py [--methods dp,blur,...] [--sources talking,three | --source FILE|URL|lavfi:GRAPH]
                                 [--seconds N] [--output results/latency.md]

Sources, played in real time by their timestamps: ``talking`` (the shared 720p30 clip, one face,
9.4 s, with its audio, which is relayed) and ``three`` (a synthetic 720p30 clip of three LFW eval
faces crossing a room, 10 s, no audio, made by ``tools/synthetic_sequences.py`` into a temporary
folder). Each run includes the start (the detectors' first runs at this size, the first person,
opening the encoder). Each source and method runs ``--runs`` times (default 3): the table gives
the run with the median p95 and the range of drops and p95 over the runs, as two cores busy at
~85 % vary from run to run. Latency is measured from the moment a frame is decoded (its capture stamp)
to the moment its anonymized version has been handed to the encoder and muxer: what dpstream
adds on top of the network and the decoder. The output is an MPEG-TS file in a temporary folder.
Each run is a child process. Figures depend on the machine's load: other processes compete for
the same cores, so compare methods within one run.
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
TALKING = SHARED / "data" / "videos" / "talking_720p_s18.mp4"
METHODS = ("dp", "blur", "mosaic", "solid", "dp-pix")

CHILD = """
import json, sys
from dpstream.config import load_config
from dpstream.live import run_live
from dpstream.live_source import live_input

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))

source, output, method, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
config = load_config("configs/relay.yaml", method=method, ledger=output + ".ledger.json")
warm = {}
def on_frame(result, summary):
    if summary.written == 60:
        warm["rss_mb"] = rss_mb()
summary = run_live(live_input(source, config), [output], config, max_seconds=seconds or None, on_frame=on_frame)
print(json.dumps({"captured": summary.captured, "written": summary.written, "dropped": summary.dropped,
                  "drop_rate": summary.drop_rate, "seconds": summary.seconds, **summary.latency_ms,
                  "fallbacks": summary.fallbacks, "rss_warm_mb": warm.get("rss_mb"), "rss_end_mb": rss_mb()}))
"""


def run_method(source: str, method: str, seconds: float, output: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, source, str(output), method, str(seconds)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def three_faces_clip(path: Path) -> Path:
    """10 s of three LFW eval faces crossing a room, 1280x720 at 30 frames/s."""
    sys.path.insert(0, str(REPO))
    from tools.synthetic_sequences import Key, PersonPath, Scenario, write_video

    people = (
        PersonPath((Key(0, 0.15, 0.45, 0.30), Key(299, 0.85, 0.50, 0.30, roll=10)), depth=1),
        PersonPath((Key(0, 0.85, 0.50, 0.26, turn=0.8), Key(299, 0.15, 0.45, 0.28, roll=-8)), depth=0),
        PersonPath((Key(0, 0.50, 0.22, 0.18), Key(150, 0.52, 0.22, 0.19, turn=0.7), Key(299, 0.50, 0.22, 0.18))),
    )
    write_video(Scenario("three_720p30", 1280, 720, 300, people, "room", 30, seed=1), path, crf=18)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sources", default="talking,three", help="talking (one face) and/or three (three faces)")
    parser.add_argument("--source", help="another source instead (a file, stream URL or lavfi:GRAPH)")
    parser.add_argument("--seconds", type=float, default=0, help="stop each run after N s (0: at the end of a file)")
    parser.add_argument("--runs", type=int, default=3, help="runs per source and method")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "latency.md")
    args = parser.parse_args()
    if not TALKING.is_file():
        sys.exit(f"latency.py: {TALKING}: not found (set DPSTREAM_SHARED)")
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        sources = {"talking": (str(TALKING), "1 (talking clip)"), "three": (None, "3 (synthetic)")}
        chosen = [("source", args.source, "?")] if args.source else [(name, *sources[name]) for name in args.sources.split(",")]
        for name, source, faces in chosen:
            if name == "three":
                source = str(three_faces_clip(Path(workdir) / "three.mp4"))
            for method in args.methods.split(","):
                runs = []
                for run in range(args.runs):
                    runs.append(run_method(source, method, args.seconds, Path(workdir) / f"{name}-{method}-{run}.ts"))
                    print(f"{name} {method} run {run + 1}: {json.dumps(runs[-1])}", flush=True)
                runs.sort(key=lambda figures: figures["p95"])
                rows.append((faces, method, runs[len(runs) // 2], runs))
    lines = [
        "# Live latency: 720p30 sources played in real time, configs/relay.yaml",
        "",
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, load average {load:.1f} at the start"
        + (" (other processes were running: figures are distorted by the load)." if load > 1.5 else "."),
        "Latency = frame decoded -> anonymized frame encoded and written; drop = frames dropped unprocessed "
        "because anonymizing fell behind (live_queue = 2).",
        "",
        f"Median run of {args.runs} by p95; the ranges are over all {args.runs} runs.",
        "",
        "| faces | method | frames in | written | dropped | latency p50 (ms) | p95 | p99 | dropped, all runs | p95, all runs | RSS after 60 frames / at end (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for faces, method, f, runs in rows:
        drops, p95s = sorted(r["drop_rate"] for r in runs), [r["p95"] for r in runs]
        lines.append(
            f"| {faces} | {method} | {f['captured']} | {f['written']} | {f['dropped']} ({f['drop_rate']:.1%}) | "
            f"{f['p50']:.0f} | {f['p95']:.0f} | {f['p99']:.0f} | {drops[0]:.1%}-{drops[-1]:.1%} | {min(p95s):.0f}-{max(p95s):.0f} | "
            f"{f['rss_warm_mb'] or 0:.0f} / {f['rss_end_mb']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    args.output.write_text(table)


if __name__ == "__main__":
    main()
