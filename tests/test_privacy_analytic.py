"""Analytic Gaussian mechanism (Balle & Wang 2018): σ against published values and quadrature."""

import math

import opendp.prelude as dp
import pytest
from scipy import integrate
from scipy.stats import norm

from dpstream.privacy.analytic import analytic_gaussian_sigma, gaussian_delta, gaussian_epsilon, gaussian_mu


@pytest.mark.parametrize(
    "epsilon, delta, sensitivity, sigma",
    [
        # Apple pfl, tests/privacy/test_compute_parameters.py::test_specific ("from an
        # implementation entirely independent of the paper"): σ = √2 at ε = 2.25.
        (2.25, 0.00040834087, 1.0, math.sqrt(2)),
        # Google dp_accounting, accountant_test.py::test_get_smallest_gaussian_noise:
        # σ = 1/3 at ε = 1, δ = 0.78760074 (and σ = 10 for Δ = 6 over 25 queries, i.e. Δ = 30).
        (1.0, 0.78760074, 1.0, 1 / 3),
        (1.0, 0.78760074, 30.0, 10.0),
    ],
)
def test_published_values(epsilon, delta, sensitivity, sigma):
    # δ is published to 8 significant digits, so σ can only match to about 1e-7.
    assert analytic_gaussian_sigma(epsilon, delta, sensitivity) == pytest.approx(sigma, rel=1e-6)


def _delta_by_quadrature(epsilon: float, sigma: float, sensitivity: float) -> float:
    """δ = ∫ max(0, p(y) − e^ε q(y)) dy for p = N(Δ, σ²), q = N(0, σ²): an independent computation."""
    crossing = sigma**2 * epsilon / sensitivity + sensitivity / 2  # p ≥ e^ε q beyond this point
    integrand = lambda y: norm.pdf(y, sensitivity, sigma) - math.exp(epsilon) * norm.pdf(y, 0, sigma)  # noqa: E731
    value, _ = integrate.quad(integrand, crossing, crossing + 40 * sigma, epsabs=0, epsrel=1e-12, limit=200)
    return value


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 4.0, 8.0, 20.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-9])
def test_sigma_meets_delta_exactly(epsilon, delta):
    sigma = analytic_gaussian_sigma(epsilon, delta, 2.0)
    assert _delta_by_quadrature(epsilon, sigma, 2.0) == pytest.approx(delta, rel=1e-6)
    # a little less noise would not be (ε, δ)-DP: σ is the smallest
    assert _delta_by_quadrature(epsilon, sigma * (1 - 1e-4), 2.0) > delta


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0])
def test_tighter_than_classical(epsilon):
    classical = math.sqrt(2 * math.log(1.25 / 1e-5)) / epsilon
    assert analytic_gaussian_sigma(epsilon, 1e-5, 1.0) < classical


@pytest.mark.parametrize("epsilon", [1.0, 4.0, 8.0])
def test_consistent_with_opendp_conversion(epsilon):
    """OpenDP's generic zCDP → (ε, δ) bound is looser than the exact profile, never tighter."""
    dp.enable_features("contrib")
    sigma = analytic_gaussian_sigma(epsilon, 1e-5, 1.0)
    gaussian = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=sigma)
    opendp_epsilon = dp.c.make_zCDP_to_approxDP(gaussian).map(1.0).epsilon(1e-5)
    assert epsilon <= opendp_epsilon <= 1.2 * epsilon


def test_epsilon_is_the_inverse():
    for epsilon in (0.3, 1.0, 6.0):
        mu = gaussian_mu(epsilon, 1e-6)
        assert gaussian_epsilon(1e-6, mu) == pytest.approx(epsilon, rel=1e-9)
    assert gaussian_delta(1.0, 0.0) == 0.0
    assert gaussian_epsilon(0.5, 0.1) == 0.0  # δ already met at ε = 0


def test_rejects_bad_parameters():
    for args in [(0, 1e-5, 1), (1, 0, 1), (1, 1, 1), (1, 1e-5, 0)]:
        with pytest.raises(ValueError):
            analytic_gaussian_sigma(*args)
