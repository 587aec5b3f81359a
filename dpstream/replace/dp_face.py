"""Method ``dp``: each person's face is re-rendered from a noisy identity drawn once per person.

face -> encoder (raw identity, clipped) -> privacy core (noise once per person, post-processed
to a typical norm) -> decoder with this frame's pose/expression -> warp back and blend.
Raw identities live only inside the identity cache, in memory; any face that cannot be
encoded or rendered gets the fail-closed fallback.
"""

from __future__ import annotations

import numpy as np

from dpstream.config import Config
from dpstream.face_model import FaceModel
from dpstream.privacy import IdentityCache, PrivacyConfig, make_mechanism
from dpstream.replace.fallback import apply_fallback
from dpstream.types import Faces, ReplacedFrame, VideoFrame


class DpFaceReplacer:
    """Replaces faces by decoded faces of noisy identities (DP-Image, one draw per person)."""

    name = "dp"

    def __init__(self, model: FaceModel, privacy: PrivacyConfig, min_face_px: float = 0.0, testing_seed: int | None = None):
        self.model = model
        self.min_face_px = min_face_px
        mechanism = make_mechanism(privacy, model.dim, privacy.clip_norm or model.clip_norm, testing_seed=testing_seed)
        self.identities = IdentityCache(mechanism, privacy, model.post_process)
        self.rendered = 0
        self.fallbacks = 0
        self.too_small = 0

    @classmethod
    def from_config(cls, config: Config) -> DpFaceReplacer:
        return cls(FaceModel.load(config.model), config.privacy, min_face_px=config.dp_min_face_px)

    def replace(self, frame: VideoFrame, faces: Faces) -> ReplacedFrame:
        image = frame.image
        # no mesh, or no track (noise must be drawn once per person): fail closed
        failed = ~faces.has_mesh() | (faces.track_ids < 0)
        # below the validated face size the context left around a new face re-identifies: blur
        small = ~failed & (mesh_heights(faces.landmarks) < self.min_face_px)
        self.too_small += int(small.sum())
        failed |= small
        identities: dict[int, np.ndarray] = {}
        # known tracks first (the cache asks for this), and every new person is encoded from the
        # untouched frame before any face is redrawn
        pending = sorted(np.flatnonzero(~failed), key=lambda i: int(faces.track_ids[i]) not in self.identities)
        for index in pending:
            landmarks = faces.landmarks[index]
            try:
                person = self.identities.person_for_track(
                    int(faces.track_ids[index]), frame.time, lambda lm=landmarks: self.model.encode(image, lm)
                )
                identities[index] = person.noisy_embedding
            except Exception:  # fail closed
                failed[index] = True
        for index, identity in identities.items():
            try:
                self.model.render(image, faces.landmarks[index], identity)
                self.rendered += 1
            except Exception:  # fail closed: render raises before touching the image
                failed[index] = True
        self.identities.end_frame(faces.track_ids[faces.track_ids >= 0], frame.time)
        fallbacks = apply_fallback(image, faces.select(failed)) if failed.any() else 0
        self.fallbacks += fallbacks
        return ReplacedFrame(frame, faces, fallbacks)

    def summary(self) -> dict:
        return {
            "method": self.name,
            "model": self.model.manifest.name,
            "provider": self.model.provider,
            "faces_rendered": self.rendered,
            "fallbacks": self.fallbacks,
            "fallbacks_too_small": self.too_small,
            "people": len(self.identities.ledger().people),
        }

    def ledger(self) -> dict:
        return {
            "method": self.name,
            "model": self.model.manifest.name,
            "faces_rendered": self.rendered,
            "fallbacks": self.fallbacks,  # faces covered by the heavy blur instead of a rendered face
            "fallbacks_too_small": self.too_small,  # of those: smaller than dp_min_face_px
            **self.identities.ledger().to_dict(),
        }

    def close(self) -> None:
        self.identities.close()


def mesh_heights(landmarks: np.ndarray) -> np.ndarray:
    """(N,) height in pixels of each (478, 2) face mesh (NaN without mesh)."""
    return landmarks[:, :, 1].max(axis=1) - landmarks[:, :, 1].min(axis=1)
