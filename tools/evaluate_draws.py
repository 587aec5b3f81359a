"""How often one `dp` noise draw gives a face that dlib matches to the person, on the real videos.

One run of ``evaluate_tracking.py`` makes one draw per person, so its `dp` leak count depends on
luck. This tool measures the rate per draw instead. Each shared video is tracked once with the
default config and every ``--every``-th frame is kept with its faces. Then, for each of
``--draws`` seeded draws and each ε of ``--epsilons``, the real `dp` replacer (encoder, identity
cache, noise, codebook post-processing, renderer, fallback) runs on those frames in order, and each
output frame is judged exactly as ``evaluate_tracking.py`` judges a frame (YuNet and UltraFace on
the output, dlib distance < 0.6 to the original face at that place). The output is not
re-encoded to H.264 here.

Draw ``k`` uses numpy's generator seeded with ``k`` (reproducible, NOT private), so every ε gets
the same standard-normal draws, only scaled: the ε are compared draw by draw. At ε = 0.01 the
noise is 100 times that at ε = 1 and the released identity is, in practice, independent of the
person. The leak rate there is what the rest of the output gives without any identity passing
through: the kept hair, outline, pose and skin colour, together with the chance of drawing a
face that looks like the person.

    python tools/evaluate_draws.py                     # 20 draws, ε 1 and 0.01, every 5th frame (~20 min)
    python tools/evaluate_draws.py --videos closeup_512_d3.mp4 --draws 5 --no-report
    python tools/evaluate_draws.py --region head --draws 40 --videos portrait_720x1280_d13.mp4,multiface_640x360_hamilton.mp4

Writes ``benchmarks/results/leak_draws.md`` unless ``--no-report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dpstream.config import Config, load_config  # noqa: E402
from dpstream.face_model import FaceModel  # noqa: E402
from dpstream.pipeline import Anonymizer  # noqa: E402
from dpstream.replace.dp_face import DpFaceReplacer  # noqa: E402
from dpstream.source import VideoSource  # noqa: E402
from dpstream.types import Faces, VideoFrame  # noqa: E402
from tools.evaluate_model import wilson_interval  # noqa: E402
from tools.evaluate_tracking import (  # noqa: E402
    RUNS, VIDEOS, DescriptorCache, Judges, frame_runs, leaks_in_frame, shared_video_names,
)

REPORT = REPO_ROOT / "benchmarks" / "results" / "leak_draws.md"


@dataclass(slots=True)
class SampledFrame:
    frame: VideoFrame  # untouched original
    faces: Faces  # as the pipeline tracked them
    confirmed: dict[int, np.ndarray] = field(default_factory=dict)  # the judges' confirmers on the original


def sample_clip(video: Path, config: Config, every: int) -> list[SampledFrame]:
    """Every ``every``-th frame of ``video`` with the faces the default pipeline tracks in it."""
    anonymizer = Anonymizer(dataclasses.replace(config, method="blur", region="face"))  # tracking only; no replacement
    source = VideoSource(video)
    try:
        return [SampledFrame(item.frame, item.faces) for item in anonymizer.tracked(source.frames()) if item.frame.index % every == 0]
    finally:
        source.close()
        anonymizer.close()


@dataclass(slots=True)
class DrawResult:
    video: str
    epsilon: float
    draw: int
    frames: int  # frames judged
    rendered: int  # faces drawn by dp (the rest fell back)
    leak_frames: list[int]
    closest: float  # smallest dlib distance original ↔ output on a real face


def judge_draw(clip: list[SampledFrame], video: str, model: FaceModel, config: Config, epsilon: float, draw: int,
               judges: Judges, cache: DescriptorCache) -> DrawResult:  # fmt: skip
    privacy = dataclasses.replace(config, epsilon=epsilon).privacy
    replacer = DpFaceReplacer(model, privacy, min_face_px=config.dp_min_face_px, testing_seed=draw, region=config.region)
    result = DrawResult(video, epsilon, draw, 0, 0, [], float("inf"))
    for sampled in clip:
        output = dataclasses.replace(sampled.frame, image=sampled.frame.image.copy())
        replacer.replace(output, sampled.faces)
        found = leaks_in_frame(judges, cache, output.index, sampled.frame.image, output.image, sampled.confirmed)
        result.frames += 1
        if any(found.leaks.values()):
            result.leak_frames.append(output.index)
        result.closest = min([result.closest, *found.distances])
    result.rendered = replacer.rendered
    return result


def summary_rows(results: list[DrawResult]) -> list[str]:
    lines = [
        "| video | ε | draws | draws with a leak | share (95 % CI) | leak frames / frames judged | median over draws of the closest distance | leak frames per draw that leaked |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for video in dict.fromkeys(r.video for r in results):
        for epsilon in dict.fromkeys(r.epsilon for r in results if r.video == video):
            runs = [r for r in results if r.video == video and r.epsilon == epsilon]
            if not any(r.rendered for r in runs):
                lines.append(f"| {video} | {epsilon:g} | {len(runs)} | - | no face drawn (all fallbacks) | - | - | - |")
                continue
            leaked = [r for r in runs if r.leak_frames]
            low, high = wilson_interval(len(leaked), len(runs))
            closest = np.median([r.closest for r in runs])
            per_draw = ", ".join(f"draw {r.draw}: {len(r.leak_frames)}" for r in leaked) or "-"
            lines.append(
                f"| {video} | {epsilon:g} | {len(runs)} | {len(leaked)} | {len(leaked) / len(runs):.0%} ({low:.0%}–{high:.0%}) | "
                f"{sum(len(r.leak_frames) for r in runs)} / {sum(r.frames for r in runs)} | {closest:.3f} | {per_draw} |"
            )
    return lines


def write_report(results: list[DrawResult], command: str, seconds: float, every: int, report: Path) -> None:
    lines = [
        "# `dp` leaks per noise draw on the shared real videos",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min on the 2-core development machine). Definitions: "
        f"`tools/evaluate_draws.py` (module docstring); every {every}th frame judged as in `tracking_eval.md`.",
        "",
    ]
    lines += summary_rows(results) + [""]
    for r in results:
        if r.leak_frames:
            lines.append(f"- {r.video}, ε {r.epsilon:g}, draw {r.draw}: frames {frame_runs(r.leak_frames)}")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default="", help="shared video names (comma-separated; default all)")
    parser.add_argument("--draws", type=int, default=20, help="seeded draws per clip and ε")
    parser.add_argument("--epsilons", default="1,0.01", help="ε values (comma-separated)")
    parser.add_argument("--every", type=int, default=5, help="judge every Nth frame")
    parser.add_argument("--model", default=None, help="face model manifest or built-in name (default: the config's)")
    parser.add_argument("--region", choices=("face", "head"), default="face", help="what dp redraws (head: report leak_draws_head.md)")
    parser.add_argument("--no-report", action="store_true", help=f"print only, do not write {REPORT.relative_to(REPO_ROOT)}")
    args = parser.parse_args()
    try:
        epsilons = [float(e) for e in args.epsilons.split(",")]
    except ValueError:
        parser.error(f"--epsilons: expected numbers separated by commas, got {args.epsilons!r}")
    if args.draws < 1 or args.every < 1 or any(e <= 0 for e in epsilons):
        parser.error("--draws and --every must be ≥ 1 and every ε > 0")
    names = shared_video_names(args.videos, parser)
    started = time.perf_counter()
    config = load_config(None, region=args.region)
    model = FaceModel.load(args.model or config.model)
    judges = Judges.load()
    results: list[DrawResult] = []
    for name in names:
        clip = sample_clip(VIDEOS / name, config, args.every)
        cache = DescriptorCache(RUNS / "leaks" / f"{Path(name).stem}.descriptors.npz")
        for epsilon in epsilons:
            for draw in range(args.draws):
                results.append(judge_draw(clip, name, model, config, epsilon, draw, judges, cache))
                if not results[-1].rendered:
                    break  # every face falls back: the draw does not matter
        cache.save()
        print("\n".join(summary_rows([r for r in results if r.video == name])[2:]), flush=True)
    seconds = time.perf_counter() - started
    print("\n".join(summary_rows(results)))
    if not args.no_report:
        command = "python tools/evaluate_draws.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        report = REPORT if args.region == "face" else REPORT.with_name(f"leak_draws_{args.region}.md")
        write_report(results, command.strip(), seconds, args.every, report)
        print(f"-> {report}")


if __name__ == "__main__":
    main()
