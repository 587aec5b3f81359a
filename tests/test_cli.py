"""The command line as a user meets it: exit codes and one-line messages, no tracebacks."""

import os
import signal
import subprocess
import sys
import time

import av
import pytest
from conftest import requires_shared
from independent import VIDEOS, audio_digest


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "dpstream", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def assert_clean_error(result, code, *fragments):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_missing_input_file(tmp_path):
    result = run_cli("anonymize", tmp_path / "nope.mp4", "-o", tmp_path / "out.mp4")
    assert_clean_error(result, 2, "nope.mp4: no such file")


def test_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("anonymize", tmp_path / "empty", "-o", tmp_path / "out")
    assert_clean_error(result, 2, "empty: folder has no images")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_input_file(tmp_path):
    video = tmp_path / "locked.mp4"
    video.write_bytes(b"x")
    video.chmod(0)
    result = run_cli("anonymize", video, "-o", tmp_path / "out.mp4")
    assert_clean_error(result, 2, "locked.mp4: permission denied")


def test_not_a_video(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are meeting notes, not a video\n" * 50)
    result = run_cli("anonymize", fake, "-o", tmp_path / "out.mp4")
    assert_clean_error(result, 2, "notes.mp4: not a video file FFmpeg can read")
    assert not (tmp_path / "out.mp4").exists()


@requires_shared
def test_truncated_video_is_processed_then_the_loss_is_reported(tmp_path):
    source = VIDEOS / "talking_720p_s18.mp4"
    truncated = tmp_path / "cut.mp4"
    data = source.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 5])
    output = tmp_path / "out.mp4"
    result = run_cli("anonymize", truncated, "-o", output, "--method", "solid", "-q")
    assert_clean_error(result, 3, "cut.mp4", "lost")
    with av.open(str(output)) as container:
        written = sum(1 for _ in container.decode(video=0))
    assert 0 < written < 282
    assert f"decoded {written} frames of about 282" in result.stderr


@requires_shared
def test_unknown_output_codec(tmp_path):
    result = run_cli("anonymize", VIDEOS / "walking_3people_480x270.mp4", "-o", tmp_path / "o.mp4", "--codec", "nosuchcodec")
    assert_clean_error(result, 2, "--codec: unknown or unavailable video encoder 'nosuchcodec'")
    assert not (tmp_path / "o.mp4").exists()


@requires_shared
@pytest.mark.parametrize(
    "yaml_text, fragment",
    [("method: blur\n  bad: [x\n", "not valid YAML at line"), ("metod: blur\n", "unknown key 'metod'")],
)
def test_bad_config_file(tmp_path, yaml_text, fragment):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    result = run_cli("anonymize", VIDEOS / "walking_3people_480x270.mp4", "-o", tmp_path / "o.mp4", "--config", config)
    assert_clean_error(result, 2, "c.yaml", fragment)


@requires_shared
@pytest.mark.parametrize(
    "value, fragment",
    [("0", "epsilon: must be a number > 0, got 0.0"), ("-3", "epsilon: must be a number > 0"), ("abc", "epsilon: must be a number, got 'abc'"), ("nan", "epsilon: must be a number > 0, got nan")],
)
def test_bad_epsilon(tmp_path, value, fragment):
    result = run_cli("anonymize", VIDEOS / "walking_3people_480x270.mp4", "-o", tmp_path / "o.mp4", f"--epsilon={value}")
    assert_clean_error(result, 2, fragment)


@requires_shared
def test_existing_output_needs_overwrite(tmp_path):
    output = tmp_path / "o.mp4"
    output.write_bytes(b"keep me")
    result = run_cli("anonymize", VIDEOS / "walking_3people_480x270.mp4", "-o", output, "--method", "blur")
    assert_clean_error(result, 2, "o.mp4: already exists (use --overwrite to replace it)")
    assert output.read_bytes() == b"keep me"


@requires_shared
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_finalizes_a_playable_output(tmp_path, stop_signal):
    output = tmp_path / "o.mp4"
    process = subprocess.Popen(
        [sys.executable, "-m", "dpstream", "anonymize", str(VIDEOS / "portrait_720x1280_d13.mp4"), "-o", str(output), "--method", "blur"],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (output.exists() and output.stat().st_size > 50_000):
        time.sleep(0.2)
    process.send_signal(stop_signal)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted: output finalized after" in stderr
    with av.open(str(output)) as container:
        written = sum(1 for _ in container.decode(video=0))
    assert 0 < written < 352


@requires_shared
def test_anonymize_multiface_video_end_to_end(tmp_path):
    """The issue's reference run: H.264 out, same frame count, audio bit-identical."""
    source = VIDEOS / "multiface_640x360_hamilton.mp4"
    output = tmp_path / "out.mp4"
    result = run_cli("anonymize", source, "-o", output, "--method", "blur")
    assert result.returncode == 0, result.stderr
    assert "275 frames" in result.stderr
    with av.open(str(output)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in container.decode(video=0)) == 275
    assert audio_digest(output) == audio_digest(source)


@requires_shared
def test_bad_model_manifest_is_named(tmp_path):
    manifest = tmp_path / "model.yaml"
    manifest.write_text("kind: gan\n")
    result = run_cli("anonymize", VIDEOS / "walking_3people_480x270.mp4", "-o", tmp_path / "o.mp4", "--model", manifest)
    assert_clean_error(result, 2, f"{manifest}: model manifest: 'kind' must be one of")
    assert not (tmp_path / "o.mp4").exists()
