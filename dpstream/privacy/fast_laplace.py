"""Fast Laplace noise for many values per frame (dp-pix), safe against floating-point attacks.

OpenDP's exact sampler costs about 10 µs per value, too slow for ~1,000 values per frame, so
this module samples the same kind of noise, vectorized:

* The noise is ``g·Z`` with ``g = noise_grid(scale)`` a power of two ≤ min(1, scale/1024) and
  Z a discrete Laplace variable, P(Z = z) ∝ exp(−t·|z|), t = g/scale, truncated to
  |Z| ≤ W with t·W ≥ 128. Z = 0 with probability tanh(t/2); otherwise a random sign times
  1 + G, where G is geometric and its binary digits are independent Bernoulli variables with
  P(digit j = 1) = 1/(1 + e^{t·2^j}) (a property of the geometric distribution).
* Each Bernoulli compares uniform bits from the OS CSPRNG with the exact binary expansion of
  its probability (a float), word by word: no float arithmetic touches the random bits.
* Add the noise to values on the same grid (``snap_to_grid``): the sum is exact and every
  output lies on the grid g·ℤ, whatever the input, so nothing leaks through float rounding
  (Mironov, CCS 2012). Clamping or rounding the sum afterwards is post-processing.

Guarantee per value, for values whose snapped difference is at most Δ: probability ratios
within e^{Δ/scale}·(1 + 2⁻⁴⁰) (each float probability is within 2⁻⁵¹ relative, ≤ 49 per value),
except on the truncated tail, of probability below e^{Δ/scale − 128} (a δ under 10⁻⁵⁰ for
ε ≤ 10). Snapping off-grid values moves each by at most g/2, so neighbours' snapped values
differ by at most Δ + g: use ε ≈ (Δ + g)/scale, i.e. at most ε + 2⁻¹⁰ per changed value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

_TAIL = 128.0  # truncation point of |noise| in units of scale
_MIN_SCALE, _MAX_SCALE = 1e-250, 1e12  # keeps the grid a normal float and the digits within int64
_WORD = 64
_MASK = (1 << _WORD) - 1

Bits = Callable[[int], np.ndarray]  # n -> n uniform uint64 words


def noise_grid(scale: float) -> float:
    """The power of two g ≤ min(1, scale/1024) that ``laplace_noise(…, scale)`` values are multiples of."""
    exponent = math.frexp(_checked_scale(scale))[1]  # 2^(exponent-1) <= scale < 2^exponent
    return math.ldexp(1.0, min(0, exponent - 11))


def snap_to_grid(values: np.ndarray, scale: float) -> np.ndarray:
    """Round values to the noise grid of ``scale`` (exact float operations; moves each by ≤ g/2)."""
    values = np.asarray(values, np.float64)
    if not np.isfinite(values).all():
        raise ValueError("snap_to_grid: values must be finite (no NaN or inf)")
    g = noise_grid(scale)
    return np.rint(values / g) * g


def laplace_noise(shape: int | tuple[int, ...], scale: float, *, testing_seed: int | None = None) -> np.ndarray:
    """Laplace(scale) noise of the given shape, on the grid ``noise_grid(scale)``, from the OS CSPRNG.

    ``testing_seed`` draws the bits from numpy's seeded PRNG instead: reproducible and NOT private.
    """
    plan = _plan(_checked_scale(scale))
    n = int(np.prod(shape, dtype=np.int64))
    if n == 0:
        return np.zeros(shape)
    bits = _seeded_bits(testing_seed) if testing_seed is not None else _os_bits
    n_sign_words = -(-n // _WORD)
    words = bits(len(plan.thresholds) * n + n_sign_words)
    draws = _bernoulli(words[: len(plan.thresholds) * n].reshape(-1, n), plan.firsts, plan.thresholds, bits)
    zero, digits = draws[0], draws[1:]
    geometric = (digits.astype(np.int64) << np.arange(len(digits), dtype=np.int64)[:, None]).sum(axis=0)
    negative = np.unpackbits(words[len(words) - n_sign_words :].view(np.uint8))[:n].astype(bool)
    z = np.where(zero, 0, 1 + geometric)
    return (np.where(negative, -z, z) * plan.grid).reshape(shape)


@dataclass(frozen=True)
class _Threshold:
    """A probability p (a float) as the words of its exact binary expansion: p = 0.w0 w1 w2…"""

    words: tuple[np.uint64, ...]

    @classmethod
    def of(cls, p: float) -> _Threshold:
        numerator, denominator = p.as_integer_ratio()  # denominator = 2^k
        k = denominator.bit_length() - 1
        n_words = max(1, -(-k // _WORD))
        t = numerator << (n_words * _WORD - k)
        return cls(tuple(np.uint64((t >> (_WORD * (n_words - 1 - i))) & _MASK) for i in range(n_words)))


@dataclass(frozen=True)
class _Plan:
    grid: float
    thresholds: tuple[_Threshold, ...]  # P(Z = 0), then P(digit j of G = 1) for j = 0, 1, …
    firsts: np.ndarray  # (len(thresholds), 1) the first word of each threshold


@lru_cache(maxsize=64)
def _plan(scale: float) -> _Plan:
    g = noise_grid(scale)
    t = g / scale
    n_digits = math.ceil(math.log2(_TAIL / t))
    probabilities = [math.tanh(t / 2)] + [1.0 / (1.0 + math.exp(t * 2.0**j)) for j in range(n_digits)]
    thresholds = tuple(_Threshold.of(p) for p in probabilities)
    return _Plan(g, thresholds, np.array([[th.words[0]] for th in thresholds], np.uint64))


def _bernoulli(words: np.ndarray, firsts: np.ndarray, thresholds: tuple[_Threshold, ...], bits: Bits) -> np.ndarray:
    """Row r: uniform bits < thresholds[r], decided by the first word except on a tie (chance 2⁻⁶⁴)."""
    out = words < firsts
    for r, i in zip(*np.nonzero(words == firsts)):
        out[r, i] = _after_tie(thresholds[r].words[1:], bits)
    return out


def _after_tie(words: tuple[np.uint64, ...], bits: Bits) -> bool:
    for word in words:
        r = bits(1)[0]
        if r != word:
            return bool(r < word)
    return False  # the uniform bits equal p's expansion: not below p


def _os_bits(n: int) -> np.ndarray:
    return np.frombuffer(os.urandom(8 * n), np.uint64)


def _seeded_bits(seed: int) -> Bits:
    rng = np.random.default_rng(seed)
    return lambda n: np.frombuffer(rng.bytes(8 * n), np.uint64)


def _checked_scale(scale: float) -> float:
    is_number = isinstance(scale, (int, float, np.floating, np.integer)) and not isinstance(scale, bool)
    value = float(scale) if is_number else math.nan
    if not _MIN_SCALE <= value <= _MAX_SCALE:
        raise ValueError(f"Laplace scale must be a number in [{_MIN_SCALE:g}, {_MAX_SCALE:g}], got {scale!r}")
    return value
