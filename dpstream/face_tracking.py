"""Faces of each frame of a video with stable track ids: detection on key frames, mesh re-fit between.

Key frames (``KeyFrames``: every ``detect_every`` frames, and every scene cut) run the full
detector; on the frames between, each track's mesh is re-fitted on a crop at its predicted
place, which is cheaper and follows the face as closely. The mesh is fitted at the predicted
place, then in the search box (predicted and last seen boxes joined), then where the
short-range detector finds a face around the search box; the mesh's face-presence score says
when the face is not there. A track whose re-fit fails is held by the tracker at its predicted
place and looked for again on every following frame.
"""

from __future__ import annotations

import numpy as np

from dpstream.face_finder import FaceFinder, mesh_boxes, same_face, with_recall
from dpstream.face_mesh import ROI_SCALE, WIDE_ROI_SCALE, eye_line_angle
from dpstream.key_frames import KeyFrameMark, KeyFrames
from dpstream.tracker import Tracker, box_areas, box_iou
from dpstream.types import Faces, VideoFrame

REFIT_MIN_OVERLAP = 0.3
"""A re-fitted mesh belongs to its track if its box overlaps the predicted box or the search box
(predicted and last seen boxes joined) this much, or its centre lies in the search box enlarged
``WIDER_SEARCH`` times, at between half and twice the predicted size."""

WIDER_SEARCH = 1.8
"""When the mesh is not found in the search box, the detector looks in a crop around it; of its
faces, the one overlapping most with the search box this much enlarged is fitted."""

STILL_IOU = 0.8
"""A track whose predicted box overlaps its search box (predicted and last seen joined) less than
this is moving: its mesh is first looked for in a wider region."""


class FaceTracking:
    """Finds and tracks the faces of consecutive frames (one video)."""

    def __init__(self, finder: FaceFinder, tracker: Tracker, detect_every: int = 1, recall_every: int = 1, spread_tiles: bool = False):
        self.finder = finder
        self.tracker = tracker
        recall_detector = finder.recall_detector if finder is not None else None
        self.key_frames = KeyFrames(detect_every, recall_detector, recall_every, spread_tiles)

    def process(self, frame: VideoFrame, mark: KeyFrameMark | None = None) -> Faces:
        """The frame's faces: found or re-fitted ones first, then faces held by the tracker.
        ``mark`` is the frame's key-frame mark made ahead (``key_frames.mark``, e.g. on another
        thread); without it the frame is marked here."""
        image = frame.image
        mark = mark if mark is not None else self.key_frames.mark(image)
        if mark.scene_cut:
            self.tracker.mark_scene_cut()
        refitted = self.refit(image, *self.tracker.predict(frame.time))
        if mark.key:
            refitted = Faces.concatenate([refitted, self._new_faces(image, refitted, mark)])
        return self.tracker.update(refitted, frame.time)

    def refit(self, image: np.ndarray, predicted: Faces, search_boxes: np.ndarray) -> Faces:
        """Meshes re-fitted in each predicted face's search box, keeping their track ids;
        predicted faces whose mesh is not found there (or lands on another face) are left out."""
        fitted = []
        for index, box in enumerate(search_boxes):
            landmarks = self._refit_one(image, predicted.boxes[index], box, eye_line_angle(predicted.landmarks[index]))
            if landmarks is not None:
                fitted.append((index, landmarks))
        if not fitted:
            return Faces.empty()
        keep = np.array([index for index, _ in fitted])
        landmarks = np.stack([landmarks for _, landmarks in fitted])
        boxes = mesh_boxes(landmarks)
        overlap = np.maximum(box_iou(boxes, predicted.boxes[keep]).diagonal(), box_iou(boxes, search_boxes[keep]).diagonal())
        centres, wider = (boxes[:, :2] + boxes[:, 2:]) / 2, np.stack([_scaled(box, WIDER_SEARCH) for box in search_boxes[keep]])
        near = (overlap >= REFIT_MIN_OVERLAP) | ((centres >= wider[:, :2]) & (centres <= wider[:, 2:])).all(axis=1)
        size_ratio = np.sqrt(box_areas(boxes) / np.maximum(box_areas(predicted.boxes[keep]), 1e-6))
        valid = near & (size_ratio > 0.5) & (size_ratio < 2.0)
        # two tracks whose meshes landed on the same face: the better-placed one keeps it
        for a in range(len(keep)):
            for b in range(a + 1, len(keep)):
                if valid[a] and valid[b] and same_face(boxes[a], boxes[b]):
                    valid[b if overlap[a] >= overlap[b] else a] = False
        return Faces(boxes[valid], predicted.scores[keep][valid], landmarks[valid], predicted.track_ids[keep][valid])

    def _refit_one(self, image: np.ndarray, predicted_box: np.ndarray, search_box: np.ndarray, angle: float):
        """The mesh at the predicted place, else in the search box; else the short-range detector
        looks around the search box (a face that turned back or zoomed faster than predicted)."""
        moving = box_iou(predicted_box[None], search_box[None])[0, 0] < STILL_IOU
        for place in (predicted_box, search_box):
            landmarks = self.finder.mesh.fit_box(image, place, angle, WIDE_ROI_SCALE if moving else ROI_SCALE)
            if not np.isnan(landmarks).any():
                return landmarks
        near = self.finder.detect_near(image, search_box)
        if not len(near):
            return None
        nearest = int(np.argmax(box_iou(near.boxes, _scaled(search_box, WIDER_SEARCH)[None])[:, 0]))
        landmarks = self.finder.mesh.fit_box(image, near.boxes[nearest], float(near.angles[nearest]))
        return None if np.isnan(landmarks).any() else landmarks

    def reset(self) -> None:
        """Start over (an unrelated image follows)."""
        self.tracker.reset()
        self.key_frames.reset()

    def _new_faces(self, image: np.ndarray, known: Faces, mark: KeyFrameMark) -> Faces:
        """Detected faces that are not one of ``known``, with meshes (boxes from the mesh)."""
        found = self.finder.detect_mediapipe(image, tiled=mark.tiles, tile_part=mark.tile_part)
        if mark.recall is not None:
            found = with_recall(found, mark.recall)
        new = [i for i in range(len(found)) if not any(same_face(found.boxes[i], box) for box in known.boxes)]
        return self.finder.meshed(image, found.select(new))


def _scaled(box: np.ndarray, factor: float) -> np.ndarray:
    center, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * factor
    return np.concatenate([center - half, center + half])
