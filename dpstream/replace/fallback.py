"""The fail-closed fallback: a face that could not be processed gets a heavy blur that also
mixes in its surroundings, over a generous region."""

from __future__ import annotations

import cv2
import numpy as np

from dpstream.regions import FaceRegion, face_region, paste
from dpstream.types import Faces

FALLBACK_MARGIN = 0.35
"""Generous margin: a fallback must never let a recognizable edge of the face through."""

BLUR_DETAIL_PX = 6
"""The face region ends up this many pixels across before it is enlarged again."""

BLUR_CONTEXT = 0.5
"""The blur reads this fraction of the region's size beyond each side, so hair and background
mix in and no skin-coloured oval is left for detectors to read as a face."""


def heavy_blur(image: np.ndarray, region: FaceRegion) -> np.ndarray:
    """New pixels for the region's rectangle: shrink, blur and enlarge, with context."""
    grow = int(BLUR_CONTEXT * region.size)
    height, width = image.shape[:2]
    x0, y0 = max(region.x0 - grow, 0), max(region.y0 - grow, 0)
    x1, y1 = min(region.x1 + grow, width), min(region.y1 + grow, height)
    pixels = image[y0:y1, x0:x1]
    factor = BLUR_DETAIL_PX / region.size
    small = cv2.resize(
        pixels,
        (max(2, round((x1 - x0) * factor)), max(2, round((y1 - y0) * factor))),
        interpolation=cv2.INTER_AREA,
    )
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=1.5, borderType=cv2.BORDER_REPLICATE)
    blurred = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    return blurred[region.y0 - y0 : region.y1 - y0, region.x0 - x0 : region.x1 - x0]


def apply_fallback(image: np.ndarray, faces: Faces, margin: float = FALLBACK_MARGIN) -> int:
    """Heavily blur each face's region (with a wide margin); returns how many were covered."""
    count = 0
    for box, landmarks in zip(faces.boxes, faces.landmarks):
        region = face_region(box, landmarks, margin, image.shape)
        if region is None:
            continue
        paste(image, region, heavy_blur(image, region))
        count += 1
    return count
