"""dpstream: face anonymization for video with a differential-privacy guarantee.

``anonymize``, ``anonymize_frames`` and ``batch`` (on Ray) load MediaPipe and the face model on first use, so
importing the package (or its config) stays fast.
"""

import os
from importlib import import_module

# ONNX Runtime's Linux wheels keep a device id and queued telemetry events under ~/.cache and
# $TMPDIR unless this is set when onnxruntime is first imported (so: before any stage loads it).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from dpstream.config import Config, load_config
from dpstream.errors import ConfigError, DpstreamError, InputError, OutputError
from dpstream.types import Faces, ReplacedFrame, VideoFrame

__version__ = "0.1.0"

_PIPELINE_NAMES = ("Anonymizer", "RunSummary", "anonymize", "anonymize_frames")


def __getattr__(name: str):
    if name in _PIPELINE_NAMES:
        return getattr(import_module("dpstream.pipeline"), name)
    if name in ("batch", "BatchSummary"):
        return getattr(import_module("dpstream.batch"), name)
    raise AttributeError(f"module 'dpstream' has no attribute {name!r}")


__all__ = [
    "Config",
    "ConfigError",
    "DpstreamError",
    "Faces",
    "InputError",
    "OutputError",
    "ReplacedFrame",
    "BatchSummary",
    "VideoFrame",
    "batch",
    "load_config",
    *_PIPELINE_NAMES,
]
