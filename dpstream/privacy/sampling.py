"""Noise samplers for embedding releases: OpenDP's vetted sampler, or a seeded one for tests.

OpenDP (``make_laplace`` / ``make_gaussian`` on ``vector_domain(atom_domain(float))``) rounds
the input onto the grid 2^-1074, which every float already lies on, adds discrete Laplace or
discrete Gaussian noise sampled *exactly* with big-integer arithmetic from the OS CSPRNG, and
rounds the result to the nearest float. The rounding is post-processing of an exactly private
value, so the low-order float bits cannot leak the input (the attack of Mironov, CCS 2012).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import opendp.prelude as dp


class NoiseSampler(Protocol):
    name: str
    private: bool  # False only for the seeded testing sampler

    def add(self, x: np.ndarray) -> np.ndarray:
        """x + i.i.d. noise per coordinate (1-D float64 in, 1-D float64 out)."""
        ...


class OpenDPNoise:
    """Laplace (scale b) or Gaussian (standard deviation σ) noise from OpenDP, any vector length."""

    private = True

    def __init__(self, kind: str, scale: float):
        dp.enable_features("contrib")
        domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
        if kind == "laplace":
            self._measurement = dp.m.make_laplace(domain, dp.l1_distance(T=float), scale=scale)
        else:
            self._measurement = dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=scale)
        self.name = f"opendp-{kind}"

    def add(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._measurement(np.asarray(x, np.float64).tolist()), np.float64)

    def privacy_map(self, sensitivity: float) -> float:
        """OpenDP's own accounting: ε (Laplace) or ρ of zero-concentrated DP (Gaussian)."""
        return float(self._measurement.map(sensitivity))


class TestingNoise:
    """NOT PRIVATE: numpy's seeded PRNG with float samplers, for reproducible tests only."""

    private = False

    def __init__(self, kind: str, scale: float, seed: int):
        self._rng = np.random.default_rng(seed)
        self._kind = kind
        self._scale = scale
        self.name = f"numpy-{kind} (testing_seed, NOT private)"

    def add(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._kind == "laplace":
            return x + self._rng.laplace(0.0, self._scale, x.shape)
        return x + self._rng.normal(0.0, self._scale, x.shape)
