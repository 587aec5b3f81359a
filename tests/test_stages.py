"""Stage-level behaviour on real frames: face finding, regions, the fallback, dp's size limit."""

import cv2
import numpy as np
from conftest import requires_shared
from independent import VIDEOS, YuNet, decoded_rgb_frames

from dpstream.config import Config
from dpstream.face_finder import FaceFinder, merge_duplicates, tiles
from dpstream.face_mesh import INPUT_SIDE, LEFT_EYE_OUTER, RIGHT_EYE_OUTER, Region, eye_line_angle
from dpstream.pipeline import Anonymizer
from dpstream.regions import face_region
from dpstream.replace.fallback import apply_fallback
from dpstream.types import VideoFrame


def test_tiles_cover_the_frame_with_overlap():
    covered = np.zeros((360, 640), bool)
    assert len(set(tiles(720, 1280, (1, 2)))) == len(tiles(720, 1280, (1, 2)))
    for x0, y0, x1, y1 in tiles(360, 640, (1, 2)):
        assert x1 - x0 == y1 - y0 and 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 360
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_duplicate_detections_of_one_face_are_merged_keeping_the_best():
    boxes = np.array([[10, 10, 50, 50], [12, 12, 48, 52], [100, 100, 140, 140]], np.float32)
    kept, groups = merge_duplicates(boxes, np.array([0.7, 0.9, 0.8], np.float32))
    assert kept == [1, 2]
    assert groups == [[1, 0], [2]]


@requires_shared
def test_finder_fits_a_mesh_on_the_talking_face():
    frame = VideoFrame(decoded_rgb_frames(VIDEOS / "talking_720p_s18.mp4")[0], 0)
    finder = FaceFinder()
    faces = finder.find(frame)
    finder.close()
    assert len(faces) == 1 and faces.has_mesh().all()
    x0, y0, x1, y1 = faces.boxes[0]
    inside = (faces.landmarks[0, :, 0] > x0 - 0.3 * (x1 - x0)) & (faces.landmarks[0, :, 0] < x1 + 0.3 * (x1 - x0))
    assert inside.mean() > 0.95  # the mesh lies on the detected face, in frame pixels


@requires_shared
def test_face_mesh_follows_a_turned_face_and_refuses_a_place_without_one():
    image = decoded_rgb_frames(VIDEOS / "talking_720p_s18.mp4")[0]
    finder = FaceFinder()
    upright = finder.find(VideoFrame(image.copy(), 0))
    found = finder.detect(image)
    assert len(upright) == 1 and abs(found.angles[0]) < 0.15  # the eyes are about level
    # the same frame turned by 30 degrees about the face: the mesh turns with it
    center = tuple(float(v) for v in upright.landmarks[0].mean(0))
    turn = cv2.getRotationMatrix2D(center, -30.0, 1.0)  # OpenCV: positive is counter-clockwise
    turned = cv2.warpAffine(image, turn, (image.shape[1], image.shape[0]))
    expected = upright.landmarks[0] @ turn[:, :2].T + turn[:, 2]
    detected = finder.detect(turned)
    fitted = finder.mesh.fit_box(turned, detected.boxes[0], float(detected.angles[0]))
    eye_distance = np.linalg.norm(expected[LEFT_EYE_OUTER] - expected[RIGHT_EYE_OUTER])
    assert abs(eye_line_angle(fitted) - eye_line_angle(upright.landmarks[0]) - np.radians(30)) < 0.05
    assert np.linalg.norm(fitted - expected, axis=1).mean() < 0.05 * eye_distance
    # a region of plain background (top-left corner of the frame) has no face
    assert np.isnan(finder.mesh.fit_box(image, np.array([0, 0, 150, 150], np.float32))).all()
    region = Region.around_mesh(fitted)
    assert abs(region.angle - eye_line_angle(fitted)) < 1e-6
    corners = region.to_frame() @ np.array([[0, 0, 1], [INPUT_SIDE, INPUT_SIDE, 1]], np.float64).T
    assert np.isclose(np.linalg.norm(corners[:, 1] - corners[:, 0]), region.side * np.sqrt(2))
    finder.close()


@requires_shared
def test_fallback_covers_the_face_so_yunet_cannot_find_it():
    image = decoded_rgb_frames(VIDEOS / "talking_720p_s18.mp4")[0]
    finder = FaceFinder()
    faces = finder.find(VideoFrame(image.copy(), 0))
    finder.close()
    yunet = YuNet()
    assert yunet.count(image) == 1
    covered = image.copy()
    assert apply_fallback(covered, faces) == 1
    assert yunet.count(covered) == 0
    region = face_region(faces.boxes[0], faces.landmarks[0], 0.0, image.shape)
    assert (covered[region.slices()] != image[region.slices()]).any(axis=2).mean() > 0.5


@requires_shared
def test_dp_blurs_a_face_smaller_than_the_models_validated_size():
    image = decoded_rgb_frames(VIDEOS / "talking_720p_s18.mp4")[0]
    anonymizer = Anonymizer(Config())
    try:
        (full,) = anonymizer.stream([VideoFrame(image.copy(), 0)], overlap=False, look_ahead=False)
        small_image = cv2.resize(image, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
        anonymizer.tracking.reset()
        (small,) = anonymizer.stream([VideoFrame(small_image.copy(), 1)], overlap=False, look_ahead=False)
    finally:
        anonymizer.close()
    heights = [np.ptp(faces.landmarks[0, :, 1]) for faces in (full.faces, small.faces)]
    assert heights[0] > 100 > heights[1]
    assert (full.fallbacks, small.fallbacks) == (0, 1)
    assert anonymizer.replacer.summary()["fallbacks_too_small"] == 1
    assert YuNet(max_side=10_000).count(small_image) == 1 and YuNet(max_side=10_000).count(small.frame.image) == 0
