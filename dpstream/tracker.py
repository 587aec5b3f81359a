"""Track ids, motion and landmark smoothing: one stable track per face from frame to frame.

Each track has a constant-velocity Kalman filter on its box (centre and size), so it can be
predicted into the next frame (where the mesh is re-fitted, and where a missed face is held),
and a One-Euro filter on its 468 landmarks (steady when still, no visible lag when moving).
Detections are associated with the tracks' predictions by box overlap and landmark geometry,
one-to-one (Hungarian assignment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from dpstream.types import Faces

MIN_SIMILARITY = 0.25
"""A detection joins a track only when their similarity (see ``association_similarity``) is at least this."""

OCCLUDED_HOLD_SECONDS = 1.0
"""A face lost where a seen face covers a quarter of its predicted place is held this long (it
is probably behind that face and will come out again)."""

LANDMARK_DISTANCE_SCALE = 0.5
"""Mean landmark distance, in face sizes, at which the landmark part of the similarity reaches 0."""


class BoxKalman:
    """Constant-velocity Kalman filter on (centre x, centre y, size); the box keeps its last
    measured aspect ratio. The three axes are independent filters of (position, velocity),
    updated in closed form; noise scales with the face size, so it works at any resolution."""

    def __init__(self, box: np.ndarray, time: float):
        center, size, self.aspect = _box_geometry(box)
        self.position = np.array([*center, size])
        self.velocity = np.zeros(3)
        # per axis: variance of position, covariance, variance of velocity
        self.p_pp = np.full(3, 0.1 * size**2)
        self.p_pv = np.zeros(3)
        self.p_vv = np.full(3, 1.0 * size**2)
        self.time = time

    def predicted_state(self, time: float) -> np.ndarray:
        """(centre x, centre y, size) expected at ``time``."""
        return self.position + self.velocity * max(time - self.time, 0.0)

    def predict(self, time: float) -> None:
        dt = max(time - self.time, 0.0)
        # white-noise acceleration: a face changes speed by up to ~2 sizes/s within a second
        q = (2.0 * max(self.position[2], 1.0)) ** 2
        self.position = self.position + self.velocity * dt
        self.p_pp = self.p_pp + 2 * dt * self.p_pv + dt * dt * self.p_vv + q * dt**3 / 3
        self.p_pv = self.p_pv + dt * self.p_vv + q * dt**2 / 2
        self.p_vv = self.p_vv + q * dt
        self.time = time

    def correct(self, box: np.ndarray) -> None:
        center, size, self.aspect = _box_geometry(box)
        innovation = np.array([*center, size]) - self.position
        total = self.p_pp + (0.03 * size) ** 2
        gain_p, gain_v = self.p_pp / total, self.p_pv / total
        self.position = self.position + gain_p * innovation
        self.velocity = self.velocity + gain_v * innovation
        self.p_pp, self.p_pv, self.p_vv = (
            (1 - gain_p) * self.p_pp,
            (1 - gain_p) * self.p_pv,
            self.p_vv - gain_v * self.p_pv,
        )

    def box(self, state: np.ndarray | None = None) -> np.ndarray:
        cx, cy, size = self.position if state is None else state
        size = max(size, 1.0)
        half_w, half_h = size * math.sqrt(self.aspect) / 2, size / math.sqrt(self.aspect) / 2
        return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], np.float32)


class OneEuroFilter:
    """One-Euro filter (Casiez et al. 2012) on an array of points, per point: a low-pass filter
    whose cutoff rises with the point's speed. Speeds are in face sizes per second."""

    def __init__(self, points: np.ndarray, time: float, min_cutoff: float = 1.0, beta: float = 4.0, d_cutoff: float = 1.0):
        self.value = points.astype(np.float64)
        self.speed = np.zeros(points.shape[:-1])
        self.time = time
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff

    def __call__(self, points: np.ndarray, time: float, face_size: float) -> np.ndarray:
        dt = time - self.time
        if dt <= 0:
            self.value = points.astype(np.float64)
            return self.value.astype(np.float32)
        raw_speed = np.linalg.norm(points - self.value, axis=-1) / (dt * max(face_size, 1.0))
        self.speed += _alpha(self.d_cutoff, dt) * (raw_speed - self.speed)
        alpha = _alpha(self.min_cutoff + self.beta * self.speed, dt)[..., None]
        self.value += alpha * (points - self.value)
        self.time = time
        return self.value.astype(np.float32)


@dataclass(slots=True)
class Track:
    """One face followed over time."""

    track_id: int
    motion: BoxKalman
    smoother: OneEuroFilter | None  # None while the face has no mesh
    landmarks: np.ndarray  # (468, 2) smoothed; NaN without mesh
    score: float
    last_seen: float
    missed: int = 0
    stale: bool = False  # from before a scene cut: held, but never matched again
    occluded: bool = False  # unseen behind another face: held longer
    center_at_seen: np.ndarray = field(default_factory=lambda: np.zeros(2))
    size_at_seen: float = 1.0
    box_at_seen: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))

    def predicted_face(self, time: float) -> tuple[np.ndarray, np.ndarray]:
        """Box and landmarks where the face is expected at ``time`` (landmarks moved and
        scaled with the box)."""
        state = self.motion.predicted_state(time)
        if self.missed:  # unseen: keep moving, but stop growing or shrinking
            state[2] = self.size_at_seen
        box = self.motion.box(state)
        scale = max(state[2], 1.0) / self.size_at_seen
        landmarks = (self.landmarks - self.center_at_seen) * scale + state[:2]
        return box, landmarks.astype(np.float32)


class Tracker:
    """Associates each frame's faces with tracks and returns them smoothed, with track ids.

    Faces may arrive with their track id already set (the mesh was re-fitted at the track's
    predicted place); the others are matched to tracks. A track whose face is not seen is
    held at its predicted place for ``hold_seconds`` (fail closed: a face the detector drops
    for a moment is still anonymized), then ends.
    """

    def __init__(self, hold_seconds: float = 0.25):
        self.hold_seconds = hold_seconds
        self.tracks: list[Track] = []
        self._next_id = 0

    def predict(self, time: float) -> tuple[Faces, np.ndarray]:
        """The faces of the live (not stale) tracks where they are expected at ``time``, and
        (N, 4) boxes where to look for them: the predicted box joined with the last seen one
        (a face that stops or turns back is between the two)."""
        live = [t for t in self.tracks if not t.stale]
        if not live:
            return Faces.empty(), np.zeros((0, 4), np.float32)
        faces = _predicted_faces(live, time, held=False)
        last = np.array([t.box_at_seen for t in live], np.float32)
        search = np.concatenate([np.minimum(faces.boxes[:, :2], last[:, :2]), np.maximum(faces.boxes[:, 2:], last[:, 2:])], 1)
        return faces, search

    def update(self, faces: Faces, time: float) -> Faces:
        """``faces`` of the frame at ``time`` with track ids and smoothed landmarks, followed by
        the held faces of tracks not seen in it."""
        by_id = {t.track_id: t for t in self.tracks}
        ids = faces.track_ids.copy()
        unknown = [i for i in range(len(faces)) if ids[i] not in by_id or by_id[ids[i]].stale]
        ids[unknown] = -1
        claimed = set(ids.tolist())
        candidates = [t for t in self.tracks if not t.stale and t.track_id not in claimed]
        if unknown and candidates:
            predicted = [t.predicted_face(time) for t in candidates]
            to_predicted = association_similarity(
                faces.boxes[unknown],
                faces.landmarks[unknown],
                np.array([box for box, _ in predicted]),
                np.array([landmarks for _, landmarks in predicted]),
            )
            to_last_seen = association_similarity(
                faces.boxes[unknown],
                faces.landmarks[unknown],
                np.array([t.box_at_seen for t in candidates]),
                np.array([t.landmarks for t in candidates]),
            )
            similarity = np.maximum(to_predicted, to_last_seen)
            rows, cols = linear_sum_assignment(-similarity)
            for row, col in zip(rows, cols):
                if similarity[row, col] >= MIN_SIMILARITY:
                    ids[unknown[row]] = candidates[col].track_id
        landmarks = faces.landmarks.copy()
        seen: set[int] = set()
        for index in range(len(faces)):
            if ids[index] < 0:
                ids[index] = self._start(faces, index, time)
            else:
                landmarks[index] = self._observe(by_id[int(ids[index])], faces, index, time)
            seen.add(int(ids[index]))
        held = []
        for track in self.tracks:
            if track.track_id in seen:
                continue
            track.missed += 1
            if track.missed == 1:
                track.occluded = not track.stale and _behind_a_seen_face(track.predicted_face(time)[0], faces.boxes)
            hold = max(self.hold_seconds, OCCLUDED_HOLD_SECONDS) if track.occluded else self.hold_seconds
            if time - track.last_seen <= hold:
                held.append(track)
        self.tracks = [t for t in self.tracks if t.track_id in seen or t in held]
        result = Faces(faces.boxes.copy(), faces.scores.copy(), landmarks, ids)
        if not held:
            return result
        return Faces.concatenate([result, _predicted_faces(held, time, held=True)])

    def mark_scene_cut(self) -> None:
        """After a cut no face continues an earlier track; earlier tracks are only held."""
        for track in self.tracks:
            track.stale = True

    def reset(self) -> None:
        """Forget all tracks (e.g. between unrelated images); ids keep counting up."""
        self.tracks = []

    def _start(self, faces: Faces, index: int, time: float) -> int:
        box, landmarks = faces.boxes[index], faces.landmarks[index]
        has_mesh = not np.isnan(landmarks).any()
        center, size, _ = _box_geometry(box)
        track = Track(
            track_id=self._next_id,
            motion=BoxKalman(box, time),
            smoother=OneEuroFilter(landmarks, time) if has_mesh else None,
            landmarks=landmarks.copy(),
            score=float(faces.scores[index]),
            last_seen=time,
            center_at_seen=np.asarray(center),
            size_at_seen=size,
            box_at_seen=np.asarray(box, np.float32).copy(),
        )
        self.tracks.append(track)
        self._next_id += 1
        return track.track_id

    def _observe(self, track: Track, faces: Faces, index: int, time: float) -> np.ndarray:
        """Update ``track`` with the face at ``index``; its smoothed landmarks."""
        box, landmarks = faces.boxes[index], faces.landmarks[index]
        track.motion.predict(time)
        track.motion.correct(box)
        center, size, _ = _box_geometry(box)
        if np.isnan(landmarks).any():
            track.smoother = None
            track.landmarks = landmarks.copy()
        else:
            if track.smoother is None or track.missed > 0:
                track.smoother = OneEuroFilter(landmarks, time)
            track.landmarks = track.smoother(landmarks, time, size)
        track.score, track.last_seen, track.missed, track.occluded = float(faces.scores[index]), time, 0, False
        track.center_at_seen, track.size_at_seen = np.asarray(center), size
        track.box_at_seen = np.asarray(box, np.float32).copy()
        return track.landmarks


def _predicted_faces(tracks: list[Track], time: float, held: bool) -> Faces:
    """The faces of ``tracks`` where they are expected at ``time``."""
    predicted = [t.predicted_face(time) for t in tracks]
    return Faces(
        np.array([box for box, _ in predicted], np.float32),
        np.array([t.score for t in tracks], np.float32),
        np.array([landmarks for _, landmarks in predicted], np.float32),
        np.array([t.track_id for t in tracks], np.int64),
        np.full(len(tracks), held),
    )


def association_similarity(
    boxes: np.ndarray, landmarks: np.ndarray, track_boxes: np.ndarray, track_landmarks: np.ndarray
) -> np.ndarray:
    """(faces, tracks) similarity in [0, 1]: box IoU, averaged with a landmark-geometry score
    (1 at identical meshes, 0 at a mean distance of ``LANDMARK_DISTANCE_SCALE`` face sizes)
    where both have a mesh."""
    overlap = box_iou(boxes, track_boxes)
    sizes = np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)).clip(1.0)
    distance = np.linalg.norm(landmarks[:, None] - track_landmarks[None], axis=-1).mean(axis=-1)
    geometry = np.clip(1.0 - distance / (sizes[:, None] * LANDMARK_DISTANCE_SCALE), 0.0, 1.0)
    both_meshed = ~np.isnan(geometry)
    return np.where(both_meshed, (overlap + np.nan_to_num(geometry)) / 2, overlap)


def _behind_a_seen_face(box: np.ndarray, seen_boxes: np.ndarray) -> bool:
    """A seen face covers at least a quarter of ``box``."""
    if len(seen_boxes) == 0:
        return False
    covered = box_intersections(box[None], seen_boxes)[0] / max(box_areas(box[None])[0], 1e-6)
    return bool((covered >= 0.25).any())


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(N,) areas of x0, y0, x1, y1 boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection areas of x0, y0, x1, y1 boxes."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of x0,y0,x1,y1 boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    inter = box_intersections(a, b)
    return inter / np.maximum(box_areas(a)[:, None] + box_areas(b)[None, :] - inter, 1e-6)


def overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over the smaller box's area (for boxes drawn by different
    conventions, e.g. a detector's box inside a mesh's box)."""
    smaller = np.minimum(box_areas(a)[:, None], box_areas(b)[None, :])
    return box_intersections(a, b) / np.maximum(smaller, 1e-6)


def _box_geometry(box: np.ndarray) -> tuple[tuple[float, float], float, float]:
    """Centre, size (geometric mean of the sides) and aspect ratio (width / height) of a box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    return ((x0 + x1) / 2, (y0 + y1) / 2), math.sqrt(width * height), width / height


def _alpha(cutoff: float | np.ndarray, dt: float) -> float | np.ndarray:
    tau = 1.0 / (2 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)
