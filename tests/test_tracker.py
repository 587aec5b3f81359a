"""Tracking: motion prediction, landmark smoothing, association, holds, scene cuts, key-frame
cadence and look-ahead gap filling, on synthetic tracks and on real video frames."""

from fractions import Fraction

import cv2
import numpy as np
import pytest
from conftest import requires_shared
from independent import VIDEOS, YuNet, decoded_rgb_frames

from dpstream.config import Config
from dpstream.face_finder import FaceFinder
from dpstream.face_tracking import FaceTracking
from dpstream.key_frames import KeyFrames
from dpstream.pipeline import Anonymizer
from dpstream.tracker import BoxKalman, OneEuroFilter, Tracker
from dpstream.types import NUM_LANDMARKS, Faces, VideoFrame

FPS = 30.0
TIME_BASE = Fraction(1, 30)


def box_faces(*boxes) -> Faces:
    """Detections without mesh at the given boxes."""
    array = np.array(boxes, np.float32).reshape(-1, 4)
    return Faces(array, np.full(len(array), 0.9, np.float32), np.full((len(array), NUM_LANDMARKS, 2), np.nan, np.float32))


def test_kalman_predicts_a_face_moving_at_constant_speed():
    velocity = np.array([120.0, -45.0])  # pixels per second
    start = np.array([200.0, 300.0, 300.0, 420.0])
    kalman = BoxKalman(start, 0.0)
    for step in range(1, 16):
        kalman.predict(step / FPS)
        kalman.correct(start + np.tile(velocity, 2) * step / FPS)
    truth = start + np.tile(velocity, 2) * 20 / FPS  # five frames ahead, no measurements
    predicted = kalman.box(kalman.predicted_state(20 / FPS))
    assert np.abs(predicted - truth).max() < 0.03 * 110  # within 3 % of the face size
    constant = start + np.tile(velocity, 2) * 15 / FPS  # what holding the last box would give
    assert np.abs(constant - truth).max() > 5 * np.abs(predicted - truth).max()


def test_one_euro_steadies_a_still_face_and_follows_a_moving_one():
    rng = np.random.default_rng(0)
    size = 100.0
    points = rng.uniform(0, size, (NUM_LANDMARKS, 2))
    jitter_in = 0.005 * size  # mesh jitter of half a percent of the face size
    still = OneEuroFilter(points + rng.normal(0, jitter_in, points.shape), 0.0)
    outputs = [still(points + rng.normal(0, jitter_in, points.shape), i / FPS, size) for i in range(1, 60)]
    jitter_out = np.std(np.array(outputs[30:]) - points)
    assert jitter_out < jitter_in / 2

    moving = OneEuroFilter(points, 0.0)
    speed = np.array([2.0 * size, 0.0])  # two face sizes per second
    lags = []
    for i in range(1, 30):
        truth = points + speed * i / FPS
        lags.append(np.abs(moving(truth, i / FPS, size) - truth).mean())
    assert np.mean(lags[10:]) < 0.05 * size  # under 5 % of the face size behind


def test_crossing_faces_keep_their_ids():
    tracker = Tracker()
    ids_a, ids_b = set(), set()
    for step in range(40):  # A moves right, B left; they overlap in the middle frames
        x_a, x_b = 100 + 12 * step, 580 - 12 * step
        faces = tracker.update(box_faces([x_a, 200, x_a + 100, 320], [x_b, 230, x_b + 100, 350]), step / FPS)
        assert not faces.held.any()
        ids_a.add(int(faces.track_ids[0]))
        ids_b.add(int(faces.track_ids[1]))
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b


def test_a_missed_face_is_held_at_its_predicted_place_then_ends():
    tracker = Tracker(hold_seconds=0.12)  # frames 10-12 are within it, 14 is not
    for step in range(10):
        x = 100 + 6 * step
        seen = tracker.update(box_faces([x, 100, x + 80, 180]), step / FPS)
    (track_id,) = seen.track_ids
    held = tracker.update(Faces.empty(), 10 / FPS)
    assert held.held.all() and held.track_ids.tolist() == [track_id]
    assert abs(held.boxes[0, 0] - (100 + 6 * 10)) < 2  # kept moving, not frozen
    for step in (11, 12):
        assert tracker.update(Faces.empty(), step / FPS).track_ids.tolist() == [track_id]
    assert len(tracker.update(Faces.empty(), 14 / FPS)) == 0  # past hold_seconds the track ends


def test_after_a_scene_cut_a_face_at_the_same_place_is_a_new_track():
    tracker = Tracker()
    first = tracker.update(box_faces([100, 100, 200, 220]), 0.0).track_ids[0]
    tracker.mark_scene_cut()
    after = tracker.update(box_faces([100, 100, 200, 220]), 1 / FPS)
    seen = after.track_ids[~after.held]
    assert seen.tolist() != [first] and after.track_ids[after.held].tolist() == [first]


@pytest.fixture(scope="module")
def talking_frames():
    return decoded_rgb_frames(VIDEOS / "talking_720p_s18.mp4")[:40]


@requires_shared
def test_refitting_between_key_frames_follows_the_face_like_full_detection(talking_frames):
    finder = FaceFinder()
    every_frame = FaceTracking(finder, Tracker(), detect_every=1)
    key_frames = FaceTracking(finder, Tracker(), detect_every=10)
    try:
        for index, image in enumerate(talking_frames):
            frame = VideoFrame(image, index, index, TIME_BASE)
            reference = every_frame.process(frame)
            tracked = key_frames.process(frame)
            assert len(tracked) == 1 and not tracked.held.any() and tracked.track_ids[0] == 0
            eyes = reference.landmarks[0, [33, 263]]
            inter_ocular = np.linalg.norm(eyes[0] - eyes[1])
            error = np.linalg.norm(tracked.landmarks[0] - reference.landmarks[0], axis=1).mean()
            assert error < 0.1 * inter_ocular, f"frame {index}"
    finally:
        finder.close()


@requires_shared
def test_a_face_that_turns_back_while_zooming_is_refitted_where_it_is():
    """fast_zoom_360p: at frame 30 the large face reverses its motion and keeps growing, so the
    predicted place lags it by about a third of its size. Between key frames the re-fitted mesh
    must still lie on the face (synthetic ground truth), not where it was expected."""
    from tools.synthetic_sequences import PRESETS, generate

    finder = FaceFinder()
    tracking = FaceTracking(finder, Tracker(), detect_every=5)
    try:
        for image, truth in generate(PRESETS["fast_zoom_360p"]):
            faces = tracking.process(VideoFrame(image, truth.index, truth.index, Fraction(1, 25)))
            if truth.index < 28:
                continue
            person = int(np.flatnonzero(truth.person_ids == 0)[0])
            expected = truth.mesh[person][:NUM_LANDMARKS]
            size = np.ptp(expected[:, 1])
            errors = [np.linalg.norm(mesh - expected, axis=1).mean() for mesh in faces.landmarks[~faces.held]]
            assert errors and min(errors) < 0.1 * size, f"frame {truth.index}"
            if truth.index == 36:
                break
    finally:
        finder.close()


@requires_shared
def test_the_scene_cuts_of_the_multiface_clip_are_found():
    frames = decoded_rgb_frames(VIDEOS / "multiface_640x360_hamilton.mp4")[:100]
    key_frames = KeyFrames()  # the cut test needs no model
    cuts = [index for index, image in enumerate(frames) if key_frames.is_scene_cut(image)]
    assert cuts == [20, 82]  # by eye; frames 21-23 and 46 are fast camera moves in one shot


@requires_shared
def test_centerface_runs_on_every_other_key_frame_and_on_scene_cuts():
    """detect_every 5, recall_every 10 on the multiface clip (cut at frame 20), key frames as an
    anonymizer sets them up: in a file run (look-ahead) CenterFace runs at 0, 10, 20 (the cut) and
    30 and MediaPipe's tiles on the key frames between; in a live run (no look-ahead) MediaPipe
    runs on every frame with a fifth of its tiles in turn."""
    frames = decoded_rgb_frames(VIDEOS / "multiface_640x360_hamilton.mp4")[:36]
    anonymizer = Anonymizer(Config(method="blur", detect_every=5, recall_every=10))
    key_frames = anonymizer.tracking.key_frames
    key_frames.spread_tiles = False  # as ``Anonymizer.tracked`` does with its look-ahead
    marks = [key_frames.mark(image) for image in frames]
    assert [i for i, mark in enumerate(marks) if mark.key] == [0, 5, 10, 15, 20, 25, 30, 35]
    assert [i for i, mark in enumerate(marks) if mark.recall is not None] == [0, 10, 20, 30]
    assert [i for i, mark in enumerate(marks) if mark.key and mark.tiles] == [5, 15, 25, 35]
    assert len(marks[20].recall) > 0  # the audience after the cut
    key_frames.spread_tiles = True
    key_frames.reset()
    live = [key_frames.mark(image) for image in frames[:22]]
    assert all(mark.key for mark in live)
    assert [mark.tile_part for mark in live[:6]] == [None, (1, 5), (2, 5), (3, 5), (4, 5), (0, 5)]
    # CenterFace's frames (first, every 10th, the cut) skip the tiles, as in file runs
    assert [i for i, mark in enumerate(live) if mark.recall is not None] == [0, 10, 20]
    assert [i for i, mark in enumerate(live) if not mark.tiles] == [0, 10, 20] and live[21].tile_part == (1, 5)
    anonymizer.close()


@requires_shared
def test_look_ahead_covers_a_face_found_late_and_interpolates_a_gap(talking_frames):
    """The face is hidden from the detector in frame 0 (a key frame), so with detection every
    5th frame it is first found at frame 5: frames 1-4 must still be covered (tracked back
    from frame 5 through the look-ahead buffer). In frame 12 the face is hidden again: the held
    place must be replaced by the average of frames 11 and 13."""
    frames = [image.copy() for image in talking_frames[:16]]
    yunet = YuNet()
    hidden = cv2.GaussianBlur(frames[0][100:500, 450:850], (0, 0), 25)
    frames[0][100:500, 450:850] = hidden
    frames[12][100:500, 450:850] = cv2.GaussianBlur(frames[12][100:500, 450:850], (0, 0), 25)
    config = Config(method="solid", detect_every=5, recall_every=5, lookahead_frames=6)

    finder = FaceFinder()
    try:
        key_frames_only = FaceTracking(finder, Tracker(), detect_every=5)
        late = [key_frames_only.process(VideoFrame(image, i, i, TIME_BASE)) for i, image in enumerate(frames[:5])]
        assert [len(faces) for faces in late] == [0, 0, 0, 0, 0]  # no look-ahead: missed until frame 5
        live = Anonymizer(config)  # live: no look-ahead, so the frames between key frames are checked
        live_frames = (VideoFrame(image.copy(), i, i, TIME_BASE) for i, image in enumerate(frames[:3]))
        assert [len(result.faces) for result in live.stream(live_frames, overlap=False, look_ahead=False)] == [0, 1, 1]
        live.close()
    finally:
        finder.close()

    anonymizer = Anonymizer(config)
    try:
        stream = list(anonymizer.tracked(VideoFrame(image.copy(), i, i, TIME_BASE) for i, image in enumerate(frames)))
        for i in range(1, 5):
            assert yunet.count(frames[i]) == 1
            assert len(stream[i].faces) == 1 and not stream[i].faces.held.any(), f"frame {i}"
            replaced = anonymizer.replacer.replace(stream[i].frame, stream[i].faces).frame.image
            assert yunet.count(replaced) == 0, f"frame {i}"
    finally:
        anonymizer.close()
    gap = stream[12].faces
    assert gap.held.tolist() == [True]
    expected = (stream[11].faces.boxes[0] + stream[13].faces.boxes[0]) / 2
    assert np.abs(gap.boxes[0] - expected).max() < 1e-3
