"""Assembles the stages: source → face finding and tracking (→ look-ahead) → replacer → sink.

Stills (photos) skip tracking: source → face finding per photo → replacer → sink.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from dpstream.background import BackgroundCalls, Prefetch, signals_routed_to
from dpstream.config import Config, load_config
from dpstream.errors import InputError, OutputError
from dpstream.face_finder import FaceFinder
from dpstream.face_tracking import FaceTracking
from dpstream.lookahead import LookAhead
from dpstream.privacy import default_ledger_path, write_ledger
from dpstream.replace import make_replacer
from dpstream.sink import ImageSink, VideoSink, check_output_folder
from dpstream.source import ImageSource, VideoSource, open_source
from dpstream.still_faces import StillFaces
from dpstream.tracker import Tracker
from dpstream.types import Faces, ReplacedFrame, TrackedFrame, VideoFrame


OUT_OF_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
"""Write errors that mean the output's disk is full or a file-size limit is reached."""
TRACKED_AHEAD = 2
"""Tracked frames waiting for replacement (file runs)."""
MARKED_AHEAD = 8
"""Frames the key-frame stage (CenterFace on key frames) may run ahead of tracking: its cost
comes in bursts, one run in ``recall_every`` frames."""


class Anonymizer:
    """Finds, tracks and replaces the faces of frames.

    ``tracked``/``stream`` delay frames by the look-ahead buffer, so that later frames can fill
    gaps in earlier ones (files). Without look-ahead (``look_ahead=False``: live streams) each
    frame is handled at once: the whole-frame detector runs on every frame and the tiles are
    spread over each ``detect_every`` frames (``KeyFrames.spread_tiles``).
    ``stills`` (unrelated photos): each frame is searched on its own, nothing is tracked.
    ``registry`` (a ``ScopedRegistry``): people are matched and drawn there (batch runs).
    """

    def __init__(self, config: Config, stills: bool = False, registry=None):
        # BLAS worker threads spin between calls on the cores the stages need; dpstream's
        # matrices are small. One BLAS thread for the process from here on.
        threadpool_limits(limits=1, user_api="blas")
        self.config = config
        self.finder = FaceFinder(min_score=config.min_face_score, tile_levels=config.detect_tiles, recall=config.detector_recall)
        # without look-ahead nothing covers a face found late: detect on every frame, tiles spread
        # (``tracked`` turns the spreading off when it looks ahead)
        tracker = Tracker(hold_seconds=config.hold_seconds)
        self.tracking = FaceTracking(self.finder, tracker, config.detect_every, config.recall_every, spread_tiles=True)
        self.stills = StillFaces(self.finder) if stills else None
        self.replacer = make_replacer(config, stills=stills, registry=registry)

    def tracked(self, frames: Iterable[VideoFrame], look_ahead: bool = True) -> Iterator[TrackedFrame]:
        """``frames`` in order with their faces, each once ``lookahead_frames`` later frames have
        been tracked (all remaining ones at the end). Key frames are marked (``KeyFrames``) on
        a thread of their own, ahead of tracking. Without ``look_ahead`` (or ``lookahead_frames``
        0) each frame comes with its faces at once."""
        if self.stills is not None or not look_ahead or self.config.lookahead_frames == 0:
            yield from (TrackedFrame(frame, self._faces_now(frame)) for frame in frames)
            return
        key_frames = self.tracking.key_frames
        key_frames.spread_tiles = False  # the look-ahead covers faces first found on a key frame
        buffer = LookAhead(self.tracking, self.config.lookahead_frames, min_backfill=self.config.detection_gap - 1)
        marked = Prefetch(((frame, key_frames.mark(frame.image)) for frame in frames), size=MARKED_AHEAD, name="dpstream-key-frames")
        try:
            for frame, mark in marked:
                yield from buffer.push(frame, mark)
        finally:
            marked.close()
        yield from buffer.flush()

    def stream(self, frames: Iterable[VideoFrame], overlap: bool = True, look_ahead: bool = True) -> Iterator[ReplacedFrame]:
        """Anonymized ``frames`` in order, with look-ahead gap filling unless ``look_ahead`` is
        False (see ``tracked``).

        With ``overlap``, faces are found and tracked on a background thread, a few frames ahead
        of the replacement (``frames`` is then iterated on that thread).
        """
        if not overlap:
            for item in self.tracked(frames, look_ahead):
                yield self.replacer.replace(item.frame, item.faces)
            return
        tracked = Prefetch(self.tracked(frames, look_ahead), size=TRACKED_AHEAD, name="dpstream-track")
        try:
            for item in tracked:
                yield self.replacer.replace(item.frame, item.faces)
        finally:
            tracked.close()

    def close(self) -> None:
        self.finder.close()
        self.replacer.close()

    def _faces_now(self, frame: VideoFrame) -> Faces:
        """The frame's faces without look-ahead."""
        if self.stills is not None:
            return self.stills.process(frame)
        return self.tracking.process(frame)


@dataclass(slots=True)
class RunSummary:
    """What a run did, for the CLI's closing lines and for callers (``stills``: frames are photos)."""

    input: str
    output: str
    method: str
    stills: bool = False
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
    input: str | Path | list[str | Path],
    output: str | Path,
    *,
    config: str | Path | Config | None = None,
    overwrite: bool = False,
    on_frame: Callable[[ReplacedFrame, RunSummary], None] | None = None,
    **options,
) -> RunSummary:
    """Anonymize a video file into a video ``output``, or stills (a folder of images, an image
    file or a list of them) into an output folder (one image: an image file).

    Stills are photos, not frames: each is searched on its own and every face found is
    replaced; with ``link_people`` one person's faces share one draw across the photos.
    ``options`` are config keys (see configs/default.yaml) that override ``config``.
    ``on_frame(result, summary)`` is called after each frame (e.g. for a progress bar).
    Ctrl-C stops early and still finalizes a playable output (``summary.interrupted``).
    """
    run_config = _resolve_config(config, options)
    output_path = Path(output)
    source = open_source(input)
    stills = isinstance(source, ImageSource)
    input_path = source.path
    try:
        _check_output(input_path, output_path, overwrite)
        if stills and any(output_path.resolve() == file.resolve().parent for file in source.files):
            raise OutputError(f"{output_path}: output would overwrite the input")
    except OutputError:
        source.close()
        raise
    summary = RunSummary(
        str(input_path), str(output_path), run_config.method, stills=stills, expected_frames=source.report.expected_frames
    )
    try:
        run_source(source, output_path, run_config, summary, stills, on_frame)
    except OSError as error:
        written = {str(output_path), run_config.ledger or str(default_ledger_path(output_path))}
        if error.errno not in OUT_OF_SPACE and not any(str(error.filename or "").startswith(path) for path in written):
            raise
        if stills:
            raise OutputError(
                f"{output_path}: cannot be written ({os.strerror(error.errno)}); the {summary.frames} photos before are kept"
            ) from None
        _remove_outputs(output_path, summary)
        raise OutputError(
            f"{output_path}: cannot be written ({os.strerror(error.errno)}) after {summary.frames} frames; "
            "the partial output and its ledger were removed"
        ) from None
    summary.input_errors = list(source.report.errors)
    if not stills and summary.frames == 0 and summary.input_errors and not summary.interrupted:
        _remove_outputs(output_path, summary)
        raise InputError(f"{input_path}: no frame could be decoded ({summary.input_errors[0]})")
    return summary


def run_source(source, output_path: Path, run_config: Config, summary: RunSummary, stills: bool, on_frame, registry=None) -> None:
    """Anonymize ``source`` into ``output_path``, filling ``summary``; the source is closed at the end."""
    try:
        anonymizer = Anonymizer(run_config, stills=stills, registry=registry)
        try:
            sink = _open_sink(source, output_path, run_config)
        except OutputError:
            anonymizer.close()
            raise
        started = time.perf_counter()
        stop = StopRequest()
        ledger = RunLedger(anonymizer.replacer, run_config.ledger or default_ledger_path(output_path), summary)
        reader, writer = Prefetch(source.frames()), BackgroundCalls()
        try:
            for result in stop.handled(anonymizer.stream(stop.guard(iter(reader)))):
                ledger.update()  # a new draw is on disk before the frame that shows it
                writer.submit(sink.write_audio, source.drain_audio())
                writer.submit(sink.write, result.frame)
                summary.frames += 1
                summary.faces += len(result.faces)
                summary.fallbacks += result.fallbacks
                if on_frame is not None:
                    on_frame(result, summary)
            writer.submit(sink.write_audio, source.drain_audio())
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            summary.interrupted = summary.interrupted or stop.requested
            reader.close()
            try:
                try:
                    writer.close()
                finally:
                    sink.close()
                summary.seconds = time.perf_counter() - started
                ledger.write(finished=True)
                summary.method_figures = anonymizer.replacer.summary()
            finally:
                anonymizer.close()
    finally:
        source.close()


class RunLedger:
    """The run's privacy ledger on disk, written atomically when the run starts, again whenever
    the replacer makes a noisy release (before the frame that shows it is written), and at the
    end (``finished``): a run killed at any point leaves a valid ledger that covers every
    release in the output."""

    def __init__(self, replacer, path: Path, summary: RunSummary):
        self.replacer, self.path, self.summary = replacer, path, summary
        self.written_releases = -1
        self.contents: dict | None = None  # the ledger last written (None: the method keeps none)
        self.update()

    def update(self) -> None:
        if self.replacer.releases != self.written_releases:
            self.write(finished=False)

    def write(self, finished: bool) -> None:
        self.written_releases = self.replacer.releases
        ledger = self.replacer.ledger()
        if ledger is not None:
            self.contents = {**ledger, "finished": finished}
            self.summary.ledger = str(write_ledger(self.contents, self.path))


def _remove_outputs(output_path: Path, summary: RunSummary) -> None:
    """Remove what a failed video run wrote: the output file and its ledger."""
    output_path.unlink(missing_ok=True)
    if summary.ledger:
        Path(summary.ledger).unlink(missing_ok=True)


def anonymize_frames(
    frames: Iterable[np.ndarray | VideoFrame],
    *,
    config: str | Path | Config | None = None,
    fps: float = 30.0,
    **options,
) -> Iterator[np.ndarray]:
    """Anonymize frames the caller brings (RGB uint8 arrays or VideoFrames), yielding RGB arrays.

    The caller's arrays are not modified. Frames are treated as one video (tracked across);
    plain arrays are taken to be ``fps`` frames per second apart. Results come
    ``lookahead_frames`` frames behind the input (all of them by its end). ``frames`` is
    iterated on a background thread (face tracking runs there, beside the replacement).
    """
    run_config = _resolve_config(config, options)
    anonymizer = Anonymizer(run_config)
    try:
        for result in anonymizer.stream(_own_copies(frames, Fraction(1 / fps).limit_denominator(1_000_000))):
            yield result.frame.image
    finally:
        anonymizer.close()


def _own_copies(frames: Iterable[np.ndarray | VideoFrame], time_base: Fraction) -> Iterator[VideoFrame]:
    for index, item in enumerate(frames):
        frame = item if isinstance(item, VideoFrame) else VideoFrame(item, index, index, time_base)
        yield VideoFrame(np.array(frame.image, dtype=np.uint8, copy=True), frame.index, frame.pts, frame.time_base, frame.still)


Item = TypeVar("Item")


class StopRequest:
    """Ctrl-C and SIGTERM during a run ask it to stop after the current frame, so the output is
    finalized; a second Ctrl-C interrupts at once. A flag rather than an exception: an exception
    raised while native code calls back into Python can be swallowed there."""

    def __init__(self) -> None:
        self.requested = False

    def guard(self, frames: Iterable[VideoFrame]) -> Iterator[VideoFrame]:
        """Yield ``frames`` until a stop is requested (any thread may iterate this)."""
        for frame in frames:
            yield frame
            if self.requested:
                return

    def handled(self, results: Iterable[Item]) -> Iterator[Item]:
        """Yield ``results`` with this object handling SIGINT/SIGTERM meanwhile (main thread only)."""
        with signals_routed_to(self._handle):
            yield from results

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
    check_output_folder(output_path)


def _open_sink(source, output_path: Path, config: Config) -> VideoSink | ImageSink:
    if isinstance(source, VideoSource):
        if output_path.is_dir():
            raise OutputError(f"{output_path}: is a folder; give a video file name such as out.mp4")
        return VideoSink(output_path, source, codec=config.codec, crf=config.crf, preset=config.preset)
    if source.single:
        if output_path.is_dir():
            raise OutputError(f"{output_path}: is a folder; give an image file name such as out{source.path.suffix}")
        return ImageSink(output_path, folder=False)
    if output_path.exists() and not output_path.is_dir():
        raise OutputError(f"{output_path}: the input is a set of images, so the output must be a folder")
    return ImageSink(output_path, folder=True)
