"""Many-face test frames: real single-face videos from ../shared tiled into one frame."""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from dpstream.types import VideoFrame

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DPSTREAM_SHARED", REPO.parent / "shared"))
VIDEOS = SHARED / "data" / "videos"
ONE_FACE_VIDEOS = ("talking_720p_s18.mp4", "closeup_512_d3.mp4", "portrait_720x1280_d13.mp4", "asl_again_640x480.mkv", "asl_thanks_640x480.mkv")


def video_frames(path: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` RGB frames of ``path`` (looping if it is shorter)."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return [frames[i % len(frames)] for i in range(count)]


def grid_frames(faces: int, width: int, height: int, count: int) -> list[VideoFrame]:
    """``count`` frames of ``width``x``height`` holding ``faces`` tiles, each a real one-face video
    (cover-cropped to its tile), 30 frames/s."""
    columns = math.ceil(math.sqrt(faces * width / height))
    rows = math.ceil(faces / columns)
    tile_w, tile_h = width // columns, height // rows
    sources = [video_frames(VIDEOS / ONE_FACE_VIDEOS[i % len(ONE_FACE_VIDEOS)], count) for i in range(faces)]
    frames = []
    for index in range(count):
        canvas = np.zeros((height, width, 3), np.uint8)
        for tile, source in enumerate(sources):
            y, x = divmod(tile, columns)
            canvas[y * tile_h : (y + 1) * tile_h, x * tile_w : (x + 1) * tile_w] = _cover(source[index], tile_w, tile_h)
        frames.append(VideoFrame(canvas, index, index, Fraction(1, 30)))
    return frames


def write_video(frames: list[VideoFrame], path: Path) -> Path:
    """Encode ``frames`` losslessly enough for benchmarking (x264, crf 12)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height = frames[0].image.shape[1], frames[0].image.shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``image`` to cover width x height, cropping the overflow around the upper middle
    (where the faces of these clips are)."""
    scale = max(width / image.shape[1], height / image.shape[0])
    resized = cv2.resize(image, (math.ceil(image.shape[1] * scale), math.ceil(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    x0 = (resized.shape[1] - width) // 2
    y0 = max(0, min(resized.shape[0] - height, int((resized.shape[0] - height) * 0.3)))
    return resized[y0 : y0 + height, x0 : x0 + width]
