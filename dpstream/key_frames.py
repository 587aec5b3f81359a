"""Key frames: which frames of a video run the full detector (every ``detect_every`` frames and
each scene cut), with CenterFace's faces on them at ``detector_recall: high``. Live runs, which
have no look-ahead to cover a face found late, run the whole-frame detector on every frame and
spread the tiles over the frames of each key-frame interval (``spread_tiles``).

Marking a frame needs only the frames, never the tracks, so file runs mark frames on a thread of
their own ahead of tracking: CenterFace, the costliest detector, then overlaps the other stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dpstream.recall_detector import CenterFace
from dpstream.types import Detections

SCENE_CUT_DIFFERENCE = 20.0
"""Mean absolute difference (0-255) of consecutive 32x18 grey thumbnails above which a frame
starts a new shot."""


@dataclass(frozen=True, slots=True)
class KeyFrameMark:
    """What the key-frame stage says about one frame."""

    key: bool  # the detector runs on this frame (new faces are looked for)
    scene_cut: bool  # this frame starts a new shot
    recall: Detections | None = None  # CenterFace's faces (key frames, detector_recall high)
    tiles: bool = True  # MediaPipe also runs on tiles (else on the whole frame only)
    tile_part: tuple[int, int] | None = None  # (k, n): only every n-th tile from the k-th (None: all)


class KeyFrames:
    """Marks consecutive frames of one video: key every ``detect_every`` frames and at each
    scene cut; ``recall_detector`` (if any) finds its faces on the first key frame at least
    ``recall_every`` frames after its last run, and on each scene cut. Where CenterFace runs on
    only some key frames, MediaPipe's tiles (small faces, as CenterFace finds them) run on the
    others only.

    With ``spread_tiles`` (live runs) every frame runs the whole-frame detector, and the tiles
    are spread over each ``detect_every`` frames, a share of them per frame (all of them on the
    first frame and on scene cuts): every tile still runs once per key-frame interval, the cost
    per frame is even (no latency spike on key frames), and a face entering between key frames
    is found at once unless it is too small for the whole-frame detector."""

    def __init__(
        self, detect_every: int = 1, recall_detector: CenterFace | None = None, recall_every: int = 1, spread_tiles: bool = False
    ):
        self.detect_every = detect_every
        self.recall_detector = recall_detector
        self.recall_every = recall_every
        self.spread_tiles = spread_tiles
        self._frames_since_key = detect_every  # the first frame is a key frame
        self._frames_since_recall = recall_every
        self._previous_thumbnail: np.ndarray | None = None

    def mark(self, image: np.ndarray) -> KeyFrameMark:
        first = self._previous_thumbnail is None
        scene_cut = self.is_scene_cut(image)
        self._frames_since_key = self.detect_every if scene_cut else self._frames_since_key + 1
        self._frames_since_recall = self.recall_every if scene_cut else self._frames_since_recall + 1
        spread = self.spread_tiles and self.detect_every > 1
        if self._frames_since_key < self.detect_every:
            if not spread:
                return KeyFrameMark(False, scene_cut)
            return KeyFrameMark(True, scene_cut, tile_part=(self._frames_since_key, self.detect_every))
        self._frames_since_key = 0
        tile_part = (0, self.detect_every) if spread and not (first or scene_cut) else None
        if self.recall_detector is None or self._frames_since_recall < self.recall_every:
            return KeyFrameMark(True, scene_cut, tile_part=tile_part)
        self._frames_since_recall = 0
        recall = self.recall_detector.detect(image)
        return KeyFrameMark(True, scene_cut, recall, tiles=self.recall_every <= self.detect_every, tile_part=tile_part)

    def reset(self) -> None:
        """Start over (an unrelated image follows)."""
        self._frames_since_key = self.detect_every
        self._frames_since_recall = self.recall_every
        self._previous_thumbnail = None

    def is_scene_cut(self, image: np.ndarray) -> bool:
        """``image`` differs from the previous one by more than ``SCENE_CUT_DIFFERENCE``."""
        step = max(1, min(image.shape[0] // 72, image.shape[1] // 128))  # a cheap pre-shrink
        grey = cv2.cvtColor(cv2.resize(image[::step, ::step], (32, 18), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        previous, self._previous_thumbnail = self._previous_thumbnail, grey.astype(np.float32)
        return previous is not None and float(np.abs(self._previous_thumbnail - previous).mean()) > SCENE_CUT_DIFFERENCE
