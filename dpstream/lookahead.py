"""Gap filling for files: frames wait in a short buffer before their faces are replaced.

While a frame waits, later frames can still add to its faces:
- a track first seen at frame t is tracked backwards through the waiting frames (mesh re-fit at
  the later frame's place), so a face the detector found late (key frames only every few
  frames, or a miss) is covered before t too; the first ``min_backfill`` frames are covered
  even where the mesh does not fit (held region), the ones before only while it does;
- a track held (not seen) for some frames and seen again has the held places replaced by a
  linear interpolation between the frames where it was seen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np

from dpstream.face_finder import mesh_boxes
from dpstream.face_mesh import eye_line_angle
from dpstream.face_tracking import FaceTracking
from dpstream.key_frames import KeyFrameMark
from dpstream.tracker import box_iou
from dpstream.types import Faces, TrackedFrame, VideoFrame

BACKFILL_MIN_OVERLAP = 0.3
"""A backwards re-fit continues the track only if it overlaps the later frame's box this much."""


class LookAhead:
    """Delays frames by ``size`` frames and fills gaps in their faces from later frames."""

    def __init__(self, tracking: FaceTracking, size: int, min_backfill: int):
        self.tracking = tracking
        self.size = size
        self.min_backfill = min_backfill
        self.pending: deque[TrackedFrame] = deque()

    def push(self, frame: VideoFrame, mark: KeyFrameMark | None = None) -> Iterator[TrackedFrame]:
        """Track ``frame`` (``mark``: its key-frame mark, if made ahead); yield the frames that
        leave the buffer (oldest first)."""
        faces = self.tracking.process(frame, mark)
        known = {int(i) for entry in self.pending for i in entry.faces.track_ids}
        for index in range(len(faces)):
            track_id = int(faces.track_ids[index])
            if faces.held[index]:
                continue
            if track_id in known:
                self._interpolate_gap(track_id, faces, index)
            else:
                self._backfill(faces, index)
        self.pending.append(TrackedFrame(frame, faces))
        while len(self.pending) > self.size:
            yield self.pending.popleft()

    def flush(self) -> Iterator[TrackedFrame]:
        while self.pending:
            yield self.pending.popleft()

    def _backfill(self, faces: Faces, index: int) -> None:
        """Follow a new track backwards through the waiting frames."""
        box, landmarks, track_id = faces.boxes[index], faces.landmarks[index], faces.track_ids[index]
        for steps, entry in enumerate(reversed(self.pending), start=1):
            fitted = self.tracking.finder.mesh.fit_box(entry.frame.image, box, eye_line_angle(landmarks))
            found = not np.isnan(fitted).any()
            if found:
                fitted_box = mesh_boxes(fitted[None])[0]
                found = box_iou(fitted_box[None], box[None])[0, 0] >= BACKFILL_MIN_OVERLAP
            if found:
                box, landmarks, held = fitted_box, fitted, False
            elif steps > self.min_backfill:
                return
            else:
                held = True
            if _covers(entry.faces, box):
                return  # another track already covers that place there
            entry.faces = Faces.concatenate([entry.faces, _one_face(box, faces.scores[index], landmarks, track_id, held)])

    def _interpolate_gap(self, track_id: int, faces: Faces, index: int) -> None:
        """Replace the held places of ``track_id`` since it was last seen by interpolation."""
        gap: list[tuple[TrackedFrame, int]] = []
        for entry in reversed(self.pending):
            rows = np.flatnonzero(entry.faces.track_ids == track_id)
            if len(rows) == 0:
                return
            row = int(rows[0])
            if not entry.faces.held[row]:
                anchor = entry.faces, row
                break
            gap.append((entry, row))
        else:
            return
        if not gap:
            return
        start_box, start_landmarks = anchor[0].boxes[anchor[1]], anchor[0].landmarks[anchor[1]]
        end_box, end_landmarks = faces.boxes[index], faces.landmarks[index]
        steps = len(gap) + 1
        for position, (entry, row) in enumerate(reversed(gap), start=1):
            weight = position / steps
            entry.faces.boxes[row] = (1 - weight) * start_box + weight * end_box
            entry.faces.landmarks[row] = (1 - weight) * start_landmarks + weight * end_landmarks


def _covers(faces: Faces, box: np.ndarray) -> bool:
    return len(faces) > 0 and bool((box_iou(box[None], faces.boxes)[0] >= 0.5).any())


def _one_face(box: np.ndarray, score: float, landmarks: np.ndarray, track_id: int, held: bool) -> Faces:
    return Faces(
        np.asarray(box, np.float32)[None],
        np.array([score], np.float32),
        np.asarray(landmarks, np.float32)[None],
        np.array([track_id], np.int64),
        np.array([held]),
    )
