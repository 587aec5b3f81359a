"""Every baseline method on every shared video: an independent detector (YuNet) must find at
most 5 % of the faces in the output that it finds in the input."""

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


def found_faces(video: str, judges: dict[str, YuNet]) -> dict[str, dict[str, int]]:
    """YuNet face counts per judge: in the input and in each baseline's output.

    Faces are found once per frame by the real finder and tracker; each method then rewrites
    its own copy of the frame.
    """
    anonymizer = Anonymizer(Config(method="blur"))
    replacers = {method: make_replacer(Config(method=method)) for method in BASELINES}
    counts = {judge: dict.fromkeys(("input", *BASELINES), 0) for judge in judges}
    source = VideoSource(VIDEOS / video)
    for tracked in anonymizer.tracked(source.frames()):
        frame, faces = tracked.frame, tracked.faces
        if frame.index % JUDGED_EVERY:
            continue
        outputs = {"input": frame.image}
        for method, replacer in replacers.items():
            copy = VideoFrame(frame.image.copy(), frame.index, frame.pts, frame.time_base)
            outputs[method] = replacer.replace(copy, faces).frame.image
        for judge, yunet in judges.items():
            for name, image in outputs.items():
                counts[judge][name] += yunet.count(image)
    source.close()
    anonymizer.close()
    return counts


@requires_shared
@pytest.mark.parametrize("video", SHARED_VIDEOS)
def test_baselines_leave_no_detectable_face(video):
    counts = found_faces(video, {"yunet": YuNet()})["yunet"]
    assert counts["input"] > 0
    ratios = {method: counts[method] / counts["input"] for method in BASELINES}
    assert all(r <= MAX_FOUND_RATIO for r in ratios.values()), f"{video}: {counts}"
