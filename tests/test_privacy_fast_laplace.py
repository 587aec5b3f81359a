"""laplace_noise (dp-pix): distribution, grid (floating-point defence), exact Bernoulli thresholds."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from dpstream.privacy import laplace_noise, noise_grid, snap_to_grid
from dpstream.privacy.fast_laplace import _bernoulli, _plan, _Threshold

KS_ALPHA = 1e-4  # reject when p < 1e-4; a correct sampler fails about once in 10,000 runs
KS_N = 20_000  # the grid (≤ scale/1024) moves the CDF by < 5e-4, far below D_crit ≈ 0.014


@pytest.mark.parametrize("scale", [0.01, 1.0, 3.98, 100.0, 5000.0])
def test_matches_laplace_cdf(scale):
    noise = laplace_noise(KS_N, scale)
    assert stats.kstest(noise, stats.laplace(scale=scale).cdf).pvalue > KS_ALPHA


@pytest.mark.parametrize("scale", [1e-6, 0.3, 1.0, 7.5, 1024.0, 1e5])
def test_grid(scale):
    g = noise_grid(scale)
    assert g <= min(1.0, scale / 1024) and g > min(1.0, scale / 2048) / 2
    assert math.frexp(g)[0] == 0.5  # a power of two
    noise = laplace_noise((50, 20), scale)
    assert noise.shape == (50, 20)
    assert np.array_equal(noise / g, np.rint(noise / g))
    # values snapped to the grid plus noise stay exactly on the grid: the output support is
    # g·ℤ whatever the input, so float rounding cannot reveal it (Mironov 2012)
    values = snap_to_grid(np.random.default_rng(0).uniform(0, 255, (50, 20)), scale)
    total = values + noise
    assert np.array_equal(total / g, np.rint(total / g)) and np.array_equal(total - noise, values)


def test_snap_to_grid():
    g = noise_grid(4.0)
    x = np.array([0.3, 128.0, 254.9999])
    snapped = snap_to_grid(x, 4.0)
    assert np.all(np.abs(snapped - x) <= g / 2) and np.array_equal(snap_to_grid(snapped, 4.0), snapped)
    with pytest.raises(ValueError):
        snap_to_grid(np.array([np.nan]), 4.0)


def test_testing_seed_and_shapes():
    assert np.array_equal(laplace_noise(10, 2.0, testing_seed=3), laplace_noise(10, 2.0, testing_seed=3))
    assert not np.array_equal(laplace_noise(100, 2.0), laplace_noise(100, 2.0))
    assert laplace_noise(0, 1.0).shape == (0,)
    assert laplace_noise((3, 65), 1.0).shape == (3, 65)
    for bad in (0, -1.0, float("nan"), float("inf"), 1e13, True, "1"):
        with pytest.raises(ValueError, match="Laplace scale"):
            laplace_noise(3, bad)
    assert laplace_noise(3, np.float32(2.0)).shape == (3,)


def test_thresholds_are_exact():
    """Each Bernoulli compares uniform bits with the exact binary expansion of its probability."""
    plan = _plan(3.0)
    t = plan.grid / 3.0
    assert len(plan.thresholds) - 1 >= math.log2(128 / t)  # truncation at |noise| ≥ 128·scale
    for p, th in zip([math.tanh(t / 2)] + [1 / (1 + math.exp(t * 2.0**j)) for j in range(len(plan.thresholds) - 1)], plan.thresholds):
        value = sum(Fraction(int(w), 2 ** (64 * (i + 1))) for i, w in enumerate(th.words))
        assert value == Fraction(p)


def test_tie_continues_with_next_words():
    th = _Threshold.of(0.3 * 2.0**-64)  # first word 0: a first random word of 0 is a tie
    assert th.words[0] == 0 and len(th.words) == 2
    first = np.array([0, 1, 0], np.uint64)
    one = np.uint64(1)
    for nxt, expected in [(th.words[1] - one, True), (th.words[1], False), (th.words[1] + one, False)]:
        bits = lambda n, nxt=nxt: np.array([nxt] * n, np.uint64)  # noqa: E731
        out = _bernoulli(first[None, :], np.array([[th.words[0]]], np.uint64), (th,), bits)
        assert out.tolist() == [[expected, False, expected]]
