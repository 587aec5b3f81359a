"""Per-person noise cache: one noisy identity per person, reused for every frame and track.

Raw embeddings live in memory only, as long as a person can still be re-associated (while
one of its tracks is active, then ``reassociation_ttl`` seconds), for at most ``max_people``
people; then they are overwritten with zeros and dropped. Nothing raw is logged or stored.
Without linking (``link=False``: unrelated stills) every track is its own person and no raw
embedding is kept at all. With a ``registry`` (the parts of a batch run) people are matched and
drawn there, shared with the run's other parts; the cache then keeps no raw embedding itself
and its ledger holds this part's records (person ids are the registry's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from dpstream.privacy.config import PrivacyConfig
from dpstream.privacy.ledger import Ledger, PersonRecord
from dpstream.privacy.mechanisms import Mechanism, check_embedding
from dpstream.privacy.registry import REFS_PER_PERSON, ScopedRegistry, best_match, noisy_release


@dataclass(frozen=True, eq=False)
class Identity:
    """What the decoder gets for a face: its person id and that person's noisy embedding."""

    person_id: int
    noisy_embedding: np.ndarray  # read-only, post-processed


@dataclass
class _Person:
    record: PersonRecord
    identity: Identity
    refs: list[np.ndarray] = field(default_factory=list)  # unit raw embeddings (memory only)
    active: set[int] = field(default_factory=set)  # its tracks seen up to the last end_frame
    counted_time: float = float("-inf")  # last frame counted in its record's frames

    def wipe(self) -> None:
        for ref in self.refs:
            ref.fill(0.0)  # best effort: Python may still hold copies we cannot reach
        self.refs.clear()


class IdentityCache:
    """Maps tracks to people and people to one noisy embedding each (see module docstring).

    ``link=False``: no re-association, every new track draws. ``ttl``: seconds a person stays
    re-associable (default ``config.reassociation_ttl``; ``math.inf``: the whole run, still
    bounded by ``max_people``).
    """

    def __init__(
        self,
        mechanism: Mechanism,
        config: PrivacyConfig,
        post_process: Callable[[np.ndarray], np.ndarray] | None = None,
        *,
        link: bool = True,
        ttl: float | None = None,
        registry: ScopedRegistry | None = None,
    ):
        self._mechanism = mechanism
        self._config = config
        self._post_process = post_process
        self._link = link
        self._ttl = config.reassociation_ttl if ttl is None else ttl
        self._registry = registry
        self._people: dict[int, _Person] = {}  # people still in memory
        self._records: list[PersonRecord] = []  # every person of the run, for the ledger
        self._tracks: dict[int, int] = {}  # active track id -> person id
        self._now = float("-inf")

    def __contains__(self, track_id: int) -> bool:
        return track_id in self._tracks

    def person_for_track(self, track_id: int, time: float, embed: Callable[[], np.ndarray], held: bool = False) -> Identity:
        """The identity to render for ``track_id`` at ``time`` (seconds, non-decreasing).

        ``embed()`` computes the raw embedding; it is called only for a track new to the cache.
        A new track is matched against people not detected at ``time`` (cosine similarity of raw
        embeddings ≥ ``reassociation_threshold``): a match reuses that person's noisy embedding,
        otherwise a new person is drawn. Within a frame, give known tracks (``track_id in cache``)
        before new ones, so a person detected on screen is never offered to a new track; a track
        ``held`` (covered where its face was last seen, not detected in this frame) leaves its
        person open to a new track: the face that moved away faster than the tracker followed.
        """
        self._advance(time)
        person_id = self._tracks.get(track_id)
        if person_id is None:
            person = self._new_track(track_id, time, check_embedding(embed(), self._mechanism.dim))
        else:
            person = self._people[person_id]
        record = person.record
        if person.counted_time != time:
            record.frames += 1
            person.counted_time = time
        if not held:  # the record's span is where its faces were detected: the ledger reads it
            record.last_time = time
        return person.identity

    def has_absent_people(self) -> bool:
        """Someone who left could come back: a person still held for re-association with no track on screen."""
        if self._registry is not None:
            return self._registry.has_people(self._on_screen(self._now, active=True))
        return any(person.refs and not person.active for person in self._people.values())

    def recognises(self, raw: np.ndarray, time: float) -> bool:
        """Whether a new track with this raw embedding would be matched to a known person (no new
        draw). ``raw`` is left untouched; the caller wipes it."""
        if self._registry is not None:
            return self._registry.recognises(raw, self._on_screen(time))
        length = float(np.linalg.norm(raw))
        return length > 0 and self._match(raw / length, time) is not None

    def end_frame(self, active_track_ids: Iterable[int], time: float) -> None:
        """Close the frame: tracks absent from it have ended; expire and bound the raw store."""
        self._advance(time)
        active = set(active_track_ids)
        for track_id in [t for t in self._tracks if t not in active]:
            self._people[self._tracks.pop(track_id)].active.discard(track_id)
        for person in list(self._people.values()):
            expired = not person.refs or time - person.record.last_time > self._ttl
            if not person.active and expired:
                self._forget(person)
        holders = [p for p in self._people.values() if p.refs]
        holders.sort(key=lambda p: (bool(p.active), p.record.last_time))  # ended and oldest first
        for person in holders[: max(0, len(holders) - self._config.max_people)]:
            person.wipe()
            if not person.active:
                self._forget(person)

    def close(self) -> None:
        """End of the run: wipe and drop every raw embedding (the ledger stays available)."""
        for person in list(self._people.values()):
            self._forget(person)
        self._tracks.clear()

    @property
    def draws(self) -> int:
        """Noisy embeddings drawn so far (one per person record)."""
        return len(self._records)

    def ledger(self) -> Ledger:
        return Ledger(self._mechanism.describe(), tuple(self._records))

    def _new_track(self, track_id: int, time: float, raw: np.ndarray) -> _Person:
        person = self._registry_person(time, raw) if self._registry is not None else self._local_person(time, raw)
        raw.fill(0.0)
        person.record.tracks += 1
        person.active.add(track_id)
        self._tracks[track_id] = person.record.person_id
        return person

    def _local_person(self, time: float, raw: np.ndarray) -> _Person:
        """A new track's person in this cache: matched, else drawn; its unit embedding kept (linking)."""
        length = float(np.linalg.norm(raw))
        unit = raw / length if length > 0 else None
        person = self._match(unit, time) if unit is not None and self._link else None
        if person is None:
            person = self._draw(raw, time)
        if unit is not None and self._link:
            person.refs.append(unit)
            if len(person.refs) > REFS_PER_PERSON:
                person.refs.pop(0).fill(0.0)
        return person

    def _registry_person(self, time: float, raw: np.ndarray) -> _Person:
        """A new track's person from the registry (which matches or draws); this part's record of it."""
        person_id, noisy = self._registry.person_for(raw, self._on_screen(time))
        person = self._people.get(person_id)
        if person is None:
            record = next((r for r in self._records if r.person_id == person_id), None)
            if record is None:
                record = PersonRecord(person_id=person_id, first_time=time, last_time=time, draws=1)
                self._records.append(record)
            noisy = np.array(noisy, np.float64)
            noisy.setflags(write=False)
            person = self._people[person_id] = _Person(record, Identity(person_id, noisy))
        return person

    def _on_screen(self, time: float, active: bool = False) -> list[int]:
        """People detected at ``time`` (or, ``active``, with a track on screen): a new face is not them."""
        return [pid for pid, p in self._people.items() if p.record.last_time >= time or (active and p.active)]

    def _match(self, unit: np.ndarray, time: float) -> _Person | None:
        # a person detected in this frame already is a different face
        candidates = ((p, p.refs) for p in self._people.values() if p.record.last_time < time)
        return best_match(unit, candidates, self._config.reassociation_threshold)

    def _draw(self, raw: np.ndarray, time: float) -> _Person:
        noisy = noisy_release(self._mechanism, self._post_process, raw)
        noisy.setflags(write=False)
        record = PersonRecord(person_id=len(self._records), first_time=time, last_time=time, draws=1)
        self._records.append(record)
        person = _Person(record, Identity(record.person_id, noisy))
        self._people[record.person_id] = person
        return person

    def _forget(self, person: _Person) -> None:
        person.wipe()
        del self._people[person.record.person_id]

    def _advance(self, time: float) -> None:
        if time < self._now:
            raise ValueError(f"time went backwards: {time} after {self._now}")
        self._now = time
