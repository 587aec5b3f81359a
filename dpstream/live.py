"""The live runner: capture, anonymize and write concurrently, with bounded memory and latency.

Four threads: capture (``LiveSource``) -> a queue of ``live_queue`` frames -> track (faces:
the whole-frame detector on every frame, its tiles spread over each ``detect_every`` frames,
meshes following the faces) -> replace (one ``Anonymizer`` for the whole run, so person ids and
the privacy cache survive reconnections) -> a queue of ``live_queue`` frames -> write (the
calling thread: sinks, preview window, status page figures). When anonymizing falls behind, the
oldest frame waiting for it is dropped and counted; a frame is never written unprocessed.
Audio (the source's, or a microphone on a thread of its own) skips anonymization: its chunks,
stamped on the same clock, wait in a queue of their own and are written before each frame.
Ctrl-C / SIGTERM stop capture; what was captured is still written.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpstream.background import signals_routed_to
from dpstream.config import Config
from dpstream.errors import OutputError
from dpstream.live_sink import LiveSink, PreviewWindow, live_output
from dpstream.live_source import LiveClock, LiveInput, LiveSource
from dpstream.privacy import default_ledger_path
from dpstream.status_page import RecentFrames, StatusPage, privacy_figures, redact
from dpstream.types import ReplacedFrame, VideoFrame
from dpstream.virtual_camera import VirtualCameraSink, is_virtual

AUDIO_QUEUE = 200
"""Audio chunks (a few seconds) waiting for the writer; when it falls behind, the oldest is dropped."""
AUDIO_POLL = 0.02
"""Seconds the writer waits for a video frame before it writes the audio that came meanwhile."""


class LatencyHistogram:
    """Capture -> write latencies in 1 ms bins up to 60 s: constant memory over any run length."""

    BINS = 60_000

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS + 1, np.int64)

    def add(self, seconds: float) -> None:
        self.counts[min(self.BINS, max(0, int(seconds * 1000)))] += 1

    def percentile_ms(self, q: float) -> float | None:
        total = int(self.counts.sum())
        if total == 0:
            return None
        rank = int(np.searchsorted(np.cumsum(self.counts), q / 100 * total))
        return float(min(rank, self.BINS) + 1)  # upper edge of the bin


class DropOldestQueue:
    """A bounded FIFO whose ``put`` drops the oldest item when full (and says so)."""

    def __init__(self, size: int):
        self.items: deque = deque()
        self.size = size
        self.closed = False
        self.condition = threading.Condition()

    def put(self, item) -> bool:
        """Append ``item``; True when the oldest item was dropped to make room."""
        with self.condition:
            dropped = len(self.items) >= self.size
            if dropped:
                self.items.popleft()
            self.items.append(item)
            self.condition.notify()
            return dropped

    def put_waiting(self, item, stop: threading.Event) -> bool:
        """Append ``item`` once there is room (False when ``stop`` is set first)."""
        with self.condition:
            while len(self.items) >= self.size:
                if stop.is_set():
                    return False
                self.condition.wait(0.1)
            self.items.append(item)
            self.condition.notify_all()
            return True

    def get(self, timeout: float):
        """The oldest item; None when closed and empty, or after ``timeout`` seconds."""
        with self.condition:
            if not self.items and not self.closed:
                self.condition.wait(timeout)
            if not self.items:
                return None
            item = self.items.popleft()
            self.condition.notify_all()
            return item

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify_all()

    def finished(self) -> bool:
        with self.condition:
            return self.closed and not self.items


@dataclass(slots=True)
class LiveSummary:
    """What a live run did: frames, drops, reconnections and capture -> write latency."""

    source: str
    outputs: list[str]
    method: str
    captured: int = 0
    written: int = 0
    dropped: int = 0  # frames dropped unprocessed because anonymizing fell behind
    lost_to_outputs: int = 0  # anonymized frames an output could not take while it was down
    faces: int = 0
    fallbacks: int = 0
    source_reconnections: int = 0
    output_reconnections: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50, p95, p99
    ledger: str | None = None
    method_figures: dict = field(default_factory=dict)
    audio_chunks: int = 0  # audio chunks captured (the source's audio or the microphone)
    audio_dropped: int = 0  # of them, dropped oldest-first because writing fell behind

    @property
    def drop_rate(self) -> float:
        return self.dropped / self.captured if self.captured else 0.0


class LiveRun:
    """One live run; ``run()`` blocks until the source ends, ``stop`` is set or a limit is hit."""

    def __init__(
        self,
        source: LiveInput,
        outputs: list[str],
        config: Config,
        *,
        preview: bool = False,
        overwrite: bool = False,
        max_seconds: float | None = None,
        report: Callable[[str], None] = lambda message: None,
        status_port: int | None = None,
        status_host: str = "127.0.0.1",
    ):
        if not outputs and not preview:
            raise OutputError("no output: give -o FILE|URL and/or --preview")
        self.status_page = StatusPage(self.status, status_port, status_host) if status_port else None  # bound in run()
        self.recent = RecentFrames()  # frames written in the last 2 s: the page's fps and latency
        self.started: float | None = None
        self.finished = False
        self.privacy: dict = {}  # persons and ε spent, copied from the ledger in the anonymize thread
        self.config = config
        self.report = report
        self.clock = LiveClock()
        self.source = LiveSource(source, config, self.clock, report)
        self.sinks = [
            VirtualCameraSink(target, config, report) if is_virtual(target) else LiveSink(live_output(target, config, overwrite), config, report)
            for target in outputs
        ]
        self.preview = PreviewWindow() if preview else None
        self.max_seconds = max_seconds
        self.stop = threading.Event()
        self.captured = DropOldestQueue(config.live_queue)
        self.anonymized = DropOldestQueue(config.live_queue)
        self.audio = DropOldestQueue(AUDIO_QUEUE) if config.live_audio else None  # AudioChunks for the writer
        self.latency = LatencyHistogram()
        self.failure: BaseException | None = None
        self.summary = LiveSummary(source.url, list(outputs), config.method)
        self.ledger = None  # RunLedger once a frame is anonymized

    def status(self) -> dict:
        """The status page's figures (JSON-able). Safe from any thread: it reads counters and the
        copies the run's threads keep, never the anonymizer."""
        summary, now = self.summary, time.monotonic()
        fps, recent_latency = self.recent.figures(now)
        state = "finished" if self.finished else "starting" if self.started is None else "running"
        captured, dropped = summary.captured, summary.dropped
        if self.started is None:
            uptime = 0.0
        else:
            uptime = summary.seconds if self.finished and summary.seconds else now - self.started
        return {
            "source": redact(summary.source),
            "outputs": [redact(output) for output in summary.outputs],
            "method": summary.method,
            "state": state,
            "running": state == "running",
            "interrupted": summary.interrupted,
            "uptime_s": round(uptime, 1),
            "captured": captured,
            "written": summary.written,
            "dropped": dropped,
            "drop_rate": round(dropped / captured, 4) if captured else 0.0,
            "lost_to_outputs": summary.lost_to_outputs,
            "fps": round(fps, 1),  # frames written over the last 2 s
            "latency_ms": recent_latency,  # capture -> write over the last 2 s
            "latency_run_ms": {f"p{q}": self.latency.percentile_ms(q) for q in (50, 95, 99)},
            "faces": summary.faces,
            "fallbacks": summary.fallbacks,
            "persons": self.privacy.get("persons"),
            "epsilon_spent": self.privacy.get("epsilon_spent"),
            "delta_spent": self.privacy.get("delta_spent"),
            "source_reconnections": self.source.reconnections,
            "output_reconnections": sum(sink.reconnections for sink in self.sinks),
        }

    def run(self, on_frame: Callable[[ReplacedFrame, LiveSummary], None] | None = None) -> LiveSummary:
        def observed(result: ReplacedFrame, summary: LiveSummary) -> None:  # the page's recent fps and latency
            self.recent.add(self.clock.age(result.frame))
            if on_frame is not None:
                on_frame(result, summary)

        page = self.status_page
        if page is not None:  # before the models load: a port in use fails at once
            self.report(f"status page: {page.start()}")
        try:
            from dpstream.pipeline import Anonymizer  # loads MediaPipe

            anonymizer = Anonymizer(self.config)
            capture = threading.Thread(target=self._capture, name="dpstream-capture", daemon=True)
            process = threading.Thread(target=self._process, args=(anonymizer,), name="dpstream-anonymize", daemon=True)
            started = self.started = time.monotonic()
            try:
                with signals_routed_to(self._on_signal):
                    capture.start()
                    process.start()
                    self._write(observed if page is not None else on_frame, started)
            except KeyboardInterrupt:
                self.summary.interrupted = True
            finally:
                self.stop.set()
                process.join()
                capture.join(self.config.io_timeout + 2)  # a blocked network read ends within io_timeout
                for sink in self.sinks:
                    sink.close()
                if self.preview is not None:
                    self.preview.close()
                self._finish(anonymizer, time.monotonic() - started)
                anonymizer.close()
        finally:
            self.finished = True
            if page is not None:
                page.close()
        if self.failure is not None:
            raise self.failure
        return self.summary

    def _capture(self) -> None:
        if self.audio is not None and self._audio_sinks():
            self.source.on_audio = self._audio_captured  # called on the capture (or microphone) thread
        try:
            for frame in self.source.frames(self.stop):
                self.summary.captured += 1
                if self.captured.put(frame):
                    self.summary.dropped += 1
        except BaseException as error:  # reported by run() in the calling thread
            self.failure = error
        finally:
            self.captured.close()

    def _process(self, anonymizer) -> None:
        """Anonymize captured frames: faces are tracked on a thread of their own, one frame
        ahead of the replacement (no look-ahead: key frames, checked frames between)."""
        results = anonymizer.stream(self._captured_frames(), look_ahead=False)
        try:
            for result in results:
                self._update_ledger(anonymizer.replacer)  # a new draw is on disk before the frame that shows it
                if not self.anonymized.put_waiting(result, self.stop):
                    break
        except BaseException as error:
            self.failure = error
            self.stop.set()
        finally:
            results.close()
            self.anonymized.close()

    def _captured_frames(self) -> Iterator[VideoFrame]:
        """Frames from the capture queue until capture ends or the run stops."""
        while True:
            frame: VideoFrame | None = self.captured.get(timeout=0.1)
            if frame is not None:
                yield frame
            elif self.stop.is_set() or self.captured.finished():
                return

    def _update_ledger(self, replacer, finished: bool = False) -> None:
        """Writes the ledger from the first anonymized frame on, again after every new release
        and when the run ends (``finished``)."""
        path = self._ledger_path() if self.ledger is None else self.ledger.path
        try:
            if self.ledger is None:
                from dpstream.pipeline import RunLedger  # loaded with the anonymizer already

                self.ledger = RunLedger(replacer, path, self.summary)
            if finished:
                self.ledger.write(finished=True)
            else:
                self.ledger.update()
        except OSError as error:
            raise OutputError(f"{path}: cannot write the privacy ledger ({error.strerror})") from None
        if self.status_page is not None:
            self.privacy = privacy_figures(self.ledger.contents)  # replaced whole: the HTTP thread reads it as is

    def _audio_sinks(self) -> list:
        """The outputs that take audio (a virtual camera does not)."""
        return [sink for sink in self.sinks if hasattr(sink, "write_audio")]

    def _audio_captured(self, chunk) -> None:
        self.summary.audio_chunks += 1
        if self.audio.put(chunk):
            self.summary.audio_dropped += 1

    def _write_audio(self) -> None:
        """Hand the audio captured so far to the outputs. Before each video frame: audio skips
        the anonymization, so it is ahead of the frame and the outputs mux both in time order."""
        sinks = self._audio_sinks()
        while (chunk := self.audio.get(timeout=0)) is not None:
            for sink in sinks:
                sink.write_audio(chunk)

    def _write(self, on_frame, started: float) -> None:
        summary = self.summary
        audio = self.audio is not None and bool(self._audio_sinks())
        while not self.anonymized.finished():
            if self.max_seconds is not None and time.monotonic() - started >= self.max_seconds:
                self.stop.set()
            # with audio, a short wait: audio keeps flowing while no video frame comes
            result: ReplacedFrame | None = self.anonymized.get(timeout=AUDIO_POLL if audio else 0.1)
            if audio:
                self._write_audio()
            if result is None:
                continue
            for sink in self._audio_sinks() if audio else ():
                sink.with_audio = self.source.audio_expected  # used when the output (re)connects
            for sink in self.sinks:
                if not sink.write(result.frame):
                    summary.lost_to_outputs += 1
            if self.preview is not None:
                self.preview.show(result.frame)
                if self.preview.closed:
                    self.stop.set()
            self.latency.add(self.clock.age(result.frame))
            summary.written += 1
            summary.faces += len(result.faces)
            summary.fallbacks += result.fallbacks
            if on_frame is not None:
                on_frame(result, summary)
        if audio:
            self._write_audio()  # the outputs keep what falls within their last video frame

    def _on_signal(self, signum, frame) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.summary.interrupted = True
        self.stop.set()

    def _finish(self, anonymizer, seconds: float) -> None:
        summary = self.summary
        summary.seconds = seconds
        summary.source_reconnections = self.source.reconnections
        summary.output_reconnections = sum(sink.reconnections for sink in self.sinks)
        summary.latency_ms = {f"p{q}": self.latency.percentile_ms(q) for q in (50, 95, 99)}
        summary.method_figures = anonymizer.replacer.summary()
        if self.ledger is not None:
            self._update_ledger(anonymizer.replacer, finished=True)

    def _ledger_path(self) -> Path:
        if self.config.ledger:
            return Path(self.config.ledger)
        files = [sink.output.target for sink in self.sinks if not sink.output.network]
        if files:
            return default_ledger_path(files[0])
        return Path(f"dpstream-live-{time.strftime('%Y%m%d-%H%M%S')}.ledger.json")


def run_live(
    source: LiveInput,
    outputs: list[str],
    config: Config,
    *,
    preview: bool = False,
    overwrite: bool = False,
    max_seconds: float | None = None,
    report: Callable[[str], None] = lambda message: None,
    on_frame: Callable[[ReplacedFrame, LiveSummary], None] | None = None,
    status_port: int | None = None,
    status_host: str = "127.0.0.1",
) -> LiveSummary:
    """Anonymize a live source into ``outputs`` (files, stream URLs, ``virtual:`` cameras) and/or a
    preview window; ``status_port``: serve a status page on ``http://status_host:status_port/``."""
    run = LiveRun(source, outputs, config, preview=preview, overwrite=overwrite, max_seconds=max_seconds, report=report,
                  status_port=status_port, status_host=status_host)
    return run.run(on_frame)
