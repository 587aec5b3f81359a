"""Errors of the face model: a bad manifest (user-fixable) and a face that cannot be rendered."""

from __future__ import annotations

from dpstream.errors import ConfigError


class ManifestError(ConfigError):
    """A model manifest or its ONNX files are missing or inconsistent; the message names the key."""


class RenderError(RuntimeError):
    """This face cannot be encoded or rendered (too small, extreme pose, bad mesh): use the fallback."""


class NetworkError(RuntimeError):
    """The face model's network returned tensors of the wrong shape: the model is broken, not the face."""
