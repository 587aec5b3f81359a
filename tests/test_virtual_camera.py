"""The virtual camera output (``-o virtual:``): its errors say what is missing, in one line."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dpstream.cli import main as cli_main
from dpstream.config import Config
from dpstream.errors import OutputError
from dpstream.live import LiveRun
from dpstream.live_source import live_input
from dpstream.types import VideoFrame
from dpstream.virtual_camera import INSTALL_HINT, LINUX_HINT, VirtualCameraSink, device_hint, is_virtual

SOURCE = "lavfi:testsrc2=size=320x240:rate=15"
try:
    import pyvirtualcam  # noqa: F401 (optional: dpstream[virtualcam])

    HAS_PYVIRTUALCAM = True
except ImportError:
    HAS_PYVIRTUALCAM = False


def test_virtual_targets_and_hints():
    assert is_virtual("virtual:") and is_virtual("virtual:/dev/video4") and not is_virtual("out.mp4")
    assert "modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=dpstream" in device_hint("linux")
    assert "OBS" in device_hint("win32") and "OBS" in device_hint("darwin")


def test_without_pyvirtualcam_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # import fails as when not installed
    with pytest.raises(OutputError, match=r"virtual:: a virtual camera needs pyvirtualcam: pip install 'dpstream\[virtualcam\]'"):
        LiveRun(live_input(SOURCE, Config()), ["virtual:"], Config())


def test_virtual_camera_error_for_real(tmp_path, capsys):
    """With pyvirtualcam: the real error of a machine without a loopback device; without it
    (the CI venv has only .[test]): the install hint. One line either way, exit 2."""
    if HAS_PYVIRTUALCAM:
        sink = VirtualCameraSink("virtual:", Config())
        try:
            sink.write(VideoFrame(np.zeros((240, 320, 3), np.uint8), 0, 0, None))
        except OutputError as error:
            message = str(error)
        else:
            sink.close()
            pytest.skip("a virtual camera device exists on this machine")
        assert message.startswith("virtual:: no virtual camera (") and "\n" not in message
        assert message.endswith(device_hint())
        if sys.platform.startswith("linux"):
            assert message.endswith(LINUX_HINT)
    code = cli_main(["relay", SOURCE, "virtual:/dev/video63", "--method", "blur", "--duration", "5", "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    if HAS_PYVIRTUALCAM:
        assert lines[0].startswith("dpstream: error: virtual:/dev/video63: no virtual camera (")
        assert lines[0].endswith(device_hint())
    else:
        assert lines[0].endswith(INSTALL_HINT)
