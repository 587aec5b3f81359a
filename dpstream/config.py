"""Run configuration: one flat set of keys, read from YAML and overridden by CLI flags.

Every key is documented in ``configs/default.yaml``. Unknown keys and bad values raise
:class:`~dpstream.errors.ConfigError` with a message naming the key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from dpstream.errors import ConfigError
from dpstream.privacy import PrivacyConfig

METHODS = ("dp", "blur", "mosaic", "solid", "dp-pix")
TRANSPORTS = ("tcp", "udp")
DETECTOR_RECALL = ("normal", "high")
REGIONS = ("face", "head")


@dataclass(frozen=True, slots=True)
class Config:
    """All settings of one anonymization run (see configs/default.yaml)."""

    method: str = "dp"
    region: str = "face"  # dp: replace the face, or the head (hair and outline too)
    # privacy (dp and dp-pix), validated by PrivacyConfig
    mechanism: str = "gaussian"
    epsilon: float = 1.0
    delta: float = 1e-5
    clip_norm: float | None = None
    reassociation_threshold: float = 0.6
    reassociation_ttl: float = 60.0
    reassociation_wait: float = 1.0
    max_people: int = 256
    link_people: bool = False
    model: str | None = None
    dp_min_face_px: float = 100.0
    ledger: str | None = None
    # face finding
    min_face_score: float = 0.5
    face_margin: float = 0.35
    detect_tiles: tuple[int, ...] = (1, 2)
    detector_recall: str = "high"
    recall_every: int = 10
    # tracking
    detect_every: int = 5
    lookahead_frames: int = 9
    hold_seconds: float = 0.25
    # baselines
    mosaic_cells: int = 5
    dppix_cell: int = 16
    dppix_m: int = 16
    # output video
    codec: str = "libx264"
    crf: int = 20
    preset: str = "veryfast"
    # live streams (dpstream webcam / relay)
    live_queue: int = 2
    live_gop: int = 30
    live_tune: str | None = "zerolatency"
    live_encoder_threads: int = 1
    transport: str = "tcp"
    io_timeout: float = 5.0
    listen: bool = False
    reconnect_delay: float = 0.5
    reconnect_max_delay: float = 10.0
    reconnect_jitter: float = 0.3
    capture_size: str | None = None
    capture_fps: float | None = None
    capture_pixel_format: str | None = None
    capture_audio: str | None = None  # webcam microphone (dpstream webcam --audio DEVICE)
    live_audio: bool = True  # relay the source's audio / record the microphone (false: video only)
    audio_bitrate: int = 128_000  # bits/s of the live outputs' audio (AAC, Opus for WebM)

    @property
    def detection_gap(self) -> int:
        """The most frames (file runs) between runs of the detectors that may find a face first."""
        return max(self.detect_every, self.recall_every if self.detector_recall == "high" else 1)

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("region", self.region, REGIONS)
        if self.region == "head" and self.method != "dp":
            raise ConfigError(f"region: head is drawn by method dp only, got method {self.method!r}")
        self.privacy  # validates the privacy keys
        _check_number("min_face_score", self.min_face_score, low=0.0, high=1.0)
        _check_choice("detector_recall", self.detector_recall, DETECTOR_RECALL)
        _check_number("face_margin", self.face_margin, low=0.0, high=2.0)
        _check_number("dp_min_face_px", self.dp_min_face_px, low=0.0)
        if not isinstance(self.link_people, bool):
            raise ConfigError(f"link_people: must be true or false, got {self.link_people!r}")
        if not isinstance(self.detect_tiles, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 8 for n in self.detect_tiles
        ):
            raise ConfigError(f"detect_tiles: must be a list of integers 1..8, got {self.detect_tiles!r}")
        _check_int("detect_every", self.detect_every, low=1, high=60)
        _check_int("recall_every", self.recall_every, low=1, high=60)
        _check_int("lookahead_frames", self.lookahead_frames, low=0, high=300)
        if self.lookahead_frames < self.detection_gap - 1:
            raise ConfigError(
                f"lookahead_frames: must be at least {self.detection_gap - 1} (detect_every - 1, or recall_every - 1 at "
                f"detector_recall high: a face first detected late is covered back to the detector's previous run), "
                f"got {self.lookahead_frames}"
            )
        _check_number("hold_seconds", self.hold_seconds, low=0.0, high=10.0)
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
        self._check_live()

    def _check_live(self) -> None:
        _check_int("live_queue", self.live_queue, low=1, high=1000)
        _check_int("live_gop", self.live_gop, low=1)
        _check_int("live_encoder_threads", self.live_encoder_threads, low=0, high=64)
        _check_choice("transport", self.transport, TRANSPORTS)
        _check_number("io_timeout", self.io_timeout, low=0.0, low_open=True)
        if not isinstance(self.listen, bool):
            raise ConfigError(f"listen: must be true or false, got {self.listen!r}")
        _check_number("reconnect_delay", self.reconnect_delay, low=0.0, low_open=True)
        _check_number("reconnect_max_delay", self.reconnect_max_delay, low=self.reconnect_delay)
        _check_number("reconnect_jitter", self.reconnect_jitter, low=0.0, high=1.0)
        if self.capture_size is not None and not (
            isinstance(self.capture_size, str) and re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", self.capture_size)
        ):
            raise ConfigError(f"capture_size: must be WIDTHxHEIGHT such as 1280x720, or null, got {self.capture_size!r}")
        if self.capture_fps is not None:
            _check_number("capture_fps", self.capture_fps, low=0.0, low_open=True)
        if not isinstance(self.live_audio, bool):
            raise ConfigError(f"live_audio: must be true or false, got {self.live_audio!r}")
        _check_int("audio_bitrate", self.audio_bitrate, low=8_000, high=512_000)
        for key in ("live_tune", "capture_pixel_format", "capture_audio"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{key}: must be a non-empty string or null, got {value!r}")

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
            reassociation_wait=self.reassociation_wait,
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
            shown = f"'{key}'" if isinstance(key, str) and key.isprintable() else repr(key)  # one line, whatever the key
            raise ConfigError(f"{prefix} {shown} (known keys: {', '.join(_KNOWN)})")


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
