"""Tracking and leak evaluation of the whole pipeline.

1. Synthetic sequences (``tools/synthetic_sequences.py``, exact ground truth): each preset is
   written as an H.264 file and run through ``dpstream.anonymize`` (so the file-mode path, with
   whatever look-ahead it has, is what gets measured). Per scenario: CLEAR-MOT (MOTA, id
   switches), IDF1, and GT face-frames left un-anonymized, plus fallbacks.
2. Every shared real video (``../shared/data/videos``), anonymized with each method: YuNet and
   UltraFace run on every output frame; a face they find is a *leak* when the original has a
   real face at that place (YuNet at its default 0.9 or dlib's HOG detector finds one) and
   dlib's descriptor of the found box in the output matches the descriptor of that real face
   (at its own box) in the original frame (distance < 0.6): the same person is still
   recognizable at the same place. (The original face is described at its own box because a
   judge's box on the output can be far off the face: UltraFace boxes a blurred oval together
   with the neck.) Face-like things at places without a real face (the skull printed on a
   shirt in ``asl_again``) are compared box to box and reported apart. Leaked faces whose pixels the pipeline left as they
   were (a missed face) are counted apart from replaced or blurred faces dlib still matches.

Matching (both metrics): a GT face and an output face correspond when the IoU of their boxes is
≥ 0.5. GT box: bounding box of the GT face mesh, clipped to the frame. Output box: bounding box
of the output face's mesh (its detection box when it has no mesh). A GT face less than
``MIN_VISIBILITY`` visible (occluded or off screen) is "don't care": it is neither a miss nor
does an output face on it count as a false positive.

Un-anonymized (strict): a GT face-frame with at least ``MIN_VISIBLE_POINTS`` of its inner-face
key points visible (eye corners, iris centres, nose tip, mouth corners, lips; in the frame and
not covered by a face in front) where any visible key point lies outside every region the
replacer processed (``dpstream.regions.face_region`` of each output face at the run's
``face_margin``; the fallback's region is larger, so this is conservative). Cross-check by
pixels: how many of those points have output == input in their 3x3 neighbourhood, and how many
covered points were left unchanged all the same (a region claimed but not processed).

    python tools/evaluate_tracking.py                      # everything (see tools/README.md for time)
    python tools/evaluate_tracking.py --part synthetic     # synthetic sequences only (~2 min)
    python tools/evaluate_tracking.py --part leaks --stride 10 --videos talking_720p_s18.mp4   # a quick look
    python tools/evaluate_tracking.py --part leaks --videos closeup_512_d3.mp4 --methods dp --draws 6 --no-report
                                                           # how the dp leak count varies with the noise draw

Writes ``benchmarks/results/tracking_eval.md`` (with the command and run time) unless
``--no-report``; caches dlib descriptors of original frames in ``tools/_runs/tracking_eval/``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from scipy.optimize import linear_sum_assignment

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import dpstream  # noqa: E402
from dpstream.config import Config, load_config  # noqa: E402
from dpstream.regions import face_region  # noqa: E402
from dpstream.types import Faces, ReplacedFrame  # noqa: E402
from dpstream.tracker import box_iou, overlap_of_smaller  # noqa: E402
from tools.judges import DLIB_SAME_PERSON, SHARED, DlibHog, DlibRecognizer, UltraFace, YuNet  # noqa: E402
from tools.synthetic_sequences import PRESETS, FrameTruth, Scenario, write_video  # noqa: E402

IOU_MATCH = 0.5
MIN_VISIBILITY = 0.5
"""GT faces less visible than this are "don't care" for MOTA and IDF1."""
MIN_VISIBLE_POINTS = 3
"""A GT face shows an identifiable inner face when at least this many inner key points are visible."""
LEAK_YUNET_SCORE = 0.6
LEAK_ULTRAFACE_SCORE = 0.7
CONFIRM_YUNET_SCORE = 0.9
"""A leak needs a real face at that place of the original: YuNet at this score (its default; lower
fires on fists and prints) or dlib's HOG detector finds one there."""
RUNS = REPO_ROOT / "tools" / "_runs" / "tracking_eval"
REPORT = REPO_ROOT / "benchmarks" / "results" / "tracking_eval.md"
VIDEOS = SHARED / "data" / "videos"


# ---------------------------------------------------------------- tracking metrics


@dataclass(slots=True)
class FrameBoxes:
    """Boxes of one frame with their ids (GT person ids or output track ids)."""

    ids: np.ndarray  # (N,) int
    boxes: np.ndarray  # (N, 4) float x0, y0, x1, y1
    ignore: np.ndarray | None = None  # (N,) bool, GT only: "don't care" faces


@dataclass(slots=True)
class TrackingScores:
    """CLEAR-MOT and IDF1 over a sequence, with the frames of every error."""

    gt: int = 0  # GT face-frames that count
    predictions: int = 0  # output faces that count (those on "don't care" GT removed)
    matches: int = 0
    misses: int = 0
    false_positives: int = 0
    id_switches: int = 0
    idtp: int = 0
    switch_events: list[tuple[int, int, int, int]] = field(default_factory=list)  # frame, gt id, old, new track
    miss_frames: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # gt id -> frames
    false_positive_frames: list[int] = field(default_factory=list)

    @property
    def mota(self) -> float:
        return 1.0 - (self.misses + self.false_positives + self.id_switches) / max(self.gt, 1)

    @property
    def idf1(self) -> float:
        return 2 * self.idtp / max(self.gt + self.predictions, 1)


def score_tracking(truth: list[FrameBoxes], output: list[FrameBoxes], iou_min: float = IOU_MATCH) -> TrackingScores:
    """CLEAR-MOT (matches kept from earlier frames while IoU ≥ ``iou_min``, the rest by Hungarian
    on IoU; an id switch when a GT face's track differs from its last matched track) and IDF1
    (one-to-one GT id ↔ track id assignment maximizing frames with IoU ≥ ``iou_min``)."""
    scores = TrackingScores()
    last_track: dict[int, int] = {}
    pair_frames: dict[tuple[int, int], int] = defaultdict(int)
    for frame, (gt, out) in enumerate(zip(truth, output, strict=True)):
        ignore = gt.ignore if gt.ignore is not None else np.zeros(len(gt.ids), bool)
        iou = box_iou(np.asarray(gt.boxes, np.float32).reshape(-1, 4), np.asarray(out.boxes, np.float32).reshape(-1, 4))
        pairs = _frame_matches(gt.ids, out.ids, iou, last_track, iou_min)
        matched_out = {p for _, p in pairs}
        absorbed = {p for g, p in pairs if ignore[g]}
        for g, p in pairs:
            if ignore[g]:
                continue
            person, track = int(gt.ids[g]), int(out.ids[p])
            scores.matches += 1
            if person in last_track and last_track[person] != track:
                scores.id_switches += 1
                scores.switch_events.append((frame, person, last_track[person], track))
            last_track[person] = track
        for g in set(range(len(gt.ids))) - {g for g, _ in pairs}:
            if not ignore[g]:
                scores.misses += 1
                scores.miss_frames[int(gt.ids[g])].append(frame)
        unmatched_out = set(range(len(out.ids))) - matched_out
        for p in list(unmatched_out):  # an output face on a don't-care GT face is not an error
            if any(iou[g, p] >= iou_min for g in np.flatnonzero(ignore)):
                absorbed.add(p)
        false_positives = len(unmatched_out - absorbed)
        scores.false_positives += false_positives
        scores.false_positive_frames += [frame] * false_positives
        counted_gt = np.flatnonzero(~ignore)
        scores.gt += len(counted_gt)
        scores.predictions += len(out.ids) - len(absorbed)
        for g in counted_gt:
            for p in set(range(len(out.ids))) - absorbed:
                if iou[g, p] >= iou_min:
                    pair_frames[(int(gt.ids[g]), int(out.ids[p]))] += 1
    scores.idtp = _best_id_assignment(pair_frames)
    scores.miss_frames = dict(scores.miss_frames)
    return scores


def _frame_matches(gt_ids, out_ids, iou, last_track, iou_min) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    track_index = {int(t): p for p, t in enumerate(out_ids)}
    for g, person in enumerate(gt_ids):  # keep last correspondences that still overlap
        p = track_index.get(last_track.get(int(person), -10**9))
        if p is not None and iou[g, p] >= iou_min and all(p != q for _, q in pairs):
            pairs.append((g, p))
    free_gt = [g for g in range(len(gt_ids)) if all(g != h for h, _ in pairs)]
    free_out = [p for p in range(len(out_ids)) if all(p != q for _, q in pairs)]
    if free_gt and free_out:
        sub = iou[np.ix_(free_gt, free_out)]
        rows, cols = linear_sum_assignment(-sub)
        pairs += [(free_gt[r], free_out[c]) for r, c in zip(rows, cols) if sub[r, c] >= iou_min]
    return pairs


def _best_id_assignment(pair_frames: dict[tuple[int, int], int]) -> int:
    if not pair_frames:
        return 0
    people = sorted({g for g, _ in pair_frames})
    tracks = sorted({t for _, t in pair_frames})
    counts = np.zeros((len(people), len(tracks)))
    for (g, t), n in pair_frames.items():
        counts[people.index(g), tracks.index(t)] = n
    rows, cols = linear_sum_assignment(-counts)
    return int(counts[rows, cols].sum())


# ---------------------------------------------------------------- un-anonymized faces


def output_boxes(faces: Faces, shape: tuple[int, ...]) -> np.ndarray:
    """(N, 4) each output face's mesh bounding box (its detection box when it has no mesh),
    clipped to the frame like the GT boxes."""
    boxes = np.array(faces.boxes, np.float32).reshape(-1, 4)
    has_mesh = faces.has_mesh()
    if has_mesh.any():
        mesh = faces.landmarks[has_mesh]
        boxes[has_mesh] = np.concatenate([mesh.min(1), mesh.max(1)], 1)
    height, width = shape[:2]
    return np.clip(boxes, 0, np.array([width, height, width, height], np.float32))


def processed_mask(faces: Faces, margin: float, shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) bool: pixels inside any region the replacer processed."""
    mask = np.zeros(shape[:2], bool)
    for box, landmarks in zip(faces.boxes, faces.landmarks):
        region = face_region(box, landmarks, margin, shape)
        if region is not None:
            mask[region.slices()] |= region.mask >= 128
    return mask


@dataclass(slots=True)
class Exposure:
    """GT face-frames left un-anonymized in one frame."""

    people: list[int]  # GT person ids with an uncovered visible inner key point
    unchanged_points: int  # of their uncovered points, how many have output == input around them
    shown: int  # GT faces with an identifiable inner face on screen
    covered_unchanged_points: int = 0  # covered points whose pixels the replacer did not change


def exposed_faces(truth: FrameTruth, faces: Faces, margin: float, original: np.ndarray, output: np.ndarray) -> Exposure:
    covered = processed_mask(faces, margin, original.shape)
    height, width = covered.shape
    exposure = Exposure([], 0, 0)
    for person, points, visible in zip(truth.person_ids, truth.inner_points, truth.inner_visible):
        if visible.sum() < MIN_VISIBLE_POINTS:
            continue
        exposure.shown += 1
        xs = np.clip(points[visible, 0].astype(int), 0, width - 1)
        ys = np.clip(points[visible, 1].astype(int), 0, height - 1)
        uncovered = ~covered[ys, xs]
        unchanged = np.array([_unchanged(original, output, x, y) for x, y in zip(xs, ys)], bool)
        exposure.covered_unchanged_points += int((unchanged & ~uncovered).sum())
        if uncovered.any():
            exposure.people.append(int(person))
            exposure.unchanged_points += int((unchanged & uncovered).sum())
    return exposure


def _unchanged(original: np.ndarray, output: np.ndarray, x: int, y: int) -> bool:
    """Output == input in the 3x3 neighbourhood of pixel (x, y)."""
    window = np.s_[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
    return bool(np.array_equal(original[window], output[window]))


# ---------------------------------------------------------------- synthetic sequences


@dataclass(slots=True)
class SequenceResult:
    scenario: str
    method: str
    frames: int
    scores: TrackingScores
    shown_faces: int  # GT face-frames with an identifiable inner face on screen
    unanonymized: dict[int, list[int]]  # GT person id -> frames
    unchanged_points: int
    covered_unchanged_points: int
    fallbacks: int
    seconds: float
    ledger: dict | None = None

    @property
    def unanonymized_count(self) -> int:
        return sum(len(frames) for frames in self.unanonymized.values())


def decoded_frames(path: Path) -> Iterator[np.ndarray]:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def evaluate_sequence(scenario: Scenario, workdir: Path, config: Config | None = None, **options) -> SequenceResult:
    """Write the scenario to a video, anonymize it with ``dpstream.anonymize`` and score the result."""
    config = config or load_config(None, **options)
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"{scenario.name}.mp4"
    output = workdir / f"{scenario.name}.{config.method}.mp4"
    truths = write_video(scenario, source)
    originals = decoded_frames(source)
    truth_boxes: list[FrameBoxes] = []
    output_tracks: list[FrameBoxes] = []
    unanonymized: dict[int, list[int]] = defaultdict(list)
    totals = {"shown": 0, "unchanged": 0, "covered_unchanged": 0, "fallbacks": 0}
    original: dict[str, object] = {"index": -1, "image": None}  # the decoded input, read in step

    def on_frame(result: ReplacedFrame, summary) -> None:
        while original["index"] < result.frame.index:
            original["image"], original["index"] = next(originals), original["index"] + 1
        truth = truths[result.frame.index]
        exposure = exposed_faces(truth, result.faces, config.face_margin, original["image"], result.frame.image)
        for person in exposure.people:
            unanonymized[person].append(truth.index)
        totals["shown"] += exposure.shown
        totals["unchanged"] += exposure.unchanged_points
        totals["covered_unchanged"] += exposure.covered_unchanged_points
        totals["fallbacks"] += result.fallbacks
        truth_boxes.append(FrameBoxes(truth.person_ids, truth.boxes, truth.visibility < MIN_VISIBILITY))
        output_tracks.append(FrameBoxes(result.faces.track_ids.copy(), output_boxes(result.faces, result.frame.image.shape)))

    started = time.perf_counter()
    summary = dpstream.anonymize(source, output, config=config, overwrite=True, on_frame=on_frame)
    seconds = time.perf_counter() - started
    ledger = json.loads(Path(summary.ledger).read_text()) if summary.ledger else None
    return SequenceResult(
        scenario.name, config.method, summary.frames, score_tracking(truth_boxes, output_tracks),
        totals["shown"], dict(unanonymized), totals["unchanged"], totals["covered_unchanged"], totals["fallbacks"],
        seconds, ledger,
    )


# ---------------------------------------------------------------- leaks on real videos


@dataclass(slots=True)
class LeakResult:
    video: str
    method: str
    frames: int  # frames judged
    detections: dict[str, int]  # judge -> faces found in the output
    leaks: dict[str, int]  # judge -> of those, same person as the original at that place
    leak_frames: list[int]  # frames with a leak by any judge
    fallbacks: int
    seconds: float
    not_faces: int = 0  # found faces matching the original where it has no real face (prints, hands)
    unprocessed: int = 0  # leaks where the face's pixels were left as they were (missed by the pipeline)
    closest: float = float("inf")  # smallest dlib distance original ↔ output on a real face


class DescriptorCache:
    """dlib descriptors of original frames, by (frame, rounded box), kept in ``tools/_runs``."""

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path) as data:
                self.values = {key: data[key] for key in data.files}
        self.dirty = False

    def get(self, recognizer: DlibRecognizer, image: np.ndarray, frame: int, box: np.ndarray) -> np.ndarray:
        key = f"{frame}:" + ",".join(str(int(round(float(v)))) for v in box)
        if key not in self.values:
            self.values[key] = recognizer.descriptor(image, box)
            self.dirty = True
        return self.values[key]

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(self.path, **self.values)
            self.dirty = False


@dataclass
class Judges:
    detectors: dict[str, object]  # run on the output
    recognizer: DlibRecognizer
    confirmers: tuple  # run on the original: is there a real face at that place?

    @classmethod
    def load(cls) -> Judges:
        detectors = {"YuNet": YuNet(score=LEAK_YUNET_SCORE, max_side=4096), "UltraFace": UltraFace(score=LEAK_ULTRAFACE_SCORE)}
        return cls(detectors, DlibRecognizer(), (YuNet(score=CONFIRM_YUNET_SCORE, max_side=4096), DlibHog()))

    def original_face_at(self, original: np.ndarray, box: np.ndarray, found: dict[int, np.ndarray]) -> np.ndarray | None:
        """The box of the face a confident YuNet or dlib's HOG detector finds at ``box`` of the
        original frame, or None (``found`` caches each confirmer's boxes for this frame)."""
        for index, confirmer in enumerate(self.confirmers):
            if index not in found:
                found[index] = confirmer.detect(original).boxes
            if len(found[index]):
                overlaps = overlap_of_smaller(found[index], box[None])[:, 0]
                if overlaps.max() >= 0.5:
                    return found[index][int(np.argmax(overlaps))]
        return None


@dataclass(slots=True)
class FrameLeaks:
    detections: dict[str, int]  # judge -> faces found in the output frame
    leaks: dict[str, int]  # judge -> of those, the original person at a real face's place
    not_faces: int  # same-looking as the original, but no real face there (prints, hands)
    distances: list[float]  # dlib distance original ↔ output of every distinct face found on a real face
    unprocessed: int = 0  # leaks whose pixels were left as they were (a face the pipeline missed)


def leaks_in_frame(
    judges: Judges, cache: DescriptorCache, frame: int, original: np.ndarray, output: np.ndarray,
    originals: dict[int, np.ndarray] | None = None,
) -> FrameLeaks:
    """Faces the judges find in ``output``; a leak when dlib matches the original's face at that
    place and the original has a real face there (``originals``: the confirmers' boxes on this
    original frame, kept by a caller that judges several outputs of it)."""
    found = {name: detector.detect(output) for name, detector in judges.detectors.items()}
    judged: list[tuple[np.ndarray, float, bool]] = []  # boxes judged in this frame, shared by the judges
    originals = {} if originals is None else originals
    result = FrameLeaks({}, {}, 0, [])
    limit = np.array([output.shape[1] - 1, output.shape[0] - 1] * 2, np.float32)
    for name, detections in found.items():
        result.detections[name], result.leaks[name] = len(detections), 0
        for box in np.clip(detections.boxes, 0, limit):
            verdict = next(((d, f) for b, d, f in judged if box_iou(b[None], box[None])[0, 0] >= 0.7), None)
            if verdict is None:
                if box[2] - box[0] < 4 or box[3] - box[1] < 4:
                    continue
                face_box = judges.original_face_at(original, box, originals)
                real_face = face_box is not None
                # the original face is described at its own box (a judge's box on the output can
                # be far off: a blurred oval with the neck), the output face at the judge's box
                before = cache.get(judges.recognizer, original, frame, face_box if real_face else box)
                distance = float(np.linalg.norm(before - judges.recognizer.descriptor(output, box)))
                verdict = (distance, real_face)
                judged.append((box, distance, real_face))
                if real_face:
                    result.distances.append(distance)
                    result.unprocessed += int(distance < DLIB_SAME_PERSON and left_as_it_was(original, output, box))
                elif distance < DLIB_SAME_PERSON:
                    result.not_faces += 1
            distance, real_face = verdict
            result.leaks[name] += int(distance < DLIB_SAME_PERSON and real_face)
    return result


UNPROCESSED_MEAN_DIFFERENCE = 4.0
"""A face whose central pixels differ from the original by less than this on average (0..255)
was not processed: only the output's re-encoding changed it."""


def left_as_it_was(original: np.ndarray, output: np.ndarray, box: np.ndarray) -> bool:
    """Whether the centre half of ``box`` is the original's pixels, up to re-encoding noise."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
    window = np.s_[int(cy - h) : int(cy + h) + 1, int(cx - w) : int(cx + w) + 1]
    difference = np.abs(original[window].astype(np.int16) - output[window].astype(np.int16))
    return float(difference.mean()) < UNPROCESSED_MEAN_DIFFERENCE


def evaluate_leaks(video: Path, method: str, judges: Judges, workdir: Path, stride: int = 1) -> LeakResult:
    workdir.mkdir(parents=True, exist_ok=True)
    output = workdir / f"{video.stem}.{method}.mp4"
    started = time.perf_counter()
    summary = dpstream.anonymize(video, output, method=method, overwrite=True, ledger=str(workdir / f"{video.stem}.ledger.json"))
    cache = DescriptorCache(workdir / f"{video.stem}.descriptors.npz")
    result = LeakResult(video.name, method, 0, defaultdict(int), defaultdict(int), [], summary.fallbacks, 0.0)
    for index, (original, anonymized) in enumerate(zip(decoded_frames(video), decoded_frames(output))):
        if index % stride:
            continue
        found = leaks_in_frame(judges, cache, index, original, anonymized)
        result.frames += 1
        for name in found.detections:
            result.detections[name] += found.detections[name]
            result.leaks[name] += found.leaks[name]
        if any(found.leaks.values()):
            result.leak_frames.append(index)
        result.not_faces += found.not_faces
        result.unprocessed += found.unprocessed
        result.closest = min([result.closest, *found.distances])
    cache.save()
    result.detections, result.leaks = dict(result.detections), dict(result.leaks)
    result.seconds = time.perf_counter() - started
    return result


@dataclass(slots=True)
class DlibCalibration:
    """dlib distances between different people of the same original frame: how far apart
    dlib puts two people at this clip's face sizes (two faces of one frame are two people)."""

    video: str
    pairs: int
    closest: float
    below_threshold: int  # pairs dlib would call the same person

    @classmethod
    def measure(cls, video: Path, judges: Judges, workdir: Path, every: int = 5) -> DlibCalibration:
        cache = DescriptorCache(workdir / f"{video.stem}.descriptors.npz")
        finder = judges.detectors["YuNet"]
        distances: list[float] = []
        for index, original in enumerate(decoded_frames(video)):
            if index % every:
                continue
            boxes = finder.detect(original).boxes
            descriptors = [cache.get(judges.recognizer, original, index, box) for box in boxes]
            distances += [
                float(np.linalg.norm(a - b)) for i, a in enumerate(descriptors) for b in descriptors[i + 1 :]
            ]
        cache.save()
        below = sum(d < DLIB_SAME_PERSON for d in distances)
        return cls(video.name, len(distances), min(distances, default=float("inf")), below)


# ---------------------------------------------------------------- report


def frame_runs(frames: list[int]) -> str:
    """``[3, 4, 5, 9]`` → ``"3-5, 9"``."""
    runs: list[list[int]] = []
    for frame in sorted(frames):
        if runs and frame == runs[-1][1] + 1:
            runs[-1][1] = frame
        else:
            runs.append([frame, frame])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def synthetic_table(results: list[SequenceResult]) -> list[str]:
    lines = [
        "| scenario | frames | GT faces (counted) | MOTA | IDF1 | id switches | misses | false pos. | shown faces | un-anonymized | their points with pixels unchanged | covered points with pixels unchanged | fallbacks | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.scores
        lines.append(
            f"| {r.scenario} | {r.frames} | {s.gt} | {s.mota:.3f} | {s.idf1:.3f} | {s.id_switches} | {s.misses} | "
            f"{s.false_positives} | {r.shown_faces} | {r.unanonymized_count} | {r.unchanged_points} | {r.covered_unchanged_points} | "
            f"{r.fallbacks} | {r.seconds:.0f} |"
        )
    shown = sum(r.shown_faces for r in results)
    exposed = sum(r.unanonymized_count for r in results)
    gt = sum(r.scores.gt for r in results)
    idtp = sum(r.scores.idtp for r in results)
    predictions = sum(r.scores.predictions for r in results)
    lines.append(
        f"| **all** | {sum(r.frames for r in results)} | {gt} | - | {2 * idtp / max(gt + predictions, 1):.3f} | "
        f"{sum(r.scores.id_switches for r in results)} | {sum(r.scores.misses for r in results)} | "
        f"{sum(r.scores.false_positives for r in results)} | {shown} | {exposed} ({exposed / max(shown, 1):.2%}) | "
        f"{sum(r.unchanged_points for r in results)} | {sum(r.covered_unchanged_points for r in results)} | "
        f"{sum(r.fallbacks for r in results)} | {sum(r.seconds for r in results):.0f} |"
    )
    return lines


def failure_lines(results: list[SequenceResult]) -> list[str]:
    lines = []
    for r in results:
        s = r.scores
        parts = [f"id switch at frame {f} (person {p}: track {a} → {b})" for f, p, a, b in s.switch_events]
        parts += [f"person {p} missed in frames {frame_runs(frames)}" for p, frames in sorted(s.miss_frames.items())]
        parts += [f"person {p} un-anonymized in frames {frame_runs(frames)}" for p, frames in sorted(r.unanonymized.items())]
        if s.false_positive_frames:
            parts.append(f"false positives in frames {frame_runs(s.false_positive_frames)}")
        if r.ledger is not None:
            totals = r.ledger["totals"]
            parts.append(f"ledger: {totals['people']} people, {totals['draws']} draws, {totals['tracks']} tracks")
        lines.append(f"- {r.scenario}: " + ("; ".join(parts) if parts else "no errors"))
    return lines


def leak_table(results: list[LeakResult]) -> list[str]:
    lines = [
        "| video | method | frames judged | YuNet faces | YuNet leaks | UltraFace faces | UltraFace leaks | frames with a leak | which | of the leaked faces: left unprocessed | matches on no real face | closest dlib distance on a real face | fallbacks | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.video} | {r.method} | {r.frames} | {r.detections.get('YuNet', 0)} | {r.leaks.get('YuNet', 0)} | "
            f"{r.detections.get('UltraFace', 0)} | {r.leaks.get('UltraFace', 0)} | {len(r.leak_frames)} | "
            f"{frame_runs(r.leak_frames) or '-'} | {r.unprocessed} | {r.not_faces} | {'-' if r.closest == float('inf') else f'{r.closest:.3f}'} | {r.fallbacks} | {r.seconds:.0f} |"
        )
    return lines


def calibration_table(calibrations: list[DlibCalibration]) -> list[str]:
    lines = [
        "| video | pairs of different people (every 5th frame) | closest dlib distance | pairs under 0.6 |",
        "|---|---|---|---|",
    ]
    for c in calibrations:
        if c.pairs:
            lines.append(f"| {c.video} | {c.pairs} | {c.closest:.3f} | {c.below_threshold} ({c.below_threshold / c.pairs:.0%}) |")
    return lines


def target_lines(synthetic: list[SequenceResult], leaks: list[LeakResult]) -> list[str]:
    """The measured figures next to the targets (un-anonymized ≤ 0.1 %, IDF1 ≥ 0.9, no leaks)."""
    lines = ["Against the targets:", ""]
    if synthetic:
        shown = sum(r.shown_faces for r in synthetic)
        exposed = sum(r.unanonymized_count for r in synthetic)
        gt = sum(r.scores.gt for r in synthetic)
        idf1 = 2 * sum(r.scores.idtp for r in synthetic) / max(gt + sum(r.scores.predictions for r in synthetic), 1)
        lines.append(f"- synthetic, GT face-frames un-anonymized: {exposed}/{shown} = {exposed / max(shown, 1):.2%} (target ≤ 0.1 %)")
        lines.append(f"- synthetic, IDF1 over all sequences: {idf1:.3f} (target ≥ 0.9)")
    for method in dict.fromkeys(r.method for r in leaks):
        of_method = [r for r in leaks if r.method == method]
        leaked = [f"{r.video} {len(r.leak_frames)}" for r in of_method if r.leak_frames]
        lines.append(
            f"- real videos, frames with a leak, `{method}`: {sum(len(r.leak_frames) for r in of_method)} "
            f"({', '.join(leaked) or 'none'}) (target 0)"
        )
    return lines + [""]


def write_report(
    synthetic: list[SequenceResult],
    leaks: list[LeakResult],
    calibrations: list[DlibCalibration],
    command: str,
    seconds: float,
    stride: int,
) -> None:
    lines = [
        "# Tracking and leak evaluation",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min on the 2-core development machine, shared with other work).",
        "Definitions: `tools/evaluate_tracking.py` (module docstring). Matching at IoU ≥ 0.5 of mesh boxes; GT faces "
        f"under {MIN_VISIBILITY:.0%} visible are \"don't care\"; un-anonymized = a GT face showing ≥ {MIN_VISIBLE_POINTS} "
        "inner key points with any of them outside every processed region.",
        "",
    ] + target_lines(synthetic, leaks)
    if synthetic:
        lines += ["## Synthetic sequences (LFW eval faces over real backgrounds, default config)", ""]
        lines += synthetic_table(synthetic) + ["", "Errors by frame:", ""] + failure_lines(synthetic) + [""]
    if leaks:
        lines += [
            "## Leaks on the shared real videos",
            "",
            f"Judges: YuNet (score ≥ {LEAK_YUNET_SCORE}, full resolution) and UltraFace RFB-320 (score ≥ "
            f"{LEAK_ULTRAFACE_SCORE}) on {'every' if stride == 1 else f'every {stride}th'} output frame; a leak is a "
            "found face whose dlib descriptor is within 0.6 of the original frame's descriptor of the same box, at a place "
            f"where the original has a real face (YuNet ≥ {CONFIRM_YUNET_SCORE} or dlib's HOG detector finds one there); "
            "matches where the original has no real face (a printed skull on a shirt, hands) are counted apart. "
            f"\"Left unprocessed\": leaked faces whose central pixels differ from the original by < "
            f"{UNPROCESSED_MEAN_DIFFERENCE:g}/255 on average (missed by the pipeline); the other leaks are replaced "
            "or blurred faces that dlib still matches.",
            "",
        ]
        lines += leak_table(leaks) + [""]
        lines += [
            "dlib's own error at these face sizes: distances between two different people of the same original frame "
            f"(YuNet ≥ {LEAK_YUNET_SCORE} faces); pairs under 0.6 are people dlib cannot tell apart on that clip.",
            "",
        ]
        lines += calibration_table(calibrations) + [""]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines), encoding="utf-8")


def shared_video_names(option: str, parser: argparse.ArgumentParser) -> list[str]:
    """The ``--videos`` names (comma-separated; empty: every shared video), each checked to exist."""
    names = option.split(",") if option else sorted(p.name for p in VIDEOS.iterdir())
    for name in names:
        if not (VIDEOS / name).is_file():
            parser.error(f"--videos: {VIDEOS / name} not found")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "synthetic", "leaks"), default="all")
    parser.add_argument("--scenarios", default=",".join(PRESETS), help="synthetic presets (comma-separated)")
    parser.add_argument("--videos", default="", help="shared video names (comma-separated; default all)")
    parser.add_argument("--methods", default="dp,blur", help="methods for the leak count")
    parser.add_argument("--stride", type=int, default=1, help="judge every Nth output frame (the reported figure uses 1)")
    parser.add_argument("--draws", type=int, default=1, help="runs per clip and method (dp: a new noise draw each run)")
    parser.add_argument("--no-report", action="store_true", help=f"print only, do not write {REPORT.relative_to(REPO_ROOT)}")
    args = parser.parse_args()
    started = time.perf_counter()
    synthetic: list[SequenceResult] = []
    leaks: list[LeakResult] = []
    calibrations: list[DlibCalibration] = []
    if args.part in ("all", "synthetic"):
        for name in args.scenarios.split(","):
            if name not in PRESETS:
                parser.error(f"--scenarios: unknown {name!r}, expected some of {', '.join(PRESETS)}")
            synthetic.append(evaluate_sequence(PRESETS[name], RUNS / "synthetic"))
            print("\n".join(synthetic_table(synthetic)[-2:-1]), flush=True)
        print("\n".join(synthetic_table(synthetic) + failure_lines(synthetic)), flush=True)
    if args.part in ("all", "leaks"):
        judges = Judges.load()
        for name in shared_video_names(args.videos, parser):
            for method in args.methods.split(","):
                for draw in range(args.draws):
                    leaks.append(evaluate_leaks(VIDEOS / name, method, judges, RUNS / "leaks", args.stride))
                    if args.draws > 1:
                        leaks[-1].method = f"{method} (run {draw + 1})"
                    print(leak_table(leaks)[-1], flush=True)
            calibrations.append(DlibCalibration.measure(VIDEOS / name, judges, RUNS / "leaks"))
        print("\n".join(leak_table(leaks) + calibration_table(calibrations)), flush=True)
    seconds = time.perf_counter() - started
    if not args.no_report:
        command = "python tools/evaluate_tracking.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        write_report(synthetic, leaks, calibrations, command.strip(), seconds, args.stride)
        print(f"-> {REPORT}")


if __name__ == "__main__":
    main()
