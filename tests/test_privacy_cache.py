"""IdentityCache: one draw per person, re-association after gaps, honest ledger of extra draws."""

import json

import numpy as np
import pytest

from dpstream.privacy import EmbeddingError, IdentityCache, PrivacyConfig, make_mechanism, project_to_sphere

DIM = 16
FPS = 30.0


class Faces:
    """Synthetic people: a fixed direction each, plus a little jitter per track (pose, light)."""

    def __init__(self, n_people, seed=0):
        self.rng = np.random.default_rng(seed)
        self.base = self.rng.normal(size=(n_people, DIM))
        self.calls = []  # (person, track) for every encoder call

    def embed(self, person, track):
        def run():
            self.calls.append((person, track))
            return self.base[person] + 0.1 * self.rng.normal(size=DIM)

        return run


def make_cache(private=False, **config):
    config = PrivacyConfig(**config)
    mechanism = make_mechanism(config, DIM, 3.0, testing_seed=None if private else 1)
    return IdentityCache(mechanism, config, post_process=lambda v: project_to_sphere(v, 1.0))


def play(cache, faces, tracks, n_frames, fps=FPS):
    """tracks: (track_id, person, first_frame, last_frame). Returns {track: [person ids]}, {track: ids of arrays}."""
    seen, arrays = {}, {}
    for frame in range(n_frames):
        time = frame / fps
        live = [t for t in tracks if t[2] <= frame <= t[3]]
        live.sort(key=lambda t: t[0] not in cache)  # known tracks first
        for track, person, _, _ in live:
            identity = cache.person_for_track(track, time, faces.embed(person, track))
            seen.setdefault(track, []).append(identity.person_id)
            arrays.setdefault(track, set()).add(id(identity.noisy_embedding))
        cache.end_frame([t[0] for t in live], time)
    return seen, arrays


def test_one_draw_per_person_over_a_long_sequence():
    """Three people over 9,000 frames, each in several tracks split by short occlusions."""
    faces = Faces(3)
    tracks = [
        (1, 0, 0, 2999), (2, 0, 3030, 5999), (3, 0, 6100, 8999),  # person 0, gaps of 1 s and 3.3 s
        (4, 1, 0, 8999),  # person 1, one long track
        (5, 2, 500, 1500), (6, 2, 1600, 1700), (7, 2, 2000, 8000),  # person 2
    ]
    cache = make_cache()
    seen, arrays = play(cache, faces, tracks, 9000)
    ledger = cache.ledger().to_dict()
    frames = 8870 + 9000 + 7103
    assert ledger["totals"] == {"people": 3, "draws": 3, "tracks": 7, "reassociations": 4, "person_frames": frames}
    assert sorted(faces.calls) == sorted((p, t) for t, p, _, _ in tracks)  # encoder once per track
    by_person = {p["person_id"]: p for p in ledger["people"]}
    owner = {track: ids[0] for track, ids in seen.items()}
    assert all(len(set(ids)) == 1 for ids in seen.values())  # a track keeps its person
    assert owner[1] == owner[2] == owner[3] and owner[5] == owner[6] == owner[7]
    assert len({owner[1], owner[4], owner[5]}) == 3
    assert all(len(a) == 1 for a in arrays.values())  # the very same cached noisy array
    assert by_person[owner[1]]["frames"] == 8870 and by_person[owner[1]]["tracks"] == 3
    assert by_person[owner[4]]["first_time"] == 0 and by_person[owner[4]]["last_time"] == pytest.approx(8999 / FPS)
    # all three overlap in time: no real person can hold more than one draw
    assert ledger["worst_case"]["draws"] == 1


def test_reassociation_after_a_gap_reuses_the_draw():
    faces = Faces(1)
    cache = make_cache(reassociation_ttl=10.0)
    seen, _ = play(cache, faces, [(1, 0, 0, 30), (2, 0, 250, 280)], 300)  # back after 7.3 s
    assert seen[1][0] == seen[2][0]
    assert cache.ledger().to_dict()["totals"]["draws"] == 1


def test_forced_second_draw_is_counted():
    """Back after the TTL: the raw embedding is gone, so the same real person is drawn again."""
    faces = Faces(1)
    cache = make_cache(reassociation_ttl=2.0)
    seen, _ = play(cache, faces, [(1, 0, 0, 30), (2, 0, 150, 180)], 200)  # back after 4 s
    assert seen[1][0] != seen[2][0]
    ledger = cache.ledger().to_dict()
    assert ledger["totals"]["draws"] == 2
    worst = ledger["worst_case"]
    assert worst["draws"] == 2 and worst["person_ids"] == [seen[1][0], seen[2][0]]
    assert worst["epsilon_basic"] == 2 * ledger["epsilon"] and ledger["epsilon"] < worst["epsilon"] <= 2 * ledger["epsilon"]
    assert [p["epsilon_naive"] for p in ledger["people"]] == [ledger["epsilon"]] * 2


def test_people_on_screen_together_are_never_merged():
    faces = Faces(1)  # identical twins: same base embedding
    cache = make_cache(reassociation_threshold=-1.0)
    seen, _ = play(cache, faces, [(1, 0, 0, 50), (2, 0, 10, 60)], 70)
    assert seen[1][0] != seen[2][0]
    assert cache.ledger().to_dict()["worst_case"]["draws"] == 1  # they overlap: different people


def test_a_face_that_jumps_while_its_old_track_is_held_keeps_its_draw():
    """A cut or a fast move: the tracker starts a new track while it still holds (covers) the old
    box for a few frames. The held track is not a detection, so the new one is the same person."""
    faces = Faces(1)
    for held, people in ((True, 1), (False, 2)):
        cache = make_cache()
        for frame in range(30):
            time, live = frame / FPS, []
            if frame < 25:  # the old track: detected up to frame 19, then held
                cache.person_for_track(1, time, faces.embed(0, 1), held=held and frame >= 20)
                live.append(1)
            if frame >= 20:
                cache.person_for_track(2, time, faces.embed(0, 2))
                live.append(2)
            cache.end_frame(live, time)
        assert cache.ledger().to_dict()["totals"]["people"] == people  # a detected twin stays apart


def test_track_switch_within_a_frame_is_reassociated():
    faces = Faces(1)
    cache = make_cache(reassociation_ttl=0.0)
    seen, _ = play(cache, faces, [(1, 0, 0, 20), (2, 0, 21, 40)], 41)
    assert seen[1][0] == seen[2][0]


def test_different_people_are_not_merged():
    faces = Faces(2)
    cache = make_cache()
    seen, _ = play(cache, faces, [(1, 0, 0, 20), (2, 1, 40, 60)], 61)
    assert seen[1][0] != seen[2][0]


def test_store_is_bounded():
    """max_people = 2: the oldest ended people are forgotten first; they cannot be re-associated."""
    faces = Faces(4)
    cache = make_cache(max_people=2, reassociation_ttl=1e6)
    tracks = [(1, 0, 0, 10), (2, 1, 20, 30), (3, 2, 40, 50), (4, 3, 60, 70), (5, 0, 80, 90), (6, 3, 100, 110)]
    seen, _ = play(cache, faces, tracks, 111)
    assert seen[5][0] != seen[1][0]  # person 0 was evicted
    assert seen[6][0] == seen[4][0]  # person 3 was still held
    assert len([p for p in cache._people.values() if p.refs]) <= 2


def test_raw_embeddings_are_wiped_after_the_ttl():
    faces = Faces(1)
    cache = make_cache(reassociation_ttl=1.0)
    cache.person_for_track(1, 0.0, faces.embed(0, 1))
    refs = list(cache._people[0].refs)
    assert np.linalg.norm(refs[0]) == pytest.approx(1.0)
    cache.end_frame([], 0.5)
    assert np.linalg.norm(refs[0]) > 0  # within the TTL: still held for re-association
    cache.end_frame([], 1.6)
    assert not cache._people and np.all(refs[0] == 0)


def test_close_wipes_everything():
    cache = make_cache(reassociation_ttl=1e6)
    cache.person_for_track(1, 0.0, Faces(1).embed(0, 1))
    refs = list(cache._people[0].refs)
    cache.close()
    assert not cache._people and 1 not in cache and np.all(refs[0] == 0)
    assert cache.ledger().to_dict()["totals"]["people"] == 1


def test_noisy_embedding_is_read_only_and_post_processed():
    cache = make_cache()
    identity = cache.person_for_track(1, 0.0, Faces(1).embed(0, 1))
    assert np.linalg.norm(identity.noisy_embedding) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        identity.noisy_embedding[0] = 0.0


def test_bad_embedding_and_time():
    cache = make_cache()
    with pytest.raises(EmbeddingError):
        cache.person_for_track(1, 0.0, lambda: np.full(DIM, np.nan))
    assert cache.ledger().to_dict()["totals"]["people"] == 0 and 1 not in cache
    cache.person_for_track(2, 1.0, Faces(1).embed(0, 2))
    with pytest.raises(ValueError, match="backwards"):
        cache.end_frame([2], 0.5)


def test_ledger_holds_no_biometric_values(tmp_path):
    """The written ledger contains parameters, counts and times only."""
    faces = Faces(2)
    cache = make_cache(private=True, reassociation_ttl=0.5)
    noisy = [cache.person_for_track(1, 0.0, faces.embed(0, 1)).noisy_embedding]
    cache.end_frame([1], 0.0)
    noisy.append(cache.person_for_track(2, 2.0, faces.embed(1, 2)).noisy_embedding)
    cache.end_frame([2], 2.0)
    path = cache.ledger().write(tmp_path / "out.mp4.ledger.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["private"] is True and data["dim"] == DIM and data["clip_norm"] == 3.0

    def numbers(node):
        if isinstance(node, dict):
            return [x for v in node.values() for x in numbers(v)]
        if isinstance(node, list):
            return [x for v in node for x in numbers(v)]
        return [node] if isinstance(node, (int, float)) and not isinstance(node, bool) else []

    biometric = set(np.concatenate([faces.base.ravel(), *noisy]).tolist())
    assert not biometric & set(numbers(data))
    assert len(numbers(data)) < 60  # a handful of parameters and per-person counts


def test_a_new_face_is_recognised_as_a_person_who_left_before_any_draw():
    faces = Faces(2)
    cache = make_cache()
    cache.person_for_track(1, 0.0, faces.embed(0, 1))
    cache.end_frame([1], 0.0)
    assert not cache.has_absent_people()  # person 0 is on screen: nobody could be returning
    cache.end_frame([], 1.0)  # track 1 ends
    assert cache.has_absent_people()
    returning, stranger = faces.embed(0, 2)(), faces.embed(1, 3)()
    assert cache.recognises(returning, 2.0) and not cache.recognises(stranger, 2.0)
    assert np.linalg.norm(returning) > 0  # left for the caller to use, then wipe
    assert cache.ledger().to_dict()["people"][0]["draws"] == 1 and len(cache.ledger().people) == 1


def registry_caches(scopes, **config):
    """Identity caches of parts processed side by side, sharing one PersonRegistry."""
    from dpstream.privacy.registry import PersonRegistry, ScopedRegistry

    config = PrivacyConfig(**config)
    mechanism = make_mechanism(config, DIM, 3.0, testing_seed=2)
    registry = PersonRegistry(mechanism, config, first_person_id=10)
    caches = [IdentityCache(mechanism, config, registry=ScopedRegistry(scope, registry)) for scope in scopes]
    return registry, caches


def test_a_registry_gives_one_person_of_two_parts_one_draw():
    faces = Faces(2)
    registry, (first, second) = registry_caches(["run", "run"])
    # the second part starts before the first has ended: times interleave, each part's own order holds
    a = first.person_for_track(1, 0.0, faces.embed(0, 1))
    b = second.person_for_track(1, 30.0, faces.embed(0, 2))
    c = second.person_for_track(2, 30.0, faces.embed(1, 3))  # another face in the same frame
    assert a.person_id == b.person_id == 10 and c.person_id == 11
    assert np.array_equal(a.noisy_embedding, b.noisy_embedding)
    assert registry.next_person_id == 12
    first_ledger, second_ledger = first.ledger().to_dict(), second.ledger().to_dict()
    assert [p["person_id"] for p in first_ledger["people"]] == [10]
    assert [p["person_id"] for p in second_ledger["people"]] == [10, 11]
    assert all(p["draws"] == 1 for p in second_ledger["people"])
    registry.close()
    assert not registry.has_people("run")


def test_a_registry_never_gives_a_new_face_a_person_on_screen_in_its_frame():
    faces = Faces(1)
    registry, (part,) = registry_caches(["run"])
    a = part.person_for_track(1, 0.0, faces.embed(0, 1))
    twin = part.person_for_track(2, 0.0, faces.embed(0, 2))  # the same look twice in one frame: two people
    assert a.person_id != twin.person_id


def test_registry_scopes_keep_files_apart():
    faces = Faces(1)
    registry, (one, other) = registry_caches(["a.mp4", "b.mp4"])
    a = one.person_for_track(1, 0.0, faces.embed(0, 1))
    b = other.person_for_track(1, 0.0, faces.embed(0, 2))
    assert a.person_id != b.person_id
    assert registry.has_people("a.mp4") and not registry.has_people("c.mp4")
