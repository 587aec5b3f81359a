"""The DP face model: identity encoder + ONNX decoder + warp/blend, described by a manifest."""

from dpstream.face_model.errors import ManifestError, RenderError
from dpstream.face_model.manifest import Manifest, load_manifest
from dpstream.face_model.model import FaceModel

__all__ = ["FaceModel", "Manifest", "ManifestError", "RenderError", "load_manifest"]
