"""Independent judges for tests (YuNet, from ``tools/judges.py``) and media probes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np

from tools.judges import SHARED, YUNET_MODEL as YUNET, YuNet  # noqa: F401  (re-exported for the tests)

VIDEOS = SHARED / "data" / "videos"


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
