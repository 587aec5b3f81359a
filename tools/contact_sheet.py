"""Contact sheets of the DP face model: original | anonymized, for shared videos and LFW eval faces.

    python tools/contact_sheet.py            # ~1 min on 2 cores
    python tools/contact_sheet.py --only head

Writes ``benchmarks/results/face_model_videos.png`` (two frames from each shared clip, faces
found by the pipeline's own ``FaceFinder``: the frame before/after, then each face zoomed,
before/after), ``benchmarks/results/face_model_closeup.png`` (the faces of the large-face
clips at 1:1, no resampling: before | after), ``benchmarks/results/face_model_head.png`` (the
video frames: original | ``region: face`` | ``region: head``, the same draws) and
``benchmarks/results/face_model_lfw.png``
(LFW eval faces: original | ε | ε with the built-in model ``fitted`` (the same noise, fitted to
the head) | ε = ∞ | the face ``fitted`` predicts from the head alone, for a zero release). Each
face gets one noisy identity (analytic Gaussian, δ = 1e-5, fixed seed, then the model's
post-processing and, with a context stage, fitted to the head on its first frame) per clip, as
the pipeline draws one per person; faces that cannot be rendered get a red cross.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpstream.face_finder import FaceFinder  # noqa: E402
from dpstream.face_model import FaceModel, RenderError  # noqa: E402
from dpstream.head import HeadPainter, face_luminance, hair_style  # noqa: E402
from dpstream.privacy.analytic import analytic_gaussian_sigma  # noqa: E402
from dpstream.types import VideoFrame  # noqa: E402
from tools.prepare_lfw import LANDMARKS_PATH, REPO_ROOT, shared_dir  # noqa: E402

CLIPS = (
    "talking_720p_s18.mp4",
    "portrait_720x1280_d13.mp4",
    "closeup_512_d3.mp4",
    "multiface_640x360_hamilton.mp4",
    "headpose_2people_480x270.mp4",
    "walking_3people_480x270.mp4",
    "asl_thanks_640x480.mkv",
)
CLOSEUP_CLIPS = ("closeup_512_d3.mp4", "talking_720p_s18.mp4", "portrait_720x1280_d13.mp4")
FRAME_FRACTIONS = (0.3, 0.75)
TILE_HEIGHT = 240
FRAME_HEIGHT = 240
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def read_frames(path: Path, fractions: tuple[float, ...]) -> list[np.ndarray]:
    """RGB frames at the given fractions of the clip's frame count."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return [frames[min(int(f * len(frames)), len(frames) - 1)] for f in fractions]


def noisy_identity(model: FaceModel, identity: np.ndarray, epsilon: float, rng) -> np.ndarray:
    sigma = 0.0 if math.isinf(epsilon) else analytic_gaussian_sigma(epsilon, 1e-5, 2 * model.clip_norm)
    return model.post_process(identity + rng.normal(0.0, sigma, model.dim))


def render_or_mark(model: FaceModel, image: np.ndarray, landmarks: np.ndarray, identity: np.ndarray) -> None:
    try:
        model.render(image, landmarks, identity)
    except RenderError:
        x0, y0 = np.nanmin(landmarks, 0).astype(int)
        x1, y1 = np.nanmax(landmarks, 0).astype(int)
        cv2.line(image, (x0, y0), (x1, y1), (255, 0, 0), 3)
        cv2.line(image, (x0, y1), (x1, y0), (255, 0, 0), 3)


def face_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """A (TILE_HEIGHT, TILE_HEIGHT) view of the face and its surroundings."""
    centre = (landmarks.min(0) + landmarks.max(0)) / 2
    half = max(float((landmarks.max(0) - landmarks.min(0)).max()) * 0.9, 8.0)
    to_tile = np.array([[TILE_HEIGHT / (2 * half), 0, 0], [0, TILE_HEIGHT / (2 * half), 0]])
    to_tile[:, 2] = TILE_HEIGHT / 2 - to_tile[:, :2] @ centre
    return cv2.warpAffine(image, to_tile, (TILE_HEIGHT, TILE_HEIGHT), flags=cv2.INTER_AREA, borderValue=(255, 255, 255))


def fit_height(image: np.ndarray, height: int = TILE_HEIGHT) -> np.ndarray:
    return cv2.resize(image, (round(image.shape[1] * height / image.shape[0]), height), interpolation=cv2.INTER_AREA)


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    return np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def anonymized_clip_frames(model: FaceModel, clip: str, epsilon: float, rng, finder: FaceFinder):
    """(frame, anonymized frame, (landmarks, identity decoded) of each face) at ``FRAME_FRACTIONS``
    of a clip; a face near one seen before in the clip is taken for the same person (its identity
    is kept)."""
    frames = read_frames(shared_dir() / "data" / "videos" / clip, FRAME_FRACTIONS)
    people: list[tuple[np.ndarray, np.ndarray]] = []  # (face centre, identity to decode) in this clip
    for index, image in enumerate(frames):
        faces = finder.find(VideoFrame(image.copy(), index))
        anonymized = image.copy()
        plans = []
        for landmarks in faces.landmarks[faces.has_mesh()]:
            centre = landmarks.mean(0)
            nearest = min(people, key=lambda p: np.linalg.norm(p[0] - centre), default=None)
            if nearest is None or np.linalg.norm(nearest[0] - centre) > 0.25 * image.shape[1]:
                try:
                    released = noisy_identity(model, model.encode(image, landmarks), epsilon, rng)
                    identity = model.condition(image, landmarks, released)
                except RenderError:
                    identity = np.zeros(model.dim)
                nearest = (centre, identity)
                people.append(nearest)
            plans.append((landmarks, nearest[1]))
        for landmarks, identity in plans:
            render_or_mark(model, anonymized, landmarks, identity)
        yield image, anonymized, plans


def anonymized_frames(model: FaceModel, clips: tuple[str, ...], epsilon: float, seed: int):
    """``anonymized_clip_frames`` over ``clips``, with one face finder and one seeded generator."""
    finder = FaceFinder()
    rng = np.random.default_rng(seed)
    try:
        for clip in clips:
            yield from anonymized_clip_frames(model, clip, epsilon, rng, finder)
    finally:
        finder.close()


def closeup_sheet(model: FaceModel, epsilon: float, seed: int) -> np.ndarray:
    tiles = []
    for image, anonymized, faces in anonymized_frames(model, CLOSEUP_CLIPS, epsilon, seed):
        for landmarks, _ in faces:
            height, width = image.shape[:2]
            x0, y0 = np.clip(landmarks.min(0) - 0.15 * (landmarks.max(0) - landmarks.min(0)), 0, None).astype(int)
            x1, y1 = (np.minimum(landmarks.max(0) + 0.15 * (landmarks.max(0) - landmarks.min(0)), (width, height))).astype(int)
            tiles.append(np.hstack([image[y0:y1, x0:x1], np.full((y1 - y0, 4, 3), 255, np.uint8), anonymized[y0:y1, x0:x1]]))
    return stack_rows(tiles)


def video_sheet(model: FaceModel, epsilon: float, seed: int) -> np.ndarray:
    rows = []
    for image, anonymized, faces in anonymized_frames(model, CLIPS, epsilon, seed):
        tiles = [fit_height(image, FRAME_HEIGHT), fit_height(anonymized, FRAME_HEIGHT)]
        for landmarks, _ in faces:
            tiles += [face_crop(image, landmarks), face_crop(anonymized, landmarks)]
        rows.append(np.hstack([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles]))
    return stack_rows(rows)


def head_sheet(model: FaceModel, epsilon: float, seed: int) -> np.ndarray:
    """Per frame: the original, ``region: face`` and ``region: head`` (the same draws)."""
    painter, styles = HeadPainter(), {}
    rows = []
    for image, anonymized, faces in anonymized_frames(model, CLIPS, epsilon, seed):
        head = anonymized.copy()
        for landmarks, identity in faces:
            key = identity.tobytes()
            styles.setdefault(key, hair_style(identity, face_luminance(anonymized, landmarks)))
            painter.paint(head, landmarks, styles[key], image)
        tiles = [fit_height(image, FRAME_HEIGHT), fit_height(anonymized, FRAME_HEIGHT), fit_height(head, FRAME_HEIGHT)]
        rows.append(np.hstack([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles]))
    return stack_rows(rows)


def lfw_sheet(model: FaceModel, epsilon: float, seed: int, count: int = 12) -> np.ndarray:
    fitted = FaceModel.load("fitted")
    cache = dict(np.load(LANDMARKS_PATH))
    usable = (cache["splits"] == "eval") & ~np.isnan(cache["landmarks"]).any(axis=(1, 2))
    rows_index = np.random.default_rng(seed).choice(np.flatnonzero(usable), count, replace=False)
    rng = np.random.default_rng(seed)
    tiles = []
    for row in rows_index:
        image = cv2.cvtColor(cv2.imread(str(shared_dir() / "data" / "lfw" / cache["paths"][row])), cv2.COLOR_BGR2RGB)
        landmarks = cache["landmarks"][row]
        identity = model.encode(image, landmarks)
        released = noisy_identity(model, identity, epsilon, rng)
        variants = [image]
        for renderer, code in ((model, released), (fitted, released), (model, model.post_process(identity)),
                               (fitted, np.zeros(model.dim))):  # fmt: skip
            variant = image.copy()
            render_or_mark(renderer, variant, landmarks, renderer.condition(image, landmarks, code))
            variants.append(variant)
        tiles.append(np.hstack([v[25:225, 25:225] for v in variants]))
    half = (len(tiles) + 1) // 2
    return np.hstack([np.vstack(tiles[:half]), np.full((200 * half, 8, 3), 255, np.uint8), np.vstack(tiles[half:])])


SHEETS = {
    "lfw": ("face_model_lfw.png", lfw_sheet),
    "videos": ("face_model_videos.png", video_sheet),
    "closeup": ("face_model_closeup.png", closeup_sheet),
    "head": ("face_model_head.png", head_sheet),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--only", choices=tuple(SHEETS), help="write this sheet only")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the sheets go")
    args = parser.parse_args()
    model = FaceModel.load(args.manifest)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    for key, (name, make) in SHEETS.items():
        if args.only not in (None, key):
            continue
        sheet = make(model, args.epsilon, args.seed)
        cv2.imwrite(str(args.results_dir / name), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(args.results_dir / name)


if __name__ == "__main__":
    main()
