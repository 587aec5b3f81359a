"""Context-consistent sampling: the released identity is fitted to the head the face sits in.

At ε ≈ 1 the released identity is a random plausible person, so the new face would often
disagree with the head around it (another sex, age or skin tone under the same hair). The
context model maps what the renderer keeps from the frame anyway to the identity code it
predicts, and turns the release into a sample of the identities that fit that context:

    identity = predicted(context) + residual_transform @ release

``predicted`` is a ridge regression fitted on LFW train faces (``tools/fit_context_model.py``);
``residual_transform`` (Σ_residual^½ · Σ_codes^-½) maps a release drawn like a real person's
code to a draw of the residual variation that the context leaves open. The context is the
canonical texture's ring outside the face mesh (hair line, ears, jaw line and what lies behind:
the band the renderer shows, softened) and the band just inside the outline (the colour
matching band), as mean colours of angular cells, nothing of the inner face. It is a function
of the released identity and of channels the renderer keeps anyway, so it is post-processing of
the DP release: no privacy cost (what the kept channels themselves leak is measured apart).
The context is read once per person (its first rendered frame) and kept with that person, so
the face does not change from frame to frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpstream.face_model.errors import ManifestError


@dataclass(frozen=True, slots=True)
class ContextModel:
    """The arrays of ``context.npz`` (see the module docstring)."""

    pixels: np.ndarray  # (P,) flat canonical pixel indices of the context cells
    cells: np.ndarray  # (P,) cell of each of those pixels; the last cell is the colour band
    feature_mean: np.ndarray  # (F,)
    feature_scale: np.ndarray  # (F,)
    weights: np.ndarray  # (F, D) ridge regression, standardized features -> identity code
    intercept: np.ndarray  # (D,)
    residual_transform: np.ndarray  # (D, D)

    @classmethod
    def load(cls, path: Path, dim: int, texture_size: int) -> ContextModel:
        try:
            data = np.load(path)
            model = cls(**{name: np.asarray(data[name]) for name in cls.__slots__})
        except (OSError, ValueError, KeyError) as error:
            raise ManifestError(f"model manifest: 'context' file {path} is not a context model: {error}") from None
        features = 4 * (int(model.cells.max()) + 1) - 1 if len(model.cells) else 0
        shapes_ok = (
            model.pixels.shape == model.cells.shape
            and model.feature_mean.shape == model.feature_scale.shape == (features,)
            and model.weights.shape == (features, dim)
            and model.intercept.shape == (dim,)
            and model.residual_transform.shape == (dim, dim)
            and len(model.pixels) > 0
            and 0 <= model.pixels.min() and model.pixels.max() < texture_size * texture_size
        )
        if not shapes_ok:
            raise ManifestError(f"model manifest: 'context' file {path} does not fit a {dim}-d model with {texture_size}-px textures")
        return model

    def features(self, texture: np.ndarray) -> np.ndarray:
        """(F,) context features of an (S, S, 3) canonical texture: per cell its mean RGB, and per
        cell but the band its mean brightness minus the band's."""
        return context_features(texture, self.pixels, self.cells)

    def condition(self, release: np.ndarray, texture: np.ndarray) -> np.ndarray:
        """The identity to decode for ``release`` on the face whose frame texture is ``texture``."""
        standardized = (self.features(texture) - self.feature_mean) / self.feature_scale
        return self.intercept + standardized @ self.weights + self.residual_transform @ np.asarray(release, np.float64)


def context_features(texture: np.ndarray, pixels: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """See ``ContextModel.features``; ``texture`` is (S, S, 3), or (N, S, S, 3) for (N, F)."""
    flat = np.asarray(texture, np.float64).reshape(*texture.shape[:-3], -1, 3)[..., pixels, :]
    count = int(cells.max()) + 1
    one_hot = np.zeros((len(cells), count))
    one_hot[np.arange(len(cells)), cells] = 1.0 / np.bincount(cells, minlength=count)[cells]
    means = np.einsum("...pc,pk->...kc", flat, one_hot)  # (..., cells, 3)
    brightness = means.mean(-1)
    relative = brightness[..., :-1] - brightness[..., -1:]
    return np.concatenate([means.reshape(*means.shape[:-2], -1), relative], -1)
