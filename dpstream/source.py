"""Frame sources: a video file (anything FFmpeg reads), or stills (image files, or a folder of them)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps

from dpstream.errors import InputError
from dpstream.types import StillInfo, VideoFrame

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
URL_TIMEOUT = 30.0
"""Seconds a URL input may take to answer (open, then each read)."""
MAX_VIDEO_SIDE = 8192
"""The largest video frame side dpstream reads (8K is 7680x4320): a larger frame is refused
before decoding, since the stages' queues hold dozens of frames."""


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What the sink needs to know to write a matching output."""

    width: int  # coded size (before display rotation)
    height: int
    time_base: Fraction
    frame_rate: Fraction | None
    rotation: int  # display rotation in degrees, counter-clockwise, multiple of 90
    expected_frames: int | None  # from the container, when it says (else estimated from the duration)
    frames_counted: bool  # the container holds the frame count (not an estimate)
    duration: float | None  # seconds, when the container says


@dataclass(frozen=True, slots=True)
class FrameSpan:
    """A stretch of a video between key frames: frames with ``start_pts <= pts < end_pts`` (None:
    from the start / to the end); ``first_index`` is the index of its first frame in the file."""

    start_pts: int | None = None
    end_pts: int | None = None
    first_index: int = 0


@dataclass(slots=True)
class DecodeReport:
    """What went wrong while reading; empty when the whole input decoded."""

    errors: list[str]
    frames_decoded: int
    expected_frames: int | None


class VideoSource:
    """Demuxes a video file: yields upright RGB frames, queues audio packets for copying.

    Frames come out rotated upright (the display matrix applied) so faces are found in their
    natural orientation; the sink rotates them back and keeps the display matrix. With a
    ``span`` (a part of a batch run) only its frames are read, and no audio.
    """

    def __init__(self, path: str | Path, span: FrameSpan | None = None):
        self.path = path if is_url(path) else Path(path)  # a URL (batch runs' lists) stays a string
        self.span = span
        self.container = open_video_container(self.path)
        self.video_stream = self.container.streams.video[0]
        # slice threads only: frame threading silently drops the frames around a damaged packet
        self.video_stream.thread_type = "SLICE"
        self.audio_streams = [] if span else list(self.container.streams.audio)
        self._pending_audio: list[av.Packet] = []
        self.report = DecodeReport([], 0, None)
        self.info = self._probe_info()
        self.report.expected_frames = self.info.expected_frames

    def _probe_info(self) -> VideoInfo:
        stream = self.video_stream
        rate = stream.average_rate or stream.guessed_rate
        duration = (
            float(stream.duration * stream.time_base) if stream.duration and stream.time_base
            else self.container.duration / av.time_base if self.container.duration else None
        )  # fmt: skip
        expected = stream.frames or (round(duration * float(rate)) if duration and rate else None)
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            time_base=stream.time_base or Fraction(1, 90000),
            frame_rate=Fraction(rate) if rate else None,
            rotation=_first_frame_rotation(self.path),
            expected_frames=expected,
            frames_counted=bool(stream.frames),
            duration=duration,
        )

    def frames(self) -> Iterator[VideoFrame]:
        span = self.span or FrameSpan()
        index = span.first_index
        last_pts = None
        frame_step = _pts_step(self.info)
        streams = [self.video_stream, *self.audio_streams]
        if span.start_pts is not None:
            self.container.seek(span.start_pts, stream=self.video_stream)  # lands on the key frame at start_pts
        try:
            for packet in self._packets(streams, span.end_pts):
                if packet is not None and packet.stream.type == "audio":
                    if packet.dts is not None:
                        self._pending_audio.append(packet)
                    continue
                try:
                    decoded = packet.decode() if packet is not None else self.video_stream.codec_context.decode(None)
                except av.error.FFmpegError as error:
                    self.report.errors.append(f"frame data after frame {index} is corrupt ({error})")
                    continue
                for frame in decoded:
                    if not span_holds(span, frame.pts):
                        continue
                    pts = frame.pts if frame.pts is not None else (
                        0 if last_pts is None else last_pts + frame_step
                    )
                    if last_pts is not None and pts <= last_pts:
                        pts = last_pts + 1  # a repeated timestamp (broken input): one tick later
                    last_pts = pts
                    yield VideoFrame(
                        image=_upright(frame.to_ndarray(format="rgb24"), self.info.rotation),
                        index=index,
                        pts=pts,
                        time_base=self.info.time_base,
                    )
                    index += 1
                    self.report.frames_decoded = index
        except av.error.FFmpegError as error:
            self.report.errors.append(f"stopped reading after frame {index}: {error}")
        if not self.span and not self.report.errors and self._ended_early(index, last_pts):
            self.report.errors.append(
                f"the file ended after {index} of about {self.info.expected_frames} frames (truncated?)"
            )

    def _packets(self, streams: list, end_pts: int | None) -> Iterator[av.Packet | None]:
        """The demuxed packets, up to (not including) the key frame at ``end_pts``; then None,
        which asks the decoder for the frames it still holds."""
        for packet in self.container.demux(streams):
            if end_pts is not None and packet.stream.type == "video" and packet.is_keyframe and packet.pts is not None and packet.pts >= end_pts:
                yield None
                return
            yield packet

    def _ended_early(self, frames: int, last_pts: int | None) -> bool:
        """Fewer frames than the container counts, or (no count: a variable frame rate makes the
        estimate unreliable) the last frame well before the container's duration."""
        info, expected = self.info, self.info.expected_frames
        if not expected:
            return False
        if info.frames_counted or last_pts is None or not info.duration or not info.frame_rate:
            return frames < expected - max(2, expected // 100)
        frame_seconds = 1 / float(info.frame_rate)
        end = float(last_pts * info.time_base) + frame_seconds
        return end < info.duration - max(2 * frame_seconds, info.duration / 100)

    def drain_audio(self) -> list[av.Packet]:
        """Audio packets read so far that have not been written yet."""
        packets, self._pending_audio = self._pending_audio, []
        return packets

    def close(self) -> None:
        self.container.close()


def span_holds(span: FrameSpan, pts: int | None) -> bool:
    """Whether a decoded frame's ``pts`` falls in ``span`` (a frame without pts: in every span)."""
    if pts is None:
        return True
    return (span.start_pts is None or pts >= span.start_pts) and (span.end_pts is None or pts < span.end_pts)


def key_frame_times(path: Path | str) -> tuple[list[tuple[int, int]], int, Fraction]:
    """The video's key frames as (pts, packet number), its number of video packets, and its time
    base: read from the container's packets, nothing decoded."""
    container = open_video_container(path)
    try:
        stream = container.streams.video[0]
        keys, packets = [], 0
        for packet in container.demux(stream):
            if packet.dts is None and packet.pts is None:
                continue
            if packet.is_keyframe and packet.pts is not None:
                keys.append((packet.pts, packets))
            packets += 1
        return keys, packets, stream.time_base or Fraction(1, 90000)
    finally:
        container.close()


def is_url(path: str | Path) -> bool:
    """``scheme://...`` (http, https, ftp, ...: FFmpeg reads them), not a file name."""
    return isinstance(path, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path) is not None


def open_video_container(path: Path | str) -> av.container.InputContainer:
    """Open ``path`` (a file, or a URL) for reading with messages that name it and the problem."""
    if is_url(path):
        try:
            container = av.open(path, mode="r", metadata_errors="replace", timeout=URL_TIMEOUT)
        except av.error.FFmpegError as error:
            raise InputError(f"{path}: cannot be read ({error.strerror})") from None
        return _checked_video(container, path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder with no images in it")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    try:
        container = av.open(str(path), mode="r", metadata_errors="replace")  # damaged tags are not fatal
    except av.error.FFmpegError as error:
        raise InputError(f"{path}: not a video file FFmpeg can read ({error.strerror})") from None
    return _checked_video(container, path)


def _checked_video(container: av.container.InputContainer, path: Path | str) -> av.container.InputContainer:
    """``container`` if its first video stream can be decoded and is not too large (else closed, and why)."""
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video stream")
    codec = container.streams.video[0].codec_context
    if codec is None:
        container.close()
        raise InputError(f"{path}: its video stream cannot be decoded (unknown or damaged codec parameters)")
    width, height = codec.width, codec.height
    if max(width, height) > MAX_VIDEO_SIDE:
        container.close()
        raise InputError(f"{path}: frames of {width}x{height}, larger than the {MAX_VIDEO_SIDE} px per side dpstream reads")
    return container


class ImageSource:
    """Stills: image files (a folder's, sorted by name, or the ones given), each read on its own.

    Each photo comes out upright (its EXIF orientation applied), as RGB, with its alpha channel,
    greyscale flag and colour profile in ``frame.still`` for the sink; the EXIF itself (camera,
    GPS, time) is left behind. An unreadable photo of a set is skipped and reported; a single
    photo is read at once, so that an unreadable one is an error before any work.
    """

    def __init__(self, paths: Path | list[Path]):
        self.single = isinstance(paths, Path) and not paths.is_dir()  # one photo, written to a file
        if isinstance(paths, Path) and paths.is_dir():
            self.path = paths
            self.files = sorted(p for p in paths.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise InputError(f"{paths}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        else:
            self.files = [paths] if isinstance(paths, Path) else list(paths)
            self.path = self.files[0] if self.single else self.files[0].parent
            _check_image_files(self.files)
        self._read: dict[int, tuple[np.ndarray, StillInfo]] = {}
        if self.single:
            try:
                self._read[0] = read_still(self.path)
            except UNREADABLE as error:
                raise InputError(f"{self.path}: not a readable image ({error})") from None
        self.report = DecodeReport([], 0, len(self.files))

    def frames(self) -> Iterator[VideoFrame]:
        for index, file in enumerate(self.files):
            try:
                image, still = self._read.pop(index) if index in self._read else read_still(file)
            except UNREADABLE as error:
                self.report.errors.append(f"{file.name}: not a readable image ({error}), skipped")
                continue
            self.report.frames_decoded += 1
            yield VideoFrame(image=image, index=index, still=still)

    def drain_audio(self) -> list[av.Packet]:
        return []

    def close(self) -> None:
        pass


UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)
"""What Pillow raises for a file that is not an image it can decode (truncated, unknown, huge)."""


def read_still(path: Path) -> tuple[np.ndarray, StillInfo]:
    """(H, W, 3) upright RGB pixels of an image file, and what writing it back keeps."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
        # a profile of another colour space (CMYK, Lab) does not describe the RGB written back
        icc_profile = opened.info.get("icc_profile") if grey or image.mode in ("RGB", "RGBA", "P", "PA") else None
        alpha = np.asarray(image.convert("RGBA"))[..., 3].copy() if image.has_transparency_data else None
        return np.asarray(image.convert("RGB")).copy(), StillInfo(path.name, alpha, grey, icc_profile or None)


def _check_image_files(files: list[Path]) -> None:
    """Given files must exist and be images; in one output folder their names must differ."""
    seen: dict[str, Path] = {}
    for file in files:
        if not file.is_file():
            raise InputError(f"{file}: no such file" if not file.exists() else f"{file}: is a folder; give image files or one folder")
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{file}: not an image file name ({', '.join(IMAGE_SUFFIXES)}); a video is anonymized on its own")
        if file.name in seen:
            raise InputError(f"{file}: same file name as {seen[file.name]}; the output folder would hold only one")
        seen[file.name] = file


def is_image_input(path: str | Path | list) -> bool:
    """A folder, an image file name, or a list of paths: the input is a set of stills."""
    if isinstance(path, (list, tuple)):
        return True
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES


def open_source(path: str | Path | list) -> VideoSource | ImageSource:
    """A video file, or stills: a folder of images, one image file or a list of image files."""
    if isinstance(path, (list, tuple)):
        if not path:
            raise InputError("no input files given")
        return ImageSource([Path(p) for p in path])
    path = Path(path)
    if is_image_input(path):
        return ImageSource(path)
    return VideoSource(path)


def _pts_step(info: VideoInfo) -> int:
    if info.frame_rate:
        return max(1, round(1 / (info.frame_rate * info.time_base)))
    return 1


def _first_frame_rotation(path: Path | str) -> int:
    """The display rotation (degrees, multiple of 90) carried by the first frame, 0 if none.

    Read from a separate opening so the main demuxer starts untouched.
    """
    try:
        with av.open(str(path), metadata_errors="replace") as container:
            for frame in container.decode(video=0):
                return int(round(frame.rotation / 90.0)) * 90 % 360
    except av.error.FFmpegError:
        pass  # the main read reports the damage
    return 0


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the display rotation (counter-clockwise degrees) to a coded image."""
    if rotation == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90))


def coded(image: np.ndarray, rotation: int) -> np.ndarray:
    """Undo :func:`_upright`: back to the coded orientation for encoding."""
    if rotation == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=-(rotation // 90)))
