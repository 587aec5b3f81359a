"""Per-stage time of a file run, measured one stage after another in one thread (so the stages
do not overlap and each figure is that stage's own cost per frame), except ``recall`` (CenterFace
on key frames), which runs on the key-frame thread ahead of the others as in every file run."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from dpstream.config import Config
from dpstream.pipeline import Anonymizer
from dpstream.sink import VideoSink
from dpstream.source import VideoSource

STAGES = ("decode", "recall", "detect", "mesh", "tracker", "replace", "encode")


def stage_times(video: Path, output: Path, config: Config) -> dict[str, float]:
    """Milliseconds per frame of each stage (detection averaged over all frames)."""
    seconds: dict[str, float] = defaultdict(float)
    anonymizer = Anonymizer(config)
    if anonymizer.finder.recall_detector is not None:
        _time_method(anonymizer.finder.recall_detector, "detect", seconds, "recall")
    _time_method(anonymizer.finder, "detect_mediapipe", seconds, "detect")
    _time_method(anonymizer.finder.mesh, "fit_box", seconds, "mesh")
    _time_method(anonymizer.tracking.tracker, "predict", seconds, "tracker")
    _time_method(anonymizer.tracking.tracker, "update", seconds, "tracker")
    _time_method(anonymizer.replacer, "replace", seconds)
    source = VideoSource(video)
    sink = VideoSink(output, source, codec=config.codec, crf=config.crf, preset=config.preset)
    _time_method(sink, "write", seconds, "encode")
    frames = 0

    def decoded():
        iterator = source.frames()
        while True:
            started = time.perf_counter()
            frame = next(iterator, None)
            seconds["decode"] += time.perf_counter() - started
            if frame is None:
                return
            yield frame

    for result in anonymizer.stream(decoded(), overlap=False):
        sink.write(result.frame)
        frames += 1
    started = time.perf_counter()
    sink.close()
    seconds["encode"] += time.perf_counter() - started
    source.close()
    anonymizer.close()
    return {stage: seconds[stage] * 1000 / frames for stage in STAGES}


def _time_method(owner: object, name: str, seconds: dict[str, float], stage: str | None = None) -> None:
    method = getattr(owner, name)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            seconds[stage or name] += time.perf_counter() - started

    setattr(owner, name, timed)
