"""The privacy ledger of a run: what was released per person and the worst-case ε (JSON).

It holds only counts, times and parameters: never an embedding, crop or similarity value.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from dpstream.privacy.analytic import gaussian_epsilon

LEDGER_VERSION = 1

WORST_CASE_ARGUMENT = (
    "Each person record made {draws_per_record} noisy draw(s) of its identity embedding. One real person can "
    "be split over several records when re-association fails (occlusion past the TTL, a changed look, a full "
    "store). Two records detected at the same instant belong to different people, assuming a real face appears at "
    "most once per frame (no mirrors, screens or photos of the same person, no duplicate detections); records "
    "whose intervals only touch are conservatively treated as possibly the same person. So one real person's "
    "records are pairwise disjoint in time, and the most draws any real person can have received is the "
    "largest total of draws over pairwise-disjoint records (weighted interval scheduling): K = {k}. By "
    "composition their identity is protected at {composition}. Which tracks share a face is decided from raw "
    "embeddings without noise; that linkage is not covered by ε (see PRIVACY.md)."
)

STILLS_WORST_CASE_ARGUMENT = (
    "The input was a set of stills; a photo's faces are one instant ({linking}). Each person record made "
    "{draws_per_record} noisy draw(s) of its identity embedding, in the photo where it first appeared. "
    "Assuming a real face appears at most once per photo (no mirrors, screens or photos of photos, no duplicate "
    "detections), one real person's records never share a photo, so they started in different photos: the most "
    "draws any real person can have received is at most the number of photos in which a draw was made, K = {k} "
    "(one record per photo, person ids listed; exact without linking, where it is the worst case of one person "
    "appearing in each of those photos). By composition their identity is protected at {composition}."
)


@dataclass(slots=True)
class PersonRecord:
    """One person id of the run: when it was seen and what it cost."""

    person_id: int
    first_time: float
    last_time: float
    frames: int = 0
    tracks: int = 0  # tracks merged into this person (1 + successful re-associations)
    draws: int = 0  # noisy embeddings drawn for this person (the cache draws once)


@dataclass(frozen=True)
class Ledger:
    """The per-run ledger; ``mechanism`` is ``Mechanism.describe()``-like: parameters only.

    ``stills``: the run was a set of photos (times are photo indices): the worst case counts
    photos (``max_photo_draws``), and ``linked`` says whether faces were linked across them.
    """

    mechanism: dict
    people: tuple[PersonRecord, ...]
    stills: bool = False
    linked: bool = True

    def to_dict(self) -> dict:
        people = [{**asdict(p), "epsilon_naive": p.draws * self.mechanism["epsilon"]} for p in self.people]
        chain, k = max_photo_draws(self.people) if self.stills else max_disjoint_draws(self.people)
        return {
            "ledger_version": LEDGER_VERSION,
            **self.mechanism,
            **({"input": "stills", "linked": self.linked} if self.stills else {}),
            "people": people,
            "totals": {
                "people": len(self.people),
                "draws": sum(p.draws for p in self.people),
                "tracks": sum(p.tracks for p in self.people),
                "reassociations": sum(max(0, p.tracks - 1) for p in self.people),
                "person_frames": sum(p.frames for p in self.people),
            },
            "worst_case": self._worst_case(chain, k),
        }

    def write(self, path: str | Path) -> Path:
        return write_ledger(self.to_dict(), path)

    def _worst_case(self, chain: list[int], k: int) -> dict:
        result, composition = composed(self.mechanism, k)
        result = {"draws": k, "person_ids": chain, **result}
        per_record = "/".join(map(str, sorted({p.draws for p in self.people}) or [0]))
        if self.stills:
            linking = "faces linked across photos by re-association" if self.linked else "every face its own record"
            result["argument"] = STILLS_WORST_CASE_ARGUMENT.format(
                linking=linking, draws_per_record=per_record, k=k, composition=composition
            )
        else:
            result["argument"] = WORST_CASE_ARGUMENT.format(draws_per_record=per_record, k=k, composition=composition)
        return result


def composed(mechanism: dict, k: int) -> tuple[dict, str]:
    """The (ε, δ) of ``k`` releases of ``mechanism`` (``Mechanism.describe()``), and how it composes."""
    eps, delta = mechanism["epsilon"], mechanism["delta"]
    if mechanism["mechanism"] == "laplace":
        return {"epsilon": k * eps, "delta": 0.0}, f"ε = K·ε = {k * eps:g} (pure DP composes additively)"
    # k Gaussian releases of Δ/σ = μ each compose exactly into one with μ·√k.
    mu = mechanism["sensitivity"] / mechanism["noise_scale"]
    tight = gaussian_epsilon(delta, mu * math.sqrt(k)) if k else 0.0
    result = {"epsilon": tight, "delta": delta if k else 0.0, "epsilon_basic": k * eps, "delta_basic": k * delta}
    composition = (
        f"(ε, δ) = ({tight:.4g}, {delta:g}) by the exact composition of Gaussian releases "
        f"(μ·√K with μ = Δ/σ), at most (K·ε, K·δ) = ({k * eps:g}, {k * delta:g}) by basic composition"
    )
    return result, composition


def max_disjoint_draws(people: tuple[PersonRecord, ...] | list[PersonRecord]) -> tuple[list[int], int]:
    """Person ids of pairwise time-disjoint records with the largest total of draws, and that total.

    Records a, b are compatible when a.last_time <= b.first_time (touching counts as disjoint,
    the conservative choice). Weighted interval scheduling, O(n log n).
    """
    order = sorted(people, key=lambda p: (p.last_time, p.first_time, p.person_id))
    ends = [p.last_time for p in order]
    best = [0] * (len(order) + 1)  # best[i]: optimum over the first i records
    take = [False] * len(order)
    prev = [0] * len(order)
    for i, p in enumerate(order):
        prev[i] = bisect.bisect_right(ends, p.first_time, 0, i)  # records ending by p's start
        with_p = best[prev[i]] + p.draws
        take[i] = with_p > best[i]
        best[i + 1] = with_p if take[i] else best[i]
    chain, i = [], len(order)
    while i > 0:
        if take[i - 1]:
            chain.append(order[i - 1].person_id)
            i = prev[i - 1]
        else:
            i -= 1
    return sorted(chain), best[-1]


def max_photo_draws(people: tuple[PersonRecord, ...] | list[PersonRecord]) -> tuple[list[int], int]:
    """Stills: per photo in which a draw was made, the person id of its record with the most draws
    starting there, and the total of their draws. Times are photo indices; a record draws in the
    photo it starts in, and one real person's records start in different photos."""
    best: dict[float, PersonRecord] = {}
    for p in sorted(people, key=lambda p: p.person_id):
        if p.draws and (p.first_time not in best or p.draws > best[p.first_time].draws):
            best[p.first_time] = p
    return sorted(p.person_id for p in best.values()), sum(p.draws for p in best.values())


BATCH_WORST_CASE_ARGUMENT = (
    "A batch run: each person record made one noisy draw, in a registry shared by the run's {scope}; a person "
    "met in several files or chunks of it keeps that draw. Per file, the worst case K_f is the file ledger's "
    "(records pairwise disjoint in time). Any real person's records are, within each file, among those K_f, and "
    "every record belongs to some file, so one real person received at most K = min(records, sum of K_f) = {k} "
    "draws (records of files from other runs of the registry, e.g. before a resume, are different records). "
    "By composition: {composition}. Which tracks share a face is decided from raw embeddings without noise; "
    "that linkage is not covered by ε (see PRIVACY.md)."
)


def merge_part_ledgers(parts: list[dict], mechanism: dict) -> dict:
    """The ledger of one file from the ledgers of its parts (chunks): a person's records joined
    (first and last time, frames, tracks; one draw), counts summed, the worst case recomputed."""
    records: dict[int, PersonRecord] = {}
    counts: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            if key.startswith(("faces_", "fallbacks")):
                counts[key] = counts.get(key, 0) + value
        for person in part["people"]:
            fields = {k: person[k] for k in ("person_id", "first_time", "last_time", "frames", "tracks", "draws")}
            known = records.get(person["person_id"])
            if known is None:
                records[person["person_id"]] = PersonRecord(**fields)
            else:
                known.first_time, known.last_time = min(known.first_time, fields["first_time"]), max(known.last_time, fields["last_time"])
                known.frames += fields["frames"]
                known.tracks += fields["tracks"]
                known.draws = max(known.draws, fields["draws"])
    ledger = Ledger(mechanism, tuple(sorted(records.values(), key=lambda r: r.person_id))).to_dict()
    return {"method": parts[0]["method"], "model": parts[0]["model"], **counts, "parts": len(parts), **ledger}


def batch_ledger(files: dict[str, dict], mechanism: dict, scope: str) -> dict:
    """The merged ledger of a batch run from its files' ledgers (output name -> ledger)."""
    people: dict[int, dict] = {}
    for name, ledger in files.items():
        for person in ledger["people"]:
            merged = people.setdefault(person["person_id"], {"person_id": person["person_id"], "files": [], "frames": 0, "draws": 0})
            merged["files"].append(name)
            merged["frames"] += person["frames"]
            merged["draws"] = max(merged["draws"], person["draws"])
    records = sum(p["draws"] for p in people.values())
    k = min(records, sum(ledger["worst_case"]["draws"] for ledger in files.values()))
    result, composition = composed(mechanism, k)
    scope_text = "files (registry: run)" if scope == "run" else "chunks of each file (registry: file)"
    return {
        "ledger_version": LEDGER_VERSION,
        "batch": True,
        "registry": scope,
        **mechanism,
        "files": [{"output": name, "people": [p["person_id"] for p in ledger["people"]],
                   "worst_case_draws": ledger["worst_case"]["draws"]} for name, ledger in files.items()],
        "people": sorted(people.values(), key=lambda p: p["person_id"]),
        "totals": {"files": len(files), "people": len(people), "draws": records},
        "worst_case": {"draws": k, **result, "argument": BATCH_WORST_CASE_ARGUMENT.format(scope=scope_text, k=k, composition=composition)},
    }


def write_ledger(ledger: dict, path: str | Path) -> Path:
    """Write a JSON ledger atomically (a temporary file renamed over ``path``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ledger, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def default_ledger_path(output: str | Path) -> Path:
    """``OUTPUT.ledger.json`` beside the output (``out.mp4`` → ``out.mp4.ledger.json``)."""
    output = Path(output)
    return output.with_name(output.name.rstrip("/") + ".ledger.json")
