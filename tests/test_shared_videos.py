"""Every baseline method on every shared video: an independent detector (YuNet) must find at
most 5 % of the faces in the output that it finds in the input."""

import numpy as np
import pytest
from conftest import SHARED_VIDEOS, requires_shared
from independent import VIDEOS, YuNet

from dpstream.config import Config
from dpstream.pipeline import Anonymizer
from dpstream.replace import make_replacer
from dpstream.source import VideoSource
from dpstream.types import VideoFrame

BASELINES = ("blur", "mosaic", "solid", "dp-pix")
MAX_FOUND_RATIO = 0.05
JUDGED_EVERY = 2  # YuNet judges every 2nd frame; the finder and tracker see every frame


KNOWN_DETECTION_GAPS = {
    "multiface_640x360_hamilton.mp4": "MediaPipe (full range + short-range tiles) misses dim ~45 px "
    "background faces that YuNet finds: 12-15 % remain (issue 5: tracking and detection recall)",
}


def video_cases():
    return [
        pytest.param(v, marks=pytest.mark.xfail(strict=True, reason=KNOWN_DETECTION_GAPS[v]))
        if v in KNOWN_DETECTION_GAPS
        else v
        for v in SHARED_VIDEOS
    ]


@requires_shared
@pytest.mark.parametrize("video", video_cases())
def test_baselines_leave_no_detectable_face(video):
    """Faces are found once per frame by the real finder and tracker; each method then
    rewrites its own copy of the frame, and YuNet counts faces in every copy."""
    anonymizer = Anonymizer(Config(method="blur"))
    replacers = {method: make_replacer(Config(method=method)) for method in BASELINES}
    yunet = YuNet()
    found_in = 0
    found_out = dict.fromkeys(BASELINES, 0)
    source = VideoSource(VIDEOS / video)
    for frame in source.frames():
        faces = anonymizer.tracker.update(anonymizer.finder.find(frame))
        if frame.index % JUDGED_EVERY:
            continue
        found_in += yunet.count(frame.image)
        for method, replacer in replacers.items():
            copy = VideoFrame(frame.image.copy(), frame.index, frame.pts, frame.time_base)
            found_out[method] += yunet.count(replacer.replace(copy, faces).frame.image)
    source.close()
    anonymizer.close()
    assert found_in > 0
    ratios = {method: found / found_in for method, found in found_out.items()}
    assert all(r <= MAX_FOUND_RATIO for r in ratios.values()), f"{video}: YuNet found {found_in} faces in input; output ratios {ratios}"
