"""Live sources: webcams, network streams (RTSP, RTMP, HTTP, SRT, UDP), FFmpeg lavfi graphs
and files paced in real time, read with PyAV and reconnected after a drop.

Frames are stamped on a wall-clock time base shared by the whole run (``LiveClock``), so their
times keep increasing across reconnections and tell when each frame was captured.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av

from dpstream.config import Config
from dpstream.errors import InputError
from dpstream.source import _upright
from dpstream.types import VideoFrame

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp", "rtp")
LAVFI_PREFIX = "lavfi:"
LIVE_TIME_BASE = Fraction(1, 90000)
"""Time base of live frames: 90 kHz, the RTP video clock."""


@dataclass(frozen=True, slots=True)
class LiveInput:
    """How to open one live source with PyAV: ``av.open(url, format=format, options=options)``.

    ``kind`` is device (webcam), network, lavfi or file; files and lavfi graphs are paced by
    their timestamps, devices and network sources are reconnected when they drop.
    """

    url: str
    format: str | None
    options: dict[str, str]
    kind: str
    listen: bool = False

    @property
    def paced(self) -> bool:
        return self.kind in ("file", "lavfi")

    @property
    def reconnects(self) -> bool:
        return self.kind in ("device", "network")


def webcam_input(
    device: str | None,
    platform: str = sys.platform,
    size: str | None = None,
    fps: float | None = None,
    pixel_format: str | None = None,
) -> LiveInput:
    """The PyAV input of a webcam given by index ("0") or name/path, per platform.

    Linux: v4l2, ``/dev/videoN``, ``input_format`` (mjpeg, yuyv422, ...). macOS: avfoundation,
    device index or name, ``pixel_format``. Windows: dshow, ``video=NAME``, ``pixel_format``
    (``vcodec`` for mjpeg). All take ``video_size`` (WIDTHxHEIGHT) and ``framerate``.
    """
    options: dict[str, str] = {}
    if size:
        options["video_size"] = size
    if fps:
        options["framerate"] = f"{fps:g}"
    index = device if device is not None and device.isdigit() else None
    if platform.startswith("linux"):
        url = f"/dev/video{index or 0}" if device is None or index is not None else device
        if pixel_format:
            options["input_format"] = pixel_format
        return LiveInput(url, "v4l2", options, "device")
    if platform == "darwin":
        if pixel_format:
            options["pixel_format"] = pixel_format
        # avfoundation's "VIDEO:AUDIO" device string; "none" = no audio
        return LiveInput(f"{device or 0}:none", "avfoundation", options, "device")
    if platform in ("win32", "cygwin"):
        if device is None or index is not None:
            raise InputError(
                f"webcam {device or '(default)'}: on Windows give the camera's name "
                "(listed by: ffmpeg -list_devices true -f dshow -i dummy)"
            )
        if pixel_format == "mjpeg":
            options["vcodec"] = "mjpeg"
        elif pixel_format:
            options["pixel_format"] = pixel_format
        name = device[len("video="):] if device.startswith("video=") else device
        return LiveInput(f"video={name}", "dshow", options, "device")
    raise InputError(f"webcam: capture is not supported on platform {platform!r} (use an RTSP or lavfi source)")


def live_input(source: str, config: Config) -> LiveInput:
    """Classify SOURCE: a network URL, ``lavfi:GRAPH``, a device (``/dev/video*``) or a file."""
    if source.startswith(LAVFI_PREFIX):
        return LiveInput(source[len(LAVFI_PREFIX):], "lavfi", {}, "lavfi")
    scheme = urlsplit(source).scheme.lower()
    if scheme in NETWORK_SCHEMES:
        return LiveInput(source, None, network_options(scheme, config), "network", listen=config.listen)
    if source.startswith("/dev/video") or source.isdigit():
        return webcam_input(
            source, size=config.capture_size, fps=config.capture_fps, pixel_format=config.capture_pixel_format
        )
    path = Path(source)
    if not path.is_file():
        raise InputError(
            f"{source}: no such file, and not a stream URL ({', '.join(s + '://' for s in NETWORK_SCHEMES)}), "
            f"device or {LAVFI_PREFIX}GRAPH"
        )
    return LiveInput(str(path), None, {}, "file")


def network_options(scheme: str, config: Config) -> dict[str, str]:
    """FFmpeg protocol options for a network source (the read timeout itself is PyAV's)."""
    options: dict[str, str] = {}
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = config.transport
        if config.listen:
            # RTSP server for one publisher; listen_timeout is in seconds
            options["rtsp_flags"] = "listen"
            options["listen_timeout"] = str(max(1, round(config.io_timeout)))
    elif config.listen and scheme in ("rtmp", "rtmps", "tcp", "http", "https"):
        options["listen"] = "1"
    elif config.listen and scheme == "srt":
        options["mode"] = "listener"
    return options


class LiveClock:
    """Seconds since the run started, on a monotonic clock, as 90 kHz timestamps."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now_pts(self) -> int:
        return round((time.monotonic() - self.start) / LIVE_TIME_BASE)

    def age(self, frame: VideoFrame) -> float:
        """Seconds since ``frame`` (stamped by this clock) was captured."""
        return time.monotonic() - self.start - frame.time


@dataclass(slots=True)
class Backoff:
    """Reconnection waits: ``delay`` doubling up to ``max_delay``, each varied by ±``jitter``."""

    delay: float
    max_delay: float
    jitter: float
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_wait(self) -> float:
        base = min(self.max_delay, self.delay * 2**self.attempts)
        self.attempts += 1
        return base * (1 + self.jitter * self.rng.uniform(-1, 1))

    def reset(self) -> None:
        self.attempts = 0


class LiveSource:
    """Yields frames of a live input until it ends or ``stop`` is set, reconnecting devices and
    network sources with backoff; frames are stamped by ``clock``."""

    def __init__(
        self,
        spec: LiveInput,
        config: Config,
        clock: LiveClock,
        report: Callable[[str], None] = lambda message: None,
    ):
        self.spec = spec
        self.clock = clock
        self.timeout = config.io_timeout
        self.backoff = Backoff(config.reconnect_delay, config.reconnect_max_delay, config.reconnect_jitter)
        self.report = report
        self.connections = 0

    @property
    def reconnections(self) -> int:
        return max(0, self.connections - 1)

    def frames(self, stop: threading.Event) -> Iterator[VideoFrame]:
        index = 0
        while not stop.is_set():
            try:
                container = self._open()
            except av.error.FFmpegError as error:
                if not self.spec.reconnects or (self.spec.kind == "device" and self.connections == 0):
                    raise InputError(f"{self.spec.url}: cannot open ({error.strerror})") from None
                if self.spec.listen and isinstance(error, av.error.TimeoutError):
                    continue  # nobody published yet: listen again at once
                self._wait(stop, f"{self.spec.url}: cannot connect ({error.strerror})")
                continue
            self.connections += 1
            if self.connections > 1:
                self.report(f"{self.spec.url}: reconnected")
            try:
                for frame in self._decode(container, stop, index):
                    self.backoff.reset()
                    index = frame.index + 1
                    yield frame
                ended = f"{self.spec.url}: stream ended"
            except av.error.ExitError:  # PyAV's read timeout
                ended = f"{self.spec.url}: stream stalled (no data for {self.timeout:g} s)"
            except av.error.FFmpegError as error:
                ended = f"{self.spec.url}: stream dropped ({error.strerror})"
            finally:
                container.close()
            if not self.spec.reconnects:
                return
            if not stop.is_set():
                self._wait(stop, ended)

    def _open(self) -> av.container.InputContainer:
        container = av.open(
            self.spec.url,
            format=self.spec.format,
            options=self.spec.options,
            timeout=(self.timeout + 1 if self.spec.listen else self.timeout, self.timeout),
        )
        if not container.streams.video:
            container.close()
            raise InputError(f"{self.spec.url}: has no video stream")
        return container

    def _decode(self, container: av.container.InputContainer, stop: threading.Event, index: int) -> Iterator[VideoFrame]:
        stream = container.streams.video[0]
        first_time = wall_start = None
        for packet in container.demux(stream):
            if stop.is_set():
                return
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:
                continue  # a damaged packet of a live stream: the decoder recovers at the next keyframe
            for frame in decoded:
                if self.spec.paced and frame.time is not None:
                    if first_time is None:
                        first_time, wall_start = frame.time, time.monotonic()
                    delay = wall_start + (frame.time - first_time) - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        return
                image = _upright(frame.to_ndarray(format="rgb24"), int(round(frame.rotation / 90.0)) * 90 % 360)
                yield VideoFrame(image=image, index=index, pts=self.clock.now_pts(), time_base=LIVE_TIME_BASE)
                index += 1

    def _wait(self, stop: threading.Event, why: str) -> None:
        wait = self.backoff.next_wait()
        self.report(f"{why}; reconnecting in {wait:.1f} s")
        stop.wait(wait)
