"""Face finding: MediaPipe detection (full-range on the frame, short-range on tiles), with
CenterFace's faces added at ``detector_recall: high``, then a face-mesh fit on each face."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import mediapipe as mp
import numpy as np

from dpstream.errors import ConfigError
from dpstream.face_mesh import FaceMesh
from dpstream.recall_detector import CenterFace
from dpstream.tracker import overlap_of_smaller
from dpstream.types import Detections, Faces, VideoFrame

DUPLICATE_OVERLAP = 0.5
"""Two detections are the same face when the intersection covers this much of the smaller box."""

TILE_TRUSTED_SCORE = 0.75
"""Out-of-focus backgrounds give the short-range tile detector large low-score false faces.
A tile-only face below this score is kept only when the full-range detector, run on a close-up
crop, confirms it."""

CONFIRM_CROP_SCALE = 3.0
NEAR_CROP_SCALE = 3.0
RECALL_LEVELS = ("normal", "high")
"""A tracked face lost from its search box is looked for in a crop this many times that box."""


class FaceFinder:
    """Finds every face of a frame: boxes and scores, and 468 landmarks where the mesh fits.

    The full-range detector runs on the whole frame; the short-range detector then runs on
    overlapping square tiles (``tile_levels``: n tiles across the frame's short side, per level)
    where small and dim faces that the full-range model misses appear large. The mesh is fitted
    in a level region around each detection (``FaceMesh``). At ``recall="high"`` CenterFace
    (``CenterFace``) also runs on the frame; its faces that no MediaPipe box covers are added.
    """

    def __init__(self, min_score: float = 0.5, tile_levels: tuple[int, ...] = (1, 2), recall: str = "normal"):
        if recall not in RECALL_LEVELS:
            raise ConfigError(f"detector_recall: must be one of {', '.join(RECALL_LEVELS)}, got {recall!r}")
        self.tile_levels = tile_levels
        self.recall_detector = CenterFace() if recall == "high" else None
        with native_stderr_silenced():
            self._full_range = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=min_score
            )
            self._short_range = mp.solutions.face_detection.FaceDetection(
                model_selection=0, min_detection_confidence=min_score
            )
            # MediaPipe's native code logs its set-up on the first inference: run one now.
            self._full_range.process(np.zeros((64, 64, 3), np.uint8))
            self._short_range.process(np.zeros((64, 64, 3), np.uint8))
            self.mesh = FaceMesh()  # LiteRT logs its CPU delegate when it sets up

    def find(self, frame: VideoFrame) -> Faces:
        """Every face of the frame, with fitted meshes (see ``meshed``)."""
        return self.meshed(frame.image, self.detect(frame.image))

    def meshed(self, image: np.ndarray, found: Detections) -> Faces:
        """The detected faces with meshes; a face's box is its mesh's box. A mesh that landed on
        another face in the crop is dropped (NaN: the detection box is covered, fail closed)."""
        if not len(found):
            return Faces.empty()
        boxes = found.boxes.copy()
        landmarks = np.stack([self.mesh.fit_box(image, box, angle) for box, angle in zip(boxes, found.angles)])
        for index, box in enumerate(boxes):
            if not np.isnan(landmarks[index]).any() and not same_face(mesh_boxes(landmarks[index][None])[0], box):
                landmarks[index] = np.nan
        has_mesh = ~np.isnan(landmarks).any(axis=(1, 2))
        boxes[has_mesh] = mesh_boxes(landmarks[has_mesh])
        return Faces(boxes, found.scores, landmarks)

    def detect(self, image: np.ndarray) -> Detections:
        """Every face found in the image: MediaPipe's, and CenterFace's at ``detector_recall: high``."""
        found = self.detect_mediapipe(image)
        return found if self.recall_detector is None else with_recall(found, self.recall_detector.detect(image))

    def detect_mediapipe(self, image: np.ndarray, tiled: bool = True, tile_part: tuple[int, int] | None = None) -> Detections:
        """The faces MediaPipe's detectors find in the image (full frame, and tiles if ``tiled``;
        ``tile_part`` (k, n): only every n-th tile from the k-th)."""
        height, width = image.shape[:2]
        boxes, scores, angles = _detect(self._full_range, image, 0, 0)
        trusted = [True] * len(boxes)
        chosen = tiles(height, width, self.tile_levels if tiled else ())
        if tile_part is not None:
            chosen = chosen[tile_part[0] :: tile_part[1]]
        for x0, y0, x1, y1 in chosen:
            tile_boxes, tile_scores, tile_angles = _detect(self._short_range, image[y0:y1, x0:x1], x0, y0)
            boxes += tile_boxes
            scores += tile_scores
            angles += tile_angles
            trusted += [score >= TILE_TRUSTED_SCORE for score in tile_scores]
        kept, groups = merge_duplicates(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32))
        kept = [
            index
            for index, group in zip(kept, groups)
            if any(trusted[i] for i in group) or self._confirmed_close_up(image, boxes[index])
        ]
        box_array = np.asarray(boxes, np.float32).reshape(-1, 4)[kept]
        score_array, angle_array = np.asarray(scores, np.float32)[kept], np.asarray(angles, np.float32)[kept]
        box_array[:, 0::2] = box_array[:, 0::2].clip(0, width)
        box_array[:, 1::2] = box_array[:, 1::2].clip(0, height)
        return Detections(box_array, score_array, angle_array)

    def detect_near(self, image: np.ndarray, box: np.ndarray) -> Detections:
        """Faces found by the short-range detector in a square crop ``NEAR_CROP_SCALE`` times ``box``."""
        crop, left, top = _square_crop(image, box, NEAR_CROP_SCALE)
        boxes, scores, angles = _detect(self._short_range, crop, left, top)
        return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(angles, np.float32))

    def _confirmed_close_up(self, image: np.ndarray, box: np.ndarray) -> bool:
        """A second opinion on a low-score tile detection: the full-range detector, run on a
        crop where the face is large, must also see a face there."""
        crop, left, top = _square_crop(image, box, CONFIRM_CROP_SCALE)
        found, _, _ = _detect(self._full_range, crop, 0, 0)
        x0, y0, x1, y1 = box
        center = ((x0 + x1) / 2 - left, (y0 + y1) / 2 - top)
        return any(bx0 <= center[0] <= bx1 and by0 <= center[1] <= by1 for bx0, by0, bx1, by1 in found)

    def close(self) -> None:
        self._full_range.close()
        self._short_range.close()


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: MediaPipe's C++ start-up logging bypasses Python."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def _detect(detector, image: np.ndarray, left: int, top: int) -> tuple[list, list, list]:
    """Boxes (frame pixels), scores and eye-line angles of one MediaPipe detector run on ``image``."""
    height, width = image.shape[:2]
    result = detector.process(np.ascontiguousarray(image))
    boxes, scores, angles = [], [], []
    for detection in result.detections or []:
        rel = detection.location_data.relative_bounding_box
        x0, y0 = left + rel.xmin * width, top + rel.ymin * height
        boxes.append((x0, y0, x0 + rel.width * width, y0 + rel.height * height))
        scores.append(detection.score[0])
        right_eye, left_eye = detection.location_data.relative_keypoints[:2]
        angles.append(float(np.arctan2((left_eye.y - right_eye.y) * height, (left_eye.x - right_eye.x) * width)))
    return boxes, scores, angles


def with_recall(found: Detections, recall: Detections) -> Detections:
    """``found`` and the faces of ``recall`` (CenterFace's) that none of ``found`` covers."""
    new = ~(overlap_of_smaller(recall.boxes, found.boxes) >= DUPLICATE_OVERLAP).any(axis=1)
    return Detections(
        np.concatenate([found.boxes, recall.boxes[new]]),
        np.concatenate([found.scores, recall.scores[new]]),
        np.concatenate([found.angles, recall.angles[new]]),
    )


MIN_TILE_SIDE = 16
"""Tiles smaller than this hold no face the detectors could find (a tiny frame has no tiles)."""


def tiles(height: int, width: int, levels: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Overlapping square tiles (x0, y0, x1, y1): at level n, tiles 1.25/n of the short side."""
    result: list[tuple[int, int, int, int]] = []
    for level in levels:
        side = min(int(min(height, width) / level * 1.25), height, width)
        if side < MIN_TILE_SIDE:
            continue
        rows = np.unique(np.linspace(0, height - side, max(1, int(np.ceil(height / (side * 0.8))))).astype(int))
        cols = np.unique(np.linspace(0, width - side, max(1, int(np.ceil(width / (side * 0.8))))).astype(int))
        result += [(x, y, x + side, y + side) for y in rows for x in cols if (x, y, x + side, y + side) not in result]
    return result


def merge_duplicates(boxes: np.ndarray, scores: np.ndarray) -> tuple[list[int], list[list[int]]]:
    """One box per face: indices of the best-scoring box of each group of boxes that largely
    overlap, and each group's members."""
    same_face = overlap_of_smaller(boxes, boxes) >= DUPLICATE_OVERLAP
    kept: list[int] = []
    groups: list[list[int]] = []
    for index in np.argsort(-scores):
        for kept_index, group in zip(kept, groups):
            if same_face[index, kept_index]:
                group.append(int(index))
                break
        else:
            kept.append(int(index))
            groups.append([int(index)])
    return kept, groups


def mesh_boxes(landmarks: np.ndarray) -> np.ndarray:
    """(N, 4) bounding boxes of (N, 468, 2) meshes."""
    return np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1).astype(np.float32)


def same_face(a: np.ndarray, b: np.ndarray) -> bool:
    """The intersection of boxes ``a`` and ``b`` covers ``DUPLICATE_OVERLAP`` of the smaller one."""
    return bool(overlap_of_smaller(a[None], b[None])[0, 0] >= DUPLICATE_OVERLAP)


def _square_crop(image: np.ndarray, box: np.ndarray, scale: float) -> tuple[np.ndarray, int, int]:
    """A square crop ``scale`` times the box's larger side, centred on the box, and its
    top-left corner in the frame; parts outside the image are black."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * scale
    left, top = int(round((x0 + x1 - side) / 2)), int(round((y0 + y1 - side) / 2))
    size = max(int(round(side)), 8)
    height, width = image.shape[:2]
    crop = np.zeros((size, size, 3), np.uint8)
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(left + size, width), min(top + size, height)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = image[sy0:sy1, sx0:sx1]
    return crop, left, top
