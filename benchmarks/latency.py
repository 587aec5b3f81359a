"""Live latency: a 720p30 face video paced in real time through the live runner (capture,
anonymize and encode threads), per method: capture -> write latency p50/p95/p99, frames dropped
because anonymizing fell behind, and memory after warm-up vs at the end.

    python benchmarks/latency.py [--methods dp,blur,...] [--source FILE|URL|lavfi:GRAPH]
                                 [--seconds N] [--output results/latency.md]

Latency is measured from the moment a frame is decoded (its capture stamp) to the moment its
anonymized version has been handed to the encoder and muxer: what dpstream adds on top of the
network and the decoder. The output is an MPEG-TS file in a temporary folder. Each method runs
in its own child process. Figures depend on the machine's load: other processes compete for the
same cores, so compare methods within one run.
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
DEFAULT_SOURCE = SHARED / "data" / "videos" / "talking_720p_s18.mp4"
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


def run_method(source: str, method: str, seconds: float, workdir: Path) -> dict:
    output = workdir / f"out-{method}.ts"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, source, str(output), method, str(seconds)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="default: the 720p30 talking-head clip, paced")
    parser.add_argument("--seconds", type=float, default=0, help="stop each run after N s (0: at the end of a file)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "latency.md")
    args = parser.parse_args()
    if not args.source.startswith(("lavfi:",)) and "://" not in args.source and not Path(args.source).is_file():
        sys.exit(f"latency.py: {args.source}: not found (set DPSTREAM_SHARED or --source)")
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for method in args.methods.split(","):
            figures = run_method(args.source, method, args.seconds, Path(workdir))
            rows.append((method, figures))
            print(f"{method}: {json.dumps(figures)}", flush=True)
    lines = [
        f"# Live latency: {Path(args.source).name} paced in real time, configs/relay.yaml",
        "",
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, load average {load:.1f} at the start"
        + (" (other processes were running: figures are distorted by the load)." if load > 1.5 else "."),
        "Latency = frame decoded -> anonymized frame encoded and written; drop = frames dropped unprocessed "
        "because anonymizing fell behind (live_queue = 2).",
        "",
        "| method | frames in | written | dropped | latency p50 (ms) | p95 | p99 | RSS after 60 frames / at end (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, f in rows:
        lines.append(
            f"| {method} | {f['captured']} | {f['written']} | {f['dropped']} ({f['drop_rate']:.0%}) | "
            f"{f['p50']:.0f} | {f['p95']:.0f} | {f['p99']:.0f} | {f['rss_warm_mb'] or 0:.0f} / {f['rss_end_mb']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    args.output.write_text(table)


if __name__ == "__main__":
    main()
