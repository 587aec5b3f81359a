"""Fuzzing the decoder path: a real clip's bytes, mutated (flipped, cut, spliced, overwritten),
open and decode through ``VideoSource`` into frames and a damage report, or raise ``InputError``:
never another exception, never a hang (bounded examples)."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_shared
from corpus import source_frames, write_video
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpstream.errors import InputError
from dpstream.source import VideoSource


@pytest.fixture(scope="module")
def clip_bytes():
    frames, _ = source_frames()
    with tempfile.TemporaryDirectory() as folder:
        return write_video(Path(folder) / "clip.mp4", frames[:6], faststart=True).read_bytes()


edits = st.lists(
    st.tuples(st.sampled_from(["flip", "cut", "splice", "zero"]), st.floats(0, 1), st.integers(1, 64)), min_size=1, max_size=6
)


def mutated(data: bytes, operations) -> bytes:
    data = bytearray(data)
    for kind, where, size in operations:
        at = int(where * (len(data) - 1))
        if kind == "flip":
            data[at] ^= 0xFF
        elif kind == "cut":
            del data[at : at + size * 16]
        elif kind == "splice":
            data[at:at] = data[: size * 8]
        else:
            data[at : at + size] = bytes(min(size, len(data) - at))
    return bytes(data)


@requires_shared
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits)
def test_mutated_media_bytes_decode_or_are_an_input_error(clip_bytes, operations):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.mp4"
        path.write_bytes(mutated(clip_bytes, operations))
        try:
            source = VideoSource(path)
        except InputError as error:
            assert str(error).startswith(str(path)) and "\n" not in str(error)
            return
        try:
            frames = [frame.image for frame in source.frames()]
        finally:
            source.close()
        assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 for image in frames)
        assert len(frames) == source.report.frames_decoded
