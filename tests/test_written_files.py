"""What a run leaves on disk: the output video and its ledger only, with no embedding or
landmark set in any file, nothing in the temporary folder, and no telemetry file of ONNX
Runtime's (a device id under ~/.cache, events in $TMPDIR) in the home folder."""

import json
import os
import subprocess
import sys

import numpy as np
from conftest import requires_shared
from corpus import source_frames, write_video

from dpstream.face_finder import FaceFinder
from dpstream.face_model import FaceModel
from dpstream.types import VideoFrame


def files_under(*folders):
    return {path for folder in folders for path in folder.rglob("*") if path.is_file()}


def float_lists(value, found):
    """Lists of 8 or more numbers anywhere in a JSON value (an embedding or a mesh would be one)."""
    if isinstance(value, dict):
        for item in value.values():
            float_lists(item, found)
    elif isinstance(value, list):
        if len(value) >= 8 and all(isinstance(v, (int, float)) for v in value):
            found.append(value)
        for item in value:
            float_lists(item, found)
    return found


@requires_shared
def test_a_run_writes_only_its_output_and_ledger_and_no_biometric_value(tmp_path):
    frames, _ = source_frames()
    video = write_video(tmp_path / "face.mp4", frames)
    work, temp, home, out = (tmp_path / name for name in ("work", "temp", "home", "out"))
    for folder in (work, temp, home, out):
        folder.mkdir()
    before = files_under(work, temp, home, out)
    environment = {**os.environ, "TMPDIR": str(temp), "HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "dpstream", "anonymize", str(video), "-o", str(out / "anon.mp4"), "-q"],
        cwd=work, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = files_under(work, temp, home, out) - before
    font_cache = {path for path in written if path.parent == home / ".cache" / "matplotlib"}  # MediaPipe imports matplotlib
    assert {path.name for path in written - font_cache} == {"anon.mp4", "anon.mp4.ledger.json"}

    # what a leak would look like: this clip's raw identity vectors and meshes, as float bytes
    finder, model = FaceFinder(), FaceModel.load()
    secrets = []
    for image in frames[:4]:
        landmarks = finder.find(VideoFrame(image, 0)).landmarks[0]
        secrets += [model.encode(image, landmarks), landmarks.ravel()]
    finder.close()
    ledger_text = (out / "anon.mp4.ledger.json").read_text()
    assert float_lists(json.loads(ledger_text), []) == []
    for path in written:
        data = path.read_bytes()
        for values in secrets:
            for dtype in (np.float32, np.float64):
                assert np.asarray(values[:4], dtype).tobytes() not in data, path.name
