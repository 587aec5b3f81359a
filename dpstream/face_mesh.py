"""Face mesh: MediaPipe's face-landmark network run directly (LiteRT) on a rotated square crop.

This is what MediaPipe's face mesh does in video mode, without its graph: the network sees a
square region 1.5 times the face, turned so the eyes are level (the eye line comes from the
detector's eye key points or from the face's previous mesh), and returns 468 points and a
face-presence score. The fit is repeated in the region around its own result until that region
settles. The network file ships in the installed ``mediapipe`` wheel; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import mediapipe
import numpy as np
from ai_edge_litert.interpreter import Interpreter

from dpstream.types import NUM_LANDMARKS

MODEL_PATH = Path(mediapipe.__file__).parent / "modules" / "face_landmark" / "face_landmark.tflite"
INPUT_SIDE = 192
ROI_SCALE = 1.5
"""The network's input covers this many times the face (MediaPipe's own setting)."""
WIDE_ROI_SCALE = 2.0
"""First region for a face that moves: the network places a face that is off the region's
centre too close to it, and a wider first view lets the following fits find where it is."""
MIN_PRESENCE = 0.5
"""Face-presence score (0-1) below which the fit is refused."""
MAX_FITS = 4
SETTLED_SHIFT = 0.05
"""A region has settled when its centre and side move less than this share of its side and its
angle less than this many radians."""
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263


@dataclass(frozen=True, slots=True)
class Region:
    """A square region of the frame: centre (x, y), side in pixels and in-plane rotation (radians)."""

    center_x: float
    center_y: float
    side: float
    angle: float = 0.0

    @classmethod
    def around_box(cls, box: np.ndarray, angle: float = 0.0, scale: float = ROI_SCALE) -> Region:
        """The network's region for a face box (x0, y0, x1, y1), ``scale`` times its larger side."""
        x0, y0, x1, y1 = (float(v) for v in box)
        return cls((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * scale, angle)

    @classmethod
    def around_mesh(cls, landmarks: np.ndarray) -> Region:
        """The network's region for a fitted mesh: eyes level, 1.5 times the mesh's extent."""
        angle = eye_line_angle(landmarks)
        axes = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        along = landmarks @ axes.T  # coordinates along the eye line and across it
        low, high = along.min(0), along.max(0)
        center = ((low + high) / 2) @ axes
        return cls(float(center[0]), float(center[1]), float((high - low).max()) * ROI_SCALE, angle)

    def close_to(self, other: Region) -> bool:
        tolerance = SETTLED_SHIFT * self.side
        return (
            abs(self.center_x - other.center_x) < tolerance
            and abs(self.center_y - other.center_y) < tolerance
            and abs(self.side - other.side) < tolerance
            and abs(np.angle(np.exp(1j * (self.angle - other.angle)))) < SETTLED_SHIFT
        )

    def to_frame(self) -> np.ndarray:
        """(2, 3) affine map from network input pixels to frame pixels."""
        scale = self.side / INPUT_SIDE
        cos, sin = np.cos(self.angle) * scale, np.sin(self.angle) * scale
        half = INPUT_SIDE / 2
        return np.array(
            [
                [cos, -sin, self.center_x - cos * half + sin * half],
                [sin, cos, self.center_y - sin * half - cos * half],
            ]
        )


class FaceMesh:
    """Fits the 468-point face mesh in a region of a frame (one LiteRT interpreter, not thread-safe)."""

    def __init__(self, threads: int = 1):
        self._interpreter = Interpreter(model_path=str(MODEL_PATH), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in self._interpreter.get_output_details()}
        shapes = {d["name"]: int(np.prod(d["shape"])) for d in self._interpreter.get_output_details()}
        self._points = next(index for name, index in outputs.items() if shapes[name] == NUM_LANDMARKS * 3)
        self._presence = next(index for name, index in outputs.items() if shapes[name] == 1)

    def fit(self, image: np.ndarray, region: Region) -> tuple[np.ndarray, float]:
        """(468, 2) frame-pixel landmarks and the face-presence score (0-1) in ``region``."""
        to_frame = region.to_frame()
        crop = cv2.warpAffine(
            image,
            cv2.invertAffineTransform(to_frame),
            (INPUT_SIDE, INPUT_SIDE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        self._interpreter.set_tensor(self._input, (crop.astype(np.float32) * (1 / 255))[None])
        self._interpreter.invoke()
        points = self._interpreter.get_tensor(self._points).reshape(NUM_LANDMARKS, 3)[:, :2]
        logit = float(self._interpreter.get_tensor(self._presence).reshape(-1)[0])
        landmarks = points @ to_frame[:, :2].T + to_frame[:, 2]
        return landmarks.astype(np.float32), 1.0 / (1.0 + np.exp(-logit))

    def fit_box(self, image: np.ndarray, box: np.ndarray, angle: float = 0.0, scale: float = ROI_SCALE) -> np.ndarray:
        """(468, 2) landmarks of the face in ``box`` (eye line at ``angle``), NaN when no face is there.

        The first fit sees ``scale`` times the box. The fit is repeated in the region around its
        own result until that region stops moving (a tracked face: usually once; a tilted face
        from a detection box or a wider first region: up to ``MAX_FITS``).
        """
        region = Region.around_box(box, angle, scale)
        for _ in range(MAX_FITS):
            landmarks, presence = self.fit(image, region)
            if presence < MIN_PRESENCE or not np.isfinite(landmarks).all():
                return np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
            refined = Region.around_mesh(landmarks)
            if refined.close_to(region):
                break
            region = refined
        return landmarks


def eye_line_angle(landmarks: np.ndarray) -> float:
    """In-plane rotation (radians) of a mesh's eye line; 0 without a mesh."""
    eye_line = landmarks[LEFT_EYE_OUTER] - landmarks[RIGHT_EYE_OUTER]
    angle = float(np.arctan2(eye_line[1], eye_line[0]))
    return angle if np.isfinite(angle) else 0.0
