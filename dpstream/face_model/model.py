"""``FaceModel``: the one entry point the replacer uses (encode, post-process, render)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dpstream.face_model.appearance import AppearanceModel
from dpstream.face_model.context import ContextModel
from dpstream.face_model.errors import ManifestError, NetworkError, RenderError
from dpstream.face_model.manifest import Manifest, load_manifest
from dpstream.face_model.runtime import active_provider
from dpstream.face_model.swap import SwapModel


class _Backend(Protocol):
    encoder: object

    def encode(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray: ...

    def render(self, image_rgb: np.ndarray, landmarks: np.ndarray, identity: np.ndarray) -> None: ...

    def warm_up(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PersonLook:
    """What one person's face is drawn from, fixed at its first rendered frame: the identity to
    decode and, for a model with a generator stage, the kept context of that frame."""

    identity: np.ndarray  # (dim,)
    context: np.ndarray | None = None  # (1, 4, S, S) generator input (``AppearanceModel.context_planes``)


class FaceModel:
    """An identity encoder and a decoder that renders a face with a given identity into a frame."""

    def __init__(self, manifest: Manifest, backend: _Backend):
        self.manifest = manifest
        self._backend = backend
        self._context = None
        if manifest.context_path is not None:
            self._context = ContextModel.load(manifest.context_path, manifest.embedding_dim, backend.template.size)
        self._codebook = None
        if manifest.codebook_path is not None:
            codebook = np.load(manifest.codebook_path).astype(np.float64)
            if codebook.ndim != 2 or codebook.shape[1] != manifest.embedding_dim:
                raise ManifestError(f"model manifest: codebook must be (K, {manifest.embedding_dim}), got {codebook.shape}")
            self._codebook = codebook
            self._codebook_directions = codebook / np.linalg.norm(codebook, axis=1, keepdims=True)

    @classmethod
    def load(cls, manifest_path: str | Path | None = None, threads: int = 1) -> FaceModel:
        """Load a model from its manifest, a built-in model name, or ``None`` (the default model).

        One ONNX Runtime thread by default: in a file run decoding and encoding use the other core.
        """
        manifest = load_manifest(manifest_path)
        backend = AppearanceModel(manifest, threads) if manifest.kind == "appearance" else SwapModel(manifest, threads)
        return cls(manifest, backend)

    def warm_up(self) -> None:
        """Run the networks (and kernels) once on a synthetic face: the first real face is then
        as fast as the others. Touches no frame and no privacy state."""
        self._backend.warm_up()

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def clip_norm(self) -> float:
        return self.manifest.clip_norm

    @property
    def provider(self) -> str:
        return active_provider(self._backend.encoder)

    def encode(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(dim,) raw identity vector of the face, its norm clipped to ``clip_norm``."""
        identity = self._backend.encode(image_rgb, landmarks)
        if identity.shape != (self.dim,):
            raise NetworkError(f"the encoder returned shape {identity.shape}, the manifest says ({self.dim},)")
        norm = float(np.linalg.norm(identity))
        if not np.isfinite(norm):
            raise RenderError("encoder returned a non-finite identity")
        return identity * min(1.0, self.clip_norm / norm) if norm > 0 else identity

    def post_process(self, noisy_identity: np.ndarray) -> np.ndarray:
        """Map a noisy identity to a plausible one (post-processing of the DP output: no privacy cost).

        With a codebook: the mean of the codebook identities most aligned with it; then scaled
        to the model's typical norm.
        """
        released = np.asarray(noisy_identity, np.float64).reshape(-1)
        if self._codebook is not None:
            nearest = np.argpartition(-(self._codebook_directions @ released), self.manifest.codebook_neighbours - 1)
            released = self._codebook[nearest[: self.manifest.codebook_neighbours]].mean(0)
        norm = float(np.linalg.norm(released))
        if not np.isfinite(norm) or norm == 0:
            return np.zeros_like(released)
        return released * (self.manifest.typical_norm / norm)

    def condition(self, image_rgb: np.ndarray, landmarks: np.ndarray, released: np.ndarray, kept_context: bool = True) -> PersonLook:
        """What to draw for a post-processed release on this face: the identity fitted to the
        head around it when the model has a context stage (``context.py``), else ``released``
        itself; with a generator stage, also the context it draws from (zero where the caller
        replaces the surroundings too: ``kept_context`` False).

        Post-processing with channels the renderer keeps anyway; call it once per person (its
        first rendered frame) and render that person's later frames with the result.
        """
        released = np.asarray(released, np.float64).reshape(-1)
        identity = released
        if self._context is not None:
            identity = self._context.condition(released, self._backend.texture(image_rgb, landmarks))
        if self.manifest.generator is None:
            return PersonLook(identity)
        context = self._backend.context_planes(image_rgb, landmarks)
        return PersonLook(identity, context if kept_context else np.zeros_like(context))

    def render(self, image_rgb: np.ndarray, landmarks: np.ndarray, look: PersonLook | np.ndarray) -> None:
        """Blend a face drawn from ``look`` (or a bare identity vector: a generator model then
        draws from this frame's context) with this frame's pose/expression into ``image_rgb``.

        Raises ``RenderError`` when the face cannot be rendered (the caller falls back).
        """
        look = look if isinstance(look, PersonLook) else PersonLook(look)
        identity = np.asarray(look.identity, np.float64).reshape(-1)
        if identity.shape != (self.dim,) or not np.isfinite(identity).all():
            raise RenderError(f"identity must be {self.dim} finite values, got shape {identity.shape}")
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise RenderError("image must be (H, W, 3) uint8 RGB")
        if look.context is None:
            self._backend.render(image_rgb, landmarks, identity)
        else:
            self._backend.render(image_rgb, landmarks, identity, look.context)
