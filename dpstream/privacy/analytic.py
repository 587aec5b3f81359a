"""The analytic Gaussian mechanism (Balle & Wang, ICML 2018): exact (ε, δ) of Gaussian noise.

With L2 sensitivity Δ and noise σ, write μ = Δ/σ. Theorem 8 of the paper gives the exact
privacy profile of the Gaussian mechanism,

    δ(ε; μ) = Φ(μ/2 − ε/μ) − e^ε · Φ(−μ/2 − ε/μ),

valid for every ε ≥ 0 (the classical σ = Δ·√(2 ln(1.25/δ))/ε needs ε ≤ 1 and is loose).
δ grows with μ, so the smallest σ meeting (ε, δ) is Δ/μ* with δ(ε; μ*) = δ, found by
bisection (the paper's Algorithm 1 solves the same equation). The same profile gives the
exact composition of k Gaussian releases: they are one Gaussian release with μ·√k.
"""

from __future__ import annotations

import math

from scipy.special import log_ndtr

_BISECTION_STEPS = 200


def gaussian_delta(epsilon: float, mu: float) -> float:
    """δ(ε; μ): the smallest δ for which Gaussian noise with Δ/σ = μ is (ε, δ)-DP."""
    if mu <= 0:
        return 0.0
    a = float(log_ndtr(mu / 2 - epsilon / mu))
    b = epsilon + float(log_ndtr(-mu / 2 - epsilon / mu))
    # exp(a) − exp(b) in log space: both terms can be far below 1 for small δ.
    return max(0.0, -math.exp(a) * math.expm1(b - a))


def gaussian_mu(epsilon: float, delta: float) -> float:
    """The largest μ = Δ/σ with δ(ε; μ) ≤ δ (rounded towards more noise)."""
    lo, hi = 0.0, 1.0
    while gaussian_delta(epsilon, hi) <= delta:
        lo, hi = hi, 2 * hi
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if gaussian_delta(epsilon, mid) <= delta:
            lo = mid
        else:
            hi = mid
    return lo


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest σ (up to bisection precision, rounded up) making Gaussian noise (ε, δ)-DP."""
    if not (epsilon > 0 and 0 < delta < 1 and sensitivity > 0):
        raise ValueError(f"need ε > 0, 0 < δ < 1, Δ > 0; got {epsilon}, {delta}, {sensitivity}")
    return math.nextafter(sensitivity / gaussian_mu(epsilon, delta), math.inf)


def gaussian_epsilon(delta: float, mu: float) -> float:
    """The smallest ε with δ(ε; μ) ≤ δ (rounded up): the ε a release with Δ/σ = μ spends at δ."""
    if gaussian_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, mu) > delta:
        lo, hi = hi, 2 * hi
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if gaussian_delta(mid, mu) > delta:
            lo = mid
        else:
            hi = mid
    return hi
