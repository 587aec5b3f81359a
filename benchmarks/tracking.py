"""What tracking costs per frame: 720p, 3 real faces (three one-face clips tiled).

    python benchmarks/tracking.py [--frames 150] [--detect-every 5]

Prints per-frame milliseconds of each part of face finding and tracking: detection (key frames
only, averaged over all frames), mesh re-fit at the predicted places, and the tracker itself
(motion prediction, association, landmark smoothing) — and the same run with detection on every
frame as the baseline.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
from compose import grid_frames
from stages import _time_method

from dpstream.face_finder import FaceFinder
from dpstream.face_tracking import FaceTracking
from dpstream.tracker import Tracker


def run(frames, detect_every: int) -> dict[str, float]:
    finder, tracker = FaceFinder(), Tracker()
    seconds: dict[str, float] = defaultdict(float)
    _time_method(finder, "detect", seconds, "detection")
    _time_method(finder.mesh, "fit_box", seconds, "mesh")
    _time_method(tracker, "predict", seconds, "tracker")
    _time_method(tracker, "update", seconds, "tracker")
    tracking = FaceTracking(finder, tracker, detect_every)
    faces_seen = []
    started = time.perf_counter()
    for frame in frames:
        faces_seen.append(int((~tracking.process(frame).held).sum()))
    total = time.perf_counter() - started
    finder.close()
    per_frame = 1000 / len(frames)
    return {
        "detection": seconds["detection"] * per_frame,
        "mesh": seconds["mesh"] * per_frame,
        "tracker": seconds["tracker"] * per_frame,
        "total": total * per_frame,
        "faces": float(np.mean(faces_seen)),
        "tracks": tracker._next_id,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--detect-every", type=int, default=5)
    args = parser.parse_args()
    frames = grid_frames(3, 1280, 720, args.frames)
    rows = {"every frame": run(frames, 1), f"every {args.detect_every}th frame": run(frames, args.detect_every)}
    print(f"\n720p, 3 faces, {args.frames} frames; milliseconds per frame\n")
    print("| detector runs on | detection | mesh (re-)fit | tracker | total | faces/frame | track ids |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['detection']:.1f} | {r['mesh']:.1f} | {r['tracker']:.2f} | {r['total']:.1f} | {r['faces']:.2f} | {r['tracks']} |")


if __name__ == "__main__":
    main()
