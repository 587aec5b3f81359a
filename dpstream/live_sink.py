"""Live outputs: a file, an RTSP publish (to a media server or an RTSP listener), RTMP, MPEG-TS
over UDP/SRT/TCP, written with PyAV and reopened after a network drop; and a preview window.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import av
import cv2

from dpstream.config import Config
from dpstream.errors import OutputError
from dpstream.live_source import LIVE_TIME_BASE, Backoff
from dpstream.sink import X264_LIKE, check_output_folder, encoder_frame, pixel_formats
from dpstream.types import VideoFrame

NETWORK_FORMATS = {"rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "flv", "rtmps": "flv", "udp": "mpegts", "srt": "mpegts", "tcp": "mpegts"}
"""Output scheme -> FFmpeg muxer."""


@dataclass(frozen=True, slots=True)
class LiveOutput:
    """How to open one live output with PyAV: ``av.open(target, "w", format=format, options=options)``."""

    target: str
    format: str | None
    options: dict[str, str]
    network: bool


def live_output(target: str, config: Config, overwrite: bool = False) -> LiveOutput:
    """Classify an output: a network URL (see ``NETWORK_FORMATS``) or a file path."""
    scheme = urlsplit(target).scheme.lower()
    if scheme in NETWORK_FORMATS:
        options = {"rtsp_transport": config.transport} if NETWORK_FORMATS[scheme] == "rtsp" else {}
        return LiveOutput(target, NETWORK_FORMATS[scheme], options, network=True)
    if "://" in target:
        raise OutputError(f"{target}: unsupported output ({', '.join(s + '://' for s in NETWORK_FORMATS)} or a file)")
    path = Path(target)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a video file name such as out.mp4 or out.ts")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists (use --overwrite to replace it)")
    check_output_folder(path)
    return LiveOutput(str(path), None, {}, network=False)


class LiveSink:
    """Encodes anonymized frames with low-latency settings and writes them to one output.

    Output timestamps are the frames' wall-clock times, made strictly increasing and starting
    at 0 on every (re)connection. A network output that fails is reopened with backoff; frames
    arriving while it is down are not written (``frames_lost``). The encoder's size is the first
    frame's; later frames of another size (a source that came back changed) are resized to it.
    """

    def __init__(self, output: LiveOutput, config: Config, report: Callable[[str], None] = lambda message: None):
        self.output = output
        self.config = config
        self.report = report
        self.backoff = Backoff(config.reconnect_delay, config.reconnect_max_delay, config.reconnect_jitter)
        self.container: av.container.OutputContainer | None = None
        self.stream: av.video.stream.VideoStream | None = None
        self.size: tuple[int, int] | None = None  # (width, height)
        self.first_pts: int | None = None
        self.last_pts = -1
        self.retry_at = 0.0
        self.connections = 0
        self.frames_lost = 0

    @property
    def reconnections(self) -> int:
        return max(0, self.connections - 1)

    def write(self, frame: VideoFrame) -> bool:
        """Encode and send ``frame``; False when a network output is down and it was not sent."""
        if self.size is None:
            self.size = (frame.image.shape[1] // 2 * 2, frame.image.shape[0] // 2 * 2)
        if self.container is None and not self._connect():
            self.frames_lost += 1
            return False
        image = frame.image
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        if self.first_pts is None:
            self.first_pts = frame.pts
        pts = max(frame.pts - self.first_pts, self.last_pts + 1)
        self.last_pts = pts
        video_frame = encoder_frame(image, self.stream.pix_fmt)
        video_frame.pts, video_frame.time_base = pts, LIVE_TIME_BASE
        try:
            for packet in self.stream.encode(video_frame):
                self.container.mux(packet)
        except (av.error.FFmpegError, OSError) as error:
            if not self.output.network:
                raise OutputError(f"{self.output.target}: writing failed ({error})") from None
            self._drop(f"{self.output.target}: output dropped ({error})")
            return False
        return True

    def close(self) -> None:
        """Flush the encoder and close the output (a file stays playable)."""
        if self.container is None:
            return
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
        except (av.error.FFmpegError, OSError):
            pass  # a network peer gone at the end: nothing left to save
        finally:
            self._close_container()

    def _connect(self) -> bool:
        if time.monotonic() < self.retry_at:
            return False
        try:
            self.container = av.open(
                self.output.target,
                mode="w",
                format=self.output.format,
                options=self.output.options,
                timeout=(self.config.io_timeout, self.config.io_timeout),
            )
            self.stream = self._add_stream(self.container)
            self.container.start_encoding()  # connects a network output now, not at the first packet
        except OutputError:
            self._close_container()
            raise
        except (av.error.FFmpegError, OSError, ValueError) as error:
            self._close_container()
            if not self.output.network or isinstance(error, ValueError):
                raise OutputError(f"{self.output.target}: cannot write this output ({error})") from None
            self._schedule_retry(f"{self.output.target}: cannot connect ({error})")
            return False
        self.connections += 1
        self.first_pts, self.last_pts = None, -1
        self.backoff.reset()
        if self.connections > 1:
            self.report(f"{self.output.target}: reconnected")
        return True

    def _add_stream(self, container: av.container.OutputContainer) -> av.video.stream.VideoStream:
        config = self.config
        try:
            stream = container.add_stream(config.codec, rate=round(config.capture_fps or 30))
        except (av.error.FFmpegError, ValueError, av.codec.codec.UnknownCodecError) as error:
            raise OutputError(f"codec: unknown or unavailable video encoder {config.codec!r} ({error})") from None
        if stream.type != "video":
            raise OutputError(f"codec: {config.codec!r} is not a video encoder")
        stream.width, stream.height = self.size
        stream.time_base = LIVE_TIME_BASE
        stream.codec_context.time_base = LIVE_TIME_BASE
        stream.pix_fmt = "yuv420p" if "yuv420p" in pixel_formats(stream) else pixel_formats(stream)[0]
        stream.codec_context.gop_size = config.live_gop
        stream.codec_context.max_b_frames = 0
        if config.codec in X264_LIKE:
            options = {"crf": str(config.crf), "preset": config.preset}
            if config.live_tune:
                options["tune"] = config.live_tune
            stream.options = options
        return stream

    def _drop(self, why: str) -> None:
        self._close_container()
        self._schedule_retry(why)

    def _schedule_retry(self, why: str) -> None:
        wait = self.backoff.next_wait()
        self.retry_at = time.monotonic() + wait
        self.report(f"{why}; reconnecting in {wait:.1f} s")

    def _close_container(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except (av.error.FFmpegError, OSError):
                pass  # the peer is already gone
        self.container = self.stream = None


class PreviewWindow:
    """An OpenCV window showing the anonymized frames; q, Esc or closing it ends the run."""

    TITLE = "dpstream (q to stop)"

    def __init__(self) -> None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise OutputError("--preview: no display (DISPLAY is not set); write to -o FILE|URL instead")
        try:
            cv2.namedWindow(self.TITLE, cv2.WINDOW_NORMAL)
        except cv2.error as error:
            raise OutputError(f"--preview: cannot open a window (no display?) ({error.msg})") from None
        self.closed = False

    def show(self, frame: VideoFrame) -> None:
        cv2.imshow(self.TITLE, cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) or cv2.getWindowProperty(self.TITLE, cv2.WND_PROP_VISIBLE) < 1:
            self.closed = True

    def close(self) -> None:
        cv2.destroyWindow(self.TITLE)
