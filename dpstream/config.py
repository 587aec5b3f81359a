"""Run configuration: one flat set of keys, read from YAML and overridden by CLI flags.

Every key is documented in ``configs/default.yaml``. Unknown keys and bad values raise
:class:`~dpstream.errors.ConfigError` with a message naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from dpstream.errors import ConfigError
from dpstream.privacy import PrivacyConfig

METHODS = ("dp", "blur", "mosaic", "solid", "dp-pix")


@dataclass(frozen=True, slots=True)
class Config:
    """All settings of one anonymization run (see configs/default.yaml)."""

    method: str = "dp"
    # privacy (dp and dp-pix), validated by PrivacyConfig
    mechanism: str = "gaussian"
    epsilon: float = 1.0
    delta: float = 1e-5
    clip_norm: float | None = None
    reassociation_threshold: float = 0.6
    reassociation_ttl: float = 60.0
    max_people: int = 256
    model: str | None = None
    ledger: str | None = None
    # face finding
    min_face_score: float = 0.5
    face_margin: float = 0.35
    detect_tiles: tuple[int, ...] = (1, 2)
    # baselines
    mosaic_cells: int = 5
    dppix_cell: int = 16
    dppix_m: int = 16
    # output video
    codec: str = "libx264"
    crf: int = 20
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        self.privacy  # validates the privacy keys
        _check_number("min_face_score", self.min_face_score, low=0.0, high=1.0)
        _check_number("face_margin", self.face_margin, low=0.0, high=2.0)
        if not isinstance(self.detect_tiles, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 8 for n in self.detect_tiles
        ):
            raise ConfigError(f"detect_tiles: must be a list of integers 1..8, got {self.detect_tiles!r}")
        _check_int("mosaic_cells", self.mosaic_cells, low=2)
        _check_int("dppix_cell", self.dppix_cell, low=1)
        _check_int("dppix_m", self.dppix_m, low=1)
        _check_int("crf", self.crf, low=0, high=63)
        for key in ("codec", "preset"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"{key}: must be a non-empty string, got {getattr(self, key)!r}")
        for key in ("model", "ledger"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{key}: must be a path string or null, got {value!r}")

    @property
    def privacy(self) -> PrivacyConfig:
        """The privacy keys, as the privacy core takes them."""
        return PrivacyConfig(
            mechanism=self.mechanism,
            epsilon=self.epsilon,
            delta=self.delta,
            clip_norm=self.clip_norm,
            reassociation_threshold=self.reassociation_threshold,
            reassociation_ttl=self.reassociation_ttl,
            max_people=self.max_people,
        )

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with the given keys changed (None values are ignored); validates them."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        _check_known(overrides, "option")
        return replace(self, **{k: _coerce(k, v) for k, v in overrides.items()})


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Read a YAML config (None: built-in defaults) and apply overrides on top."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(Path(path))
        _check_known(values, f"{path}: unknown key")
        try:
            file_config = Config(**{k: _coerce(k, v) for k, v in values.items()})
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    else:
        file_config = Config()
    return file_config.with_overrides(**overrides)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file ({error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


_KNOWN = {f.name: f for f in fields(Config)}


def _check_known(values: dict[str, Any], prefix: str) -> None:
    for key in values:
        if key not in _KNOWN:
            raise ConfigError(f"{prefix} '{key}' (known keys: {', '.join(_KNOWN)})")


def _coerce(key: str, value: Any) -> Any:
    """Turn YAML/CLI values into the key's type; numbers given as strings are parsed."""
    if value is None:
        return None
    if key == "detect_tiles" and isinstance(value, list):
        return tuple(value)
    annotation = str(_KNOWN[key].type)
    if annotation.startswith("float") and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: must be a number, got {value!r}") from None
    if annotation.startswith("int") and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: must be an integer, got {value!r}") from None
    if annotation.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")


def _check_number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if high is None:
            condition = f"{'>' if low_open else '>='} {low:g}"
        elif low is None:
            condition = f"{'<' if high_open else '<='} {high:g}"
        else:
            condition = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{key}: must be {condition}, got {value!r}")


def _check_int(key: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    _check_number(key, value, low=low, high=high)
