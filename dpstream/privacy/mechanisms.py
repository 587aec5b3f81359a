"""Identity-embedding mechanisms: clip to a norm ball, add calibrated noise.

Neighbouring inputs are *any* two faces: after clipping, every embedding lies in a ball of
radius B (``bound``), so any two differ by at most the ball's diameter, Δ = 2B, whatever the
data set. (DP-Image sets Δ to the largest distance seen in one data set instead.)

* Laplace, pure ε-DP: clip to L1 norm ≤ B = C·√d (the L1 ball around the L2 ball of radius C,
  so the model's embeddings lose nothing more than the L2 clip would), Δ₁ = 2B, b = Δ₁/ε.
* Gaussian, (ε, δ)-DP: clip to L2 norm ≤ B = C, Δ₂ = 2C, σ from the analytic Gaussian
  mechanism (``analytic.py``), valid for every ε > 0.

Clipping is verified in exact rational arithmetic, so float rounding cannot push a clipped
vector outside the ball. Noise comes from OpenDP (``sampling.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dpstream.errors import ConfigError, DpstreamError
from dpstream.privacy.analytic import analytic_gaussian_sigma
from dpstream.privacy.config import PrivacyConfig
from dpstream.privacy.sampling import NoiseSampler, OpenDPNoise, TestingNoise

_SHRINK = 1.0 - 2.0**-40  # extra shrink step if rounding left a clipped vector outside the ball


class EmbeddingError(DpstreamError, ValueError):
    """An embedding that cannot be released: wrong shape, NaN or infinite values."""


@dataclass(frozen=True)
class Mechanism:
    """Clip-and-noise release of one embedding; ``release`` is the only privacy-relevant call."""

    name: str  # "gaussian" or "laplace"
    epsilon: float
    delta: float  # 0 for Laplace (pure ε-DP)
    dim: int
    clip_norm: float  # C, the L2 radius of embeddings
    norm: int  # the norm clipped in: 1 (Laplace) or 2 (Gaussian)
    bound: float  # clip radius in that norm
    sensitivity: float  # Δ = 2·bound, in that norm
    scale: float  # Laplace b or Gaussian σ, per coordinate
    noise: NoiseSampler

    @property
    def private(self) -> bool:
        """False in testing mode (seeded numpy noise)."""
        return self.noise.private

    def clip(self, v: np.ndarray) -> np.ndarray:
        """A float64 copy of v scaled down, if needed, to norm ≤ ``bound`` (checked exactly)."""
        return clip_to_norm(check_embedding(v, self.dim), self.bound, self.norm)

    def release(self, v: np.ndarray) -> np.ndarray:
        """clip(v) + noise: the (ε, δ)-DP noisy embedding. Rejects NaN/inf with EmbeddingError."""
        return self.noise.add(self.clip(v))

    def describe(self) -> dict:
        """The parameters, for the ledger (no data)."""
        return {
            "mechanism": self.name,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "clip_norm": self.clip_norm,
            "dim": self.dim,
            "clip_bound": self.bound,
            "norm": f"L{self.norm}",
            "sensitivity": self.sensitivity,
            "noise_scale": self.scale,
            "noise_scale_is": "laplace b" if self.name == "laplace" else "gaussian sigma",
            "sampler": self.noise.name,
            "private": self.private,
        }


def make_mechanism(config: PrivacyConfig, dim: int, clip_norm: float, testing_seed: int | None = None) -> Mechanism:
    """The mechanism of ``config`` for ``dim``-d embeddings clipped to L2 norm ``clip_norm``.

    ``testing_seed`` swaps OpenDP for numpy's seeded PRNG: reproducible and NOT private.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"embedding dimension must be an integer >= 1, got {dim!r}")
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float)) or not 0 < clip_norm < math.inf:
        raise ConfigError(f"clip_norm: must be a number > 0, got {clip_norm!r}")
    clip_norm = float(clip_norm)
    if config.mechanism == "laplace":
        norm, bound, delta = 1, clip_norm * math.sqrt(dim), 0.0
        sensitivity = 2 * bound
        scale = sensitivity / config.epsilon
    else:
        norm, bound, delta = 2, clip_norm, config.delta
        sensitivity = 2 * bound
        scale = analytic_gaussian_sigma(config.epsilon, config.delta, sensitivity)
    if testing_seed is not None:
        noise: NoiseSampler = TestingNoise(config.mechanism, scale, testing_seed)
    else:
        noise, scale = _opendp_noise(config.mechanism, scale, sensitivity, config.epsilon)
    return Mechanism(config.mechanism, config.epsilon, delta, dim, clip_norm, norm, bound, sensitivity, scale, noise)


def _opendp_noise(kind: str, scale: float, sensitivity: float, epsilon: float) -> tuple[OpenDPNoise, float]:
    """OpenDP's sampler at ``scale``, cross-checked against OpenDP's own privacy accounting."""
    noise = OpenDPNoise(kind, scale)
    if kind == "laplace":
        while noise.privacy_map(sensitivity) > epsilon:  # division rounded the wrong way
            scale = math.nextafter(scale, math.inf)
            noise = OpenDPNoise(kind, scale)
    elif noise.privacy_map(sensitivity) > sensitivity**2 / (2 * scale**2) * (1 + 1e-9):
        raise RuntimeError("OpenDP accounts a larger sensitivity than the clipping guarantees")
    return noise, scale


def check_embedding(v: np.ndarray, dim: int) -> np.ndarray:
    """v ((dim,) or (1, dim)) as a 1-D float64 copy; EmbeddingError if the shape or a value is bad."""
    v = np.array(v, dtype=np.float64)
    if v.shape not in ((dim,), (1, dim)):
        raise EmbeddingError(f"embedding must have {dim} values, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise EmbeddingError("embedding contains NaN or infinite values; refusing to release it")
    return v.reshape(dim)


def clip_to_norm(v: np.ndarray, bound: float, norm: int) -> np.ndarray:
    """v (finite, 1-D) scaled to L1 or L2 norm ≤ bound; the bound holds exactly for the floats returned."""
    if _norm_at_most(v, bound, norm):
        return v.copy()
    unit = v / np.max(np.abs(v))  # entries in [-1, 1]: the norm below cannot overflow
    out = unit * (bound / np.linalg.norm(unit, norm))
    while not _norm_at_most(out, bound, norm):
        out = out * _SHRINK
    return out


def project_to_sphere(v: np.ndarray, radius: float) -> np.ndarray:
    """Post-processing (no privacy cost): v rescaled to L2 norm ``radius``.

    On the model's embedding sphere this is the maximum-likelihood direction under isotropic
    noise and keeps the decoder in range; the zero vector (probability ~0) maps to radius·e₀.
    """
    v = np.asarray(v, np.float64)
    length = float(np.linalg.norm(v))
    if length == 0 or not math.isfinite(length):
        out = np.zeros_like(v)
        out.flat[0] = radius
        return out
    return v * (radius / length)


def _norm_at_most(v: np.ndarray, bound: float, norm: int) -> bool:
    """Exactly (rational arithmetic on the floats' values): ‖v‖_norm ≤ bound."""
    terms = [abs(float(x)).as_integer_ratio() for x in v]  # (numerator, 2^k)
    b_num, b_den = bound.as_integer_ratio()
    if norm == 2:
        terms = [(n * n, d * d) for n, d in terms]
        b_num, b_den = b_num * b_num, b_den * b_den
    common = max([b_den] + [d for _, d in terms])  # all powers of two
    return sum(n * (common // d) for n, d in terms) <= b_num * (common // b_den)
