"""Privacy settings of a run, validated with errors that name the config key."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dpstream.errors import ConfigError

MECHANISMS = ("gaussian", "laplace")


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """The config keys of the identity mechanism (flat in the YAML config).

    ``epsilon`` defaults to 1: at the embedding sizes used (d ≈ 128) the released identity is
    nearly uncorrelated with the real one for every ε ≤ 8, so a lower ε costs almost no visible
    quality while bounding an attacker far more tightly (see PRIVACY.md, "Choosing ε").
    """

    mechanism: str = "gaussian"
    epsilon: float = 1.0
    delta: float = 1e-5  # used by the Gaussian mechanism only; Laplace is pure ε-DP
    clip_norm: float | None = None  # None: the face model manifest's clip_norm
    reassociation_threshold: float = 0.6  # cosine similarity of raw embeddings
    reassociation_ttl: float = 60.0  # seconds a person stays re-associable after its last track
    reassociation_wait: float = 1.0  # seconds a new face may be blurred while it could be a returning person
    max_people: int = 256  # bound on people held in memory for re-association

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ConfigError(f"mechanism: must be one of {', '.join(MECHANISMS)}, got {self.mechanism!r}")
        _number("epsilon", self.epsilon, "a number > 0", lambda x: x > 0)
        _number("delta", self.delta, "a number in (0, 1)", lambda x: 0 < x < 1)
        if self.clip_norm is not None:
            _number("clip_norm", self.clip_norm, "a number > 0 or null", lambda x: x > 0)
        _number("reassociation_threshold", self.reassociation_threshold, "a cosine in [-1, 1]", lambda x: -1 <= x <= 1)
        _number("reassociation_ttl", self.reassociation_ttl, "a number of seconds >= 0", lambda x: x >= 0)
        _number("reassociation_wait", self.reassociation_wait, "a number of seconds >= 0", lambda x: x >= 0)
        if isinstance(self.max_people, bool) or not isinstance(self.max_people, int) or self.max_people < 1:
            raise ConfigError(f"max_people: must be an integer >= 1, got {self.max_people!r}")


def _number(key: str, value: object, what: str, ok) -> None:
    if isinstance(value, str):
        raise ConfigError(f"{key}: must be {what}, got the text {value!r} (YAML reads 1e-5 as text; write 1.0e-5)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{key}: must be {what}, got {value!r}")
