"""A plugged-in face-swap pair: crop encoder (crop -> embedding) and swapper (target crop + embedding -> crop).

Crops are aligned by a similarity fitted from five mesh points to the manifest's template; the
swapped crop is pasted back through the inverse transform with a feathered mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from dpstream.face_model.alignment import MESH_POINTS, fit_similarity, five_points
from dpstream.face_model.errors import RenderError
from dpstream.face_model.kernels import blend_into
from dpstream.face_model.manifest import Manifest
from dpstream.face_model.runtime import open_network

MIN_EYE_DISTANCE_PX = 8.0
FEATHER_FRACTION = 0.12
"""Width of the paste-back feather as a fraction of the crop size."""


def feathered_square(size: int) -> np.ndarray:
    """(size, size) float32 mask: 1 in the middle, fading to 0 over the border."""
    ramp = np.minimum(np.arange(size), np.arange(size)[::-1]) / max(FEATHER_FRACTION * size, 1.0)
    edge = np.clip(ramp, 0.0, 1.0)
    return np.outer(edge, edge).astype(np.float32)


class SwapModel:
    def __init__(self, manifest: Manifest, threads: int = 2):
        self.manifest = manifest
        self.encoder = open_network(manifest.encoder, "encoder", threads)
        self.decoder = open_network(manifest.decoder, "decoder", threads)
        (self.encoder_input, encoder_shape), = manifest.encoder.inputs.items()
        self.encoder_size = encoder_shape[2]
        self.crop_input = next(n for n, s in manifest.decoder.inputs.items() if len(s) == 4)
        self.identity_input = next(n for n, s in manifest.decoder.inputs.items() if len(s) == 2)
        self.mask = feathered_square(manifest.crop_size)

    def warm_up(self) -> None:
        """Run both networks once on grey inputs (their first run is the slow one)."""
        grey = np.full((self.encoder_size, self.encoder_size, 3), 128, np.uint8)
        self.encoder.run(None, {self.encoder_input: self.manifest.encoder.normalization.to_network(grey)})
        crop = np.full((self.manifest.crop_size, self.manifest.crop_size, 3), 128, np.uint8)
        identity = np.zeros((1, self.manifest.embedding_dim), np.float32)
        self.decoder.run(None, {self.crop_input: self.manifest.decoder.normalization.to_network(crop), self.identity_input: identity})

    def _crop(self, image_rgb: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Aligned (size, size, 3) crop and the 2x3 matrix mapping frame -> crop pixels."""
        mesh = np.asarray(landmarks, np.float64)[:MESH_POINTS]
        if not np.isfinite(mesh).all():
            raise RenderError("no usable face mesh")
        points = five_points(mesh)
        if np.linalg.norm(points[0] - points[1]) < MIN_EYE_DISTANCE_PX:
            raise RenderError("face too small")
        to_crop = fit_similarity(points, self.manifest.five_points * size).matrix
        crop = cv2.warpAffine(image_rgb, to_crop, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return crop, to_crop

    def encode(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Unit-norm identity embedding of the face (recognition-embedding convention)."""
        crop, _ = self._crop(image_rgb, landmarks, self.encoder_size)
        (embedding,) = self.encoder.run(None, {self.encoder_input: self.manifest.encoder.normalization.to_network(crop)})
        embedding = embedding.reshape(-1).astype(np.float64)
        norm = np.linalg.norm(embedding)
        if not np.isfinite(norm) or norm == 0:
            raise RenderError("encoder returned a degenerate embedding")
        return embedding / norm

    def render(self, image_rgb: np.ndarray, landmarks: np.ndarray, identity: np.ndarray) -> None:
        size = self.manifest.crop_size
        crop, to_crop = self._crop(image_rgb, landmarks, size)
        normalization = self.manifest.decoder.normalization
        (swapped,) = self.decoder.run(
            None,
            {
                self.crop_input: normalization.to_network(crop),
                self.identity_input: np.asarray(identity, np.float32).reshape(1, -1),
            },
        )
        swapped_rgb = normalization.from_network(swapped)
        if swapped_rgb.shape != (size, size, 3) or not np.isfinite(swapped_rgb).all():
            raise RenderError(f"swapper returned {swapped.shape}, expected 1x3x{size}x{size}")
        to_frame = cv2.invertAffineTransform(to_crop)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ to_frame.T
        height, width = image_rgb.shape[:2]
        x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, [width, height])
        if x1 <= x0 or y1 <= y0:
            raise RenderError("face outside the image")
        shifted = to_frame.copy()
        shifted[:, 2] -= (x0, y0)
        box = (int(x1 - x0), int(y1 - y0))
        colour = cv2.warpAffine(swapped_rgb, shifted, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(self.mask, shifted, box, flags=cv2.INTER_LINEAR, borderValue=0.0)
        no_grain = np.zeros(alpha.shape, np.float32)
        blend_into(image_rgb, np.dstack([colour, alpha]).astype(np.float32), no_grain, int(x0), int(y0))
