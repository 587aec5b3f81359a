"""The small typed values passed between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

NUM_LANDMARKS = 468
"""Points per face in MediaPipe's face mesh."""


@dataclass(frozen=True, slots=True)
class StillInfo:
    """What writing a photo back needs beside its upright RGB pixels (never its EXIF or GPS)."""

    name: str  # file name
    alpha: np.ndarray | None = None  # (H, W) uint8, upright like the image
    grey: bool = False  # a greyscale photo is written back in greyscale
    icc_profile: bytes | None = None  # colour profile, kept so colours look the same


@dataclass(slots=True)
class VideoFrame:
    """One decoded frame: an RGB image and where it sits in time.

    ``pts``/``time_base`` are the source's timestamps, carried through unchanged so that
    variable frame rate survives; ``time`` is the same instant in seconds.
    """

    image: np.ndarray  # (H, W, 3) uint8, RGB
    index: int
    pts: int | None = None
    time_base: Fraction | None = None
    still: StillInfo | None = None  # set when the source is a set of photos (stills)

    @property
    def time(self) -> float:
        if self.pts is None or self.time_base is None:
            return float(self.index)
        return float(self.pts * self.time_base)


@dataclass(slots=True)
class Detections:
    """Detected faces: (N, 4) boxes clipped to the image, (N,) scores, (N,) eye-line angles (radians)."""

    boxes: np.ndarray
    scores: np.ndarray
    angles: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: list[int]) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.angles[keep])


@dataclass(slots=True)
class Faces:
    """All faces found in one frame, as parallel arrays (one row per face).

    ``landmarks`` holds face-mesh points in pixel coordinates (x, y); a face whose mesh
    could not be fitted has NaN landmarks and is replaced by its box region, fail-closed.
    ``track_ids`` is -1 until a tracker assigns ids; ``held`` marks faces not seen in this
    frame but kept by the tracker at their predicted place (fail closed).
    """

    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1 in pixels
    scores: np.ndarray  # (N,) float32 detector confidence
    landmarks: np.ndarray  # (N, 468, 2) float32 pixels, NaN where no mesh
    track_ids: np.ndarray = field(default=None)  # type: ignore[assignment]  # (N,) int64
    held: np.ndarray = field(default=None)  # type: ignore[assignment]  # (N,) bool

    def __post_init__(self) -> None:
        if self.track_ids is None:
            self.track_ids = np.full(len(self.boxes), -1, dtype=np.int64)
        if self.held is None:
            self.held = np.zeros(len(self.boxes), dtype=bool)

    @classmethod
    def empty(cls) -> Faces:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            landmarks=np.zeros((0, NUM_LANDMARKS, 2), np.float32),
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def has_mesh(self) -> np.ndarray:
        """(N,) bool: which faces have a fitted landmark mesh."""
        return ~np.isnan(self.landmarks).any(axis=(1, 2))

    def select(self, keep: np.ndarray) -> Faces:
        return Faces(self.boxes[keep], self.scores[keep], self.landmarks[keep], self.track_ids[keep], self.held[keep])

    @classmethod
    def concatenate(cls, parts: list[Faces]) -> Faces:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.landmarks for p in parts]),
            np.concatenate([p.track_ids for p in parts]),
            np.concatenate([p.held for p in parts]),
        )


@dataclass(slots=True)
class TrackedFrame:
    """A frame with its tracked faces, before replacement."""

    frame: VideoFrame
    faces: Faces


@dataclass(slots=True)
class ReplacedFrame:
    """A frame after anonymization, with what happened to its faces."""

    frame: VideoFrame  # image already anonymized
    faces: Faces
    fallbacks: int = 0  # faces that got the fail-closed fallback instead of the chosen method
