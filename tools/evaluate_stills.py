"""Photos through the real pipeline: LFW ``eval`` photos and the shared group photos as stills.

    python tools/evaluate_stills.py                  # ~10 min on 2 cores (316 LFW photos)
    python tools/evaluate_stills.py --per-identity 1 --no-groups    # quick look (158 photos)

``dpstream.anonymize`` runs on a list of LFW eval photos (``--per-identity`` per person, fixed
seed), once with every face its own release (the default) and once with ``link_people``, and on
the group photos of ``data/images``. Judged by models the pipeline does not use:

* YuNet (score 0.9, as the tests): of the faces it finds in the inputs, the share it still finds
  at the same place in the outputs;
* fallbacks by cause (too small for the face model, no mesh, other) from the run's figures;
* dlib re-identification at the LFW face (the attacker knows where it is): distance(original,
  output) < 0.6, against the other-person floor (another eval person's own code rendered onto
  the same mesh with the same face model) and dlib's false accepts between different real people.

Writes ``benchmarks/results/stills.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dpstream  # noqa: E402
from dpstream.config import Config  # noqa: E402
from dpstream.face_finder import FaceFinder  # noqa: E402
from dpstream.face_model import FaceModel, RenderError  # noqa: E402
from dpstream.replace.dp_face import mesh_heights  # noqa: E402
from dpstream.types import VideoFrame  # noqa: E402
from tools.evaluate_model import Attacker, wilson_interval  # noqa: E402
from tools.judges import YuNet  # noqa: E402
from tools.prepare_lfw import REPO_ROOT, read_split, shared_dir  # noqa: E402

DLIB_THRESHOLD = 0.6
MIN_FACE_PX = Config().dp_min_face_px
RESULTS = REPO_ROOT / "benchmarks" / "results" / "stills.md"


def lfw_sample(per_identity: int, seed: int) -> list[tuple[Path, str]]:
    """(photo path, identity) of ``per_identity`` eval photos per eval person, a fixed choice."""
    lfw = shared_dir() / "data" / "lfw"
    rows = [(lfw / path, identity) for path, identity, split in read_split(shared_dir()) if split == "eval"]
    rng = np.random.default_rng(seed)
    chosen = []
    for identity in sorted({identity for _, identity in rows}):
        own = [row for row in rows if row[1] == identity]
        chosen += [own[i] for i in sorted(rng.choice(len(own), per_identity, replace=False))]
    return chosen


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def yunet_kept(yunet: YuNet, inputs: list[Path], outputs: list[Path]) -> tuple[int, int, int, int]:
    """YuNet on inputs and outputs: (photos with a face, of them outputs with a face at the place
    of one of the input's, input faces, of them found at the same place in the output)."""
    photos = photos_kept = found = kept = 0
    for source, result in zip(inputs, outputs):
        kept_here = faces_kept(yunet, rgb(source), rgb(result))
        photos += bool(kept_here)
        photos_kept += any(kept_here)
        found += len(kept_here)
        kept += sum(kept_here)
    return photos, photos_kept, found, kept


def faces_kept(yunet: YuNet, original: np.ndarray, anonymized: np.ndarray) -> list[bool]:
    """Per YuNet face of ``original``: does YuNet find a face centred in its box in ``anonymized``."""
    after = yunet.detect(anonymized)
    centres = (after.boxes[:, :2] + after.boxes[:, 2:]) / 2
    return [
        bool(((centres[:, 0] >= x0) & (centres[:, 0] <= x1) & (centres[:, 1] >= y0) & (centres[:, 1] <= y1)).any())
        for x0, y0, x1, y1 in yunet.detect(original).boxes
    ]


def run(inputs: list[Path] | Path, output: Path, **options) -> tuple[dpstream.RunSummary, list[Path], list[bool]]:
    """The run's summary, its output files (a list into a folder, one photo into a file) and per
    photo whether a face of the validated size (``dp_min_face_px``) was found in it."""
    sized = []
    summary = dpstream.anonymize(
        inputs, output, on_frame=lambda r, _: sized.append(bool((mesh_heights(r.faces.landmarks) >= MIN_FACE_PX).any())), **options
    )
    return summary, [output / p.name for p in inputs] if isinstance(inputs, list) else [output], sized


def fallback_line(summary: dpstream.RunSummary) -> str:
    figures = summary.method_figures
    return (
        f"{summary.faces} faces, {figures['faces_rendered']} dp faces, {figures['fallbacks']} fallbacks "
        f"({figures['fallbacks_too_small']} too small, {figures['fallbacks_no_mesh']} without mesh, "
        f"{figures['fallbacks_refused']} refused by the face model)"
    )


def central_meshes(photos: list[tuple[Path, str]]) -> list[np.ndarray | None]:
    """The pipeline's mesh of each photo's face nearest its centre (None without one)."""
    finder = FaceFinder()
    meshes = []
    for path, _ in photos:
        image = rgb(path)
        faces = finder.find(VideoFrame(image, 0))
        faces = faces.select(faces.has_mesh())
        centre = np.array(image.shape[1::-1]) / 2
        meshes.append(
            None if not len(faces) else faces.landmarks[np.argmin(np.linalg.norm(faces.landmarks.mean(1) - centre, axis=1))]
        )
    finder.close()
    return meshes


def other_person_floor(model: FaceModel, photos, meshes, boxes, originals, attacker: Attacker) -> tuple[int, int]:
    """(trials, dlib matches): each photo's central face re-rendered with the next other person's
    own code (post-processed), the floor no identity-free face can go below."""
    trials = matches = 0
    for index, (path, identity) in enumerate(photos):
        other = next(j for j in range(index + 1, index + len(photos)) if photos[j % len(photos)][1] != identity)
        other %= len(photos)
        if meshes[index] is None or meshes[other] is None:
            continue
        image = rgb(path)
        try:
            code = model.post_process(model.encode(rgb(photos[other][0]), meshes[other]))
            model.render(image, meshes[index], code)
        except RenderError:
            continue
        trials += 1
        matches += np.linalg.norm(attacker.embed(image, boxes[index]) - originals[index]) < DLIB_THRESHOLD
    return trials, matches


def linking_rows(model: FaceModel, photos, meshes) -> list[str]:
    """What ``link_people`` can do on these photos: the share of pairs of photos of one person
    (and of two people) whose raw embeddings reach each cosine threshold (in memory only)."""
    units, names = [], []
    for (path, identity), mesh in zip(photos, meshes):
        if mesh is None:
            continue
        try:
            raw = model.encode(rgb(path), mesh)
        except RenderError:
            continue
        units.append(raw / np.linalg.norm(raw))
        names.append(identity)
    cosines, names = np.array(units) @ np.array(units).T, np.array(names)
    upper = np.triu(np.ones_like(cosines, bool), 1)
    same, different = upper & (names[:, None] == names[None]), upper & (names[:, None] != names[None])
    return [
        f"| raw-embedding cosine ≥ {t:g}{' (default reassociation_threshold)' if t == Config().reassociation_threshold else ''} "
        f"| {(cosines[same] >= t).mean():.1%} of {same.sum()} | {(cosines[different] >= t).mean():.2%} of {different.sum()} |"
        for t in (0.6, 0.5, 0.4, 0.3)
    ]


def rate(hits: int, trials: int) -> str:
    low, high = wilson_interval(hits, trials) if trials else (0.0, 0.0)
    return f"{hits}/{trials} = {hits / max(trials, 1):.1%} (95 % CI {low:.1%}–{high:.1%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-identity", type=int, default=2, help="LFW eval photos per person (158 people)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-groups", action="store_true", help="skip the group photos")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    threadpool_limits(limits=1, user_api="blas")
    started = time.time()
    photos = lfw_sample(args.per_identity, args.seed)
    paths = [path for path, _ in photos]
    yunet, attacker = YuNet(), Attacker()
    lines = ["# Photos as stills: LFW eval photos and group photos through `dpstream.anonymize`", ""]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        summary, outputs, sized = run(paths, work / "lfw")
        linked, _, _ = run(paths, work / "lfw-linked", link_people=True)
        photos_found, photos_kept, found, kept = yunet_kept(yunet, paths, outputs)
        big = [i for i, ok in enumerate(sized) if ok]
        big_found, big_kept, _, _ = yunet_kept(yunet, [paths[i] for i in big], [outputs[i] for i in big])
        print(f"LFW runs done ({time.time() - started:.0f} s)", file=sys.stderr)
        boxes = [attacker.box(rgb(p)) for p in paths]
        originals = [attacker.embed(rgb(p), box) for p, box in zip(paths, boxes)]
        anonymized = [attacker.embed(rgb(p), box) for p, box in zip(outputs, boxes)]
        reidentified = sum(np.linalg.norm(a - o) < DLIB_THRESHOLD for a, o in zip(anonymized, originals))
        model, meshes = FaceModel.load(None), central_meshes(photos)
        floor_trials, floor_matches = other_person_floor(model, photos, meshes, boxes, originals, attacker)
        names = np.array([identity for _, identity in photos])
        vectors = np.array(originals)
        distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
        different = names[:, None] != names[None]
        false_accepts = int((distances[different] < DLIB_THRESHOLD).sum() // 2)
        worst = json.loads(Path(summary.ledger).read_text())["worst_case"]
        worst_linked = json.loads(Path(linked.ledger).read_text())["worst_case"]
        lines += [
            f"## LFW eval: {len(paths)} photos ({args.per_identity} per person, {len(set(names))} people, seed {args.seed})",
            "",
            "| measure | value |",
            "|---|---|",
            f"| run (each face its own release) | {fallback_line(summary)}; {summary.frames / summary.seconds:.2f} photos/s |",
            f"| photos whose faces are all under {MIN_FACE_PX:g} px (blurred) | {len(paths) - len(big)} |",
            f"| YuNet: outputs with a face where it finds one in the input | {rate(photos_kept, photos_found)} |",
            f"| the same, photos with a face of the validated size | {rate(big_kept, big_found)} |",
            f"| YuNet: the input's faces found at their place in the output (background faces too) | {rate(kept, found)} |",
            f"| dlib re-identification, output vs original (distance < {DLIB_THRESHOLD}) | {rate(int(reidentified), len(paths))} |",
            f"| other-person floor (another eval person's code, same mesh and model) | {rate(int(floor_matches), floor_trials)} |",
            f"| dlib false accepts between different real people of the sample | {rate(false_accepts, int(different.sum() // 2))} |",
            f"| ledger worst case, each face its own | K = {worst['draws']} draws: ε = {worst['epsilon']:.4g}, δ = {worst['delta']:g} |",
            f"| `link_people` | {linked.method_figures['people']} people for {len(set(names))} real ones "
            f"({linked.faces} faces); worst case K = {worst_linked['draws']}: ε = {worst_linked['epsilon']:.4g} |",
            "",
            "What linking can reach on these photos (pairs of central faces):",
            "",
            "| rule | photos of one person linked | photos of two people merged |",
            "|---|---|---|",
            *linking_rows(model, photos, meshes),
            "",
        ]
        if not args.no_groups:
            lines += ["## Group photos (`data/images`)", "", "| photo | result | YuNet finds the input's faces in the output |", "|---|---|---|"]
            images = shared_dir() / "data" / "images"
            for photo in [images / "solvay1927.jpg", *sorted((images / "dlib_faces").glob("*.jpg"))]:
                group, (result,), _ = run(photo, work / photo.name)
                print(f"{photo.name}: {fallback_line(group)}", file=sys.stderr)
                _, _, found, kept = yunet_kept(yunet, [photo], [result])
                lines.append(f"| {photo.relative_to(images)} | {fallback_line(group)} | {kept}/{found} |")
            lines.append("")
    lines.append(f"Command: `python tools/evaluate_stills.py {' '.join(sys.argv[1:])}` ({time.time() - started:.0f} s)")
    args.results.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
