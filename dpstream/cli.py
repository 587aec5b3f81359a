"""The ``dpstream`` command line: ``dpstream anonymize INPUT -o OUTPUT [options]``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from dpstream.config import METHODS, load_config
from dpstream.errors import DpstreamError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT_DAMAGED = 3
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpstream",
        description="Anonymize faces in video with a differential-privacy guarantee.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("anonymize", help="anonymize a video file or a folder of images")
    run.add_argument("input", metavar="INPUT", help="video file (any format FFmpeg reads) or folder of images")
    run.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output video file, or folder for images")
    run.add_argument("--config", metavar="FILE", help="YAML config (keys as in configs/default.yaml)")
    run.add_argument("--method", choices=METHODS, help="replacement method (default: dp)")
    run.add_argument("--epsilon", metavar="E", help="privacy budget ε per person (dp) or per frame (dp-pix)")
    run.add_argument("--delta", metavar="D", help="δ of the Gaussian mechanism")
    run.add_argument("--model", metavar="MANIFEST", help="face model manifest (default: the built-in model)")
    run.add_argument("--ledger", metavar="FILE", help="where to write the privacy ledger (default: OUTPUT.ledger.json)")
    run.add_argument("--codec", help="video encoder, e.g. libx264, libx265, libvpx-vp9 (default: libx264)")
    run.add_argument("--crf", metavar="N", help="x264/x265 quality, 0-51, lower is better (default: 20)")
    run.add_argument("--preset", help="x264/x265 speed preset (default: veryfast)")
    run.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return _anonymize(args)
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
        for key in ("method", "epsilon", "delta", "model", "ledger", "codec", "crf", "preset")
        if getattr(args, key) is not None
    }
    config = load_config(args.config, **overrides)
    from dpstream.pipeline import anonymize  # loads MediaPipe: after the config is known to be good
    progress = ProgressBar(Path(args.input).name, enabled=not args.quiet)
    try:
        summary = anonymize(args.input, args.output, config=config, overwrite=args.overwrite, on_frame=progress.update)
    finally:
        progress.close()
    _print_summary(summary)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_INPUT_DAMAGED if summary.input_errors else EXIT_OK


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

            self.bar = tqdm(total=summary.expected_frames, unit="frame", desc=self.label, file=sys.stderr, dynamic_ncols=True)
        self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_summary(summary) -> None:
    lines = []
    if summary.interrupted:
        lines.append(f"interrupted: output finalized after {summary.frames} frames")
    people = summary.method_figures.get("people")
    people_text = f", {people} {'person' if people == 1 else 'people'}" if people is not None else ""
    lines.append(
        f"{summary.frames} frames, {summary.faces} faces{people_text}, {summary.fallbacks} fallbacks, "
        f"{summary.seconds:.1f} s ({summary.fps:.1f} frames/s), method {summary.method} -> {summary.output}"
    )
    if summary.ledger:
        lines.append(f"privacy ledger: {summary.ledger}")
    for error in summary.input_errors:
        lines.append(f"warning: {summary.input}: {error}")
    if summary.input_errors:
        lines.append(
            f"warning: {summary.input}: decoded {summary.frames} frames"
            + (f" of about {summary.expected_frames}" if summary.expected_frames else "")
            + "; the rest of the input was lost"
        )
    for line in lines:
        print(f"dpstream: {line}", file=sys.stderr)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
