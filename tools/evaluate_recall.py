"""Detection recall: how many real faces the face-finding stage finds, and how many the judges
still find in the anonymized output.

1. Labelled photos (``../shared/data/images/dlib_faces``, hand-labelled boxes in dlib's imglab
   files), as taken, shrunk and dimmed: recall at IoU 0.3 by face size (larger side of the
   labelled box) for MediaPipe alone, CenterFace alone and the fused stage (``FaceFinder`` with
   ``detector_recall: high``). ``solvay1927.jpg`` has no labelled boxes, only its count of 29
   faces: the faces each detector finds there (all 29 are 40-70 px) are counted.
2. Every shared video, anonymized with blur and dp at each ``detector_recall``: output faces that
   YuNet at 0.6 finds where YuNet finds a face in the input (the residual), and leaks as
   ``tools/evaluate_tracking.py`` judges them, with those left untouched counted apart.

    python tools/evaluate_recall.py                    # everything (over 30 min on 2 cores)
    python tools/evaluate_recall.py --part photos      # photos only (about 1 min)

Writes ``benchmarks/results/recall.md`` unless ``--no-report``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import dpstream  # noqa: E402
from dpstream.face_finder import FaceFinder  # noqa: E402
from dpstream.tracker import box_iou  # noqa: E402
from tools.evaluate_tracking import VIDEOS, Judges, DescriptorCache, decoded_frames, leaks_in_frame  # noqa: E402
from tools.judges import SHARED, YuNet  # noqa: E402

PHOTOS = SHARED / "data" / "images"
REPORT = REPO_ROOT / "benchmarks" / "results" / "recall.md"
RUNS = REPO_ROOT / "tools" / "_runs" / "recall_eval"
IOU_FOUND = 0.3
BUCKETS = ((0, 16, "<16"), (16, 24, "16-24"), (24, 48, "24-48"), (48, 96, "48-96"), (96, 10**6, ">96"))
RESIDUAL_YUNET_SCORE = 0.6
RESIDUAL_NOTES = (
    "\"Still found\": input faces (YuNet at 0.6) that YuNet at 0.6 finds again in the output at IoU 0.3.",
    "For `blur` that is a face left recognizable as a face; for `dp` the output face is a new, drawn",
    "face, which is meant to be found: there the columns that count are the leaks (dlib takes the output",
    "face for the original person, confirmed as a real face in the original) and, of those, the ones",
    "whose pixels were left untouched (a face the pipeline missed).",
)


@dataclass(slots=True)
class LabelledPhoto:
    path: Path
    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1


def labelled_photos() -> list[LabelledPhoto]:
    """The dlib_faces photos with their labelled boxes (ignored boxes left out)."""
    photos = []
    for name in ("training.xml", "testing.xml"):
        root = ElementTree.parse(PHOTOS / "dlib_faces" / name).getroot()
        for image in root.iter("image"):
            boxes = [
                (float(b.get("left")), float(b.get("top")), float(b.get("left")) + float(b.get("width")),
                 float(b.get("top")) + float(b.get("height")))
                for b in image.iter("box") if b.get("ignore") != "1"
            ]  # fmt: skip
            photos.append(LabelledPhoto(PHOTOS / "dlib_faces" / image.get("file"), np.asarray(boxes, np.float32).reshape(-1, 4)))
    return photos


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def found_labels(labels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) bool: labelled faces that a detection matches at IoU ≥ ``IOU_FOUND``."""
    if not len(boxes) or not len(labels):
        return np.zeros(len(labels), bool)
    return (box_iou(labels, boxes) >= IOU_FOUND).any(axis=1)


@dataclass(slots=True)
class RecallCounts:
    found: dict[str, list[int]] = field(default_factory=lambda: {label: [0, 0] for *_, label in BUCKETS})

    def add(self, labels: np.ndarray, hits: np.ndarray) -> None:
        sizes = np.maximum(labels[:, 2] - labels[:, 0], labels[:, 3] - labels[:, 1])
        for low, high, label in BUCKETS:
            inside = (sizes >= low) & (sizes < high)
            self.found[label][0] += int(hits[inside].sum())
            self.found[label][1] += int(inside.sum())


PHOTO_SCALES = (1.0, 0.5, 0.35)
"""The photos' faces are all 24 px or more: each photo is also judged shrunk (INTER_AREA, as a
camera further away would see it), labels scaled alike, to fill the small-face buckets."""

PHOTO_BRIGHTNESS = (1.0, 0.3)
"""And at each size as taken and dimmed (pixel values times 0.3: an underexposed room)."""


def photo_recall() -> tuple[dict[str, RecallCounts], int, dict[str, int]]:
    """Recall per detector on every labelled photo, at each of ``PHOTO_SCALES`` and ``PHOTO_BRIGHTNESS``."""
    normal, high = FaceFinder(recall="normal"), FaceFinder(recall="high")
    detectors = {
        "MediaPipe": lambda image: normal.detect(image).boxes,
        "CenterFace": lambda image: high.recall_detector.detect(image).boxes,
        "fused": lambda image: high.detect(image).boxes,
    }
    counts = {name: RecallCounts() for name in detectors}
    photos = labelled_photos()
    for photo in photos:
        original = read_rgb(photo.path)
        for scale in PHOTO_SCALES:
            size = (round(original.shape[1] * scale), round(original.shape[0] * scale))
            shrunk, labels = cv2.resize(original, size, interpolation=cv2.INTER_AREA), photo.boxes * scale
            for brightness in PHOTO_BRIGHTNESS:
                image = (shrunk * brightness).round().astype(np.uint8)
                for name, detect in detectors.items():
                    counts[name].add(labels, found_labels(labels, detect(image)))
    solvay = read_rgb(PHOTOS / "solvay1927.jpg")
    found = {name: len(detect(solvay)) for name, detect in detectors.items()}
    normal.close()
    high.close()
    return counts, len(photos), found


def recall_table(counts: dict[str, RecallCounts]) -> list[str]:
    labels = [label for *_, label in BUCKETS]
    lines = ["| detector | " + " | ".join(f"{label} px" for label in labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, count in counts.items():
        cells = [f"{f}/{n} ({100 * f / n:.0f} %)" if n else "-" for f, n in (count.found[label] for label in labels)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


@dataclass(slots=True)
class VideoResidual:
    video: str
    method: str
    recall: str
    input_faces: int  # YuNet-0.6 faces in the input frames
    residual: int  # of those, YuNet 0.6 still finds in the output (IoU ≥ 0.3)
    leaks: int  # output faces dlib matches to the original at a real face (any judge)
    untouched: int  # of those, pixels left as they were
    seconds: float


def video_residual(video: Path, method: str, recall: str, judges: Judges, yunet: YuNet) -> VideoResidual:
    RUNS.mkdir(parents=True, exist_ok=True)
    output = RUNS / f"{video.stem}.{method}.{recall}.mp4"
    started = time.perf_counter()
    dpstream.anonymize(video, output, method=method, detector_recall=recall, overwrite=True, ledger=str(RUNS / "ledger.json"))
    cache = DescriptorCache(RUNS / f"{video.stem}.descriptors.npz")
    result = VideoResidual(video.name, method, recall, 0, 0, 0, 0, 0.0)
    for index, (original, anonymized) in enumerate(zip(decoded_frames(video), decoded_frames(output))):
        before, after = yunet.detect(original).boxes, yunet.detect(anonymized).boxes
        result.input_faces += len(before)
        if len(before) and len(after):
            result.residual += int((box_iou(before, after) >= IOU_FOUND).any(axis=1).sum())
        found = leaks_in_frame(judges, cache, index, original, anonymized)
        result.leaks += max(found.leaks.values(), default=0)
        result.untouched += found.unprocessed
    cache.save()
    result.seconds = time.perf_counter() - started
    return result


def residual_table(results: list[VideoResidual]) -> list[str]:
    lines = [
        "| video | method | detector_recall | YuNet-0.6 faces in input | still found in output | leaks (dlib match) | of them untouched |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        share = 100 * r.residual / max(r.input_faces, 1)
        lines.append(f"| {r.video} | {r.method} | {r.recall} | {r.input_faces} | {r.residual} ({share:.1f} %) | {r.leaks} | {r.untouched} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "photos", "videos"), default="all")
    parser.add_argument("--videos", default=None, help="comma-separated shared video names (default: all)")
    parser.add_argument("--methods", default="blur,dp")
    parser.add_argument("--recall", default="normal,high", help="detector_recall values to compare")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    lines = ["# Detection recall (tools/evaluate_recall.py)", "", f"Command: `python tools/evaluate_recall.py {shlex.join(sys.argv[1:])}`", ""]
    if args.part in ("all", "photos"):
        counts, photos, solvay = photo_recall()
        lines += [
            f"## Labelled photos ({photos} dlib_faces photos at scales {PHOTO_SCALES} and brightness {PHOTO_BRIGHTNESS}), "
            f"recall at IoU {IOU_FOUND} by face size", "", *recall_table(counts), "",
            "solvay1927.jpg (29 faces, no labelled boxes): faces found: "
            + ", ".join(f"{name} {count}" for name, count in solvay.items()), "",
        ]  # fmt: skip
        print("\n".join(lines[-8:]))
    if args.part in ("all", "videos"):
        names = args.videos.split(",") if args.videos else sorted(p.name for p in VIDEOS.glob("*"))
        judges, yunet = Judges.load(), YuNet(score=RESIDUAL_YUNET_SCORE, max_side=4096)
        results = []
        for name in names:
            for method in args.methods.split(","):
                for recall in args.recall.split(","):
                    results.append(video_residual(VIDEOS / name, method, recall, judges, yunet))
                    print(residual_table(results[-1:])[-1], flush=True)
        lines += ["## Shared videos: faces the judges still find in the output", "", *residual_table(results), "", *RESIDUAL_NOTES, ""]
    lines.append(f"Run time {time.perf_counter() - started:.0f} s.")
    if not args.no_report:
        REPORT.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
