"""Frame sinks: a video file written with PyAV (audio copied as-is), or stills (image files)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from dpstream.errors import OutputError
from dpstream.source import IMAGE_SUFFIXES, VideoInfo, VideoSource, coded
from dpstream.types import VideoFrame

X264_LIKE = ("libx264", "libx265", "h264", "hevc")


def check_output_folder(path: Path) -> None:
    """One line naming ``path`` when its folder is missing, not a folder or not writable (a
    folder that refuses new files despite its permission bits is found when the run writes)."""
    if not path.parent.exists():
        raise OutputError(f"{path}: folder {path.parent} does not exist")
    if not path.parent.is_dir():
        raise OutputError(f"{path}: {path.parent} is not a folder")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{path}: folder {path.parent} is not writable")


class VideoSink:
    """Encodes frames with the source's own timestamps and copies its audio packets bit-exactly.

    The source's display rotation, colour tags and metadata are kept. With ``video_template``
    (a stream of already encoded frames: a batch run's parts) nothing is encoded: its packets
    are muxed with ``write_packet``.
    """

    def __init__(
        self,
        path: str | Path,
        source: VideoSource,
        codec: str = "libx264",
        crf: int = 20,
        preset: str = "veryfast",
        video_template: av.video.stream.VideoStream | None = None,
    ):
        self.path = Path(path)
        info = source.info
        try:
            self.container = av.open(str(self.path), mode="w")
        except (av.error.FFmpegError, ValueError) as error:
            raise OutputError(f"{self.path}: cannot write this file ({error})") from None
        try:
            self.encoding = video_template is None
            self.video = (
                self._add_video_stream(info, source, codec, crf, preset) if self.encoding
                else self.container.add_stream_from_template(video_template)
            )  # fmt: skip
            self.video.time_base = info.time_base
            self._copy_stream_tags(source, info)
            self.audio = {
                stream.index: self.container.add_stream_from_template(stream) for stream in source.audio_streams
            }
        except OutputError:
            self._abandon()
            raise
        except (av.error.FFmpegError, ValueError) as error:
            self._abandon()
            raise OutputError(f"{self.path}: cannot set up the output streams ({error})") from None
        self.container.metadata.update(source.container.metadata)
        self.rotation = info.rotation

    def _add_video_stream(
        self, info: VideoInfo, source: VideoSource, codec: str, crf: int, preset: str
    ) -> av.video.stream.VideoStream:
        try:
            stream = self.container.add_stream(codec, rate=info.frame_rate or 30)
        except (av.error.FFmpegError, ValueError, av.codec.codec.UnknownCodecError) as error:
            raise OutputError(f"--codec: unknown or unavailable video encoder {codec!r} ({error})") from None
        if stream.type != "video":
            raise OutputError(f"--codec: {codec!r} is not a video encoder")
        stream.width, stream.height = info.width, info.height
        stream.codec_context.time_base = info.time_base
        stream.pix_fmt = output_pixel_format(pixel_formats(stream), info.width, info.height)
        source_context = source.video_stream.codec_context
        for tag in ("color_range", "color_primaries", "color_trc", "colorspace"):
            setattr(stream.codec_context, tag, getattr(source_context, tag))
        if codec in X264_LIKE:
            stream.options = {"crf": str(crf), "preset": preset}
        return stream

    def _copy_stream_tags(self, source: VideoSource, info: VideoInfo) -> None:
        """The source video stream's language/handler/title tags and its display rotation."""
        self.video.metadata.update(
            {k: v for k, v in source.video_stream.metadata.items() if k.lower() in ("language", "handler_name", "title")}
        )
        if info.rotation:
            self.video.set_display_rotation(info.rotation)

    def write(self, frame: VideoFrame) -> None:
        video_frame = encoder_frame(coded(frame.image, self.rotation), self.video.pix_fmt)
        video_frame.pts = frame.pts
        video_frame.time_base = frame.time_base
        try:
            for packet in self.video.encode(video_frame):
                self.container.mux(packet)
        except av.error.FFmpegError as error:
            raise OutputError(f"{self.path}: encoding failed ({error})") from None

    def write_packet(self, packet: av.Packet) -> None:
        """Mux an encoded video packet (``video_template`` sinks)."""
        packet.stream = self.video
        self.container.mux(packet)

    def write_audio(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            packet.stream = self.audio[packet.stream.index]
            try:
                self.container.mux(packet)
            except av.error.FFmpegError as error:
                raise OutputError(
                    f"{self.path}: this container cannot hold the input's {packet.stream.codec_context.name} "
                    f"audio unchanged ({error}); choose another output extension"
                ) from None

    def close(self) -> None:
        """Flush the encoder and finalize the file (playable even after an interruption)."""
        try:
            for packet in self.video.encode(None) if self.encoding else ():
                self.container.mux(packet)
        finally:
            self.container.close()

    def _abandon(self) -> None:
        self.container.close()
        self.path.unlink(missing_ok=True)


class ImageSink:
    """Writes stills: into a folder under their own file names, or one photo to a file.

    The format follows the file name (a folder keeps the input's), alpha, greyscale and the
    colour profile are kept; EXIF (camera, GPS, time), XMP and comments are never written.
    """

    def __init__(self, path: str | Path, folder: bool):
        self.path = Path(path)
        self.folder = folder
        if folder:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OutputError(f"{self.path}: cannot create output folder ({error.strerror})") from None
        else:
            image_format(self.path)  # a bad file name fails before any work

    def write(self, frame: VideoFrame) -> None:
        still = frame.still
        target = self.path / still.name if self.folder else self.path
        kind = image_format(target)
        image = Image.fromarray(frame.image, "RGB")
        alpha = still.alpha is not None and kind in WITH_ALPHA
        if alpha:
            image.putalpha(Image.fromarray(still.alpha, "L"))
        if still.grey:
            image = image.convert("LA" if alpha else "L")
        options = dict(SAVE_OPTIONS.get(kind, {}))
        if still.icc_profile and kind in WITH_ICC:
            options["icc_profile"] = still.icc_profile
        try:
            image.save(target, format=kind, **options)
        except (OSError, ValueError) as error:
            raise OutputError(f"{target}: cannot write image ({error})") from None

    def write_audio(self, packets: list[av.Packet]) -> None:
        pass

    def close(self) -> None:
        pass


SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}, "TIFF": {"compression": "tiff_lzw"}}
WITH_ALPHA = ("PNG", "WEBP", "TIFF")
WITH_ICC = ("JPEG", "PNG", "WEBP", "TIFF")


def image_format(path: Path) -> str:
    """The image format (Pillow's name) of a file name, from its suffix."""
    kind = Image.registered_extensions().get(path.suffix.lower())
    if path.suffix.lower() not in IMAGE_SUFFIXES or kind is None:
        raise OutputError(f"{path}: the input is an image, so the output must be an image file ({', '.join(IMAGE_SUFFIXES)})")
    return kind


def encoder_frame(rgb: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """A PyAV frame of an RGB image for an encoder taking ``pix_fmt``. For yuv420p (the usual
    case) OpenCV converts, twice as fast as the encoder's own conversion, with the same BT.601
    matrix; other formats (or odd sizes) are left to the encoder."""
    height, width = rgb.shape[:2]
    if pix_fmt == "yuv420p" and width % 2 == 0 and height % 2 == 0:
        return av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")


def output_pixel_format(formats: list[str], width: int, height: int) -> str:
    """yuv420p, the format every player reads, unless a side is odd (4:2:0 cannot hold it): then
    yuv444p where the encoder has it."""
    if width % 2 == 0 and height % 2 == 0 and "yuv420p" in formats:
        return "yuv420p"
    return "yuv444p" if "yuv444p" in formats else formats[0]


def pixel_formats(stream: av.video.stream.VideoStream) -> list[str]:
    formats = stream.codec_context.codec.video_formats or []
    return [f.name for f in formats] or ["yuv420p"]
