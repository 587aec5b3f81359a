"""Ledger: worst-case draws by weighted interval scheduling (stills: per photo), JSON output, default path."""

import itertools
import json
import math
import random

import pytest

from dpstream.privacy import Ledger, PersonRecord, default_ledger_path
from dpstream.privacy.analytic import gaussian_epsilon
from dpstream.privacy.ledger import max_disjoint_draws, max_photo_draws


def rec(pid, first, last, draws=1):
    return PersonRecord(pid, first, last, frames=1, tracks=1, draws=draws)


def brute_force(people):
    best = 0
    for r in range(len(people) + 1):
        for subset in itertools.combinations(people, r):
            ordered = sorted(subset, key=lambda p: (p.first_time, p.last_time))
            if all(a.last_time <= b.first_time for a, b in zip(ordered, ordered[1:])):
                best = max(best, sum(p.draws for p in subset))
    return best


def test_interval_scheduling_examples():
    assert max_disjoint_draws([]) == ([], 0)
    overlapping = [rec(0, 0, 10), rec(1, 5, 15), rec(2, 9, 20)]
    assert max_disjoint_draws(overlapping)[1] == 1
    chain = [rec(0, 0, 1), rec(1, 2, 3), rec(2, 3, 4), rec(3, 0.5, 3.5)]  # 2..3 and 3..4 touch
    assert max_disjoint_draws(chain) == ([0, 1, 2], 3)
    weighted = [rec(0, 0, 10, draws=3), rec(1, 0, 4), rec(2, 5, 9)]
    assert max_disjoint_draws(weighted) == ([0], 3)


def test_interval_scheduling_matches_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        people = []
        for pid in range(rng.randint(0, 8)):
            a, b = sorted(rng.choice(range(12)) for _ in range(2))
            people.append(rec(pid, float(a), float(b), draws=rng.randint(1, 3)))
        ids, total = max_disjoint_draws(people)
        assert total == brute_force(people)
        chosen = sorted((p for p in people if p.person_id in ids), key=lambda p: (p.first_time, p.last_time))
        assert sum(p.draws for p in chosen) == total
        assert all(a.last_time <= b.first_time for a, b in zip(chosen, chosen[1:]))


MECH = {"epsilon": 1.0, "delta": 1e-5, "sensitivity": 2.0, "noise_scale": 7.5, "dim": 8, "clip_norm": 1.0}


def test_laplace_worst_case_is_additive():
    ledger = Ledger({**MECH, "mechanism": "laplace", "delta": 0.0}, (rec(0, 0, 1), rec(1, 2, 3), rec(2, 4, 5)))
    worst = ledger.to_dict()["worst_case"]
    assert worst["draws"] == 3 and worst["epsilon"] == 3.0 and worst["delta"] == 0.0
    assert "weighted interval scheduling" in worst["argument"] and "K = 3" in worst["argument"]


def test_gaussian_worst_case_uses_exact_composition():
    ledger = Ledger({**MECH, "mechanism": "gaussian"}, (rec(0, 0, 1), rec(1, 2, 3)))
    worst = ledger.to_dict()["worst_case"]
    assert worst["epsilon"] == pytest.approx(gaussian_epsilon(1e-5, 2.0 / 7.5 * math.sqrt(2)))
    assert worst["epsilon"] < worst["epsilon_basic"] == 2.0 and worst["delta_basic"] == 2e-5


def test_stills_worst_case_counts_photos_with_a_draw():
    # photo 0: three faces, photo 1: one, photo 2: a person linked from photo 0 (no draw there)
    people = (rec(0, 0, 0), rec(1, 0, 0), rec(2, 0, 2), rec(3, 1, 1))
    assert max_photo_draws(people) == ([0, 3], 2)
    assert max_photo_draws([]) == ([], 0)
    unlinked = Ledger({**MECH, "mechanism": "laplace", "delta": 0.0}, people, stills=True, linked=False).to_dict()
    assert (unlinked["input"], unlinked["linked"]) == ("stills", False)
    assert unlinked["worst_case"]["draws"] == 2 and unlinked["worst_case"]["epsilon"] == 2.0
    assert "every face its own record" in unlinked["worst_case"]["argument"]
    video = Ledger({**MECH, "mechanism": "laplace", "delta": 0.0}, people).to_dict()
    assert "input" not in video and video["worst_case"]["draws"] == 3  # touching instants: conservative


def test_write_and_default_path(tmp_path):
    assert default_ledger_path("/x/out.mp4") == default_ledger_path("/x/out.mp4/").parent / "out.mp4.ledger.json"
    assert default_ledger_path("frames_out").name == "frames_out.ledger.json"
    ledger = Ledger({**MECH, "mechanism": "gaussian"}, (rec(0, 0.0, 2.5),))
    path = ledger.write(tmp_path / "run.ledger.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["ledger_version"] == 1 and data["people"][0]["person_id"] == 0
    assert data["totals"]["draws"] == 1 and not list(tmp_path.glob("*.tmp"))
