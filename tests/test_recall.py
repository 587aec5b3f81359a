"""The high-recall stage: CenterFace fused with MediaPipe finds the small, dim faces MediaPipe
misses in a hand-labelled photo, and the output covers them."""

from fractions import Fraction

import cv2
import numpy as np
import pytest
from conftest import requires_shared

from dpstream.config import Config
from dpstream.errors import ConfigError
from dpstream.face_finder import FaceFinder
from dpstream.pipeline import Anonymizer
from dpstream.types import VideoFrame
from tools.evaluate_recall import found_labels, labelled_photos, read_rgb


@pytest.fixture(scope="module")
def small_dim_photo():
    """dlib_faces' 2007_007763.jpg at half size and 0.3 brightness: faces of 18-26 px, one of
    them (18 px) too small and dim for MediaPipe."""
    photo = next(p for p in labelled_photos() if p.path.name == "2007_007763.jpg")
    image = cv2.resize(read_rgb(photo.path), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    return (image * 0.3).round().astype(np.uint8), photo.boxes * 0.5


@requires_shared
def test_fused_stage_finds_labelled_faces_mediapipe_misses(small_dim_photo):
    image, labels = small_dim_photo
    normal, high = FaceFinder(recall="normal"), FaceFinder(recall="high")
    try:
        by_mediapipe = found_labels(labels, normal.detect(image).boxes)
        by_fused = found_labels(labels, high.detect(image).boxes)
        by_centerface = found_labels(labels, high.recall_detector.detect(image).boxes)
    finally:
        normal.close()
        high.close()
    assert by_fused.all() and by_centerface.all()
    assert not by_mediapipe.all()  # the 18-px face
    assert (by_mediapipe <= by_fused).all()  # fusing loses none of MediaPipe's faces


@requires_shared
def test_faces_only_the_recall_detector_finds_are_covered_in_the_output(small_dim_photo):
    image, labels = small_dim_photo
    outputs, results = {}, {}
    for name, method, recall in (("normal", "blur", "normal"), ("high", "blur", "high"), ("dp", "dp", "high")):
        anonymizer = Anonymizer(Config(method=method, detector_recall=recall))
        try:
            (results[name],) = anonymizer.stream([VideoFrame(image.copy(), 0)], overlap=False, look_ahead=False)
        finally:
            anonymizer.close()
        outputs[name] = results[name].frame.image
    normal = FaceFinder(recall="normal")
    missed = labels[~found_labels(labels, normal.detect(image).boxes)]
    normal.close()
    assert len(missed)
    for x0, y0, x1, y1 in missed.astype(int):
        window = np.s_[y0:y1, x0:x1]
        changed = {recall: (np.abs(output[window].astype(int) - image[window]).max(axis=2) > 2).mean() for recall, output in outputs.items()}
        assert changed["normal"] < 0.5  # mostly published untouched (a neighbour's blur reaches in)
        assert changed["high"] > 0.8  # now blurred (flat dark patches can stay within 2 levels)
        assert changed["dp"] > 0.8
    # every face is under dp_min_face_px: dp gives each the fallback blur, none is left out
    assert results["dp"].fallbacks == len(results["dp"].faces) >= len(labels)


@requires_shared
def test_a_face_only_centerface_finds_is_covered_from_its_first_frame_in_a_video(small_dim_photo):
    """File runs: CenterFace runs on frames 0 and 10 only (recall_every 10). The photo's faces are
    flat grey patches but one, which appears at frame 3 (no scene cut) and which MediaPipe does
    not find (its key frames 5 and 15). First found at frame 10, the face must be covered from
    frame 3 on, back through the look-ahead."""
    image, labels = small_dim_photo
    empty = image.copy()
    for x0, y0, x1, y1 in labels.astype(int):
        empty[y0 - 4 : y1 + 4, x0 - 4 : x1 + 4] = image[y0:y1, x0:x1].mean(axis=(0, 1))
    anonymizer = Anonymizer(Config(method="blur"))
    for x0, y0, x1, y1 in labels.astype(int):
        shown = empty.copy()
        shown[y0 - 4 : y1 + 4, x0 - 4 : x1 + 4] = image[y0 - 4 : y1 + 4, x0 - 4 : x1 + 4]
        if not len(anonymizer.finder.detect_mediapipe(shown)):
            break
    else:
        pytest.fail("MediaPipe finds every face of the photo shown alone")
    assert len(anonymizer.finder.recall_detector.detect(shown)) == 1
    frames = [VideoFrame((empty if index < 3 else shown).copy(), index, index, Fraction(1, 25)) for index in range(20)]
    try:
        outputs = [result.frame.image for result in anonymizer.stream(iter(frames))]
    finally:
        anonymizer.close()
    window = np.s_[y0:y1, x0:x1]
    changed = [(np.abs(output[window].astype(int) - shown[window]).max(axis=2) > 2).mean() for output in outputs[3:]]
    assert min(changed) > 0.8, [round(c, 2) for c in changed]


def test_detector_recall_is_checked():
    with pytest.raises(ConfigError, match="detector_recall: must be one of normal, high"):
        Config(detector_recall="max")
    assert Config().detector_recall == "high"
