"""Live outputs: a file, an RTSP publish (to a media server or an RTSP listener), RTMP, MPEG-TS
over UDP/SRT/TCP, written with PyAV and reopened after a network drop; and a preview window.

Audio (when the source has it) is encoded per output (AAC; Opus for WebM) on the video's
timeline and muxed with it in time order.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av
import cv2
import numpy as np

from dpstream.config import Config
from dpstream.errors import OutputError
from dpstream.live_source import AUDIO_FORMAT, AUDIO_LAYOUT, AUDIO_RATE, LIVE_TIME_BASE, AudioChunk, Backoff
from dpstream.sink import X264_LIKE, check_output_folder, encoder_frame, pixel_formats
from dpstream.types import VideoFrame

NETWORK_FORMATS = {"rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "flv", "rtmps": "flv", "udp": "mpegts", "srt": "mpegts", "tcp": "mpegts"}
"""Output scheme -> FFmpeg muxer."""
AUDIO_CODECS = {"webm": "libopus", "ogg": "libopus"}
"""Muxer -> audio encoder of live outputs; every other muxer gets AAC (or, where it does not take
AAC, its own default audio codec)."""
UNQUERIED_AAC_MUXERS = ("mpegts", "rtsp")
"""Muxers that take AAC but cannot answer FFmpeg's codec query."""
AUDIO_TOLERANCE = 1024
"""Samples (21 ms): audio whose stamp is off its place by less continues without a break."""
AUDIO_MAX_FILL = AUDIO_RATE
"""Samples (1 s): a gap in the audio up to this is filled with silence; a longer one (a source
that was away) is a timestamp jump."""
AUDIO_MAX_WAIT = 1.0
"""Seconds of encoded audio waiting for the video to catch up (to be muxed in time order);
beyond, the oldest goes out anyway: a video stall does not hold the audio back."""
AUDIO_KEPT = 256
"""Audio chunks (about 5 s) kept while the output is not connected yet or is down."""


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

    Audio (``with_audio`` set before a connection, chunks given to ``write_audio``): encoded on
    the same timeline (a chunk's clock time minus the connection's first video frame's), from
    that first frame on. Encoded audio waits for the video frame of its time (at most
    ``AUDIO_MAX_WAIT``), so both are muxed in time order; video never waits for audio.
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
        self.with_audio = False  # add an audio stream at the next connection
        self.audio_stream: av.audio.stream.AudioStream | None = None
        self.audio_chunks: deque[AudioChunk] = deque(maxlen=AUDIO_KEPT)  # not encoded yet
        self.audio_samples: np.ndarray | None = None  # (channels, n) not encoded yet, from audio_pts on
        self.audio_pts = 0  # output pts (1/AUDIO_RATE) of audio_samples' first sample
        self.audio_packets: deque[av.Packet] = deque()  # encoded, waiting for the video to catch up
        self.audio_muxed = -1.0  # output seconds of the last audio packet muxed
        self.video_muxed = -1.0  # output seconds of the last video packet muxed
        self.first_muxed: float | None = None  # output seconds of the connection's first packet
        self.audio_refused = False

    @property
    def reconnections(self) -> int:
        return max(0, self.connections - 1)

    def write_audio(self, chunk: AudioChunk) -> None:
        """Queue ``chunk`` for this output; it is encoded once the connection's first video frame
        has set its timeline (chunks from before that frame are cut)."""
        if self.container is not None and self.audio_stream is None:
            return  # connected without audio (the output format takes none, or the source had none)
        self.audio_chunks.append(chunk)
        if self.container is None or self.first_pts is None:
            return
        try:
            self._encode_audio()
            # audio late for its video goes out at once; audio ahead of it waits (up to AUDIO_MAX_WAIT)
            oldest_allowed = self._packet_time(self.audio_packets[-1]) - AUDIO_MAX_WAIT if self.audio_packets else 0.0
            self._mux_audio_until(max(self.video_muxed, oldest_allowed))
        except (av.error.FFmpegError, OSError) as error:
            if not self.output.network:
                raise OutputError(f"{self.output.target}: writing failed ({error})") from None
            self._drop(f"{self.output.target}: output dropped ({error})")

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
            if self.audio_stream is not None:
                self._encode_audio()  # the audio up to now: ahead of this frame, it lets it out at once
            for packet in self.stream.encode(video_frame):
                self._mux_video(packet)
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
                self._mux_video(packet)
            if self.audio_stream is not None:
                self._finish_audio()
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
                # packets go out in the order muxed (this sink orders them): FFmpeg's own
                # interleaving would hold video back whenever audio is late
                container_options={"max_interleave_delta": "1"},
                timeout=(self.config.io_timeout, self.config.io_timeout),
            )
            self.stream = self._add_stream(self.container)
            if self.with_audio:
                self.audio_stream = self._add_audio_stream(self.container)
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
            if config.live_encoder_threads:
                options["threads"] = str(config.live_encoder_threads)
            stream.options = options
        return stream

    def _add_audio_stream(self, container: av.container.OutputContainer) -> av.audio.stream.AudioStream | None:
        """AAC (Opus for WebM) where the muxer takes it, else the muxer's own audio codec; None
        (reported once, video only) where neither can be written."""
        muxer = container.format.name.split(",")[0]
        supported = container.supported_codecs
        candidates = [AUDIO_CODECS.get(muxer, "aac"), container.default_audio_codec]
        for codec in dict.fromkeys(candidates):
            if not codec or codec == "none" or not (codec in supported or (codec == "aac" and muxer in UNQUERIED_AAC_MUXERS)):
                continue
            try:
                stream = container.add_stream(codec, rate=AUDIO_RATE, layout=AUDIO_LAYOUT)
            except (av.error.FFmpegError, ValueError, av.codec.codec.UnknownCodecError):
                continue
            stream.bit_rate = self.config.audio_bitrate
            stream.time_base = Fraction(1, AUDIO_RATE)
            return stream
        if not self.audio_refused:
            self.audio_refused = True
            self.report(f"{self.output.target}: audio not written (no audio encoder for the {muxer} format here)")
        return None

    def _encode_audio(self) -> None:
        """Encode the queued chunks at their place on this connection's timeline: small stamp
        differences are absorbed, gaps up to ``AUDIO_MAX_FILL`` filled with silence, overlaps cut."""
        origin = float(self.first_pts * LIVE_TIME_BASE)
        while self.audio_chunks:
            chunk = self.audio_chunks.popleft()
            samples, start = chunk.samples, round((chunk.time - origin) * AUDIO_RATE)
            if self.audio_samples is None:  # the connection's first audio: from its first video frame on
                if start + samples.shape[1] <= 0:
                    continue
                if start < 0:
                    samples, start = samples[:, -start:], 0
                self.audio_pts, self.audio_samples = start, samples
                self._encode_samples()
                continue
            gap = start - (self.audio_pts + self.audio_samples.shape[1])
            if gap > AUDIO_MAX_FILL:  # a jump: what is buffered goes out, padded to a whole frame
                self._encode_samples(pad=True)
                self.audio_pts, self.audio_samples = start, samples
            elif gap > AUDIO_TOLERANCE:
                silence = np.zeros((samples.shape[0], gap), np.float32)
                self.audio_samples = np.concatenate([self.audio_samples, silence, samples], axis=1)
            elif gap < -AUDIO_TOLERANCE:  # stamped before audio already there: its overlap is cut
                if samples.shape[1] + gap > 0:
                    self.audio_samples = np.concatenate([self.audio_samples, samples[:, -gap:]], axis=1)
            else:
                self.audio_samples = np.concatenate([self.audio_samples, samples], axis=1)
            self._encode_samples()

    def _encode_samples(self, pad: bool = False, last: bool = False) -> None:
        """Encode the buffered samples in whole encoder frames (``pad``: the rest padded with
        silence; ``last``: the rest as a short final frame)."""
        frame_size = self.audio_stream.codec_context.frame_size or self.audio_samples.shape[1]
        samples = self.audio_samples
        if pad and samples.shape[1] % frame_size:
            rest = frame_size - samples.shape[1] % frame_size
            samples = np.concatenate([samples, np.zeros((samples.shape[0], rest), np.float32)], axis=1)
        done = 0
        while samples.shape[1] - done >= frame_size or (last and done < samples.shape[1]):
            block = np.ascontiguousarray(samples[:, done:done + frame_size], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(block, format=AUDIO_FORMAT, layout=AUDIO_LAYOUT)
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, self.audio_pts + done, Fraction(1, AUDIO_RATE)
            self.audio_packets.extend(self.audio_stream.encode(frame))
            done += block.shape[1]
        self.audio_samples = samples[:, done:]
        self.audio_pts += done

    def _finish_audio(self) -> None:
        """At close: the audio up to the end of the last video frame, nothing after it."""
        self._encode_audio()
        end = self.video_muxed + 1.0 / (self.config.capture_fps or 30)
        if self.audio_samples is not None:
            keep = max(0, min(self.audio_samples.shape[1], round(end * AUDIO_RATE) - self.audio_pts))
            self.audio_samples = self.audio_samples[:, :keep]
            self._encode_samples(last=True)
        self.audio_packets.extend(self.audio_stream.encode(None))
        while self.audio_packets:
            packet = self.audio_packets.popleft()
            if self._packet_time(packet) < end:
                self._mux_audio(packet)

    def _mux_video(self, packet: av.Packet) -> None:
        """Mux a video packet after the audio before it, then the next audio packet if any: with
        a packet of each stream queued, FFmpeg lets the video packet out at once."""
        time_ = self._packet_time(packet)
        self._mux_audio_before(time_)
        self.container.mux(packet)
        self.video_muxed = max(self.video_muxed, time_)
        self.first_muxed = time_ if self.first_muxed is None else self.first_muxed
        self._mux_audio_until(time_)

    def _mux_audio_until(self, time_: float) -> None:
        """Mux the audio packets up to ``time_`` and, unless one after the last video packet is
        muxed already, the next one (so that FFmpeg lets that video packet out)."""
        self._mux_audio_before(time_)
        if self.audio_packets and self.video_muxed >= 0 and self.audio_muxed <= self.video_muxed:
            self._mux_audio(self.audio_packets.popleft())

    def _mux_audio_before(self, time_: float) -> None:
        """Mux the audio packets up to ``time_`` (output seconds)."""
        while self.audio_packets and self._packet_time(self.audio_packets[0]) <= time_:
            self._mux_audio(self.audio_packets.popleft())

    def _mux_audio(self, packet: av.Packet) -> None:
        time_ = self._packet_time(packet)
        if self.first_muxed is not None and time_ < self.first_muxed:
            return  # late audio from before the connection's first packet: FFmpeg could not shift it to >= 0
        self.container.mux(packet)
        self.audio_muxed = time_
        self.first_muxed = time_ if self.first_muxed is None else self.first_muxed

    @staticmethod
    def _packet_time(packet: av.Packet) -> float:
        stamp = packet.dts if packet.dts is not None else packet.pts
        return float(stamp * packet.time_base) if stamp is not None else 0.0

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
        self.container = self.stream = self.audio_stream = self.audio_samples = None
        self.audio_packets.clear()
        self.audio_muxed = self.video_muxed = -1.0
        self.first_muxed = None


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
