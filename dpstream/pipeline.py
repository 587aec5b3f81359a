"""Assembles the stages: source → face finder → tracker → replacer → sink."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpstream.config import Config, load_config
from dpstream.errors import OutputError
from dpstream.face_finder import FaceFinder
from dpstream.privacy import default_ledger_path, write_ledger
from dpstream.replace import make_replacer
from dpstream.sink import ImageFolderSink, VideoSink
from dpstream.source import ImageFolderSource, VideoSource, open_source
from dpstream.tracker import Tracker
from dpstream.types import ReplacedFrame, VideoFrame


class Anonymizer:
    """Finds, tracks and replaces the faces of frames, one frame at a time.

    ``independent_frames`` (a folder of unrelated images) resets tracking for each frame.
    """

    def __init__(self, config: Config, independent_frames: bool = False):
        self.config = config
        self.finder = FaceFinder(min_score=config.min_face_score, tile_levels=config.detect_tiles)
        self.tracker = Tracker()
        self.replacer = make_replacer(config)
        self.independent_frames = independent_frames

    def process(self, frame: VideoFrame) -> ReplacedFrame:
        if self.independent_frames:
            self.tracker.reset()
        faces = self.tracker.update(self.finder.find(frame))
        return self.replacer.replace(frame, faces)

    def close(self) -> None:
        self.finder.close()
        self.replacer.close()


@dataclass(slots=True)
class RunSummary:
    """What a run did, for the CLI's closing lines and for callers."""

    input: str
    output: str
    method: str
    frames: int = 0
    faces: int = 0
    fallbacks: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    input_errors: list[str] = field(default_factory=list)
    expected_frames: int | None = None
    ledger: str | None = None
    method_figures: dict = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def anonymize(
    input: str | Path,
    output: str | Path,
    *,
    config: str | Path | Config | None = None,
    overwrite: bool = False,
    on_frame: Callable[[ReplacedFrame, RunSummary], None] | None = None,
    **options,
) -> RunSummary:
    """Anonymize a video file (or a folder of images) into ``output``.

    ``options`` are config keys (see configs/default.yaml) that override ``config``.
    ``on_frame(result, summary)`` is called after each frame (e.g. for a progress bar).
    Ctrl-C stops early and still finalizes a playable output (``summary.interrupted``).
    """
    run_config = _resolve_config(config, options)
    input_path, output_path = Path(input), Path(output)
    source = open_source(input_path)
    try:
        _check_output(input_path, output_path, overwrite)
    except OutputError:
        source.close()
        raise
    summary = RunSummary(str(input_path), str(output_path), run_config.method, expected_frames=source.report.expected_frames)
    try:
        anonymizer = Anonymizer(run_config, independent_frames=isinstance(source, ImageFolderSource))
        try:
            sink = _open_sink(source, output_path, run_config)
        except OutputError:
            anonymizer.close()
            raise
        started = time.perf_counter()
        stop = StopRequest()
        try:
            for frame in stop.guard(source.frames()):
                sink.write_audio(source.drain_audio())
                result = anonymizer.process(frame)
                sink.write(result.frame)
                summary.frames += 1
                summary.faces += len(result.faces)
                summary.fallbacks += result.fallbacks
                if on_frame is not None:
                    on_frame(result, summary)
            sink.write_audio(source.drain_audio())
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            summary.interrupted = summary.interrupted or stop.requested
            sink.close()
            summary.seconds = time.perf_counter() - started
            ledger = anonymizer.replacer.ledger()
            if ledger is not None:
                summary.ledger = str(write_ledger(ledger, run_config.ledger or default_ledger_path(output_path)))
            summary.method_figures = anonymizer.replacer.summary()
            anonymizer.close()
    finally:
        source.close()
    summary.input_errors = list(source.report.errors)
    return summary


def anonymize_frames(
    frames: Iterable[np.ndarray | VideoFrame], *, config: str | Path | Config | None = None, **options
) -> Iterator[np.ndarray]:
    """Anonymize frames the caller brings (RGB uint8 arrays or VideoFrames), yielding RGB arrays.

    The caller's arrays are not modified. Frames are treated as one video (tracked across).
    """
    run_config = _resolve_config(config, options)
    anonymizer = Anonymizer(run_config)
    try:
        for index, item in enumerate(frames):
            frame = item if isinstance(item, VideoFrame) else VideoFrame(image=item, index=index)
            frame = VideoFrame(np.array(frame.image, dtype=np.uint8, copy=True), frame.index, frame.pts, frame.time_base, frame.name)
            yield anonymizer.process(frame).frame.image
    finally:
        anonymizer.close()


class StopRequest:
    """Ctrl-C and SIGTERM during a run ask it to stop after the current frame, so the output is
    finalized; a second Ctrl-C interrupts at once. A flag rather than an exception: an exception
    raised while native code calls back into Python can be swallowed there."""

    def __init__(self) -> None:
        self.requested = False

    def guard(self, frames: Iterable[VideoFrame]) -> Iterator[VideoFrame]:
        """Yield ``frames`` until a stop is requested (signal handlers only in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield from frames
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for frame in frames:
                yield frame
                if self.requested:
                    return
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def _resolve_config(config: str | Path | Config | None, options: dict) -> Config:
    """A Config object, a YAML path or None (defaults), with ``options`` applied on top."""
    return config.with_overrides(**options) if isinstance(config, Config) else load_config(config, **options)


def _check_output(input_path: Path, output_path: Path, overwrite: bool) -> None:
    if output_path.resolve() == input_path.resolve():
        raise OutputError(f"{output_path}: output would overwrite the input")
    if output_path.exists() and not overwrite:
        raise OutputError(f"{output_path}: already exists (use --overwrite to replace it)")
    if not output_path.parent.exists():
        raise OutputError(f"{output_path}: folder {output_path.parent} does not exist")


def _open_sink(source, output_path: Path, config: Config) -> VideoSink | ImageFolderSink:
    if isinstance(source, VideoSource):
        if output_path.is_dir():
            raise OutputError(f"{output_path}: is a folder; give a video file name such as out.mp4")
        return VideoSink(output_path, source, codec=config.codec, crf=config.crf, preset=config.preset)
    if output_path.exists() and not output_path.is_dir():
        raise OutputError(f"{output_path}: the input is a folder of images, so the output must be a folder")
    return ImageFolderSink(output_path)
