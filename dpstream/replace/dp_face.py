"""Method ``dp``: each person's face is re-rendered from a noisy identity drawn once per person.

face -> encoder (raw identity, clipped) -> privacy core (noise once per person, post-processed
to a typical norm) -> with a context stage (model ``fitted``), fitted to the head around the
face (once per person, from its first rendered frame) -> decoder with this frame's pose/expression -> warp back and blend
-> with ``region: head``, generated hair over the head around it (``dpstream/head.py``).
Raw identities live only inside the identity cache, in memory; any face that cannot be
encoded or rendered gets the fail-closed fallback.

Stills (unrelated photos, each face its own track at the photo's instant): no face waits or is
held back, each face draws its own identity unless ``link_people`` links faces of one person
across the photos by re-association (one draw per person for the whole set).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import numpy as np

from dpstream.config import Config
from dpstream.face_model import FaceModel
from dpstream.face_model.model import PersonLook
from dpstream.face_model.runtime import RUNTIME_ERRORS
from dpstream.privacy import Identity, IdentityCache, PrivacyConfig, make_mechanism
from dpstream.privacy.registry import ScopedRegistry
from dpstream.head import HEAD_FALLBACK_MARGIN, HairStyle, HeadPainter, face_luminance, hair_style
from dpstream.replace.fallback import FALLBACK_MARGIN, apply_fallback
from dpstream.types import Faces, ReplacedFrame, VideoFrame


MIN_INSIDE_TO_ENCODE = 0.95
"""A new track is encoded (and its person matched or drawn) once this much of its mesh is in the frame."""
CONDITIONED_PEOPLE_KEPT = 4096
"""People whose head-fitted identity (and generated hair, ``region: head``) is kept, most recently
rendered first."""


def kept_per_person(kept: OrderedDict, person_id: int, make):
    """``kept[person_id]``, made by ``make()`` the first time; the ``CONDITIONED_PEOPLE_KEPT`` people
    used most recently are kept (one forgotten and seen again is made again, from that frame)."""
    value = kept.get(person_id)
    if value is None:
        value = kept[person_id] = make()
        if len(kept) > CONDITIONED_PEOPLE_KEPT:
            kept.popitem(last=False)
    kept.move_to_end(person_id)
    return value


class DpFaceReplacer:
    """Replaces faces by decoded faces of noisy identities (DP-Image, one draw per person)."""

    name = "dp"

    def __init__(
        self,
        model: FaceModel,
        privacy: PrivacyConfig,
        min_face_px: float = 0.0,
        testing_seed: int | None = None,
        *,
        stills: bool = False,
        link_people: bool = False,
        region: str = "face",
        registry: ScopedRegistry | None = None,
    ):
        self.model = model
        self.head = HeadPainter() if region == "head" else None
        self._hair: OrderedDict[int, HairStyle] = OrderedDict()  # person id -> generated hair (region head)
        self.min_face_px = min_face_px
        self.stills = stills
        self.link_people = link_people or not stills
        mechanism = make_mechanism(privacy, model.dim, privacy.clip_norm or model.clip_norm, testing_seed=testing_seed)
        # stills: a person stays linkable for the whole set (times are photo indices)
        ttl = math.inf if stills else None
        self.identities = IdentityCache(
            mechanism, privacy, model.post_process, link=self.link_people, ttl=ttl, registry=registry
        )
        self.rendered = 0
        self.fallbacks = 0
        self.no_mesh = 0
        self.too_small = 0
        self.entering = 0
        self.waiting = 0
        self.refused = 0
        self.model_failed = 0
        self.model_failure: str | None = None  # the first error the face model's network raised
        self.photos = 0
        self.photos_with_faces = 0
        self.reassociation_wait = privacy.reassociation_wait
        self._new_tracks: dict[int, float] = {}  # track id -> first time seen, until it has a person
        self._conditioned: OrderedDict[int, PersonLook] = OrderedDict()  # person id -> what its face is drawn from

    @classmethod
    def from_config(cls, config: Config, stills: bool = False, registry: ScopedRegistry | None = None) -> DpFaceReplacer:
        model = FaceModel.load(config.model)
        try:
            model.warm_up()
        except Exception:  # a model that fails here fails on real faces too, where it is counted
            pass
        return cls(
            model,
            config.privacy,
            min_face_px=config.dp_min_face_px,
            stills=stills,
            link_people=config.link_people,
            region=config.region,
            registry=registry,
        )

    def replace(self, frame: VideoFrame, faces: Faces) -> ReplacedFrame:
        image = frame.image
        self.photos += self.stills
        self.photos_with_faces += self.stills and len(faces) > 0
        # no mesh, or no track (noise must be drawn once per person): fail closed
        self.no_mesh += int((~faces.has_mesh()).sum())
        failed = ~faces.has_mesh() | (faces.track_ids < 0)
        # below the validated face size the context left around a new face re-identifies: blur
        small = ~failed & (mesh_heights(faces.landmarks) < self.min_face_px)
        self.too_small += int(small.sum())
        failed |= small
        # a new track's identity is taken from a face fully in view (one cut by the frame edge
        # would give a poor embedding, and the returning person would not be recognised)
        # (a still is all there is of its faces: encoded as it is)
        entering = ~failed & (inside_fraction(faces.landmarks, image.shape) < MIN_INSIDE_TO_ENCODE) & (not self.stills)
        entering &= np.array([int(track_id) not in self.identities for track_id in faces.track_ids], bool)
        self.entering += int(entering.sum())
        failed |= entering
        identities: dict[int, np.ndarray] = {}
        people: dict[int, Identity] = {}
        # known tracks first (the cache asks for this), and every new person is encoded from the
        # untouched frame before any face is redrawn
        pending = sorted(np.flatnonzero(~failed), key=lambda i: int(faces.track_ids[i]) not in self.identities)
        for index in pending:
            track_id = int(faces.track_ids[index])
            try:
                embed = self._embedding_to_use(image, faces.landmarks[index], track_id, frame.time)
                if embed is None:
                    self.waiting += 1
                    failed[index] = True
                    continue
                held = faces.held is not None and bool(faces.held[index])
                person = people[index] = self.identities.person_for_track(track_id, frame.time, embed, held)
                identities[index] = self._identity_to_decode(image, faces.landmarks[index], person)
            except Exception as error:  # fail closed
                self._count_refusal(error)
                failed[index] = True
        original = image.copy() if self.head is not None and identities else None
        for index, identity in identities.items():
            try:
                self.model.render(image, faces.landmarks[index], identity)
                self.rendered += 1
            except Exception as error:  # fail closed: render raises before touching the image
                self._count_refusal(error)
                failed[index] = True
        if original is not None:
            for index in identities:
                if failed[index]:
                    continue
                try:
                    self.head.paint(image, faces.landmarks[index], self._hair_of(image, faces.landmarks[index], people[index]), original)
                except Exception as error:  # fail closed: the whole head gets the fallback
                    self._count_refusal(error)
                    failed[index] = True
        self.identities.end_frame(faces.track_ids[faces.track_ids >= 0], frame.time)
        for track_id in [t for t in self._new_tracks if t in self.identities or t not in faces.track_ids]:
            del self._new_tracks[track_id]
        margin = FALLBACK_MARGIN if self.head is None else HEAD_FALLBACK_MARGIN
        fallbacks = apply_fallback(image, faces.select(failed), margin) if failed.any() else 0
        self.fallbacks += fallbacks
        return ReplacedFrame(frame, faces, fallbacks)

    def _identity_to_decode(self, image: np.ndarray, landmarks: np.ndarray, person: Identity) -> PersonLook:
        """The person's release fitted to the head around it, from the first frame it is rendered in
        (the untouched frame), then kept: the face stays the same from frame to frame."""
        kept_context = self.head is None  # region head replaces the surroundings: a generator gets none of them
        return kept_per_person(
            self._conditioned, person.person_id, lambda: self.model.condition(image, landmarks, person.noisy_embedding, kept_context)
        )

    def _hair_of(self, image: np.ndarray, landmarks: np.ndarray, person: Identity) -> HairStyle:
        """The person's generated hair, chosen on its first painted frame (from the rendered face's tone), then kept."""
        return kept_per_person(self._hair, person.person_id, lambda: hair_style(person.noisy_embedding, face_luminance(image, landmarks)))

    def _embedding_to_use(self, image: np.ndarray, landmarks: np.ndarray, track_id: int, time: float):
        """How ``person_for_track`` gets the raw embedding of this face: a callable, or None while
        a new face is held back (blurred) because it may be a person who left and is not
        recognised yet (for up to ``reassociation_wait`` seconds; then it gets its own draw).
        A still has no later frame to wait for: its faces are decided at once."""
        if track_id in self.identities or self.stills:
            return lambda: self.model.encode(image, landmarks)
        first_seen = self._new_tracks.setdefault(track_id, time)
        raw = self.model.encode(image, landmarks)
        if time - first_seen >= self.reassociation_wait or not self.identities.has_absent_people():
            return lambda: raw
        if self.identities.recognises(raw, time):
            return lambda: raw
        raw.fill(0.0)
        return None

    def summary(self) -> dict:
        return {
            "method": self.name,
            "model": self.model.manifest.name,
            "provider": self.model.provider,
            **self._counts(),
            "people": len(self.identities.ledger().people),
            "model_failure": self.model_failure,
        }

    @property
    def releases(self) -> int:
        return self.identities.draws

    def ledger(self) -> dict:
        ledger = self.identities.ledger()
        if self.stills:
            ledger = dataclasses.replace(ledger, stills=True, linked=self.link_people)
        return {"method": self.name, "model": self.model.manifest.name, **self._counts(), **ledger.to_dict()}

    def _count_refusal(self, error: Exception) -> None:
        self.refused += 1
        if isinstance(error, RUNTIME_ERRORS):
            self.model_failed += 1
            self.model_failure = self.model_failure or f"{type(error).__name__}: {str(error).strip()[:200]}"

    def _counts(self) -> dict:
        counts = {
            "faces_rendered": self.rendered,
            "fallbacks": self.fallbacks,  # faces covered by the heavy blur instead of a rendered face
            "fallbacks_no_mesh": self.no_mesh,  # of those: no landmark mesh could be fitted
            "fallbacks_too_small": self.too_small,  # of those: smaller than dp_min_face_px
            "fallbacks_entering": self.entering,  # of those: new faces still cut by the frame edge
            "fallbacks_waiting": self.waiting,  # of those: new faces held back while they may be returning people
            "fallbacks_refused": self.refused,  # of those: the face model could not encode or render it (extreme pose, ...)
            "fallbacks_model_failed": self.model_failed,  # of those refused: the model's network itself failed
        }
        if self.stills:
            counts |= {"photos": self.photos, "photos_with_faces": self.photos_with_faces}
        return counts

    def close(self) -> None:
        self.identities.close()
        self._conditioned.clear()


def inside_fraction(landmarks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N,) fraction of each face's mesh points inside the frame."""
    x, y = landmarks[:, :, 0], landmarks[:, :, 1]
    return ((x >= 0) & (x < shape[1]) & (y >= 0) & (y < shape[0])).mean(axis=1)


def mesh_heights(landmarks: np.ndarray) -> np.ndarray:
    """(N,) height in pixels of each (468, 2) face mesh (NaN without mesh)."""
    return landmarks[:, :, 1].max(axis=1) - landmarks[:, :, 1].min(axis=1)
