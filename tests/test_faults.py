"""Fault injection: a broken face model and an output that cannot be written, through the real
command line. A model that cannot be loaded stops the run before any frame is read (exit 2); a
model whose network fails while running leaves every face it failed on blurred (exit 4); a full
disk or an unwritable output path stops the run with one line and removes the partial output
(exit 2); a killed run, file or live, leaves a valid ledger."""

import hashlib
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import requires_shared
from corpus import CorpusFile, source_frames, untouched_faces, write_video
from independent import VIDEOS, YuNet
from onnx import TensorProto, helper, numpy_helper

from dpstream.face_model import load_manifest


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """12 frames of a real one-face clip, shrunk so the face is just big enough for a dp face."""
    frames, boxes = source_frames()
    path = write_video(tmp_path_factory.mktemp("clip") / "face.mp4", frames)
    return CorpusFile("clip", path, dict(enumerate(boxes)))


def model_copy(folder, **replaced):
    """The default model's files copied into ``folder``, with ``replaced`` (file name -> bytes)."""
    assets = load_manifest(None).path.parent
    for file in assets.iterdir():
        shutil.copy(file, folder / file.name)
    for name, data in replaced.items():
        (folder / name).write_bytes(data)
    return folder / "manifest.yaml"


def anonymize(clip, output, manifest, **popen):
    return subprocess.run(
        [sys.executable, "-m", "dpstream", "anonymize", str(clip.path), "-o", str(output), "--model", str(manifest), "-q"],
        capture_output=True, text=True, timeout=300, **popen,
    )  # fmt: skip


@requires_shared
@pytest.mark.parametrize("fault", ["truncated", "renamed input", "missing"])
def test_a_face_model_that_cannot_be_loaded_stops_the_run_before_any_frame(tmp_path, clip, fault):
    encoder = (load_manifest(None).path.parent / "encoder.onnx").read_bytes()
    if fault == "truncated":
        manifest = model_copy(tmp_path, **{"encoder.onnx": encoder[: len(encoder) // 3]})
        expected = "cannot load the face model's encoder network"
    elif fault == "renamed input":
        model = onnx.load_from_string(encoder)
        model.graph.input[0].name = "pixels"
        for node in model.graph.node:
            node.input[:] = ["pixels" if name == "texture" else name for name in node.input]
        manifest = model_copy(tmp_path, **{"encoder.onnx": model.SerializeToString()})
        expected = "its manifest names ['shape', 'texture']"
    else:
        manifest = model_copy(tmp_path)
        (tmp_path / "encoder.onnx").unlink()
        expected = "'encoder.file' not found"
    result = anonymize(clip, tmp_path / "out.mp4", manifest)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and expected in result.stderr and "encoder.onnx" in result.stderr
    assert not (tmp_path / "out.mp4").exists()


@requires_shared
def test_a_face_model_failing_while_running_blurs_every_face_and_exits_4(tmp_path, clip):
    """An encoder with the right tensors that loads but is broken: it reshapes the crop to a size
    computed at run time from the landmarks (the run fails, or returns the wrong shape)."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["shape"], ["largest"], keepdims=0),
            helper.make_node("Mul", ["largest", "zero"], ["nothing"]),
            helper.make_node("Add", ["nothing", "offset"], ["rows_float"]),
            helper.make_node("Cast", ["rows_float"], ["rows"], to=TensorProto.INT64),
            helper.make_node("Concat", ["one", "rows"], ["bad_dims"], axis=0),
            helper.make_node("Reshape", ["texture", "bad_dims"], ["identity"]),
        ],
        "failing_encoder",
        [helper.make_tensor_value_info("texture", TensorProto.FLOAT, [1, 3, 128, 128]),
         helper.make_tensor_value_info("shape", TensorProto.FLOAT, [1, 468, 2])],
        [helper.make_tensor_value_info("identity", TensorProto.FLOAT, [1, 128])],
        [numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
         numpy_helper.from_array(np.array([100.0], np.float32), "offset"),
         numpy_helper.from_array(np.array([1], np.int64), "one")],
    )  # fmt: skip
    failing = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    manifest = model_copy(tmp_path, **{"encoder.onnx": failing})
    output = tmp_path / "out.mp4"
    result = anonymize(clip, output, manifest)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    assert "warning: the face model failed on 12 faces (" in result.stderr
    assert "12 frames, 12 faces, 0 people, 12 fallbacks" in result.stderr
    assert untouched_faces(clip, output, YuNet()) == 0
    ledger = yaml.safe_load((tmp_path / "out.mp4.ledger.json").read_text())
    assert ledger["fallbacks_model_failed"] == 12 and ledger["people"] == []


@requires_shared
def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_output(tmp_path, clip):
    """The output's disk fills after a few frames (a 4 KB file-size limit on the run)."""

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing the run
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    digest = hashlib.sha256(clip.path.read_bytes()).hexdigest()
    output = tmp_path / "out.mp4"
    result = anonymize(clip, output, "default", preexec_fn=small_disk)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{output}: cannot be written (File too large) after" in result.stderr
    assert "the partial output and its ledger were removed" in result.stderr
    assert not output.exists() and not (tmp_path / "out.mp4.ledger.json").exists()
    assert hashlib.sha256(clip.path.read_bytes()).hexdigest() == digest


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's sysfs: a folder where nobody may create files")
@pytest.mark.parametrize("where", ["under a file", "in a folder that refuses new files"])
def test_an_unwritable_output_path_is_a_clear_error(tmp_path, clip, where):
    """Its folder is a file, or a folder that refuses new files (sysfs refuses even root, who
    ignores permission bits: the run finds out when it writes)."""
    if where == "under a file":
        (tmp_path / "notes.txt").write_text("")
        output, message = tmp_path / "notes.txt" / "out.mp4", "notes.txt is not a folder"
    else:
        output, message = Path("/sys/kernel/dpstream-out.mp4"), "dpstream-out.mp4: "
    result = anonymize(clip, output, "default")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"dpstream: error: {output}: ") and message in line
    assert not output.exists() and not Path(f"{output}.ledger.json").exists()


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's sysfs: a folder where nobody may create files")
def test_a_live_ledger_that_cannot_be_written_stops_the_relay_with_one_line(tmp_path):
    ledger = Path("/sys/kernel/dpstream-relay.ledger.json")
    result = subprocess.run(
        [sys.executable, "-m", "dpstream", "relay", "lavfi:testsrc2=size=320x240:rate=30", str(tmp_path / "out.mp4"),
         "--ledger", str(ledger), "--duration", "5", "-q"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"dpstream: error: {ledger}: cannot write the privacy ledger (Permission denied)"


@requires_shared
def test_a_run_killed_mid_way_leaves_a_valid_ledger_covering_its_releases(tmp_path):
    """SIGKILL (no handler can run) once the output has grown: the ledger on disk is valid JSON,
    marked unfinished, and holds the person whose dp face the output already shows."""
    output = tmp_path / "out.mp4"
    run = subprocess.Popen(
        [sys.executable, "-m", "dpstream", "anonymize", str(VIDEOS / "talking_720p_s18.mp4"), "-o", str(output), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not output.exists() or output.stat().st_size < 200_000):
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before it could be killed"
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait()
    ledger = json.loads((tmp_path / "out.mp4.ledger.json").read_text())
    assert ledger["finished"] is False
    assert len(ledger["people"]) == 1 and ledger["faces_rendered"] > 0


@requires_shared
def test_a_live_relay_killed_mid_way_leaves_a_valid_ledger(tmp_path):
    """Live runs write the ledger from their first anonymized frame on, not only when they stop:
    a relay killed by SIGKILL leaves valid JSON, unfinished, holding the person it released."""
    ledger_path = tmp_path / "relay.ledger.json"
    run = subprocess.Popen(
        [sys.executable, "-m", "dpstream", "relay", str(VIDEOS / "talking_720p_s18.mp4"), str(tmp_path / "out.mp4"),
         "--ledger", str(ledger_path), "--detector-recall", "normal", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (ledger_path.exists() and '"person_id"' in ledger_path.read_text()):
            time.sleep(0.05)
        assert run.poll() is None, "the relay ended before it could be killed"
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait()
    ledger = json.loads(ledger_path.read_text())
    assert ledger["finished"] is False and len(ledger["people"]) == 1
