"""Baseline methods that rewrite each face region: blur, mosaic, solid fill and DP-Pix."""

from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np

from dpstream.privacy import laplace_noise, snap_to_grid
from dpstream.regions import FaceRegion, face_region, paste
from dpstream.replace.fallback import apply_fallback, heavy_blur
from dpstream.types import Faces, ReplacedFrame, VideoFrame


class RegionReplacer(ABC):
    """Rewrites the pixels of each face region; a face that fails gets the fallback."""

    releases = 0  # no noisy release (DpPix counts its own)
    name: str

    def __init__(self, margin: float):
        self.margin = margin
        self.fallbacks = 0

    @abstractmethod
    def fill(self, image: np.ndarray, region: FaceRegion) -> np.ndarray:
        """New pixels for the region's rectangle of ``image`` (only the masked part is used)."""

    def replace(self, frame: VideoFrame, faces: Faces) -> ReplacedFrame:
        image = frame.image
        fallbacks = 0
        for index in range(len(faces)):
            region = face_region(faces.boxes[index], faces.landmarks[index], self.margin, image.shape)
            if region is None:
                continue
            try:
                paste(image, region, self.fill(image, region))
            except Exception:  # fail closed: whatever went wrong, the face is still covered
                fallbacks += apply_fallback(image, faces.select(np.array([index])))
        self.fallbacks += fallbacks
        return ReplacedFrame(frame, faces, fallbacks)

    def summary(self) -> dict:
        return {"method": self.name, "fallbacks": self.fallbacks}

    def ledger(self) -> dict | None:
        return None

    def close(self) -> None:
        pass


class Blur(RegionReplacer):
    """The heavy blur of the fallback, as a method of its own."""

    name = "blur"

    def fill(self, image: np.ndarray, region: FaceRegion) -> np.ndarray:
        return heavy_blur(image, region)


class Mosaic(RegionReplacer):
    """Pixelation into ``cells`` blocks across the face's larger side."""

    name = "mosaic"

    def __init__(self, margin: float, cells: int):
        super().__init__(margin)
        self.cells = cells

    def fill(self, image: np.ndarray, region: FaceRegion) -> np.ndarray:
        pixels = image[region.slices()]
        height, width = pixels.shape[:2]
        block = max(height, width) / self.cells
        small = cv2.resize(
            pixels, (max(1, round(width / block)), max(1, round(height / block))), interpolation=cv2.INTER_AREA
        )
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


class Solid(RegionReplacer):
    """A mid-grey fill (black heads read as faces to some detectors)."""

    name = "solid"

    def fill(self, image: np.ndarray, region: FaceRegion) -> np.ndarray:
        return np.full_like(image[region.slices()], 128)


class DpPix(RegionReplacer):
    """DP-Pix (Fan, DBSec 2018): b×b cell means plus Laplace noise of scale 255·m/(b²·ε).

    ``m`` is how many pixels may differ between neighbouring images. Each frame is a new
    release: ε is spent per frame, and the ledger says so.
    """

    name = "dp-pix"

    def __init__(self, margin: float, cell: int, m: int, epsilon: float):
        super().__init__(margin)
        self.cell = cell
        self.epsilon = epsilon
        self.scale = 255.0 * m / (cell * cell * epsilon)
        self.releases = 0

    def fill(self, image: np.ndarray, region: FaceRegion) -> np.ndarray:
        pixels = image[region.slices()]
        b = self.cell
        height, width = pixels.shape[:2]
        rows, cols = -(-height // b), -(-width // b)
        padded = np.pad(pixels, ((0, rows * b - height), (0, cols * b - width), (0, 0)), mode="edge")
        means = padded.reshape(rows, b, cols, b, 3).mean(axis=(1, 3))
        # Snapping to the sampler's grid first keeps the output on that grid (no float leak).
        noisy = snap_to_grid(means, self.scale) + laplace_noise(means.shape, self.scale)
        noisy = np.clip(noisy, 0, 255).round().astype(np.uint8)
        self.releases += 1
        return np.repeat(np.repeat(noisy, b, axis=0), b, axis=1)[:height, :width]

    def summary(self) -> dict:
        return {**super().summary(), "releases": self.releases}

    def ledger(self) -> dict:
        return {
            "method": "dp-pix",
            "mechanism": "laplace (discrete, on the sampler grid) on b×b cell means",
            "epsilon_per_release": self.epsilon,
            "cell": self.cell,
            "laplace_scale": self.scale,
            "releases": self.releases,
            "worst_case": {
                "argument": "Each face in each frame is a separate ε-DP release (Fan 2018, neighbours differ in at "
                "most m pixels). Releases compose: a person visible in F frames is protected at F·ε, and nothing "
                "links frames, so a long video gives little protection against averaging attacks."
            },
        }
