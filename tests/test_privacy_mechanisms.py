"""Mechanisms: clipping bounds (property-based), noise distribution (KS), empirical privacy."""

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from dpstream.errors import ConfigError, DpstreamError
from dpstream.privacy import EmbeddingError, PrivacyConfig, make_mechanism, project_to_sphere
from dpstream.privacy.analytic import analytic_gaussian_sigma
from dpstream.privacy.mechanisms import clip_to_norm

# KS tolerance: reject when p < 1e-4 (D > ≈ 1.95/√n); the noise is from the OS CSPRNG, so a
# correct sampler fails one of these tests with probability about 1e-4.
KS_ALPHA = 1e-4
KS_N = 10_000
# Empirical privacy tolerance: each histogram bin's estimated log-ratio may exceed its bound by
# 4.5 standard errors (√(1/n₁ + 1/n₂)); over ≤ 40 bins a false alarm has probability < 1e-4.
Z_TOL = 4.5


# ---- clipping: never more than the sensitivity apart, whatever the input ----

ADVERSARIAL = st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2e-308, 1.0, -1.0, 1e154, 1e300, -1.7976931348623157e308])
ELEMENTS = st.one_of(st.floats(allow_nan=False, allow_infinity=False), ADVERSARIAL)


def _exact_norm_power(v: np.ndarray, norm: int) -> Fraction:
    """‖v‖₁ or ‖v‖₂² of the floats' exact values."""
    return sum((abs(Fraction(float(x))) ** norm for x in v), Fraction(0))


@st.composite
def vector_pairs(draw):
    d = draw(st.integers(1, 16))
    v = draw(arrays(np.float64, d, elements=ELEMENTS))
    w = draw(arrays(np.float64, d, elements=ELEMENTS))
    return v, w


@settings(max_examples=300, deadline=None)
@given(vector_pairs(), st.sampled_from([1, 2]), st.floats(1e-3, 1e3))
def test_clipped_vectors_are_within_the_sensitivity(pair, norm, bound):
    v, w = pair
    a, b = clip_to_norm(v, bound, norm), clip_to_norm(w, bound, norm)
    exact_bound = Fraction(bound) ** norm
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert _exact_norm_power(a, norm) <= exact_bound
    # Δ = 2·bound: ‖a − b‖ ≤ 2·bound exactly (a − b as exact rationals, not float differences)
    diff = sum((abs(Fraction(float(x)) - Fraction(float(y))) ** norm for x, y in zip(a, b)), Fraction(0))
    assert diff <= (2 * Fraction(bound)) ** norm
    # clipping only scales down: same signs, and unchanged inside the ball
    assert np.all(np.sign(a) * np.sign(v) >= 0)
    if _exact_norm_power(v, norm) <= exact_bound:
        assert np.array_equal(a, v)


_TESTING = {name: make_mechanism(PrivacyConfig(mechanism=name), 1, 1.0, testing_seed=0) for name in ("gaussian", "laplace")}


@st.composite
def non_finite_vectors(draw):
    v = draw(arrays(np.float64, draw(st.integers(1, 12)), elements=ELEMENTS))
    bad = draw(st.lists(st.integers(0, len(v) - 1), min_size=1, max_size=len(v)))
    v[bad] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return v


@settings(max_examples=100, deadline=None)
@given(non_finite_vectors(), st.sampled_from(["gaussian", "laplace"]))
def test_nan_and_inf_are_rejected(v, mechanism):
    mech = dataclasses.replace(_TESTING[mechanism], dim=len(v))
    with pytest.raises(EmbeddingError, match="NaN or infinite") as error:
        mech.release(v)
    assert isinstance(error.value, DpstreamError) and isinstance(error.value, ValueError)


def test_shape_is_checked():
    mech = make_mechanism(PrivacyConfig(), 8, 1.0, testing_seed=0)
    with pytest.raises(EmbeddingError, match="8 values"):
        mech.release(np.zeros(7))


def test_bad_clip_norm_and_dim():
    for bad in (0, -1.0, float("inf"), float("nan"), None):
        with pytest.raises(ConfigError, match="^clip_norm: "):
            make_mechanism(PrivacyConfig(), 8, bad)
    with pytest.raises(ValueError):
        make_mechanism(PrivacyConfig(), 0, 1.0)


# ---- calibration ----


def test_laplace_calibration():
    mech = make_mechanism(PrivacyConfig(mechanism="laplace", epsilon=2.0), 16, 1.5)
    assert mech.norm == 1 and mech.bound == pytest.approx(1.5 * 4)
    assert mech.sensitivity == pytest.approx(2 * 1.5 * 4)
    assert mech.scale == pytest.approx(mech.sensitivity / 2.0, rel=1e-12)
    assert mech.noise.privacy_map(mech.sensitivity) <= 2.0  # OpenDP's own accounting agrees
    assert mech.delta == 0.0 and mech.private


def test_gaussian_calibration():
    mech = make_mechanism(PrivacyConfig(epsilon=4.0, delta=1e-5), 16, 1.5)
    assert mech.norm == 2 and mech.sensitivity == 3.0
    assert mech.scale == analytic_gaussian_sigma(4.0, 1e-5, 3.0)
    rho = mech.noise.privacy_map(mech.sensitivity)  # OpenDP: ρ-zCDP = Δ²/(2σ²), no hidden inflation
    assert rho == pytest.approx(3.0**2 / (2 * mech.scale**2), rel=1e-9)


def test_describe_has_parameters_only():
    info = make_mechanism(PrivacyConfig(), 8, 1.0).describe()
    assert info["private"] is True and info["sampler"] == "opendp-gaussian"
    assert set(info) >= {"mechanism", "epsilon", "delta", "clip_norm", "dim", "sensitivity", "noise_scale"}


def test_testing_mode_is_reproducible_and_marked():
    config = PrivacyConfig()
    a = make_mechanism(config, 8, 1.0, testing_seed=7)
    b = make_mechanism(config, 8, 1.0, testing_seed=7)
    v = np.arange(8.0)
    assert np.array_equal(a.release(v), b.release(v))
    assert not a.private and "NOT private" in a.describe()["sampler"]


def test_release_clips_then_adds_noise():
    mech = make_mechanism(PrivacyConfig(epsilon=8.0), 4, 1.0)
    out = mech.release(np.array([1e300, 0, 0, 0]))
    assert out.shape == (4,) and np.isfinite(out).all()
    assert not np.array_equal(mech.release(np.ones(4)), mech.release(np.ones(4)))


# ---- the sampled noise has the intended distribution (OpenDP, OS CSPRNG) ----


@pytest.mark.parametrize("mechanism, epsilon", [("laplace", 1.0), ("laplace", 8.0), ("gaussian", 4.0)])
def test_noise_matches_distribution(mechanism, epsilon):
    mech = make_mechanism(PrivacyConfig(mechanism=mechanism, epsilon=epsilon), 4, 1.0)
    noise = mech.noise.add(np.zeros(KS_N))
    reference = stats.laplace(scale=mech.scale) if mechanism == "laplace" else stats.norm(scale=mech.scale)
    assert stats.kstest(noise, reference.cdf).pvalue > KS_ALPHA


# ---- empirical privacy: output densities of neighbours at distance Δ ----


def _neighbour_samples(mech, n):
    """Outputs (first coordinate) for the clipped inputs +B·e₀ and −B·e₀, at distance Δ."""
    v = mech.clip(np.eye(mech.dim)[0] * 1e6)
    w = mech.clip(-np.eye(mech.dim)[0] * 1e6)
    assert np.linalg.norm(v - w, mech.norm) == pytest.approx(mech.sensitivity)
    x = mech.noise.add(np.tile(v, n)).reshape(n, mech.dim)[:, 0]
    y = mech.noise.add(np.tile(w, n)).reshape(n, mech.dim)[:, 0]
    return x, y  # other coordinates have the same distribution under both inputs


def _binned_log_ratios(x, y, bins=40, min_count=200):
    edges = np.quantile(np.concatenate([x, y]), np.linspace(0, 1, bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    nx, _ = np.histogram(x, edges)
    ny, _ = np.histogram(y, edges)
    keep = (nx >= min_count) & (ny >= min_count)
    ratio = np.log(nx[keep] / len(x)) - np.log(ny[keep] / len(y))
    se = np.sqrt(1 / nx[keep] + 1 / ny[keep])
    return edges, keep, ratio, se


def test_empirical_privacy_laplace():
    epsilon = 1.0
    mech = make_mechanism(PrivacyConfig(mechanism="laplace", epsilon=epsilon), 2, 0.5)
    x, y = _neighbour_samples(mech, 12_000)
    _, _, ratio, se = _binned_log_ratios(x, y)
    assert np.all(np.abs(ratio) <= epsilon + Z_TOL * se)
    # tight, not over-noised: beyond +B the density ratio is exactly e^ε
    b = mech.bound
    px, py = np.mean(x > b), np.mean(y > b)
    tail_se = math.sqrt((1 - px) / (px * len(x)) + (1 - py) / (py * len(y)))
    assert abs(math.log(px / py) - epsilon) <= Z_TOL * tail_se


def test_empirical_privacy_gaussian():
    epsilon, delta = 4.0, 1e-5
    mech = make_mechanism(PrivacyConfig(epsilon=epsilon, delta=delta), 1, 1.0)
    x, y = _neighbour_samples(mech, 10_000)
    edges, keep, ratio, se = _binned_log_ratios(x, y, bins=30)
    # the Gaussian's log-ratio exceeds ε only on a set of probability ~δ, unreachable here
    assert np.all(ratio <= epsilon + Z_TOL * se)
    # and it matches the calibrated σ bin by bin (catches over- and under-noising)
    dist_x, dist_y = stats.norm(mech.bound, mech.scale), stats.norm(-mech.bound, mech.scale)
    lo, hi = edges[:-1][keep], edges[1:][keep]
    expected = np.log(dist_x.cdf(hi) - dist_x.cdf(lo)) - np.log(dist_y.cdf(hi) - dist_y.cdf(lo))
    assert np.all(np.abs(ratio - expected) <= Z_TOL * se)
    # pooled over bins: the fitted multiple of the expected log-ratio curve is 1 (σ 20 % too small
    # moves it to ~1.5, about 10 standard errors; the exact σ is checked in the calibration tests)
    weights = 1 / se**2
    fit = np.sum(weights * ratio * expected) / np.sum(weights * expected**2)
    assert abs(fit - 1) <= Z_TOL / np.sqrt(np.sum(weights * expected**2))


# ---- post-processing ----


def test_project_to_sphere():
    v = np.array([3.0, 4.0])
    assert np.allclose(project_to_sphere(v, 2.0), [1.2, 1.6])
    assert np.array_equal(project_to_sphere(np.zeros(3), 1.5), [1.5, 0.0, 0.0])
