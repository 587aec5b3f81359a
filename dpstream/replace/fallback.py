"""The fail-closed fallback: a face that could not be processed is covered by a solid fill."""

from __future__ import annotations

import numpy as np

from dpstream.regions import face_region, paste
from dpstream.types import Faces

FALLBACK_MARGIN = 0.35
"""Generous margin: a fallback must never let a recognizable edge of the face through."""


def apply_fallback(image: np.ndarray, faces: Faces) -> int:
    """Fill each face's region (with a wide margin) with its mean colour; returns how many."""
    count = 0
    for box, landmarks in zip(faces.boxes, faces.landmarks):
        region = face_region(box, landmarks, FALLBACK_MARGIN, image.shape)
        if region is None:
            continue
        pixels = image[region.slices()]
        inside = region.mask > 0
        colour = pixels[inside].mean(axis=0) if inside.any() else np.zeros(3)
        paste(image, region, np.broadcast_to(colour.astype(np.uint8), pixels.shape))
        count += 1
    return count
