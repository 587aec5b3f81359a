"""The image region a face occupies: the landmark hull with a margin, or an ellipse from the box."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BOX_ELLIPSE_SCALE = 1.35
"""A face with no mesh is covered by an ellipse this much larger than its detection box
(MediaPipe boxes stop at the brows and the chin's tip)."""


@dataclass(frozen=True, slots=True)
class FaceRegion:
    """A face's pixels: a mask over the rectangle ``x0:x1, y0:y1`` of the frame."""

    x0: int
    y0: int
    x1: int
    y1: int
    mask: np.ndarray  # (y1 - y0, x1 - x0) uint8, 255 inside the face

    @property
    def size(self) -> int:
        """The larger side of the rectangle, in pixels."""
        return max(self.x1 - self.x0, self.y1 - self.y0)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def face_outline(box: np.ndarray, landmarks: np.ndarray, margin: float) -> np.ndarray:
    """(K, 2) float polygon around the face: convex hull of the landmarks grown by ``margin``
    of the face size (so hairline, ears and jaw edge are inside), or a box ellipse."""
    if np.isnan(landmarks).any():
        x0, y0, x1, y1 = box
        center = ((x0 + x1) / 2, (y0 + y1) / 2)
        axes = ((x1 - x0) / 2 * BOX_ELLIPSE_SCALE * (1 + margin), (y1 - y0) / 2 * BOX_ELLIPSE_SCALE * (1 + margin))
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([center[0] + axes[0] * np.cos(angles), center[1] + axes[1] * np.sin(angles)], 1)
    hull = cv2.convexHull(landmarks.astype(np.float32)).reshape(-1, 2)
    center = hull.mean(axis=0)
    return center + (hull - center) * (1 + margin)


def face_region(
    box: np.ndarray, landmarks: np.ndarray, margin: float, frame_shape: tuple[int, ...]
) -> FaceRegion | None:
    """The face's mask clipped to the frame, or None when it lies fully outside."""
    polygon = face_outline(box, landmarks, margin)
    height, width = frame_shape[:2]
    x0 = max(int(np.floor(polygon[:, 0].min())), 0)
    y0 = max(int(np.floor(polygon[:, 1].min())), 0)
    x1 = min(int(np.ceil(polygon[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(polygon[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    shifted = np.round((polygon - (x0, y0)) * 16).astype(np.int32)
    cv2.fillPoly(mask, [shifted], 255, lineType=cv2.LINE_AA, shift=4)
    return FaceRegion(x0, y0, x1, y1, mask)


def paste(image: np.ndarray, region: FaceRegion, replacement: np.ndarray) -> None:
    """Write ``replacement`` (the region's rectangle) into ``image`` through the region's mask."""
    target = image[region.slices()]
    alpha = region.mask.astype(np.float32)[..., None] * (1.0 / 255.0)
    blended = target * (1.0 - alpha) + replacement.astype(np.float32) * alpha
    np.copyto(target, blended.round().astype(np.uint8))
