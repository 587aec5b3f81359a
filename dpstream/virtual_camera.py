"""A virtual webcam output (``-o virtual:`` or ``-o virtual:/dev/videoN``): video-call apps see
the anonymized video as a camera. Uses the optional ``pyvirtualcam`` (``pip install
'dpstream[virtualcam]'``): v4l2loopback on Linux, OBS Studio's virtual camera on Windows/macOS.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import cv2

from dpstream.config import Config
from dpstream.errors import OutputError
from dpstream.live_sink import LiveOutput
from dpstream.types import VideoFrame

PREFIX = "virtual:"
INSTALL_HINT = "pip install 'dpstream[virtualcam]'"
LINUX_HINT = "load v4l2loopback: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=dpstream"
OBS_HINT = "install OBS Studio (28 or later) and start its virtual camera once"


def is_virtual(target: str) -> bool:
    return target.lower().startswith(PREFIX)


def device_hint(platform: str = sys.platform) -> str:
    """What a virtual camera needs on ``platform``."""
    return LINUX_HINT if platform.startswith("linux") else OBS_HINT


class VirtualCameraSink:
    """Sends anonymized frames to a virtual camera; the ``LiveSink`` interface (``write``,
    ``close``, ``reconnections``, ``output``).

    The camera opens on the first frame, at its size (rounded down to even) and the capture
    frame rate; later frames of another size are resized to it. Frames are sent as they come:
    the source paces them.
    """

    def __init__(self, target: str, config: Config, report: Callable[[str], None] = lambda message: None):
        try:
            import pyvirtualcam
        except ImportError:
            raise OutputError(f"{target}: a virtual camera needs pyvirtualcam: {INSTALL_HINT}") from None
        self.pyvirtualcam = pyvirtualcam
        self.device = target[len(PREFIX):] or None
        # not a file: no ledger beside it (``LiveRun`` puts the ledger beside file outputs only)
        self.output = LiveOutput(target, None, {}, network=True)
        self.fps = config.capture_fps or 30.0
        self.report = report
        self.camera = None
        self.size: tuple[int, int] | None = None  # (width, height)
        self.reconnections = 0  # a virtual camera does not drop

    def write(self, frame: VideoFrame) -> bool:
        image = frame.image
        if self.camera is None:
            self.size = (image.shape[1] // 2 * 2, image.shape[0] // 2 * 2)
            self._open()
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        try:
            self.camera.send(image)  # RGB, as the frames are
        except (RuntimeError, ValueError, OSError) as error:
            raise OutputError(f"{self.output.target}: writing to the virtual camera failed ({_one_line(error)})") from None
        return True

    def close(self) -> None:
        if self.camera is not None:
            try:
                self.camera.close()
            finally:
                self.camera = None

    def _open(self) -> None:
        width, height = self.size
        try:
            self.camera = self.pyvirtualcam.Camera(
                width, height, self.fps, fmt=self.pyvirtualcam.PixelFormat.RGB, device=self.device
            )
        except (RuntimeError, ValueError, OSError) as error:
            raise OutputError(
                f"{self.output.target}: no virtual camera ({_one_line(error)}); {device_hint()}"
            ) from None
        self.report(f"{self.output.target}: virtual camera {self.camera.device} ({width}x{height})")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
