"""Timestamps, rotation, audio, image folders and the frames API, on real media through PyAV."""

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from conftest import requires_shared
from independent import SHARED, VIDEOS, YuNet, audio_digest, decoded_rgb_frames, video_timestamps

import dpstream

pytestmark = requires_shared


def source_frames(name, count):
    frames = decoded_rgb_frames(VIDEOS / name)
    return frames[:count]


def write_video(path, frames, pts, time_base, rotation=0):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        for image, stamp in zip(frames, pts):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = stamp, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_variable_frame_rate_timestamps_are_kept(tmp_path):
    frames = source_frames("walking_3people_480x270.mp4", 30)
    steps = np.tile([3000, 3000, 9000, 1500, 6000], 6)  # 1/90000 s units: 30, 10, 60, 15 fps mixed
    pts = np.concatenate([[0], np.cumsum(steps)[:-1]]).tolist()
    vfr = tmp_path / "vfr.mp4"
    write_video(vfr, frames, pts, Fraction(1, 90000))
    summary = dpstream.anonymize(vfr, tmp_path / "out.mp4", method="blur")
    assert summary.frames == 30 and summary.faces > 0
    assert video_timestamps(tmp_path / "out.mp4") == pytest.approx(video_timestamps(vfr), abs=1e-6)


def test_display_rotation_is_kept_and_faces_are_found_upright(tmp_path):
    upright = source_frames("portrait_720x1280_d13.mp4", 12)
    coded = [np.ascontiguousarray(np.rot90(image, k=-1)) for image in upright]
    rotated = tmp_path / "rotated.mp4"
    write_video(rotated, coded, [i * 3000 for i in range(12)], Fraction(1, 90000), rotation=90)
    with av.open(str(rotated)) as container:
        assert next(container.decode(video=0)).rotation == 90
    output = tmp_path / "out.mp4"
    summary = dpstream.anonymize(rotated, output, method="solid")
    assert summary.faces >= 12  # the face was found in every frame: detection ran upright
    with av.open(str(output)) as container:
        frames = list(container.decode(video=0))
    assert frames[0].rotation == 90
    assert (frames[0].width, frames[0].height) == (1280, 720)
    yunet = YuNet()
    found_in = sum(yunet.count(np.rot90(image, k=1)) for image in coded)
    found_out = sum(yunet.count(np.rot90(f.to_ndarray(format="rgb24"), k=1)) for f in frames)
    assert found_in >= 10 and found_out == 0


def test_audio_is_copied_bit_exactly_and_frame_count_is_kept(tmp_path):
    source = VIDEOS / "closeup_512_d3.mp4"
    output = tmp_path / "out.mkv"  # a different container: the AAC packets still travel unchanged
    summary = dpstream.anonymize(source, output, method="mosaic")
    assert summary.frames == 354
    assert audio_digest(output) == audio_digest(source)
    assert audio_digest(source)[0] > 400


def test_folder_of_images_gives_folder_with_same_names(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    people = sorted((SHARED / "data" / "lfw").iterdir())[:3]
    for person in people:
        image = cv2.imread(str(next(person.glob("*.jpg"))))
        cv2.imwrite(str(inputs / f"{person.name}.png"), image)
    (inputs / "readme.txt").write_text("not an image")
    summary = dpstream.anonymize(inputs, tmp_path / "out", method="blur")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"{p.name}.png" for p in people)
    assert summary.frames == 3 and summary.faces >= 3
    yunet = YuNet()
    for name in names:
        original = cv2.imread(str(inputs / name))[..., ::-1]
        anonymized = cv2.imread(str(tmp_path / "out" / name))[..., ::-1]
        assert yunet.count(original) >= 1 and yunet.count(anonymized) == 0


def test_frames_api_anonymizes_caller_frames_without_touching_them():
    frames = source_frames("talking_720p_s18.mp4", 5)
    originals = [f.copy() for f in frames]
    results = list(dpstream.anonymize_frames(frames, method="blur"))
    assert len(results) == 5
    for original, given, result in zip(originals, frames, results):
        assert np.array_equal(original, given)
        changed = np.abs(result.astype(int) - original).sum(axis=2) > 0
        assert 0.01 < changed.mean() < 0.5  # the face region changed, the rest of the frame did not
    assert sum(YuNet().count(r) for r in results) == 0


def test_dp_pix_writes_its_ledger_next_to_the_output(tmp_path):
    import json

    output = tmp_path / "out.mp4"
    summary = dpstream.anonymize(VIDEOS / "walking_3people_480x270.mp4", output, method="dp-pix", epsilon=0.5)
    ledger = json.loads((tmp_path / "out.mp4.ledger.json").read_text())
    assert summary.ledger == str(tmp_path / "out.mp4.ledger.json")
    assert ledger["releases"] == summary.faces - summary.fallbacks > 0
    assert ledger["epsilon_per_release"] == 0.5
    assert ledger["laplace_scale"] == pytest.approx(255 * 16 / (16 * 16 * 0.5))
