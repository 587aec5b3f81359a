"""Landmark geometry: similarity fits, the canonical shape frame and the extended face outline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MESH_POINTS = 468
"""Face-mesh points used for shape and warping (the 10 iris points are left out)."""

FACE_OVAL = (
    10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148,
    152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338,
)  # fmt: skip
"""The face-mesh outline as a closed loop, starting at the top of the forehead."""

FIVE_POINT_SOURCES = ((33, 133), (362, 263), (1,), (61,), (291,))
"""Mesh points averaged into the usual 5 points: eye centres (image left, right), nose tip, mouth corners."""


@dataclass(frozen=True, slots=True)
class Similarity:
    """A 2-D similarity transform ``y = matrix[:, :2] @ x + matrix[:, 2]``."""

    matrix: np.ndarray  # (2, 3) float64

    @property
    def scale(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def apply(self, points: np.ndarray) -> np.ndarray:
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]

    def inverse(self) -> Similarity:
        linear_inverse = np.linalg.inv(self.matrix[:, :2])
        return Similarity(np.hstack([linear_inverse, -linear_inverse @ self.matrix[:, 2:]]))


def fit_similarity(source: np.ndarray, target: np.ndarray) -> Similarity:
    """Least-squares similarity mapping ``source`` (N, 2) points onto ``target`` (Umeyama)."""
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign) / (source_centred**2).sum(1).mean())
    linear = scale * rotation
    return Similarity(np.hstack([linear, (target_mean - linear @ source_mean)[:, None]]))


RING_FACTORS = ((1.06, 0.22, 1.04), (1.24, 0.30, 1.12))
"""(sides, extra towards the top, chin) scale of the inner ring (fully replaced) and the outer
ring (where the blend has faded to the frame) around the face outline."""


def outline_ring_factors(sides: float, extra_top: float, chin: float) -> np.ndarray:
    """(36,) how far each outline point is pushed out from the outline centre.

    Most at the top (towards the hairline: the mesh stops mid-forehead), least at the chin.
    """
    angle_from_top = 2 * np.pi * np.arange(len(FACE_OVAL)) / len(FACE_OVAL)
    upwards = np.clip(np.cos(angle_from_top), 0.0, None) ** 1.5
    downwards = np.clip(-np.cos(angle_from_top), 0.0, None) ** 2
    return sides + extra_top * upwards + (chin - sides) * downwards


def outline_rings(mesh_points: np.ndarray) -> np.ndarray:
    """(72, 2) the inner then the outer ring around the face outline, linear in the mesh points."""
    oval = mesh_points[list(FACE_OVAL)]
    centre = oval.mean(0)
    return np.vstack([centre + outline_ring_factors(*ring)[:, None] * (oval - centre) for ring in RING_FACTORS])


def warp_vertices(landmarks: np.ndarray) -> np.ndarray:
    """(540, 2) warp vertices: the 468 mesh points, then the inner and outer outline rings."""
    mesh_points = np.asarray(landmarks, np.float64)[:MESH_POINTS]
    return np.vstack([mesh_points, outline_rings(mesh_points)])


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(5, 2) eye centres, nose tip and mouth corners from face-mesh landmarks."""
    return np.array([landmarks[list(indices)].mean(0) for indices in FIVE_POINT_SOURCES], np.float64)
