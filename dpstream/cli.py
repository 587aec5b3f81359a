"""The ``dpstream`` command line: ``dpstream anonymize INPUT -o OUTPUT``, ``dpstream batch``, ``dpstream webcam``, ``dpstream relay``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from dpstream.batch import DEFAULT_CHUNK_SECONDS
from dpstream.config import METHODS, REGIONS, load_config
from dpstream.errors import DpstreamError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT_DAMAGED = 3
EXIT_MODEL_FAILED = 4
EXIT_INTERRUPTED = 130
LIVE_PRESET = "ultrafast"
"""x264 preset of the live commands when no --config is given (as in configs/webcam.yaml, relay.yaml)."""

LIVE_RECALL = "normal"
"""detector_recall of the live commands when no --config is given (as in the live profiles):
CenterFace is too slow for real time on a CPU."""

LIVE_TILES = (2,)
"""detect_tiles of the live commands when no --config is given (as in the live profiles): the
second level alone finds the faces both levels find on the labelled photos, for a third less
detector time at 720p (``benchmarks/results/latency.md``)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpstream",
        description="Anonymize faces in video with a differential-privacy guarantee.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("anonymize", help="anonymize a video file, or photos (image files or a folder of them)")
    run.add_argument(
        "input", metavar="INPUT", nargs="+",
        help="video file (any format FFmpeg reads), or photos: a folder of images, an image file or several",
    )
    run.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT",
        help="output video file; for photos an output folder (one photo: an image file)",
    )
    run.add_argument(
        "--link-people", dest="link_people", action="store_true", default=None,
        help="photos: link one person's faces across the photos (one draw per person); default: each face its own",
    )
    run.add_argument("--config", metavar="FILE", help="YAML config (keys as in configs/default.yaml)")
    _add_method_options(run)
    run.add_argument("--ledger", metavar="FILE", help="where to write the privacy ledger (default: OUTPUT.ledger.json)")
    run.add_argument("--codec", help="video encoder, e.g. libx264, libx265, libvpx-vp9 (default: libx264)")
    run.add_argument("--crf", metavar="N", help="x264/x265 quality, 0-51, lower is better (default: 20)")
    run.add_argument("--preset", help="x264/x265 speed preset (default: veryfast)")
    run.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    many = commands.add_parser("batch", help="anonymize many videos on Ray (local, or a cluster), long ones split at key frames")
    many.add_argument(
        "inputs", metavar="INPUT", nargs="+",
        help="video files, folders (searched recursively), globs, or .txt files listing paths (one a line)",
    )  # fmt: skip
    many.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (a rerun into it resumes)")
    many.add_argument("--address", metavar="auto|HOST:PORT", help="a running Ray cluster (default: start a local one)")
    many.add_argument("--workers", type=int, metavar="N", help="parts processed at once (default: one per CPU)")
    many.add_argument(
        "--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS, metavar="S",
        help=f"split videos at key frames about every S seconds, processed in parallel (0: whole files; default {DEFAULT_CHUNK_SECONDS:g})",
    )  # fmt: skip
    many.add_argument(
        "--registry", choices=("run", "file"), default="run",
        help="one draw per person across the whole run (default) or within each file",
    )  # fmt: skip
    many.add_argument("--config", metavar="FILE", help="YAML config (keys as in configs/default.yaml)")
    _add_method_options(many)
    many.add_argument("--codec", help="video encoder (default: libx264)")
    many.add_argument("--crf", metavar="N", help="x264/x265 quality, 0-51 (default: 20)")
    many.add_argument("--preset", help="x264/x265 speed preset (default: veryfast)")
    many.add_argument("--overwrite", action="store_true", help="replace files in OUTDIR that are not finished outputs of this run")
    many.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    webcam = commands.add_parser("webcam", help="anonymize a webcam live, into a preview window, a file or a stream URL")
    webcam.add_argument("device", metavar="DEVICE", nargs="?", help="camera index or name, /dev/videoN (default: the first camera)")
    webcam.add_argument("--size", dest="capture_size", metavar="WxH", help="capture size, e.g. 1280x720")
    webcam.add_argument("--fps", dest="capture_fps", metavar="N", help="capture frames/s")
    webcam.add_argument("--pixel-format", dest="capture_pixel_format", metavar="FMT", help="camera pixel format, e.g. mjpeg, yuyv422")
    webcam.add_argument("--preview", action="store_true", help="show the anonymized video in a window (q to stop)")
    webcam.add_argument(
        "--audio", dest="capture_audio", metavar="DEVICE",
        help="also record this microphone: ALSA default or hw:0 on Linux (pulse:NAME for PulseAudio), :N on macOS, "
        "audio=NAME on Windows, or FORMAT:NAME of another FFmpeg input (e.g. lavfi:sine)",
    )  # fmt: skip
    webcam.add_argument(
        "-o", "--output", action="append", default=[], metavar="FILE|URL",
        help="file, stream URL, or virtual: (a virtual camera, virtual:/dev/videoN) (repeatable)",
    )  # fmt: skip
    relay = commands.add_parser("relay", help="anonymize a live stream (RTSP, RTMP, SRT, UDP, ...) into another")
    relay.add_argument("source", metavar="SOURCE", help="stream URL, lavfi:GRAPH, /dev/videoN, or a file (paced in real time)")
    relay.add_argument("outputs", metavar="SINK_URL", nargs="+", help="rtsp://, rtmp://, udp://, srt://, tcp:// URL, a file, or virtual: (a virtual camera)")
    relay.add_argument("--listen", action="store_true", default=None, help="SOURCE is a local address a publisher connects to")
    relay.add_argument("--transport", choices=("tcp", "udp"), help="RTSP transport (default: tcp)")
    relay.add_argument("--preview", action="store_true", help="also show the anonymized video in a window")
    relay.add_argument("--no-audio", dest="live_audio", action="store_false", default=None, help="video only: do not relay the source's audio")
    for live in (webcam, relay):
        live.add_argument("--config", metavar="FILE", help="YAML config, e.g. configs/webcam.yaml, configs/relay.yaml")
        _add_method_options(live)
        live.add_argument("--ledger", metavar="FILE", help="privacy ledger path (default: beside the file output, else ./dpstream-live-TIME.ledger.json)")
        live.add_argument("--codec", help="video encoder (default: libx264)")
        live.add_argument("--crf", metavar="N", help="x264/x265 quality, 0-51 (default: 20)")
        live.add_argument("--preset", help=f"x264/x265 speed preset (default without --config: {LIVE_PRESET})")
        live.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
        live.add_argument("--overwrite", action="store_true", help="replace an output file if it exists")
        live.add_argument("-q", "--quiet", action="store_true", help="no status line")
        live.add_argument("--status-port", type=int, default=0, metavar="PORT",
                          help="serve a live status page on http://127.0.0.1:PORT/ (default 0: none)")
        live.add_argument("--status-host", default="127.0.0.1", metavar="HOST",
                          help="address of the status page (default 127.0.0.1; 0.0.0.0 for other machines)")
    return parser


def _add_method_options(command: argparse.ArgumentParser) -> None:
    """The options every command shares: method, privacy budget and face model."""
    command.add_argument("--method", choices=METHODS, help="replacement method (default: dp)")
    command.add_argument(
        "--region", choices=REGIONS, help="dp: redraw the face (default) or the head (hair and outline too)"
    )
    command.add_argument("--epsilon", metavar="E", help="privacy budget ε per person (dp) or per frame (dp-pix)")
    command.add_argument("--delta", metavar="D", help="δ of the Gaussian mechanism")
    command.add_argument(
        "--detector-recall", dest="detector_recall", choices=("normal", "high"),
        help="high (default) adds CenterFace to MediaPipe: finds small, dim and crowd faces, slower",
    )  # fmt: skip
    command.add_argument(
        "--model",
        metavar="MANIFEST",
        help="face model manifest, or a built-in model: default, plain (no refiner: softer faces), "
        "fitted (the face fitted to the head around it: more natural, more look-alikes; see PRIVACY.md)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        if args.command == "batch":
            return _batch(args)
        return _live(args) if args.command in ("webcam", "relay") else _anonymize(args)
    except DpstreamError as error:
        print(f"dpstream: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dpstream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # a bug, not the user's fault: one line, traceback on request
        if os.environ.get("DPSTREAM_DEBUG"):
            raise
        print(
            f"dpstream: internal error: {type(error).__name__}: {error} "
            "(set DPSTREAM_DEBUG=1 for a traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _anonymize(args: argparse.Namespace) -> int:
    overrides = {
        key: getattr(args, key)
        for key in ("method", "region", "epsilon", "delta", "detector_recall", "model", "ledger", "codec", "crf", "preset", "link_people")
        if getattr(args, key) is not None
    }
    config = load_config(args.config, **overrides)
    from dpstream.pipeline import anonymize  # loads MediaPipe: after the config is known to be good
    inputs = args.input[0] if len(args.input) == 1 else args.input
    progress = ProgressBar(Path(args.input[0]).name, enabled=not args.quiet)
    try:
        summary = anonymize(inputs, args.output, config=config, overwrite=args.overwrite, on_frame=progress.update)
    finally:
        progress.close()
    _print_summary(summary)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.method_figures.get("fallbacks_model_failed"):
        return EXIT_MODEL_FAILED
    return EXIT_INPUT_DAMAGED if summary.input_errors else EXIT_OK


def _batch(args: argparse.Namespace) -> int:
    overrides = {
        key: getattr(args, key)
        for key in ("method", "region", "epsilon", "delta", "detector_recall", "model", "codec", "crf", "preset")
        if getattr(args, key) is not None
    }
    config = load_config(args.config, **overrides)
    from dpstream.batch import batch

    progress = BatchProgress(enabled=not args.quiet)
    try:
        summary = batch(args.inputs, args.output, config=config, address=args.address, workers=args.workers,
                        chunk_seconds=args.chunk_seconds or None, registry=args.registry, overwrite=args.overwrite,
                        on_progress=progress.update)
    finally:
        progress.close()
    lines = []
    if summary.interrupted:
        lines.append(f"interrupted: {summary.done + summary.skipped} of {summary.files} files finished; "
                     "the same command again continues")
    lines.append(
        f"{_count(summary.done, 'file')} anonymized ({_count(summary.frames, 'frame')}, {_count(summary.parts, 'part')}, "
        f"{_count(summary.workers, 'worker')}, {summary.seconds:.1f} s), {summary.skipped} already done, "
        f"{len(summary.failed)} failed -> {summary.outdir}"
    )
    lines += [f"warning: {name}: {error}" for name, error in summary.failed.items()]
    if summary.ledger:
        lines.append(f"privacy ledger of the run: {summary.ledger}")
    for line in lines:
        print(f"dpstream: {line}", file=sys.stderr)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_INPUT_DAMAGED if summary.failed else EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _live(args: argparse.Namespace) -> int:
    keys = ("method", "region", "epsilon", "delta", "detector_recall", "model", "ledger", "codec", "crf", "preset",
            "capture_size", "capture_fps", "capture_pixel_format", "capture_audio", "live_audio", "listen", "transport")
    overrides = {key: getattr(args, key, None) for key in keys if getattr(args, key, None) is not None}
    if args.config is None:
        overrides.setdefault("preset", LIVE_PRESET)
        overrides.setdefault("detector_recall", LIVE_RECALL)
        overrides.setdefault("detect_tiles", LIVE_TILES)
    config = load_config(args.config, **overrides)
    from dpstream.live import run_live  # loads MediaPipe: after the config is known to be good
    from dpstream.live_source import live_input, webcam_input

    if args.command == "webcam":
        source = (
            live_input(args.device, config)
            if args.device and args.device.startswith("lavfi:")
            else webcam_input(args.device, size=config.capture_size, fps=config.capture_fps, pixel_format=config.capture_pixel_format,
                              audio=config.capture_audio)
        )
        outputs = args.output
    else:
        source, outputs = live_input(args.source, config), args.outputs
    status = LiveStatus(enabled=not args.quiet)
    try:
        summary = run_live(source, outputs, config, preview=args.preview, overwrite=args.overwrite,
                           max_seconds=args.duration, report=status.message, on_frame=status.update,
                           status_port=args.status_port, status_host=args.status_host)
    finally:
        status.close()
    latency = ", ".join(f"{k} {v:.0f} ms" for k, v in summary.latency_ms.items() if v is not None) or "no frames"
    lines = [
        f"{summary.written} frames written, {summary.dropped} dropped unprocessed ({summary.drop_rate:.1%}), "
        f"{summary.faces} faces, {summary.fallbacks} fallbacks, {summary.seconds:.1f} s, method {summary.method}",
        f"latency capture -> write: {latency}; reconnections: source {summary.source_reconnections}, "
        f"outputs {summary.output_reconnections}" + (f", {summary.lost_to_outputs} frames lost while an output was down" if summary.lost_to_outputs else ""),
    ]
    if summary.audio_dropped:
        lines.append(f"audio: {summary.audio_dropped} of {summary.audio_chunks} chunks dropped (writing fell behind)")
    if summary.ledger:
        lines.append(f"privacy ledger: {summary.ledger}")
    for line in lines:
        print(f"dpstream: {line}", file=sys.stderr)
    return EXIT_INTERRUPTED if summary.interrupted else EXIT_OK


class LiveStatus:
    """One status line on stderr (frames written, dropped), updated twice a second; messages
    (reconnections) on their own lines, shown even with --quiet."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.next_update = 0.0
        self.shown = False

    def update(self, result, summary) -> None:
        now = time.monotonic()
        if not self.enabled or now < self.next_update:
            return
        self.next_update = now + 0.5
        print(f"\rdpstream: {summary.written} frames written, {summary.dropped} dropped ",
              end="", file=sys.stderr, flush=True)
        self.shown = True

    def message(self, text: str) -> None:
        self.close()
        print(f"dpstream: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)
            self.shown = False


class ProgressBar:
    """A frames/s progress bar on stderr, opened on the first frame (so errors print cleanly)."""

    def __init__(self, label: str, enabled: bool):
        self.label = label
        self.enabled = enabled
        self.bar = None

    def update(self, result, summary) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            unit = "photo" if summary.stills else "frame"
            self.bar = tqdm(total=summary.expected_frames, unit=unit, desc=self.label, file=sys.stderr, dynamic_ncols=True)
        self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class BatchProgress:
    """A frames progress bar over the whole batch on stderr, with files done beside it."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def update(self, frames: int, expected: int | None, summary) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=expected, unit="frame", desc="batch", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(max(0, frames - self.bar.n))
        self.bar.set_postfix_str(f"files {summary.done + summary.skipped}/{summary.files}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_summary(summary) -> None:
    lines = []
    unit = ("photo" if summary.stills else "frame") + ("" if summary.frames == 1 else "s")
    if summary.interrupted:
        lines.append(f"interrupted: output finalized after {summary.frames} {unit}")
    people = summary.method_figures.get("people")
    people_text = f", {people} {'person' if people == 1 else 'people'}" if people is not None else ""
    small = summary.method_figures.get("fallbacks_too_small")
    small_text = f" ({small} too small for a dp face)" if small else ""
    lines.append(
        f"{summary.frames} {unit}, {summary.faces} faces{people_text}, {summary.fallbacks} fallbacks{small_text}, "
        f"{summary.seconds:.1f} s ({summary.fps:.1f} {unit.rstrip('s')}s/s), method {summary.method} -> {summary.output}"
    )
    if summary.ledger:
        lines.append(f"privacy ledger: {summary.ledger}")
    failed = summary.method_figures.get("fallbacks_model_failed")
    if failed:
        lines.append(
            f"warning: the face model failed on {failed} faces ({summary.method_figures['model_failure']}); "
            "each got the fallback blur"
        )
    for error in summary.input_errors:
        lines.append(f"warning: {summary.input}: {error}")
    if summary.input_errors:
        lines.append(
            f"warning: {summary.input}: decoded {summary.frames} {unit}"
            + (f" of about {summary.expected_frames}" if summary.expected_frames else "")
            + ("; the unreadable ones were skipped" if summary.stills else "; the rest of the input was lost")
        )
    for line in lines:
        print(f"dpstream: {line}", file=sys.stderr)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
