"""Head replacement (``region: head``): hair, ears and the head's outline around a rendered dp face
are painted over with generated hair, so what is kept of the person shrinks to a coarse
silhouette, the neck, body and background.

Per face, in the face's own coordinates (fixed to its mesh): hair is painted over a generic head
shape (an ellipse from above the crown to the ear lobes) whatever the frame shows there; beyond
it where MediaPipe's selfie segmentation (shipped in the ``mediapipe`` wheel, run through
LiteRT) finds the person; and below the ears where pixels beside the neck have the colour of the
hair above. The hair is a strand pattern falling from a point above the crown, fixed to the
face's frame (it moves rigidly with the head, so it does not shimmer), in a colour drawn once
per person from a palette of natural hair colours. Both are functions of the person's noisy
identity (post-processing of the DP release) and of the rendered face's skin tone and light,
which it keeps anyway (see PRIVACY.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import mediapipe
import numpy as np
from ai_edge_litert.interpreter import Interpreter

SEGMENTER_PATH = Path(mediapipe.__file__).parent / "modules" / "selfie_segmentation" / "selfie_segmentation.tflite"
SEGMENTER_SIDE = 256

FOREHEAD, CHIN, RIGHT_CHEEK, LEFT_CHEEK, RIGHT_EYE, LEFT_EYE = 10, 152, 234, 454, 33, 263
"""Mesh points that fix the face's frame: ``a`` along the eye line, ``b`` down the face, both in
half face sizes from the midpoint of forehead and chin (the face spans about -1..1 on each)."""

HEAD_CENTER_B = -0.35
CORE_RADII = (1.3, 1.35)
"""Hair is painted over all of this ellipse in face coordinates (crown, temples and ears), whatever
the frame shows there: a generic head shape that hides the person's own, found or not."""
HEAD_RADII = (2.1, 1.9)
ZONE_FADE_FROM_B = 0.3
"""Beyond the core, up to this ellipse, hair is painted where the segmentation finds the person
(a fuller head of hair), fading out from ``ZONE_FADE_FROM_B`` to the ear lobes (collar and
shoulders are the person too)."""
FADE_B = (0.75, 1.25)
"""Below the ear lobes the zone fades out; the neck (``NECK_HALF_WIDTH``) is kept from there down."""
FACE_FEATHER = 0.03
"""The rendered face (the mesh's hull) is left alone, feathered by this fraction of half its width."""

HAIR_COLOURS = np.array(
    [(28, 24, 22), (52, 38, 30), (88, 62, 42), (128, 94, 62), (168, 132, 88), (200, 168, 118), (118, 58, 34)], np.float32
)  # sRGB: black, dark brown, brown, light brown, dark blonde, blonde, auburn
HAIR_COLOUR_SHARES = np.array(
    [(0.16, 0.55), (0.22, 0.30), (0.20, 0.10), (0.12, 0.03), (0.09, 0.01), (0.07, 0.00), (0.05, 0.00)]
)
"""How often each colour is drawn for light skin and for dark skin."""
TYPICAL_FACE_LUMA = 150.0
"""Luma of a typically lit face: hair is lit like the face, and darker skin draws darker hair more often."""
CROP_REACH = 3.0
"""The head is painted in a square this many half face sizes around the face's centre."""
LONG_HAIR_B = 2.8
NECK_HALF_WIDTH = 0.7
HAIR_COLOUR_DISTANCE = 28.0
LONG_HAIR_AT_THE_EARS = 0.4
"""Hair below the ears: down to ``LONG_HAIR_B``, beside the neck, within this Lab distance of the
crown's colour, when the person pixels beside the ears are that colour (this mean similarity)."""
HEAD_FALLBACK_MARGIN = 0.7
"""A face that falls back to the blur in head mode: the blurred region reaches over the hair too."""
PATTERN_SHAPE = (96, 1440)  # length x angle samples of the strand pattern
CROWN_B = -2.6
"""Strands fall from this point above the head (face coordinates, a = 0)."""
STRAND_CONTRAST = 0.3


@dataclass(frozen=True, slots=True)
class HairStyle:
    """One person's generated hair: a colour and a strand pattern (polar around the crown point: length x angle)."""

    colour: np.ndarray  # (3,) float32 sRGB
    pattern: np.ndarray  # PATTERN_SHAPE float32, about -1..1


def hair_style(noisy_identity: np.ndarray, skin_luminance: float) -> HairStyle:
    """The person's hair, a function of the noisy identity (and the skin tone, for a natural colour)."""
    digest = hashlib.sha256(np.ascontiguousarray(noisy_identity, np.float64).tobytes()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    dark_skin = float(np.clip((TYPICAL_FACE_LUMA - skin_luminance) / 70.0, 0.0, 1.0))
    weights = HAIR_COLOUR_SHARES @ (1.0 - dark_skin, dark_skin)
    colour = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=weights / weights.sum())] * np.float32(rng.uniform(0.9, 1.1))
    noise = rng.normal(size=(2, *PATTERN_SHAPE)).astype(np.float32)
    # strands run away from the crown point: long along their length, thin across; clumps are wider
    fine, clumps = (strands_blur(n, across, along) for n, across, along in ((noise[0], 1.2, 8.0), (noise[1], 8.0, 10.0)))
    pattern = 0.65 * fine / (fine.std() + 1e-6) + 0.35 * clumps / (clumps.std() + 1e-6)
    return HairStyle(colour, (pattern / 2.5).astype(np.float32))


def strands_blur(noise: np.ndarray, across: float, along: float) -> np.ndarray:
    """Gaussian blur of a polar pattern (length x angle), ``along`` the length and ``across`` it,
    continuous where the angle wraps round."""
    pad = int(np.ceil(3 * across)) + 1
    wrapped = np.pad(noise, ((0, 0), (pad, pad)), mode="wrap")
    return cv2.GaussianBlur(wrapped, (0, 0), sigmaX=across, sigmaY=along, borderType=cv2.BORDER_REFLECT)[:, pad:-pad]


@dataclass(frozen=True, slots=True)
class FaceFrame:
    """The face's own coordinates in the image: origin, unit axes and half sizes in pixels."""

    origin: np.ndarray
    along: np.ndarray  # unit vector along the eye line
    down: np.ndarray  # unit vector down the face
    half_width: float
    half_height: float

    @classmethod
    def of(cls, landmarks: np.ndarray) -> FaceFrame:
        along = landmarks[LEFT_EYE] - landmarks[RIGHT_EYE]
        along = along / max(float(np.linalg.norm(along)), 1e-6)
        down = np.array([-along[1], along[0]], np.float32)
        origin = (landmarks[FOREHEAD] + landmarks[CHIN]) / 2
        half_width = abs(float((landmarks[LEFT_CHEEK] - landmarks[RIGHT_CHEEK]) @ along)) / 2
        half_height = abs(float((landmarks[CHIN] - landmarks[FOREHEAD]) @ down)) / 2
        return cls(origin.astype(np.float32), along.astype(np.float32), down, max(half_width, 1.0), max(half_height, 1.0))

    def coordinates(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) face coordinates of image pixels."""
        dx, dy = xs - self.origin[0], ys - self.origin[1]
        return (dx * self.along[0] + dy * self.along[1]) / self.half_width, (dx * self.down[0] + dy * self.down[1]) / self.half_height


class HeadPainter:
    """Paints generated hair over a face's head zone (one LiteRT interpreter: not thread-safe)."""

    def __init__(self, threads: int = 1):
        self._interpreter = Interpreter(model_path=str(SEGMENTER_PATH), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]

    def person_mask(self, crop: np.ndarray) -> np.ndarray:
        """Probability (0..1, float32) that each pixel of ``crop`` (RGB) shows a person."""
        small = cv2.resize(crop, (SEGMENTER_SIDE, SEGMENTER_SIDE), interpolation=cv2.INTER_AREA)
        self._interpreter.set_tensor(self._input, (small.astype(np.float32) * (1 / 255))[None])
        self._interpreter.invoke()
        mask = self._interpreter.get_tensor(self._output).reshape(SEGMENTER_SIDE, SEGMENTER_SIDE)
        return cv2.resize(np.clip(mask, 0, 1), (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)

    def paint(self, image: np.ndarray, landmarks: np.ndarray, style: HairStyle, original: np.ndarray) -> None:
        """Paint ``style`` over the head zone of the face at ``landmarks``, in place.

        ``original`` is the frame before any face was redrawn: the person is segmented there (a
        rendered face must not change where the head is found)."""
        face = FaceFrame.of(landmarks)
        size = max(face.half_width, face.half_height)
        height, width = image.shape[:2]
        x0, y0 = max(int(face.origin[0] - CROP_REACH * size), 0), max(int(face.origin[1] - CROP_REACH * size), 0)
        x1, y1 = min(int(face.origin[0] + CROP_REACH * size) + 1, width), min(int(face.origin[1] + CROP_REACH * size) + 1, height)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        a, b = face.coordinates(xs, ys)
        # the head zone: inside the ellipse, fading out below the ears
        below_the_ears = np.clip((FADE_B[1] - b) / (FADE_B[1] - FADE_B[0]), 0, 1)
        below_the_ears *= 1.0 - np.clip((b - FADE_B[0]) / 0.15, 0, 1) * np.clip((NECK_HALF_WIDTH + 0.1 - np.abs(a)) / 0.1, 0, 1)
        core = inside_ellipse(a, b, CORE_RADII) * below_the_ears
        zone = inside_ellipse(a, b, HEAD_RADII) * np.clip((FADE_B[0] - b) / (FADE_B[0] - ZONE_FADE_FROM_B), 0, 1)
        crop = original[y0:y1, x0:x1]
        person = self.person_mask(crop)
        uncovered = 1.0 - self._face_cover(landmarks, face, x0, y0, x1, y1)
        upper = np.maximum(core, zone * person)
        weight = np.maximum(upper, long_hair(crop, a, b, person * uncovered, upper)) * uncovered
        if not (weight > 0.01).any():
            return
        # strands fall from a crown point above the head and fan out over it
        fall_a, fall_b = a, b - CROWN_B
        angle = (np.arctan2(fall_a, fall_b) + np.pi) / (2 * np.pi) * PATTERN_SHAPE[1]
        length = np.sqrt(fall_a * fall_a + fall_b * fall_b) / (LONG_HAIR_B - CROWN_B)
        strands = cv2.remap(
            style.pattern, angle.astype(np.float32), (np.minimum(length, 1.0) * (PATTERN_SHAPE[0] - 1)).astype(np.float32),
            cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP,
        )  # fmt: skip
        light = float(np.clip(face_luminance(image, landmarks) / TYPICAL_FACE_LUMA, 0.45, 1.35))
        shading = 1.0 + 0.12 * np.clip(-b, -1.5, 1.5)  # lit from above, darker lower down
        hair = style.colour[None, None, :] * (light * shading * (1.0 + STRAND_CONTRAST * strands))[..., None]
        pixels = image[y0:y1, x0:x1].astype(np.float32)
        blended = pixels + weight[..., None] * (np.clip(hair, 0, 255) - pixels)
        image[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)

    @staticmethod
    def _face_cover(landmarks: np.ndarray, face: FaceFrame, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """1 over the rendered face (its mesh hull), feathered to 0 outside."""
        cover = np.zeros((y1 - y0, x1 - x0), np.uint8)
        hull = cv2.convexHull(landmarks.astype(np.float32)).reshape(-1, 2)
        cv2.fillPoly(cover, [np.round(hull - (x0, y0)).astype(np.int32)], 255, lineType=cv2.LINE_AA)
        sigma = max(FACE_FEATHER * face.half_width, 0.5)
        return cv2.GaussianBlur(cover.astype(np.float32) * (1 / 255), (0, 0), sigma)


SKIN_POINTS = np.array([10, 151, 9, 67, 297, 109, 338, 50, 280, 117, 346, 123, 352, 205, 425])
"""Forehead and cheek points of the mesh: skin in every expression (no eyes, brows or mouth)."""


def face_luminance(image: np.ndarray, landmarks: np.ndarray) -> float:
    """Mean luma (0..255) of the image at the face's forehead and cheeks (light level times skin tone)."""
    points = np.round(landmarks[SKIN_POINTS]).astype(int)
    inside = (points[:, 0] >= 0) & (points[:, 0] < image.shape[1]) & (points[:, 1] >= 0) & (points[:, 1] < image.shape[0])
    if not inside.any():
        return TYPICAL_FACE_LUMA
    samples = image[points[inside, 1], points[inside, 0]].astype(np.float32)
    return float((samples @ np.array([0.299, 0.587, 0.114], np.float32)).mean())


def inside_ellipse(a: np.ndarray, b: np.ndarray, radii: tuple[float, float]) -> np.ndarray:
    """1 inside the ellipse around the head's centre, 0 outside, with a soft edge."""
    ea, eb = a / radii[0], (b - HEAD_CENTER_B) / radii[1]
    return np.clip((1.0 - np.sqrt(ea * ea + eb * eb)) / 0.08, 0, 1)


def long_hair(crop: np.ndarray, a: np.ndarray, b: np.ndarray, person: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Weight (0..1) of hair below the ears: pixels beside the neck whose colour is the crown's,
    connected to the head zone. The crown's colour only selects pixels; it is never drawn."""
    crown = (upper > 0.5) & (person > 0.5) & (b < 0.0)  # mostly hair: the zone above the eyes, off the face
    side = (b > FADE_B[0]) & (b < LONG_HAIR_B) & (np.abs(a) > NECK_HALF_WIDTH) & (np.abs(a) < 1.7)
    if crown.sum() < 20 or not side.any():
        return np.zeros_like(person)
    lab = cv2.cvtColor(crop.astype(np.float32) * (1 / 255), cv2.COLOR_RGB2Lab)
    difference = lab - np.median(lab[crown], axis=0)
    similar = np.exp(-((0.5 * difference[..., 0]) ** 2 + difference[..., 1] ** 2 + difference[..., 2] ** 2) / HAIR_COLOUR_DISTANCE**2)
    # only hair that already hangs beside the face at the ears (not a collar or jacket of the same colour)
    ears = (b > 0.2) & (b < FADE_B[0]) & (np.abs(a) > 1.0) & (np.abs(a) < 1.5) & (person > 0.5)
    if not ears.any() or float(similar[ears].mean()) < LONG_HAIR_AT_THE_EARS:
        return np.zeros_like(person)
    lower = side * person * similar
    # keep what hangs from the head: connected to the zone above
    count, labels = cv2.connectedComponents(((lower > 0.5) | (upper > 0.5)).astype(np.uint8))
    attached = np.unique(labels[(upper > 0.5) & (labels > 0)])
    lower = lower * np.isin(labels, attached)
    return cv2.GaussianBlur(lower.astype(np.float32), (0, 0), max(crop.shape[0] / 200, 0.5))

