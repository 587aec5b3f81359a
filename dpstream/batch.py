"""Batch runs on Ray: many videos, long ones split at key frames, one person registry for the run.

    files, folders, globs, lists -> parts (key-frame spans) -> Ray tasks (the file pipeline on a
    span, video only) -> join (packets remuxed in order, audio copied from the input) -> outputs

A Ray actor holds the run's ``PersonRegistry`` (raw embeddings in its memory only), so a person
met in several parts keeps one draw. ``OUTDIR/batch-manifest.json`` records finished files: a
rerun skips them and redoes the rest. Outputs appear only when complete (written under a
temporary name, then renamed); parts live in ``OUTDIR/.dpstream-parts`` until their file is
joined. On a cluster, every node needs dpstream installed and the inputs and OUTDIR at the same
paths (a shared file system).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import av

from dpstream.config import Config, load_config
from dpstream.errors import DpstreamError, InputError, OutputError
from dpstream.privacy.ledger import batch_ledger, default_ledger_path, merge_part_ledgers, write_ledger
from dpstream.privacy.registry import PersonRegistry, ScopedRegistry
from dpstream.source import FrameSpan, VideoSource, is_url, key_frame_times, open_video_container

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".wmv")
MANIFEST_NAME = "batch-manifest.json"
RUN_LEDGER_NAME = "batch.ledger.json"
PARTS_DIR = ".dpstream-parts"
MANIFEST_VERSION = 1
DEFAULT_CHUNK_SECONDS = 300.0
"""Videos are split about every 5 minutes: each seam is a place where a person on screen must be
re-associated by embedding (a failure is a second draw), so a seam is not cheap for privacy."""
PART_RETRIES = 3
"""Ray reruns a part whose worker process died (killed, out of memory) up to this many times."""


@dataclass(frozen=True)
class BatchFile:
    """One input of the run (a file, or a URL) and its output name (relative to OUTDIR)."""

    input: Path | str
    output: str


@dataclass(frozen=True)
class PartJob:
    """One Ray task: a span of a file anonymized into a video-only part file."""

    input: Path | str
    span: FrameSpan
    output: Path
    scope: str
    key: str


@dataclass(frozen=True)
class PartResult:
    key: str
    first_pts: int | None  # the source pts of the part's first frame
    frames: int
    faces: int
    fallbacks: int
    input_errors: list[str]
    ledger: dict | None
    model_failure: str | None


@dataclass
class BatchSummary:
    """What a batch run did (``skipped``: finished by an earlier run of the same OUTDIR)."""

    outdir: str
    files: int = 0
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # input -> error
    frames: int = 0
    parts: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    ledger: str | None = None
    workers: int = 0


def expand_inputs(inputs: list[str | Path]) -> list[Path | str]:
    """Files, folders (their video files, recursively), globs, URLs, and ``.txt`` lists of paths or
    URLs (one a line, ``#`` comments), in order, without repeats."""
    found: list[Path | str] = []
    for item in map(str, inputs):
        path = Path(item)
        if is_url(item):
            found.append(item)
        elif path.suffix.lower() == ".txt" and path.is_file():
            lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
            found += expand_inputs([line for line in lines if line and not line.startswith("#")])
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.exists():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise InputError(f"{item}: no file matches")
            found += matches
        else:
            raise InputError(f"{item}: no such file")
    unique = list(dict.fromkeys(p if is_url(p) else p.resolve() for p in found))
    if not unique:
        raise InputError(f"{', '.join(map(str, inputs))}: no video files found")
    return unique


def output_names(inputs: list[Path | str]) -> list[BatchFile]:
    """Each input's output name: its file name, made unique with its parent folders' names (a
    URL: the last part of its path, made unique with the parts before and its host)."""
    files, taken = [], set()
    for path in inputs:
        if is_url(path):
            url = urlsplit(path)
            parts = (url.netloc, *PurePosixPath(url.path).parts[1:]) if url.path.strip("/") else (url.netloc, "video.mp4")
        else:
            parts = path.parts
        name = parts[-1]
        depth = 1
        while name in taken and depth < len(parts):
            depth += 1
            name = "_".join(parts[-depth:])
        taken.add(name)
        files.append(BatchFile(path, name))
    return files


def plan_spans(path: Path | str, chunk_seconds: float | None) -> list[FrameSpan]:
    """Key-frame spans of about ``chunk_seconds`` each (one span for the whole file when it has
    no key frame that far in, or without ``chunk_seconds``; a URL is read whole: not every
    server lets a reader seek)."""
    if not chunk_seconds or is_url(path):
        return [FrameSpan()]
    keys, _, time_base = key_frame_times(path)
    starts: list[tuple[int, int]] = []
    chunk_start = keys[0][0] if keys else 0
    for pts, index in keys[1:]:
        if float((pts - chunk_start) * time_base) >= chunk_seconds:
            starts.append((pts, index))
            chunk_start = pts
    bounds = [(None, 0), *starts, (None, None)]
    return [FrameSpan(start, end[0], first) for (start, first), end in zip(bounds[:-1], bounds[1:])]


def run_part(job: PartJob, config: Config, coordinator) -> PartResult:
    """Anonymize one span into a video-only part (the Ray task's body; ``coordinator``: the run's actor)."""
    import ray

    from dpstream.pipeline import RunSummary, run_source

    source = VideoSource(job.input, job.span)
    summary = RunSummary(str(job.input), str(job.output), config.method)
    registry = None
    if config.method == "dp":
        registry = ScopedRegistry(job.scope, call=lambda method, *args: ray.get(coordinator.call.remote(method, *args)))
    ledger_path = job.output.with_name(job.output.name + ".ledger.json")
    part_config = config.with_overrides(ledger=str(ledger_path))

    first_pts: list[int | None] = []

    def report(result, summary) -> None:
        if not first_pts:
            first_pts.append(result.frame.pts)
        if summary.frames % 25 == 0:
            coordinator.report.remote(job.key, summary.frames)

    run_source(source, job.output, part_config, summary, False, report, registry=registry)
    coordinator.report.remote(job.key, summary.frames)
    ledger = json.loads(ledger_path.read_text(encoding="utf-8")) if summary.ledger else None
    return PartResult(
        job.key, first_pts[0] if first_pts else None, summary.frames, summary.faces, summary.fallbacks, list(source.report.errors), ledger,
        summary.method_figures.get("model_failure"),
    )


class Coordinator:
    """The run's Ray actor: the person registry (dp) and the frames done per part (progress)."""

    def __init__(self, config: Config, first_person_id: int):
        self.registry = PersonRegistry.for_config(config, first_person_id) if config.method == "dp" else None
        self.frames: dict[str, int] = {}

    def call(self, method: str, *args):
        return getattr(self.registry, method)(*args)

    def report(self, key: str, frames: int) -> None:
        self.frames[key] = frames

    def progress(self) -> int:
        return sum(self.frames.values())

    def state(self) -> tuple[int, dict | None]:
        """(next person id, the mechanism's parameters) for the manifest and ledgers."""
        if self.registry is None:
            return 0, None
        return self.registry.next_person_id, self.registry.mechanism

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()


def join_parts(input_path: Path | str, parts: list[tuple[Path, int | None]], output: Path) -> int:
    """Write ``output`` from the parts' video packets, in order, and the input's audio packets
    (copied, interleaved by time), with the sink a single run uses; returns the frames written.

    ``parts``: (file, source pts of its first frame). A part's timestamps are set back to the
    source's (MP4 stores a start that is not 0 in an edit list, rounded to milliseconds)."""
    from dpstream.sink import VideoSink

    source = VideoSource(input_path)  # its container gives the audio; its video is not read
    frames = 0
    try:
        with av.open(str(parts[0][0])) as first:
            sink = VideoSink(output, source, video_template=first.streams.video[0])
        audio = iter(source.container.demux(source.audio_streams)) if source.audio_streams else iter(())
        pending = next(audio, None)
        try:
            for part, first_pts in parts:
                with av.open(str(part)) as container:
                    stream = container.streams.video[0]
                    packets = [packet for packet in container.demux(stream) if packet.dts is not None]
                    if not packets:
                        continue
                    lowest = min(packet.pts for packet in packets)
                    shift = 0 if first_pts is None else round(first_pts * source.info.time_base / stream.time_base) - lowest
                    for packet in packets:
                        packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                        when = float(packet.dts * packet.time_base)
                        while pending is not None and (pending.dts is None or float(pending.dts * pending.time_base) <= when):
                            if pending.dts is not None:
                                sink.write_audio([pending])
                            pending = next(audio, None)
                        sink.write_packet(packet)
                        frames += 1
            while pending is not None:
                if pending.dts is not None:
                    sink.write_audio([pending])
                pending = next(audio, None)
        finally:
            sink.close()
    finally:
        source.close()
    return frames


class Manifest:
    """``OUTDIR/batch-manifest.json``: the run's config digest and its finished files."""

    def __init__(self, outdir: Path, digest: str, scope: str):
        self.path = outdir / MANIFEST_NAME
        self.data = {"manifest_version": MANIFEST_VERSION, "config_digest": digest, "registry": scope, "next_person_id": 0, "files": {}}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise OutputError(f"{self.path}: not a readable batch manifest ({error}); remove it to start over") from None
            if data.get("config_digest") != digest or data.get("registry") != scope:
                raise OutputError(
                    f"{outdir}: holds a batch run with other settings; use another output folder or remove {MANIFEST_NAME}"
                )
            self.data = data

    def finished(self, file: BatchFile, outdir: Path) -> bool:
        entry = self.data["files"].get(str(file.input))
        return bool(entry and entry["status"] == "done" and (outdir / entry["output"]).exists())

    def record(self, file: BatchFile, **entry) -> None:
        self.data["files"][str(file.input)] = {"output": file.output, **entry}
        self.save()

    def save(self) -> None:
        write_ledger(self.data, self.path)  # the same atomic JSON write


def config_digest(config: Config) -> str:
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "ledger"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def batch(
    inputs: list[str | Path] | str | Path,
    outdir: str | Path,
    *,
    config: str | Path | Config | None = None,
    address: str | None = None,
    workers: int | None = None,
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
    registry: str = "run",
    overwrite: bool = False,
    on_progress: Callable[[int, int | None, BatchSummary], None] | None = None,
    **options,
) -> BatchSummary:
    """Anonymize many videos into ``outdir`` on Ray (see the module docstring).

    ``address``: None starts a local Ray (``workers`` processes, default one per core); "auto"
    or "HOST:PORT" joins a running cluster (``workers``: parts in flight, default its CPUs).
    ``chunk_seconds``: split videos at key frames about this often (None: whole files).
    ``registry``: "run" (a person keeps one draw across files) or "file" (within each file).
    ``overwrite``: replace files in ``outdir`` that are not finished outputs of this run.
    ``on_progress(frames_done, frames_expected, summary)`` is called about twice a second.
    """
    if registry not in ("run", "file"):
        raise DpstreamError(f"--registry: must be run or file, got {registry!r}")
    if chunk_seconds is not None and not chunk_seconds > 0:
        raise DpstreamError(f"--chunk-seconds: must be a number > 0, got {chunk_seconds!r}")
    if workers is not None and workers < 1:
        raise DpstreamError(f"--workers: must be an integer >= 1, got {workers!r}")
    run_config = config.with_overrides(**options) if isinstance(config, Config) else load_config(config, **options)
    if run_config.method == "dp-pix":
        raise DpstreamError("--method dp-pix: not available in batch runs (its per-frame ledger is not merged across parts); use dpstream anonymize")
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: is not a folder")
    files = output_names(expand_inputs([inputs] if isinstance(inputs, (str, Path)) else list(inputs)))
    for file in files:
        if not is_url(file.input) and file.input.is_relative_to(outdir.resolve()):
            raise OutputError(f"{file.input}: is inside the output folder {outdir}; give the inputs apart from it")
    try:
        import ray
    except ImportError:
        raise DpstreamError("dpstream batch needs Ray: pip install 'dpstream[batch]'") from None
    outdir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(outdir, config_digest(run_config), registry)
    summary = BatchSummary(str(outdir), files=len(files))
    todo = [f for f in files if not manifest.finished(f, outdir)]
    summary.skipped = len(files) - len(todo)
    clash = next((outdir / f.output for f in todo if (outdir / f.output).exists()), None)
    if clash is not None and not overwrite:
        raise OutputError(f"{clash}: already exists and is not a finished output of this run (use --overwrite to replace it)")
    parts_dir = outdir / PARTS_DIR
    shutil.rmtree(parts_dir, ignore_errors=True)  # parts of an interrupted run are redone
    parts_dir.mkdir()
    started = time.perf_counter()
    local = {"num_cpus": workers, "_node_ip_address": "127.0.0.1"} if address is None else {}  # a local Ray stays on loopback
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             ignore_reinit_error=True, **local)
    try:
        summary.workers = workers or int(ray.cluster_resources().get("CPU", 1))
        _run_batch(ray, todo, outdir, parts_dir, run_config, manifest, registry, chunk_seconds, summary, on_progress)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        ray.shutdown()
        summary.seconds = time.perf_counter() - started
    if summary.done or summary.skipped:
        summary.ledger = _write_run_ledger(outdir, manifest, registry)
    shutil.rmtree(parts_dir, ignore_errors=True)  # an unfinished file's parts are redone by the next run
    return summary


def _run_batch(ray, todo, outdir, parts_dir, config, manifest, scope, chunk_seconds, summary, on_progress) -> None:
    coordinator = ray.remote(num_cpus=0)(Coordinator).remote(config, manifest.data["next_person_id"])
    task = ray.remote(num_cpus=1, max_retries=PART_RETRIES)(run_part)
    jobs: list[PartJob] = []
    parts_of: dict[Path | str, list[PartJob]] = {}
    expected = 0
    for index, file in enumerate(todo):
        try:
            spans = plan_spans(file.input, chunk_seconds)
            probe = open_video_container(file.input)
            frames = probe.streams.video[0].frames
            probe.close()
        except DpstreamError as error:
            summary.failed[str(file.input)] = str(error)
            manifest.record(file, status="failed", error=str(error))
            continue
        expected += frames or 0
        file_scope = "run" if scope == "run" else str(file.input)
        parts_of[file.input] = [
            PartJob(file.input, span, parts_dir / f"{index:05d}-{n:04d}.mp4", file_scope, f"{index}-{n}") for n, span in enumerate(spans)
        ]
        jobs += parts_of[file.input]
    by_input = {file.input: file for file in todo}
    results: dict[str, PartResult] = {}
    in_flight: dict = {}
    failed_files: set[Path | str] = set()
    next_report = 0.0
    try:
        while jobs or in_flight:
            while jobs and len(in_flight) < summary.workers:
                job = jobs.pop(0)
                if job.input not in failed_files:
                    in_flight[task.remote(job, config, coordinator)] = job
            if not in_flight:
                continue
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            for ref in done:
                job = in_flight.pop(ref)
                try:
                    results[job.key] = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    cause = error.cause if isinstance(error.cause, DpstreamError) else error
                    _fail(manifest, by_input[job.input], str(cause).splitlines()[0], summary, failed_files)
                    continue
                except ray.exceptions.RayError as error:
                    _fail(manifest, by_input[job.input], f"{type(error).__name__}: worker lost after {PART_RETRIES} retries", summary, failed_files)
                    continue
                parts = parts_of[job.input]
                if job.input not in failed_files and all(p.key in results for p in parts):
                    _finish_file(by_input[job.input], parts, [results[p.key] for p in parts], outdir, config, manifest, coordinator, ray, summary)
            if on_progress is not None and time.monotonic() >= next_report:
                next_report = time.monotonic() + 0.5
                on_progress(ray.get(coordinator.progress.remote()), expected or None, summary)
        if on_progress is not None:
            on_progress(ray.get(coordinator.progress.remote()), expected or None, summary)
    finally:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        try:
            ray.get(coordinator.close.remote(), timeout=10)
        except ray.exceptions.RayError:
            pass  # the actor is gone with its memory


def _fail(manifest: Manifest, file: BatchFile, message: str, summary: BatchSummary, failed_files: set[Path | str]) -> None:
    failed_files.add(file.input)
    summary.failed[str(file.input)] = message
    manifest.record(file, status="failed", error=message)


def _finish_file(file, parts, results, outdir, config, manifest, coordinator, ray, summary) -> None:
    """Join a file's parts into its output (ledger first), then mark it done in the manifest."""
    next_person_id, mechanism = ray.get(coordinator.state.remote())
    output = outdir / file.output
    ledgers = [r.ledger for r in results if r.ledger is not None]
    ledger_name = None
    if ledgers and mechanism is not None:
        ledger = {**merge_part_ledgers(ledgers, mechanism), "finished": True}
        ledger_name = default_ledger_path(output).name
        write_ledger(ledger, outdir / ledger_name)
    partial = parts[0].output.parent / f"{output.stem}.joining{output.suffix}"  # the parts folder: removed by every run
    frames = join_parts(file.input, [(p.output, r.first_pts) for p, r in zip(parts, results)], partial)
    os.replace(partial, output)
    for part in parts:
        part.output.unlink(missing_ok=True)
        part.output.with_name(part.output.name + ".ledger.json").unlink(missing_ok=True)
    errors = [e for r in results for e in r.input_errors]
    manifest.data["next_person_id"] = next_person_id
    if mechanism is not None:
        manifest.data["mechanism"] = mechanism
    manifest.record(file, status="done", frames=frames, parts=len(parts), faces=sum(r.faces for r in results),
                    fallbacks=sum(r.fallbacks for r in results), ledger=ledger_name, input_errors=errors,
                    model_failure=next((r.model_failure for r in results if r.model_failure), None))
    summary.done += 1
    summary.frames += frames
    summary.parts += len(parts)


def _write_run_ledger(outdir: Path, manifest: Manifest, scope: str) -> str | None:
    """The merged ledger of every finished file of OUTDIR (this and earlier runs)."""
    ledgers = {}
    for entry in manifest.data["files"].values():
        if entry["status"] == "done" and entry.get("ledger"):
            ledgers[entry["output"]] = json.loads((outdir / entry["ledger"]).read_text(encoding="utf-8"))
    if not ledgers:
        return None
    return str(write_ledger(batch_ledger(ledgers, manifest.data["mechanism"], scope), outdir / RUN_LEDGER_NAME))
