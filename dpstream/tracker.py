"""Track ids: the same face keeps the same id from frame to frame (greedy box-overlap matching)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpstream.types import Faces


@dataclass(slots=True)
class Track:
    track_id: int
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    missed: int = 0


class Tracker:
    """Greedy IoU association; a track survives ``max_missed`` frames without a detection.

    Fail-closed hold: while a track survives a missed detection, its last known face is
    returned with the frame's faces, so a face the detector drops for a frame or two is
    still anonymized where it was last seen.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 5):
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.tracks: list[Track] = []
        self._next_id = 0

    def update(self, faces: Faces) -> Faces:
        """The frame's faces with track ids set, plus the held faces of tracks missed here."""
        overlaps = box_iou(faces.boxes, np.array([t.box for t in self.tracks]).reshape(-1, 4))
        ids = np.full(len(faces), -1, np.int64)
        matched_tracks: set[int] = set()
        for flat in np.argsort(-overlaps, axis=None):
            face, track = np.unravel_index(flat, overlaps.shape)
            if overlaps[face, track] < self.iou_threshold:
                break
            if ids[face] >= 0 or track in matched_tracks:
                continue
            matched = self.tracks[track]
            ids[face] = matched.track_id
            matched.box, matched.landmarks, matched.score = faces.boxes[face], faces.landmarks[face], faces.scores[face]
            matched.missed = 0
            matched_tracks.add(int(track))
        for index, track in enumerate(self.tracks):
            if index not in matched_tracks:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        held = [t for t in self.tracks if t.missed > 0]
        for face in np.flatnonzero(ids < 0):
            ids[face] = self._next_id
            self.tracks.append(Track(self._next_id, faces.boxes[face], faces.landmarks[face], faces.scores[face]))
            self._next_id += 1
        faces.track_ids = ids
        if not held:
            return faces
        held_faces = Faces(
            np.array([t.box for t in held], np.float32),
            np.array([t.score for t in held], np.float32),
            np.array([t.landmarks for t in held], np.float32),
            np.array([t.track_id for t in held], np.int64),
        )
        return Faces.concatenate([faces, held_faces])

    def reset(self) -> None:
        """Forget all tracks (e.g. between unrelated images); ids keep counting up."""
        self.tracks = []


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of x0,y0,x1,y1 boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)
