"""The live runner: capture, anonymize and write concurrently, with bounded memory and latency.

Three threads: capture (``LiveSource``) -> a queue of ``live_queue`` frames -> anonymize (one
``Anonymizer`` for the whole run, so person ids and the privacy cache survive reconnections)
-> a queue of ``live_queue`` frames -> write (the calling thread: sinks and preview window).
When anonymizing falls behind, the oldest frame waiting for it is dropped and counted; a frame
is never written unprocessed. Ctrl-C / SIGTERM stop capture; what was captured is still written.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpstream.background import signals_routed_to
from dpstream.config import Config
from dpstream.errors import OutputError
from dpstream.live_sink import LiveSink, PreviewWindow, live_output
from dpstream.live_source import LiveClock, LiveInput, LiveSource
from dpstream.privacy import default_ledger_path
from dpstream.types import ReplacedFrame, VideoFrame


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
    ):
        if not outputs and not preview:
            raise OutputError("no output: give -o FILE|URL and/or --preview")
        self.config = config
        self.report = report
        self.clock = LiveClock()
        self.source = LiveSource(source, config, self.clock, report)
        self.sinks = [LiveSink(live_output(target, config, overwrite), config, report) for target in outputs]
        self.preview = PreviewWindow() if preview else None
        self.max_seconds = max_seconds
        self.stop = threading.Event()
        self.captured = DropOldestQueue(config.live_queue)
        self.anonymized = DropOldestQueue(config.live_queue)
        self.latency = LatencyHistogram()
        self.failure: BaseException | None = None
        self.summary = LiveSummary(source.url, list(outputs), config.method)
        self.ledger = None  # RunLedger once a frame is anonymized

    def run(self, on_frame: Callable[[ReplacedFrame, LiveSummary], None] | None = None) -> LiveSummary:
        from dpstream.pipeline import Anonymizer  # loads MediaPipe

        anonymizer = Anonymizer(self.config)
        capture = threading.Thread(target=self._capture, name="dpstream-capture", daemon=True)
        process = threading.Thread(target=self._process, args=(anonymizer,), name="dpstream-anonymize", daemon=True)
        started = time.monotonic()
        try:
            with signals_routed_to(self._on_signal):
                capture.start()
                process.start()
                self._write(on_frame, started)
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
        if self.failure is not None:
            raise self.failure
        return self.summary

    def _capture(self) -> None:
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
        try:
            while True:
                frame: VideoFrame | None = self.captured.get(timeout=0.1)
                if frame is None:
                    if self.stop.is_set() or self.captured.finished():
                        break
                    continue
                result = anonymizer.process(frame)
                self._update_ledger(anonymizer.replacer)  # a new draw is on disk before the frame that shows it
                if not self.anonymized.put_waiting(result, self.stop):
                    break
        except BaseException as error:
            self.failure = error
            self.stop.set()
        finally:
            self.anonymized.close()

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

    def _write(self, on_frame, started: float) -> None:
        summary = self.summary
        while not self.anonymized.finished():
            if self.max_seconds is not None and time.monotonic() - started >= self.max_seconds:
                self.stop.set()
            result: ReplacedFrame | None = self.anonymized.get(timeout=0.1)
            if result is None:
                continue
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
) -> LiveSummary:
    """Anonymize a live source into ``outputs`` (files or stream URLs) and/or a preview window."""
    run = LiveRun(source, outputs, config, preview=preview, overwrite=overwrite, max_seconds=max_seconds, report=report)
    return run.run(on_frame)
