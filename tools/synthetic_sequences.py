"""Synthetic face videos with exact ground truth, for tracking and leak evaluation.

LFW ``eval`` faces (``../shared/data/lfw``, split ``lfw_split.tsv``; never ``train`` faces) are cut
out with a soft mask around the face mesh and composited onto real, face-free backgrounds taken
from the shared videos. Each face moves, scales, turns (horizontal squeeze and in-plane rotation),
occludes others and leaves and re-enters the frame along key-framed paths. For every frame and
person the generator knows the face mesh (478 points from ``tools/_runs/lfw_landmarks.npz``, or
MediaPipe run once on the still when that cache is absent) moved by the same affine map as the
pixels, so boxes, identities, visibility and inner-face key points are exact.

    python tools/synthetic_sequences.py --write out_dir    # writes every preset as .mp4 (a look)

Everything is deterministic from ``Scenario.seed``.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import cv2
import numpy as np

from tools.judges import SHARED

LFW = SHARED / "data" / "lfw"
SPLIT = SHARED / "data" / "lfw_split.tsv"
VIDEOS = SHARED / "data" / "videos"
LANDMARKS_CACHE = Path(__file__).resolve().parent / "_runs" / "lfw_landmarks.npz"

INNER_POINTS = np.array([33, 133, 362, 263, 468, 473, 1, 61, 291, 13, 14])
"""Face-mesh indices of the inner face: eye corners, iris centres, nose tip, mouth corners, lips."""

MASK_GROWTH = 1.12
"""The cut-out is the mesh hull grown this much about its centre (takes in the hairline and jaw edge)."""

MASK_FEATHER = 0.06
"""Feather (Gaussian sigma) of the cut-out's edge, as a fraction of the mesh height."""

OCCLUDED_ALPHA = 0.5
"""A point is hidden when faces in front cover it with at least this opacity."""


@dataclass(frozen=True, slots=True)
class Key:
    """Where a face is at one frame; between keys everything is interpolated linearly."""

    frame: int
    x: float  # face centre, fraction of the frame width (outside 0..1: off screen)
    y: float  # fraction of the frame height
    size: float  # face (mesh) height, fraction of the frame height
    roll: float = 0.0  # in-plane rotation, degrees
    turn: float = 1.0  # horizontal squeeze (1 frontal, 0.6 strongly turned)


@dataclass(frozen=True, slots=True)
class PersonPath:
    keys: tuple[Key, ...]
    depth: int = 0  # larger is drawn in front


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    width: int
    height: int
    frames: int
    people: tuple[PersonPath, ...]
    background: str = "room"
    fps: int = 25
    seed: int = 0


@dataclass(slots=True)
class FrameTruth:
    """Ground truth of one frame, one row per person at least partly inside the frame."""

    index: int
    person_ids: np.ndarray  # (P,) int: index of the person in the scenario (its identity)
    boxes: np.ndarray  # (P, 4) float32 mesh bounding box clipped to the frame
    visibility: np.ndarray  # (P,) float32: fraction of the face's cut-out in the frame and unoccluded
    mesh: np.ndarray  # (P, 478, 2) float32 the face's mesh in frame pixels
    inner_points: np.ndarray  # (P, len(INNER_POINTS), 2) float32
    inner_visible: np.ndarray  # (P, len(INNER_POINTS)) bool: in the frame and not occluded


@dataclass(frozen=True, slots=True)
class FaceStill:
    identity: str
    image: np.ndarray  # (250, 250, 3) uint8 RGB
    mesh: np.ndarray  # (478, 2) float32
    alpha: np.ndarray  # (250, 250) float32 0..1 soft cut-out


def _presets() -> dict[str, Scenario]:
    presets: list[Scenario] = []
    for width, height, suffix in ((1280, 720, "720p"), (640, 360, "360p")):
        presets.append(
            Scenario(
                f"crossing_{suffix}", width, height, 75,
                (
                    PersonPath((Key(0, 0.15, 0.45, 0.30), Key(74, 0.85, 0.50, 0.30, roll=10)), depth=1),
                    PersonPath((Key(0, 0.85, 0.50, 0.26, turn=0.8), Key(74, 0.15, 0.45, 0.28, roll=-8)), depth=0),
                    PersonPath((Key(0, 0.50, 0.22, 0.18), Key(37, 0.52, 0.22, 0.19, turn=0.7), Key(74, 0.50, 0.22, 0.18))),
                ),
                background="room", seed=1,
            )
        )
        presets.append(
            Scenario(
                f"fast_zoom_{suffix}", width, height, 75,
                (
                    PersonPath((
                        Key(0, 0.25, 0.50, 0.15), Key(15, 0.70, 0.40, 0.45, roll=25), Key(30, 0.30, 0.60, 0.20, roll=-25),
                        Key(45, 0.75, 0.55, 0.50, turn=0.7), Key(60, 0.35, 0.45, 0.15, roll=15), Key(74, 0.60, 0.50, 0.35),
                    )),
                    PersonPath((Key(0, 0.80, 0.30, 0.22), Key(37, 0.20, 0.35, 0.12, roll=-20), Key(74, 0.80, 0.30, 0.25, turn=0.75))),
                ),
                background="office", seed=2,
            )
        )
        presets.append(
            Scenario(
                f"leave_reenter_{suffix}", width, height, 100,
                (
                    PersonPath((
                        Key(0, 0.55, 0.45, 0.32), Key(25, 1.30, 0.45, 0.32), Key(60, 1.30, 0.45, 0.32),
                        Key(85, 0.60, 0.48, 0.32, roll=8), Key(99, 0.55, 0.48, 0.32),
                    )),
                    PersonPath((Key(0, 0.20, 0.50, 0.24), Key(99, 0.22, 0.50, 0.24, turn=0.8))),
                ),
                background="room", seed=3,
            )
        )
    return {s.name: s for s in presets}


PRESETS = _presets()


def leave_and_return(seconds_away: float, width: int = 640, height: int = 360, fps: int = 25, seed: int = 4) -> Scenario:
    """One person alone, who walks out of the right edge, stays away ``seconds_away`` and comes back."""
    out = 20
    back = out + max(1, round(seconds_away * fps))
    keys = (
        Key(0, 0.50, 0.45, 0.40), Key(out - 8, 0.60, 0.45, 0.40), Key(out, 1.35, 0.45, 0.40),
        Key(back, 1.35, 0.45, 0.40), Key(back + 8, 0.60, 0.45, 0.40), Key(back + 30, 0.50, 0.45, 0.40),
    )
    return Scenario(f"leave_return_{seconds_away:g}s", width, height, back + 31, (PersonPath(keys),), "room", fps, seed)


def generate(scenario: Scenario) -> Iterator[tuple[np.ndarray, FrameTruth]]:
    """(RGB frame, its ground truth) for every frame of the scenario."""
    faces = pick_faces(len(scenario.people), scenario.seed)
    background = make_background(scenario.background, scenario.width, scenario.height)
    order = sorted(range(len(scenario.people)), key=lambda i: scenario.people[i].depth)  # back to front
    for index in range(scenario.frames):
        image = background.astype(np.float32)
        alphas: dict[int, np.ndarray] = {}
        meshes: dict[int, np.ndarray] = {}
        for person in order:
            face = faces[person]
            matrix = face_matrix(face, interpolate(scenario.people[person].keys, index), scenario.width, scenario.height)
            size = (scenario.width, scenario.height)
            alpha = cv2.warpAffine(face.alpha, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
            colour = cv2.warpAffine(face.image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            image = image * (1 - alpha[..., None]) + colour.astype(np.float32) * alpha[..., None]
            alphas[person] = alpha
            meshes[person] = (face.mesh @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
        yield np.clip(image.round(), 0, 255).astype(np.uint8), _truth(index, scenario, order, alphas, meshes)


def _truth(index: int, scenario: Scenario, order: list[int], alphas: dict, meshes: dict) -> FrameTruth:
    width, height = scenario.width, scenario.height
    rows = []
    for rank, person in enumerate(order):
        mesh = meshes[person]
        x0, y0 = np.clip(mesh.min(0), 0, (width, height))
        x1, y1 = np.clip(mesh.max(0), 0, (width, height))
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue  # fully off screen
        in_front = np.zeros((height, width), np.float32)
        for other in order[rank + 1 :]:
            in_front = np.maximum(in_front, alphas[other])
        own = alphas[person] > 0.5
        full_area = _cutout_area(mesh)
        visibility = float((own & (in_front < OCCLUDED_ALPHA)).sum()) / max(full_area, 1.0)
        points = mesh[INNER_POINTS]
        inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
        xs = np.clip(points[:, 0].astype(int), 0, width - 1)
        ys = np.clip(points[:, 1].astype(int), 0, height - 1)
        visible = inside & (in_front[ys, xs] < OCCLUDED_ALPHA)
        rows.append((person, (x0, y0, x1, y1), min(visibility, 1.0), mesh, points, visible))
    rows.sort(key=lambda r: r[0])
    count = len(rows)
    return FrameTruth(
        index=index,
        person_ids=np.array([r[0] for r in rows], np.int64),
        boxes=np.array([r[1] for r in rows], np.float32).reshape(count, 4),
        visibility=np.array([r[2] for r in rows], np.float32),
        mesh=np.array([r[3] for r in rows], np.float32).reshape(count, 478, 2),
        inner_points=np.array([r[4] for r in rows], np.float32).reshape(count, len(INNER_POINTS), 2),
        inner_visible=np.array([r[5] for r in rows], bool).reshape(count, len(INNER_POINTS)),
    )


def _cutout_area(mesh: np.ndarray) -> float:
    """Area of the face's cut-out (grown mesh hull) wherever it lies, on or off screen."""
    hull = cv2.convexHull(mesh.astype(np.float32)).reshape(-1, 2)
    return float(cv2.contourArea(hull)) * MASK_GROWTH**2


def interpolate(keys: tuple[Key, ...], frame: int) -> Key:
    if frame <= keys[0].frame:
        return keys[0]
    for a, b in zip(keys, keys[1:]):
        if frame <= b.frame:
            t = (frame - a.frame) / max(b.frame - a.frame, 1)
            mix = lambda u, v: u + (v - u) * t  # noqa: E731
            return Key(frame, mix(a.x, b.x), mix(a.y, b.y), mix(a.size, b.size), mix(a.roll, b.roll), mix(a.turn, b.turn))
    return keys[-1]


def face_matrix(face: FaceStill, key: Key, width: int, height: int) -> np.ndarray:
    """2x3 affine map from the still's pixels to the frame: squeeze, scale, roll, place."""
    centre = face.mesh.mean(0)
    scale = key.size * height / float(np.ptp(face.mesh[:, 1]))
    angle = np.deg2rad(key.roll)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rotation @ np.diag([scale * key.turn, scale])
    target = np.array([key.x * width, key.y * height])
    return np.hstack([linear, (target - linear @ centre)[:, None]])


def pick_faces(count: int, seed: int) -> list[FaceStill]:
    """``count`` LFW eval stills of different people with a face mesh, chosen by ``seed``."""
    rows = eval_images()
    rng = np.random.default_rng(seed)
    chosen: list[FaceStill] = []
    seen: set[str] = set()
    for index in rng.permutation(len(rows)):
        path, identity = rows[index]
        if identity in seen:
            continue
        mesh = lfw_mesh(path)
        if mesh is None:
            continue
        chosen.append(_still(path, identity, mesh))
        seen.add(identity)
        if len(chosen) == count:
            return chosen
    raise ValueError(f"{SPLIT}: fewer than {count} eval faces with a face mesh")


@lru_cache(maxsize=1)
def eval_images() -> list[tuple[str, str]]:
    """(path relative to data/lfw, identity) of every eval image, in a fixed order."""
    if not SPLIT.is_file():
        raise FileNotFoundError(f"{SPLIT}: LFW split not found (set DPSTREAM_SHARED)")
    rows = []
    with open(SPLIT, newline="") as handle:
        for record in csv.DictReader(handle, delimiter="\t"):
            if record["split"] == "eval":
                identity = record["identity"]
                rows += [(f"{identity}/{p.name}", identity) for p in sorted((LFW / identity).glob("*.jpg"))]
    return rows


def lfw_mesh(relative_path: str) -> np.ndarray | None:
    """The still's 478-point mesh: from the landmark cache, or MediaPipe run on the still."""
    cache = _landmark_cache()
    if cache is not None:
        mesh = cache.get(relative_path)
    else:
        from tools.prepare_lfw import central_face_landmarks

        mesh = central_face_landmarks(_mesh_model(), _read_rgb(LFW / relative_path))
    return None if mesh is None or np.isnan(mesh).any() else mesh


@lru_cache(maxsize=1)
def _landmark_cache() -> dict[str, np.ndarray] | None:
    if not LANDMARKS_CACHE.is_file():
        return None
    data = np.load(LANDMARKS_CACHE)
    keep = data["splits"] == "eval"
    return dict(zip(data["paths"][keep], data["landmarks"][keep]))


@lru_cache(maxsize=1)
def _mesh_model():
    import mediapipe as mp

    return mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=3, refine_landmarks=True)


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        raise FileNotFoundError(f"{path}: cannot read image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _still(relative_path: str, identity: str, mesh: np.ndarray) -> FaceStill:
    image = _read_rgb(LFW / relative_path)
    hull = cv2.convexHull(mesh.astype(np.float32)).reshape(-1, 2)
    centre = hull.mean(0)
    grown = centre + (hull - centre) * MASK_GROWTH
    mask = np.zeros(image.shape[:2], np.float32)
    cv2.fillPoly(mask, [np.round(grown * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
    sigma = MASK_FEATHER * float(np.ptp(mesh[:, 1]))
    alpha = cv2.GaussianBlur(mask, (0, 0), sigma) * mask.clip(0, 1)  # feather inwards: nothing outside the hull
    return FaceStill(identity, image, mesh.astype(np.float32), alpha / max(float(alpha.max()), 1e-6))


BACKGROUNDS = {
    # name: (video, frame, face-free strips x0:x1 (full height) joined side by side, then mirrored)
    "room": ("talking_720p_s18.mp4", 0, ((0, 480),)),
    "office": ("asl_again_640x480.mkv", 0, ((0, 170), (460, 640))),
}


@lru_cache(maxsize=8)
def make_background(name: str, width: int, height: int) -> np.ndarray:
    """A face-free real background: strips of a shared video frame away from its person, joined
    with their mirror image, cropped to ``width:height`` and scaled to that size."""
    if name not in BACKGROUNDS:
        raise ValueError(f"background: unknown {name!r}, expected one of {sorted(BACKGROUNDS)}")
    video, frame_index, strips = BACKGROUNDS[name]
    frame = _video_frame(VIDEOS / video, frame_index)
    joined = np.concatenate([frame[:, x0:x1] for x0, x1 in strips], 1)
    joined = np.concatenate([joined, joined[:, ::-1]], 1)
    rows, cols = joined.shape[:2]
    crop_rows = min(rows, round(cols * height / width))
    crop_cols = round(crop_rows * width / height)
    top, left = (rows - crop_rows) // 2, (cols - crop_cols) // 2
    crop = joined[top : top + crop_rows, left : left + crop_cols]
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_CUBIC)


def _video_frame(path: Path, index: int) -> np.ndarray:
    with av.open(str(path)) as container:
        for position, frame in enumerate(container.decode(video=0)):
            if position == index:
                return frame.to_ndarray(format="rgb24")
    raise ValueError(f"{path}: has no frame {index}")


def write_video(scenario: Scenario, path: str | Path, crf: int = 12) -> list[FrameTruth]:
    """Encode the scenario as H.264 (``crf`` 12: nearly lossless) and return its ground truth."""
    truths = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=scenario.fps)
        stream.width, stream.height, stream.pix_fmt = scenario.width, scenario.height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        stream.codec_context.time_base = Fraction(1, scenario.fps)
        for image, truth in generate(scenario):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = truth.index
            frame.time_base = Fraction(1, scenario.fps)
            container.mux(stream.encode(frame))
            truths.append(truth)
        container.mux(stream.encode())
    return truths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, required=True, help="folder for the preset videos")
    parser.add_argument("--scenarios", default=",".join(PRESETS), help="comma-separated preset names")
    args = parser.parse_args()
    args.write.mkdir(parents=True, exist_ok=True)
    for name in args.scenarios.split(","):
        truths = write_video(PRESETS[name], args.write / f"{name}.mp4")
        faces = sum(len(t.person_ids) for t in truths)
        print(f"{name}: {len(truths)} frames, {faces} face-frames -> {args.write / name}.mp4")


if __name__ == "__main__":
    main()
