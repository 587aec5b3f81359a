"""Live sources: webcams, network streams (RTSP, RTMP, HTTP, SRT, UDP), FFmpeg lavfi graphs
and files paced in real time, read with PyAV and reconnected after a drop.

Frames are stamped on a wall-clock time base shared by the whole run (``LiveClock``), so their
times keep increasing across reconnections and tell when each frame was captured. Audio (the
source's own, or a microphone opened as a second input) is resampled to one fixed format and
stamped on the same clock: a source's audio by its timestamps against those of its video
(``ClockMap``), so that audio and video captured together carry the same time.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av
import numpy as np

from dpstream.config import Config
from dpstream.errors import InputError
from dpstream.source import _upright
from dpstream.types import VideoFrame

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp", "rtp")
LAVFI_PREFIX = "lavfi:"
LIVE_TIME_BASE = Fraction(1, 90000)
"""Time base of live frames: 90 kHz, the RTP video clock."""
AUDIO_RATE = 48000
AUDIO_LAYOUT = "stereo"
AUDIO_FORMAT = "fltp"
"""The one format of live audio between capture and the outputs: 48 kHz stereo planar float."""
AUDIO_INPUT_FORMATS = ("alsa", "pulse", "oss", "jack", "lavfi", "avfoundation", "dshow")
"""FFmpeg inputs a microphone may be named by, as FORMAT:NAME (``--audio pulse:default``)."""
AUDIO_WAITING = 5.0
"""Seconds of a connection's audio kept until its first video frame tells its place in time."""
AUDIO_AHEAD = 0.5
"""Seconds the source's audio may run ahead of its video while it waits to be stamped (beyond,
a video stall: it is stamped without the frames, by the last offset)."""


@dataclass(slots=True)
class AudioChunk:
    """Captured audio: ``samples`` (channels, n) float32 at ``AUDIO_RATE``, and ``time``, the
    ``LiveClock`` seconds of the first sample (on the same clock as the video frames' pts)."""

    samples: np.ndarray
    time: float

    @property
    def end(self) -> float:
        return self.time + self.samples.shape[1] / AUDIO_RATE


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
    audio: LiveInput | None = None  # a microphone opened beside the video (else: the source's own audio)

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
    audio: str | None = None,
) -> LiveInput:
    """The PyAV input of a webcam given by index ("0") or name/path, per platform.

    Linux: v4l2, ``/dev/videoN``, ``input_format`` (mjpeg, yuyv422, ...). macOS: avfoundation,
    device index or name, ``pixel_format``. Windows: dshow, ``video=NAME``, ``pixel_format``
    (``vcodec`` for mjpeg). All take ``video_size`` (WIDTHxHEIGHT) and ``framerate``.
    ``audio``: a microphone (see ``audio_input``); avfoundation (``:N`` or a name) and dshow
    (``audio=NAME``) open it in the camera's own input, others as a second input.
    """
    separate = audio is not None and (platform.startswith("linux") or _named_format(audio) is not None)
    microphone = audio_input(audio, platform) if separate else None
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
        return LiveInput(url, "v4l2", options, "device", audio=microphone)
    if platform == "darwin":
        if pixel_format:
            options["pixel_format"] = pixel_format
        # avfoundation's "VIDEO:AUDIO" device string; "none" = no audio
        audio_device = "none" if audio is None or separate else audio.removeprefix(":")
        return LiveInput(f"{device or 0}:{audio_device}", "avfoundation", options, "device", audio=microphone)
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
        audio_device = "" if audio is None or separate else f":audio={audio.removeprefix('audio=')}"
        return LiveInput(f"video={name}{audio_device}", "dshow", options, "device", audio=microphone)
    raise InputError(f"webcam: capture is not supported on platform {platform!r} (use an RTSP or lavfi source)")


def audio_input(device: str, platform: str = sys.platform) -> LiveInput:
    """A microphone as a PyAV input of its own: ``FORMAT:NAME`` for any FFmpeg input in
    ``AUDIO_INPUT_FORMATS`` (``pulse:default``, ``lavfi:sine=frequency=1000``), else the
    platform's: ALSA on Linux (``default``, ``hw:0``, ``plughw:1,0``), avfoundation's audio index
    on macOS (``:0``), dshow's ``audio=NAME`` on Windows. Lavfi graphs are paced in real time."""
    named = _named_format(device)
    if named is not None:
        input_format, name = named
    elif platform.startswith("linux"):
        input_format, name = "alsa", device
    elif platform == "darwin":
        input_format, name = "avfoundation", f":{device.removeprefix(':')}"
    elif platform in ("win32", "cygwin"):
        input_format, name = "dshow", f"audio={device.removeprefix('audio=')}"
    else:
        raise InputError(f"--audio {device}: microphones are not supported on platform {platform!r}")
    if not name:
        raise InputError(f"--audio {device}: give the device after {input_format}:")
    return LiveInput(name, input_format, {}, "lavfi" if input_format == "lavfi" else "device")


def _named_format(device: str) -> tuple[str, str] | None:
    prefix, colon, name = device.partition(":")
    return (prefix.lower(), name) if colon and prefix.lower() in AUDIO_INPUT_FORMATS else None


def live_input(source: str, config: Config) -> LiveInput:
    """Classify SOURCE: a network URL, ``lavfi:GRAPH``, a device (``/dev/video*``) or a file."""
    if source.startswith(LAVFI_PREFIX):
        microphone = audio_input(config.capture_audio) if config.capture_audio else None
        return LiveInput(source[len(LAVFI_PREFIX):], "lavfi", {}, "lavfi", audio=microphone)
    scheme = urlsplit(source).scheme.lower()
    if scheme in NETWORK_SCHEMES:
        return LiveInput(source, None, network_options(scheme, config), "network", listen=config.listen)
    if source.startswith("/dev/video") or source.isdigit():
        return webcam_input(
            source, size=config.capture_size, fps=config.capture_fps, pixel_format=config.capture_pixel_format,
            audio=config.capture_audio,
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

    def now(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.start

    def age(self, frame: VideoFrame) -> float:
        """Seconds since ``frame`` (stamped by this clock) was captured."""
        return time.monotonic() - self.start - frame.time


class ClockMap:
    """Maps one connection's own timestamps (seconds) onto the run's clock: clock = source +
    offset, the offset being the least (clock - source) of the last ``window`` observations,
    i.e. of the frames that arrived with the least delay. It moves only when that least value
    changes by more than ``tolerance`` s (a clock drifting, a pipeline slowing), so that audio
    mapped by it stays continuous."""

    def __init__(self, window: int = 60, tolerance: float = 0.01):
        self.recent: deque[float] = deque(maxlen=window)
        self.tolerance = tolerance
        self.offset: float | None = None

    def observe(self, source_time: float, clock_time: float) -> None:
        self.recent.append(clock_time - source_time)
        least = min(self.recent)
        if self.offset is None or abs(least - self.offset) > self.tolerance:
            self.offset = least

    def clock_time(self, source_time: float) -> float | None:
        return None if self.offset is None else source_time + self.offset


class AudioStamper:
    """Turns one connection's decoded audio frames into ``AudioChunk``s: resampled to the live
    format, stamped on the run's clock through ``clock_map``.

    ``follow_video``: the map is fed by the video frames of the same input, and a chunk waits
    for the first frame at or after its time (at most ``AUDIO_AHEAD`` s), so that its stamp
    uses that frame: at a connection's start, when the frames buffered while the input was
    probed arrive in a burst and the offset falls frame by frame, the audio follows the video
    instead of lagging it. Without it (a microphone) a chunk waits only for the map's first
    offset. At most ``AUDIO_WAITING`` s of audio wait; the oldest goes first."""

    def __init__(self, clock_map: ClockMap, emit: Callable[[AudioChunk], None], follow_video: bool = True):
        self.clock_map = clock_map
        self.emit = emit
        self.follow_video = follow_video
        self.resampler: av.AudioResampler | None = None
        self.next_time: float | None = None  # source seconds after the last frame (for frames without pts)
        self.waiting: deque[tuple[float, np.ndarray]] = deque()
        self.waiting_samples = 0
        self.video_time = float("-inf")  # source time of the newest video frame mapped

    def add(self, frame: av.AudioFrame) -> None:
        """Resample and stamp ``frame`` (source time: its pts, else right after the previous frame)."""
        if not frame.samples or not frame.sample_rate:
            return
        start = float(frame.time) if frame.pts is not None and frame.time_base else (self.next_time or 0.0)
        self.next_time = start + frame.samples / frame.sample_rate
        frame.pts, frame.time_base = round(start * frame.sample_rate), Fraction(1, frame.sample_rate)
        for resampled in self._resample(frame):
            time_ = float(resampled.time) if resampled.pts is not None and resampled.time_base else start
            self._stamp(time_, resampled.to_ndarray())

    def video(self, source_time: float) -> None:
        """A video frame at ``source_time`` was mapped: send the chunks it places."""
        self.video_time = max(self.video_time, source_time)
        self.release()

    def release(self) -> None:
        """Send the waiting chunks that can be stamped now."""
        if self.clock_map.offset is None:
            return
        while self.waiting:
            source_time, samples = self.waiting[0]
            if self.follow_video and source_time > self.video_time and self.waiting[-1][0] - self.video_time <= AUDIO_AHEAD:
                return
            self.waiting.popleft()
            self.waiting_samples -= samples.shape[1]
            self.emit(AudioChunk(samples, self.clock_map.clock_time(source_time)))

    def _stamp(self, source_time: float, samples: np.ndarray) -> None:
        self.waiting.append((source_time, samples))
        self.waiting_samples += samples.shape[1]
        while self.waiting_samples > AUDIO_WAITING * AUDIO_RATE:
            self.waiting_samples -= self.waiting.popleft()[1].shape[1]
        self.release()

    def _resample(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        if self.resampler is None:
            self.resampler = av.AudioResampler(format=AUDIO_FORMAT, layout=AUDIO_LAYOUT, rate=AUDIO_RATE)
        try:
            return self.resampler.resample(frame)
        except ValueError:  # the source's format changed mid-stream: a resampler for the new one
            self.resampler = av.AudioResampler(format=AUDIO_FORMAT, layout=AUDIO_LAYOUT, rate=AUDIO_RATE)
            return self.resampler.resample(frame)


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
    network sources with backoff; frames are stamped by ``clock``.

    Audio (``live_audio``, once ``on_audio`` is set): the first audio stream of the video's own
    input, or the microphone of ``spec.audio`` read on a thread of its own, is passed to
    ``on_audio`` as ``AudioChunk``s stamped on the same clock. The source's audio is placed by
    its timestamps against those of the video frames of the same connection (``ClockMap``); a
    microphone's by when its samples arrive.
    """

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
        self.audio_enabled = config.live_audio
        self.on_audio: Callable[[AudioChunk], None] | None = None
        self.audio_expected = False  # the open input (or its microphone) has audio that on_audio gets

    @property
    def reconnections(self) -> int:
        return max(0, self.connections - 1)

    @property
    def _wants_audio(self) -> bool:
        return self.audio_enabled and self.on_audio is not None

    def frames(self, stop: threading.Event) -> Iterator[VideoFrame]:
        microphone = None
        if self._wants_audio and self.spec.audio is not None:
            microphone = Microphone(self.spec.audio, self, stop)
            microphone.open()  # a wrong device name fails the run at once, as a wrong camera does
            self.audio_expected = True
            microphone.start()
        try:
            yield from self._frames(stop)
        finally:
            if microphone is not None:
                microphone.finish()

    def _frames(self, stop: threading.Event) -> Iterator[VideoFrame]:
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
        if self.spec.audio is None:
            self.audio_expected = self._wants_audio and bool(container.streams.audio)
        return container

    def _decode(self, container: av.container.InputContainer, stop: threading.Event, index: int) -> Iterator[VideoFrame]:
        stream = container.streams.video[0]
        streams = [stream]
        clock_map = ClockMap()
        stamper = None
        if self.spec.audio is None and self.audio_expected:
            streams.append(container.streams.audio[0])
            stamper = AudioStamper(clock_map, self._emit_audio)
        first_time = wall_start = None
        for packet in container.demux(streams):
            if stop.is_set():
                return
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:
                continue  # a damaged packet of a live stream: the decoder recovers at the next keyframe
            if packet.stream.type == "audio":
                for audio_frame in decoded:
                    stamper.add(audio_frame)
                continue
            for frame in decoded:
                if self.spec.paced and frame.time is not None:
                    if first_time is None:
                        first_time, wall_start = frame.time, time.monotonic()
                    delay = wall_start + (frame.time - first_time) - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        return
                image = _upright(frame.to_ndarray(format="rgb24"), int(round(frame.rotation / 90.0)) * 90 % 360)
                pts = self.clock.now_pts()
                if stamper is not None and frame.time is not None:
                    clock_map.observe(float(frame.time), float(pts * LIVE_TIME_BASE))
                    stamper.video(float(frame.time))
                yield VideoFrame(image=image, index=index, pts=pts, time_base=LIVE_TIME_BASE)
                index += 1

    def _emit_audio(self, chunk: AudioChunk) -> None:
        on_audio = self.on_audio
        if on_audio is not None:
            on_audio(chunk)

    def _wait(self, stop: threading.Event, why: str) -> None:
        wait = self.backoff.next_wait()
        self.report(f"{why}; reconnecting in {wait:.1f} s")
        stop.wait(wait)


class Microphone(threading.Thread):
    """Reads the microphone input of a ``LiveSource`` (``spec.audio``) until the source's
    frames end or ``stop`` is set, reopening it after a drop like the video input. Each chunk is
    stamped by when its last sample arrived (``ClockMap`` over arrivals: the least-delayed ones
    set the offset), lavfi graphs paced in real time."""

    def __init__(self, spec: LiveInput, source: LiveSource, stop: threading.Event):
        super().__init__(name="dpstream-audio", daemon=True)
        self.spec, self.source, self.stop = spec, source, stop
        self.done = threading.Event()
        self.container: av.container.InputContainer | None = None
        self.backoff = Backoff(source.backoff.delay, source.backoff.max_delay, source.backoff.jitter)

    def open(self) -> None:
        timeout = self.source.timeout
        try:
            container = av.open(self.spec.url, format=self.spec.format, options=self.spec.options, timeout=(timeout, timeout))
        except av.error.FFmpegError as error:
            raise InputError(f"--audio {self.spec.url}: cannot open ({error.strerror})") from None
        if not container.streams.audio:
            container.close()
            raise InputError(f"--audio {self.spec.url}: has no audio stream")
        self.container = container

    def finish(self) -> None:
        self.done.set()
        self.join(self.source.timeout + 2)

    def _stopped(self) -> bool:
        return self.stop.is_set() or self.done.is_set()

    def run(self) -> None:
        while not self._stopped():
            if self.container is None:
                try:
                    self.open()
                except InputError as error:
                    self._wait(str(error))
                    continue
                self.source.report(f"--audio {self.spec.url}: reconnected")
            try:
                self._read(self.container)
                ended = f"--audio {self.spec.url}: ended"
            except av.error.FFmpegError as error:
                ended = f"--audio {self.spec.url}: dropped ({error.strerror})"
            finally:
                self.container.close()
                self.container = None
            if not self.spec.reconnects:
                return
            if not self._stopped():
                self._wait(ended)

    def _read(self, container: av.container.InputContainer) -> None:
        clock = self.source.clock
        clock_map = ClockMap(window=100, tolerance=0.02)
        stamper = AudioStamper(clock_map, self.source._emit_audio, follow_video=False)
        first_time = wall_start = None
        for packet in container.demux(container.streams.audio[0]):
            if self._stopped():
                return
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:
                continue
            for frame in decoded:
                if not frame.samples or not frame.sample_rate:
                    continue
                start = float(frame.time) if frame.pts is not None and frame.time_base else (stamper.next_time or 0.0)
                end = start + frame.samples / frame.sample_rate
                if self.spec.paced:  # a generator: its samples are "captured" when they are due
                    if first_time is None:
                        first_time, wall_start = start, time.monotonic()
                    delay = wall_start + (end - first_time) - time.monotonic()
                    if delay > 0 and self.done.wait(delay):
                        return
                clock_map.observe(end, clock.now())
                self.backoff.reset()
                stamper.add(frame)

    def _wait(self, why: str) -> None:
        wait = self.backoff.next_wait()
        self.source.report(f"{why}; reconnecting in {wait:.1f} s")
        self.done.wait(wait)
