"""Fit MediaPipe's refined face mesh (478 points) to every LFW image and cache the landmarks.

    python tools/prepare_lfw.py            # ~13 min on 2 cores (13,233 images)

Reads ``$DPSTREAM_SHARED`` (default ``../shared`` from the repo root): ``data/lfw`` and the fixed
split ``data/lfw_split.tsv``. Writes ``tools/_runs/lfw_landmarks.npz`` (git-ignored) with
``paths`` (relative to ``data/lfw``), ``identities``, ``splits`` ("train"/"eval") and
``landmarks`` (N, 478, 2) float32 pixel coordinates, NaN where no mesh was found. When an image
holds several faces the one nearest the image centre is kept (LFW centres the labelled person).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO_ROOT / "tools" / "_runs"
LANDMARKS_PATH = RUNS_DIR / "lfw_landmarks.npz"


def shared_dir() -> Path:
    """The shared data folder: ``$DPSTREAM_SHARED`` or ``../shared`` from the repo root."""
    return Path(os.environ.get("DPSTREAM_SHARED", REPO_ROOT.parent / "shared"))


def read_split(shared: Path) -> list[tuple[str, str, str]]:
    """(relative image path, identity, split) for every LFW image, in a fixed order."""
    lfw = shared / "data" / "lfw"
    rows = []
    with open(shared / "data" / "lfw_split.tsv", newline="") as handle:
        for record in csv.DictReader(handle, delimiter="\t"):
            identity = record["identity"]
            for path in sorted((lfw / identity).glob("*.jpg")):
                rows.append((f"{identity}/{path.name}", identity, record["split"]))
    return rows


def central_face_landmarks(mesh, image_rgb: np.ndarray) -> np.ndarray:
    """(478, 2) pixel landmarks of the face nearest the image centre, NaN when none."""
    height, width = image_rgb.shape[:2]
    result = mesh.process(image_rgb)
    if not result.multi_face_landmarks:
        return np.full((478, 2), np.nan, np.float32)
    candidates = [
        np.array([(p.x * width, p.y * height) for p in face.landmark], np.float32)
        for face in result.multi_face_landmarks
    ]
    centre = np.array([width / 2, height / 2], np.float32)
    return min(candidates, key=lambda points: float(np.linalg.norm(points.mean(0) - centre)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (smoke test)")
    args = parser.parse_args()

    shared = shared_dir()
    rows = read_split(shared)
    if args.limit:
        rows = rows[: args.limit]
    landmarks = np.full((len(rows), 478, 2), np.nan, np.float32)
    started = time.time()
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=3, refine_landmarks=True, min_detection_confidence=0.5
    ) as mesh:
        for index, (relative_path, _, _) in enumerate(rows):
            image_bgr = cv2.imread(str(shared / "data" / "lfw" / relative_path))
            landmarks[index] = central_face_landmarks(mesh, cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
            if index % 1000 == 0:
                print(f"{index}/{len(rows)} images, {time.time() - started:.0f} s", file=sys.stderr)
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        LANDMARKS_PATH,
        paths=np.array([r[0] for r in rows]),
        identities=np.array([r[1] for r in rows]),
        splits=np.array([r[2] for r in rows]),
        landmarks=landmarks,
    )
    found = ~np.isnan(landmarks).any(axis=(1, 2))
    print(f"{found.sum()}/{len(rows)} meshes in {time.time() - started:.0f} s -> {LANDMARKS_PATH}")


if __name__ == "__main__":
    main()
