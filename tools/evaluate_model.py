"""Privacy/utility evaluation of the DP face model on LFW ``eval`` identities only.

    pip install dlib-bin face-recognition-models      # eval-only attacker (not in the pipeline)
    python tools/evaluate_model.py                    # ~25 min on 2 cores (474 probes)
    python tools/evaluate_model.py --probes-per-identity 1 --methods dp-4,mean   # quick look

Attacker and judges are models the pipeline does not use: dlib's ResNet (128-D, same person when
the distance is < 0.6) and YuNet (``../shared/data/models``, via ``cv2.FaceDetectorYN``).
Probes: 3 images per eval identity (fixed seed); gallery for closed-set rank-1: up to 5 other
images per identity (their mean dlib vector). Measured per method:

* verification: dlib distance(original, anonymized of the same image) < 0.6;
* rank-1: the anonymized probe's nearest gallery identity is the true one (158 identities);
* YuNet detection of a face at the original face position, and 5-point landmark error
  (mean distance / inter-ocular distance, original vs anonymized);
* baselines: dlib's false accepts between different real identities, "same person, other
  photo", the mean identity code (leak of all un-noised channels) and another real eval
  person's code (the floor), blur, mosaic and dp-pix from ``dpstream.replace``;
* encoder + decoder + blend time per face.

Noise is the analytic Gaussian mechanism (``dpstream.privacy.analytic``) with sensitivity
2·clip_norm, δ = 1e-5, one draw per face, then the model's post-processing and, as in the
pipeline, its context stage when it has one (``--manifest fitted``). Writes
``benchmarks/results/face_model_eval.md`` and ``privacy_utility.png``; caches the originals'
dlib vectors in ``tools/_runs/``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpstream.config import Config  # noqa: E402
from dpstream.face_model import FaceModel, RenderError  # noqa: E402
from dpstream.privacy.analytic import analytic_gaussian_sigma  # noqa: E402
from dpstream.replace.fallback import apply_fallback  # noqa: E402
from dpstream.types import Faces, VideoFrame  # noqa: E402
from tools.prepare_lfw import LANDMARKS_PATH, REPO_ROOT, RUNS_DIR, shared_dir  # noqa: E402

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0, math.inf)
DELTA = 1e-5
DLIB_THRESHOLD = 0.6
YUNET_SCORE = 0.7
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


class Attacker:
    """dlib's face recognizer; the face box comes from the original image (the attacker knows where)."""

    def __init__(self):
        import dlib
        import face_recognition_models as models

        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.recognizer = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self.rectangle = dlib.rectangle

    def box(self, image: np.ndarray) -> tuple[int, int, int, int]:
        """dlib's detection nearest the centre, or a fixed central box (LFW is centred)."""
        height, width = image.shape[:2]
        found = list(self.detector(image, 1))
        if not found:
            return (width * 7 // 25, height * 7 // 25, width * 18 // 25, height * 18 // 25)
        best = min(found, key=lambda r: abs(r.center().x - width / 2) + abs(r.center().y - height / 2))
        return (best.left(), best.top(), best.right(), best.bottom())

    def embed(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        shape = self.shape(image, self.rectangle(*box))
        return np.array(self.recognizer.compute_face_descriptor(image, shape))


class Judge:
    """YuNet: is there a face where the original face was, and where are its 5 points."""

    def __init__(self, model_path: Path):
        self.detector = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), YUNET_SCORE)

    def points(self, image_rgb: np.ndarray, face_box: np.ndarray) -> np.ndarray | None:
        """(5, 2) points of the detection whose centre lies in ``face_box``, or None."""
        self.detector.setInputSize((image_rgb.shape[1], image_rgb.shape[0]))
        _, detections = self.detector.detect(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
        x0, y0, x1, y1 = face_box
        for row in detections if detections is not None else []:
            cx, cy = row[0] + row[2] / 2, row[1] + row[3] / 2
            if x0 <= cx <= x1 and y0 <= cy <= y1:
                return row[4:14].reshape(5, 2)
        return None


@dataclass
class Face:
    path: str
    identity: str
    image: np.ndarray
    landmarks: np.ndarray
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    dlib_vector: np.ndarray | None = None

    @property
    def mesh_box(self) -> np.ndarray:
        return np.concatenate([self.landmarks.min(0), self.landmarks.max(0)])


def load_image(path: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(shared_dir() / "data" / "lfw" / path)), cv2.COLOR_BGR2RGB)


def select_faces(probes_per_identity: int, gallery_per_identity: int, seed: int) -> tuple[list[Face], list[Face]]:
    """Probe and gallery faces: eval identities only, meshes found, a fixed random choice."""
    cache = dict(np.load(LANDMARKS_PATH))
    has_mesh = ~np.isnan(cache["landmarks"]).any(axis=(1, 2))
    rng = np.random.default_rng(seed)
    probes, gallery = [], []
    for identity in np.unique(cache["identities"][cache["splits"] == "eval"]):
        rows = np.flatnonzero((cache["identities"] == identity) & has_mesh)
        rows = rng.permutation(rows)
        for target, chosen in ((probes, rows[:probes_per_identity]), (gallery, rows[-gallery_per_identity:])):
            for row in chosen:
                path = str(cache["paths"][row])
                target.append(Face(path, str(identity), load_image(path), cache["landmarks"][row]))
    return probes, gallery


def attach_dlib_vectors(attacker: Attacker, faces: list[Face], cache_name: str) -> None:
    """Fill each face's dlib box and vector from the cache in tools/_runs/, computing missing ones."""
    cache_path = RUNS_DIR / cache_name
    known = {}
    if cache_path.exists():
        data = np.load(cache_path)
        known = {p: (tuple(b), v) for p, b, v in zip(data["paths"], data["boxes"], data["vectors"])}
    for face in faces:
        if face.path not in known:
            box = attacker.box(face.image)
            known[face.path] = (box, attacker.embed(face.image, box))
        face.box, face.dlib_vector = tuple(int(v) for v in known[face.path][0]), known[face.path][1]
    paths = sorted(known)
    np.savez(cache_path, paths=np.array(paths), boxes=np.array([known[p][0] for p in paths]),
             vectors=np.array([known[p][1] for p in paths]))  # fmt: skip


@dataclass
class MethodResult:
    name: str
    verification: float
    rank1: float
    detection: float
    landmark_error: float
    faces: int
    fallbacks: int = 0


def region_faces(face: Face) -> Faces:
    mesh = face.landmarks
    box = np.concatenate([np.nanmin(mesh, 0), np.nanmax(mesh, 0)]).astype(np.float32)
    return Faces(box[None], np.ones(1, np.float32), mesh[None].astype(np.float32), np.zeros(1, np.int64))


def make_anonymizers(model: FaceModel, probes: list[Face], config: Config, seed: int) -> dict:
    """name -> function(probe index, image copy) -> fallback count, modifying the image in place."""
    rng = np.random.default_rng(seed)
    raw = {}

    def identity_of(index: int) -> np.ndarray:
        if index not in raw:
            raw[index] = model.encode(probes[index].image, probes[index].landmarks)
        return raw[index]

    def dp(epsilon: float):
        sigma = 0.0 if math.isinf(epsilon) else analytic_gaussian_sigma(epsilon, DELTA, 2 * model.clip_norm)

        def run(index: int, image: np.ndarray) -> int:
            noisy = identity_of(index) + rng.normal(0.0, sigma, model.dim)
            render_release(image, index, model.post_process(noisy))
            return 0

        return run

    def render_release(image: np.ndarray, index: int, released: np.ndarray) -> None:
        """As the pipeline renders a person: the release fitted to the head around the face."""
        landmarks = probes[index].landmarks
        model.render(image, landmarks, model.condition(image, landmarks, released))

    def mean_code(index: int, image: np.ndarray) -> int:
        render_release(image, index, np.zeros(model.dim))
        return 0

    def next_other_identity(index: int) -> int:
        """The next probe (cyclically) that shows a different person."""
        step = 1
        while probes[(index + step) % len(probes)].identity == probes[index].identity:
            step += 1
        return (index + step) % len(probes)

    def other_person(index: int, image: np.ndarray) -> int:
        model.render(image, probes[index].landmarks, model.post_process(identity_of(next_other_identity(index))))
        return 0

    def own_code(index: int, image: np.ndarray) -> int:
        model.render(image, probes[index].landmarks, identity_of(index))
        return 0

    anonymizers = {f"dp-{e:g}": dp(e) for e in EPSILONS}
    anonymizers |= {"own-code": own_code, "mean": mean_code, "other-person": other_person}
    anonymizers |= region_anonymizers(config, probes)
    return anonymizers


def region_anonymizers(config: Config, probes: list[Face]) -> dict:
    """The baseline replacers present in dpstream.replace (skipped when not landed)."""
    try:
        from dpstream.replace.region_methods import Blur, DpPix, Mosaic
    except ImportError as error:
        print(f"baselines skipped: {error}", file=sys.stderr)
        return {}
    replacers = {
        "blur": Blur(config.face_margin),
        "mosaic": Mosaic(config.face_margin, config.mosaic_cells),
        f"dp-pix-{config.epsilon:g}": DpPix(config.face_margin, config.dppix_cell, config.dppix_m, config.epsilon),
    }

    def wrap(replacer):
        def run(index: int, image: np.ndarray) -> int:
            return replacer.replace(VideoFrame(image, 0), region_faces(probes[index])).fallbacks

        return run

    return {name: wrap(r) for name, r in replacers.items()}


def evaluate(name, anonymize, probes, gallery_means, gallery_names, attacker, judge, originals_points):
    verified = rank1 = detected = fallbacks = 0
    landmark_errors = []
    for index, face in enumerate(probes):
        image = face.image.copy()
        try:
            fallbacks += anonymize(index, image)
        except RenderError as error:  # as in the pipeline: the face gets the fail-closed fallback
            print(f"{name}: {face.path}: {error}", file=sys.stderr)
            fallbacks += apply_fallback(image, region_faces(face))
        vector = attacker.embed(image, face.box)
        verified += np.linalg.norm(vector - face.dlib_vector) < DLIB_THRESHOLD
        rank1 += gallery_names[np.argmin(np.linalg.norm(gallery_means - vector, axis=1))] == face.identity
        points = judge.points(image, face.mesh_box)
        detected += points is not None
        if points is not None and originals_points[index] is not None:
            reference = originals_points[index]
            landmark_errors.append(
                np.linalg.norm(points - reference, axis=1).mean() / np.linalg.norm(reference[0] - reference[1])
            )
    n = len(probes)
    error = float(np.mean(landmark_errors)) if landmark_errors else float("nan")
    return MethodResult(name, verified / n, rank1 / n, detected / n, error, n, fallbacks)


def time_per_face(model: FaceModel, probes: list[Face], upscale: int) -> str:
    """Median wall and CPU ms per face: a new person (encode + post-process + decode once +
    render) and the same person in a later frame (render with the kept decoding; the encoder
    runs only for new tracks)."""
    timings: dict[str, tuple[list, list]] = {"new person": ([], []), "later frame": ([], [])}
    for face in probes[:101]:
        image = cv2.resize(face.image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_LINEAR)
        landmarks = face.landmarks * upscale
        try:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            identity = model.condition(image, landmarks, model.post_process(model.encode(image, landmarks)))
            model.render(image.copy(), landmarks, identity)
            timings["new person"][0].append(time.perf_counter() - wall_start)
            timings["new person"][1].append(time.process_time() - cpu_start)
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            model.render(image, landmarks, identity)
            timings["later frame"][0].append(time.perf_counter() - wall_start)
            timings["later frame"][1].append(time.process_time() - cpu_start)
        except RenderError:
            continue
    parts = []
    for name, (wall, cpu) in timings.items():
        wall, cpu = wall[1:], cpu[1:]  # the first face pays one-off set-up
        parts.append(f"{name} {1000 * np.median(wall):.1f} ms wall, {1000 * np.median(cpu):.1f} ms CPU")
    return "; ".join(parts) + f" (medians of {len(wall)})"


def wilson_interval(successes: float, trials: int) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (clamped to [0, 1] against rounding)."""
    z, p = 1.96, successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def pooled_noisy_rows(results: list[MethodResult]) -> list[str]:
    """At ε ≤ 8 the release is nearly independent of the face: pool those runs for tighter figures."""
    noisy = [r for r in results if r.name.startswith("dp-") and not r.name.startswith("dp-pix")
             and r.name != "dp-inf" and float(r.name[3:]) <= 8]  # fmt: skip
    if not noisy:
        return []
    trials = sum(r.faces for r in noisy)
    rows = []
    for label, attribute in (("dlib verification", "verification"), ("rank-1", "rank1")):
        hits = sum(getattr(r, attribute) * r.faces for r in noisy)
        low, high = wilson_interval(hits, trials)
        rows.append(f"| {label}, ε ∈ {{{', '.join(r.name[3:] for r in noisy)}}} pooled | "
                    f"{hits / trials:.2%} (95 % CI {low:.2%}–{high:.2%}, {trials} renders) |")  # fmt: skip
    return ["", "## Pooled over the noisy settings", "", "| measure | value |", "|---|---|", *rows]


def write_report(results, baselines, timings, model, args) -> None:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# DP face model: privacy/utility on LFW eval identities",
        "",
        f"Model `{model.manifest.name}` (dim {model.dim}, clip norm {model.clip_norm}, "
        f"refiner: {model.manifest.refiner.path.name if model.manifest.refiner else 'none'}, "
        f"context stage: {model.manifest.context_path.name if model.manifest.context_path else 'none'}), "
        f"{results[0].faces} probe faces ({args.probes_per_identity} per identity, 158 identities, seed {args.seed}). "
        f"Attacker: dlib ResNet, same person at distance < {DLIB_THRESHOLD}. Judge: YuNet (score ≥ {YUNET_SCORE}). "
        f"Noise: analytic Gaussian, Δ = 2·clip_norm, δ = {DELTA:g}, then the model's post-processing (mix of the nearest codebook identities, scaled to the typical norm).",
        "",
        "## Baselines of the attacker",
        "",
        "| measure | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in baselines.items()],
        "",
        "## Methods",
        "",
        "| method | dlib verification vs original | rank-1 (158 ids) | YuNet detection | landmark error (IOD) | fallbacks |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r.name} | {r.verification:.1%} | {r.rank1:.1%} | {r.detection:.1%} | {r.landmark_error:.3f} | {r.fallbacks} |"
            for r in results
        ],
        "",
        *pooled_noisy_rows(results),
        "",
        "`dp-inf`: no noise, but the release still goes through post-processing (the mix of the "
        "nearest codebook identities). `own-code`: the face's own clipped code decoded directly, no "
        "noise and no post-processing (does the decoder carry identity?). `mean`: the release "
        "replaced by the mean (zero) code, then fitted to the head as every release is (the model's "
        "context stage, when it has one) — what the un-noised channels (pose/expression, colour "
        "field, softened context around the region, and the code they predict) still give the attacker. "
        "`other-person`: another eval identity's own code (post-processed, not fitted to this head) "
        "rendered onto the face — the floor.",
        "",
        "## Time per face (one ONNX Runtime thread, one BLAS thread, median of 100)",
        "",
        *[f"- {k}: {v}" for k, v in timings.items()],
        "",
        "Command: `python tools/evaluate_model.py "
        + " ".join(a for a in sys.argv[1:])
        + "`",
    ]
    (args.results_dir / "face_model_eval.md").write_text("\n".join(lines) + "\n")


def plot(results, baselines_far: float, results_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    noisy = [r for r in results if r.name.startswith("dp-") and not r.name.startswith("dp-pix")]
    others = [r for r in results if r not in noisy]
    if noisy:
        detection, verification = [r.detection * 100 for r in noisy], [r.verification * 100 for r in noisy]
        axes.plot(detection, verification, "o-", label="dp (this model), by ε")
        for offset, r in enumerate(noisy):
            axes.annotate(r.name[3:], (r.detection * 100, r.verification * 100), fontsize=7,
                          xytext=(-28 if offset % 2 else 6, -2), textcoords="offset points")  # fmt: skip
    ceiling = 10.0
    for r in others:
        shown = min(r.verification * 100, ceiling)
        label = r.name if r.verification * 100 <= ceiling else f"{r.name} ({r.verification:.0%}, off scale)"
        axes.scatter(r.detection * 100, shown, marker="s" if shown < ceiling else "^", label=label)
    axes.axhline(baselines_far * 100, color="grey", linestyle="--", linewidth=1, label="dlib FAR, different people")
    axes.axhline(baselines_far * 100 + 1, color="grey", linestyle=":", linewidth=1, label="FAR + 1 point (bar)")
    axes.set_ylim(-0.3, ceiling + 0.3)
    axes.set_xlabel("YuNet detection rate on anonymized faces (%)")
    axes.set_ylabel("dlib verification vs original (%) — identity leak")
    axes.set_title("Privacy vs utility, LFW eval (good: bottom right)")
    axes.legend(fontsize=8, loc="upper center")
    figure.tight_layout()
    figure.savefig(results_dir / "privacy_utility.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes-per-identity", type=int, default=3)
    parser.add_argument("--gallery-per-identity", type=int, default=5)
    parser.add_argument("--methods", default="", help="comma-separated subset, e.g. dp-4,mean,blur")
    parser.add_argument("--manifest", default=None, help="model manifest (default: the shipped model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the table and plot go")
    parser.add_argument("--timing-only", action="store_true", help="print the time per face and stop")
    args = parser.parse_args()
    started = time.time()
    threadpool_limits(limits=1, user_api="blas")  # as in the pipeline: idle BLAS workers spin

    model = FaceModel.load(args.manifest)
    attacker = Attacker()
    judge = Judge(shared_dir() / "data" / "models" / "face_detection_yunet_2023mar.onnx")
    probes, gallery = select_faces(args.probes_per_identity, args.gallery_per_identity, args.seed)
    timings = {
        "LFW size (250x250, face ~110 px)": time_per_face(model, probes, 1),
        "upscaled x3 (face ~330 px)": time_per_face(model, probes, 3),
    }
    if args.timing_only:
        print("\n".join(f"- {k}: {v}" for k, v in timings.items()))
        return
    attach_dlib_vectors(attacker, probes + gallery, "lfw_eval_dlib.npz")
    gallery_names = np.array(sorted({f.identity for f in gallery}))
    gallery_means = np.array([np.mean([f.dlib_vector for f in gallery if f.identity == n], 0) for n in gallery_names])
    print(f"{len(probes)} probes, {len(gallery)} gallery faces ready in {time.time() - started:.0f} s", file=sys.stderr)

    vectors = np.array([f.dlib_vector for f in probes + gallery])
    names = np.array([f.identity for f in probes + gallery])
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    different, same = names[:, None] != names[None], (names[:, None] == names[None]) & ~np.eye(len(names), dtype=bool)
    far = float((distances[different] < DLIB_THRESHOLD).mean())
    originals_points = [judge.points(f.image, f.mesh_box) for f in probes]
    nearest_gallery = [gallery_names[np.argmin(np.linalg.norm(gallery_means - f.dlib_vector, axis=1))] for f in probes]
    original_rank1 = np.mean([name == f.identity for name, f in zip(nearest_gallery, probes)])
    baselines = {
        "dlib false accepts, pairs of different real eval identities": f"{far:.2%} ({different.sum() // 2} pairs)",
        "dlib true accepts, same identity, other photo": f"{(distances[same] < DLIB_THRESHOLD).mean():.1%}",
        "rank-1 of the original images": f"{original_rank1:.1%} (chance {1 / len(gallery_names):.2%})",
        "YuNet detection on the original images": f"{np.mean([p is not None for p in originals_points]):.1%}",
    }
    print(baselines, file=sys.stderr)

    config = Config()
    anonymizers = make_anonymizers(model, probes, config, args.seed)
    chosen = [m for m in args.methods.split(",") if m] or list(anonymizers)
    results = []
    for name in chosen:
        result = evaluate(name, anonymizers[name], probes, gallery_means, gallery_names, attacker, judge, originals_points)
        results.append(result)
        print(f"{result} ({time.time() - started:.0f} s)", file=sys.stderr)
        write_report(results, baselines, timings, model, args)  # after each method: partial runs leave a table
        plot(results, far, args.results_dir)
    print(f"done in {time.time() - started:.0f} s -> {args.results_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
