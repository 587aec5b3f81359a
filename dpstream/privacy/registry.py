"""A person registry shared by the parts of a batch run: one noisy draw per person across files
and chunks processed in parallel (``dpstream.batch`` runs it as a Ray actor).

It holds, in memory only, a few unit raw embeddings per person (to re-associate) and the
person's noisy embedding; ``close`` wipes them. Calls are serialised (an actor runs one at a
time), so two parts meeting a new person at once give it one draw: the first call draws, the
second matches. ``scope`` separates namespaces: with ``registry: file`` each file is its own
scope (a person is re-associated within a file only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from dpstream.privacy.config import PrivacyConfig
from dpstream.privacy.mechanisms import Mechanism, check_embedding

REFS_PER_PERSON = 8  # raw embeddings kept per person for matching (its latest tracks)


def best_match(unit: np.ndarray, candidates: Iterable[tuple[object, list[np.ndarray]]], threshold: float):
    """The candidate whose unit raw embeddings (``refs``) come closest to ``unit`` (cosine of the best
    ref), if at least ``threshold``; else None. ``candidates``: (item, refs) pairs."""
    best, best_similarity = None, threshold
    for item, refs in candidates:
        if not refs:
            continue
        similarity = max(float(unit @ ref) for ref in refs)
        if similarity >= best_similarity:
            best, best_similarity = item, similarity
    return best


def noisy_release(mechanism: Mechanism, post_process: Callable[[np.ndarray], np.ndarray] | None, raw: np.ndarray) -> np.ndarray:
    """One draw: the mechanism's release of ``raw``, post-processed (float64)."""
    noisy = mechanism.release(raw)
    return noisy if post_process is None else np.asarray(post_process(noisy), np.float64)


@dataclass
class _Entry:
    person_id: int
    scope: str
    noisy: np.ndarray
    refs: list[np.ndarray] = field(default_factory=list)
    last_used: int = 0

    def wipe(self) -> None:
        for ref in self.refs:
            ref.fill(0.0)
        self.refs.clear()


class ScopedRegistry:
    """What an identity cache asks of a registry, for one scope: a registry in this process, or
    (``call``) any callable running a registry method elsewhere, such as on a Ray actor."""

    def __init__(self, scope: str, registry: PersonRegistry | None = None, call: Callable | None = None):
        self.scope = scope
        self._call = call or (lambda method, *args: getattr(registry, method)(*args))

    def person_for(self, raw: np.ndarray, exclude: list[int]) -> tuple[int, np.ndarray]:
        return self._call("person_for", raw, self.scope, exclude)

    def recognises(self, raw: np.ndarray, exclude: list[int]) -> bool:
        return self._call("recognises", raw, self.scope, exclude)

    def has_people(self, exclude: list[int]) -> bool:
        return self._call("has_people", self.scope, exclude)


class PersonRegistry:
    """Matches raw embeddings to people (cosine ≥ ``reassociation_threshold``) or draws a new
    person; person ids count up from ``first_person_id``. At most ``max_people`` people stay
    matchable (the least recently used are wiped first; their draw stays counted)."""

    def __init__(
        self,
        mechanism: Mechanism,
        config: PrivacyConfig,
        post_process: Callable[[np.ndarray], np.ndarray] | None = None,
        first_person_id: int = 0,
    ):
        self._mechanism = mechanism
        self._post_process = post_process
        self._threshold = config.reassociation_threshold
        self._max_people = config.max_people
        self._entries: list[_Entry] = []
        self._next_id = first_person_id
        self._calls = 0

    @classmethod
    def for_config(cls, config, first_person_id: int = 0) -> PersonRegistry:
        """The registry for a run of ``config`` (a dpstream Config with method dp): its model's
        embedding size, clipping and post-processing."""
        from dpstream.face_model import FaceModel
        from dpstream.privacy.mechanisms import make_mechanism

        model = FaceModel.load(config.model)
        privacy = config.privacy
        mechanism = make_mechanism(privacy, model.dim, privacy.clip_norm or model.clip_norm)
        return cls(mechanism, privacy, model.post_process, first_person_id)

    def person_for(self, raw: np.ndarray, scope: str, exclude: Iterable[int] = ()) -> tuple[int, np.ndarray]:
        """(person id, noisy embedding) for a new track's raw embedding: the best-matching person
        of ``scope`` not in ``exclude`` (people on screen in the caller's frame), else a new draw."""
        raw = check_embedding(np.array(raw, np.float64), self._mechanism.dim)
        length = float(np.linalg.norm(raw))
        unit = raw / length if length > 0 else None
        entry = self._match(unit, scope, set(exclude)) if unit is not None else None
        if entry is None:
            entry = self._draw(raw, scope)
        if unit is not None:
            entry.refs.append(unit)
            if len(entry.refs) > REFS_PER_PERSON:
                entry.refs.pop(0).fill(0.0)
        raw.fill(0.0)
        self._touch(entry)
        return entry.person_id, entry.noisy

    def recognises(self, raw: np.ndarray, scope: str, exclude: Iterable[int] = ()) -> bool:
        """Whether ``person_for`` would match a known person (no new draw)."""
        raw = np.array(raw, np.float64)
        length = float(np.linalg.norm(raw))
        found = length > 0 and self._match(raw / length, scope, set(exclude)) is not None
        raw.fill(0.0)
        return found

    def has_people(self, scope: str, exclude: Iterable[int] = ()) -> bool:
        """Whether a matchable person of ``scope`` exists outside ``exclude``."""
        excluded = set(exclude)
        return any(e.refs and e.scope == scope and e.person_id not in excluded for e in self._entries)

    @property
    def mechanism(self) -> dict:
        """The mechanism's parameters (``Mechanism.describe()``), for the ledgers."""
        return self._mechanism.describe()

    @property
    def next_person_id(self) -> int:
        return self._next_id

    def close(self) -> None:
        """Wipe and drop every raw and noisy embedding."""
        for entry in self._entries:
            entry.wipe()
        self._entries.clear()

    def _match(self, unit: np.ndarray, scope: str, exclude: set[int]) -> _Entry | None:
        candidates = ((e, e.refs) for e in self._entries if e.scope == scope and e.person_id not in exclude)
        return best_match(unit, candidates, self._threshold)

    def _draw(self, raw: np.ndarray, scope: str) -> _Entry:
        entry = _Entry(self._next_id, scope, noisy_release(self._mechanism, self._post_process, raw))
        self._next_id += 1
        self._entries.append(entry)
        return entry

    def _touch(self, entry: _Entry) -> None:
        self._calls += 1
        entry.last_used = self._calls
        holders = sorted((e for e in self._entries if e.refs), key=lambda e: e.last_used)
        for stale in holders[: max(0, len(holders) - self._max_people)]:
            stale.wipe()
        self._entries = [e for e in self._entries if e.refs]
