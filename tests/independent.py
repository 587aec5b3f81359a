"""Independent judges for tests: YuNet (a detector the pipeline does not use) and media probes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import av
import cv2
import numpy as np

SHARED = Path(os.environ.get("DPSTREAM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
VIDEOS = SHARED / "data" / "videos"
YUNET = SHARED / "data" / "models" / "face_detection_yunet_2023mar.onnx"


class YuNet:
    """Counts faces with OpenCV's YuNet, on images scaled to at most ``max_side`` pixels (the
    same scaling for inputs and outputs keeps counts comparable).

    The default score threshold 0.9 is ``cv2.FaceDetectorYN.create``'s own default; at 0.6 YuNet
    also fires on fists, bokeh and smooth head-shaped blobs (and on more small real faces).
    """

    def __init__(self, score: float = 0.9, max_side: int = 640):
        self.detector = cv2.FaceDetectorYN.create(str(YUNET), "", (320, 320), score)
        self.max_side = max_side

    def count(self, rgb: np.ndarray) -> int:
        scale = self.max_side / max(rgb.shape[:2])
        if scale < 1:
            rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        self.detector.setInputSize((rgb.shape[1], rgb.shape[0]))
        _, faces = self.detector.detect(np.ascontiguousarray(rgb[..., ::-1]))
        return 0 if faces is None else len(faces)


def decoded_rgb_frames(path: str | Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def video_timestamps(path: str | Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(frame.pts * frame.time_base) for frame in container.decode(video=0)]


def audio_digest(path: str | Path) -> tuple[int, str]:
    """(packet count, sha256 of all audio packet payloads in order)."""
    digest = hashlib.sha256()
    count = 0
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return 0, ""
        for packet in container.demux(audio=0):
            if packet.dts is None:
                continue
            digest.update(bytes(packet))
            count += 1
    return count, digest.hexdigest()
