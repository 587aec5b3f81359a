"""The bad-input corpus: files made at test time (nothing large is committed) that try to break
``dpstream anonymize``: damaged and fake files, odd formats and sizes, rotation, variable frame
rate, a sparse multi-GB file, awkward folders and every image format OpenCV reads.

Each ``CorpusFile`` says where its faces are (``faces``: per frame index, boxes in the upright
frame's pixels; ``rotation``: the display rotation of the stored frames), so a run's output can
be checked for faces left untouched.

``run`` anonymizes one file with the command line's own entry point (in this process, under a
time limit) and classifies what happened: a clear error, a correct output, an internal error, a
traceback or a hang, and the faces left untouched in the output.

    python tests/corpus.py OUTDIR     # writes the corpus there, runs each file, prints the table
"""

from __future__ import annotations

import contextlib
import io
import random
import signal
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

from dpstream import cli  # noqa: E402
from independent import VIDEOS, YuNet  # noqa: E402
from tools.evaluate_tracking import box_iou  # noqa: E402

SOURCE_VIDEO = "talking_720p_s18.mp4"
SIZE = (480, 270)
FRAMES = 12
FPS = 25
TIME_LIMIT = 120
"""Seconds one file may take (12 small frames take about one) before it counts as a hang."""
UNTOUCHED_LEVELS = 6.0
"""A face region whose mean absolute difference (0-255) from the input is below this was left
as it was (re-encoding alone changes it by 1-3)."""


@dataclass(slots=True)
class CorpusFile:
    kind: str  # what it tests, e.g. "truncated", "rotation"
    path: Path
    faces: dict[int, np.ndarray] = field(default_factory=dict)  # frame index -> (N, 4) upright boxes
    photo: bool = False  # a photo input (an image file or a folder)
    rotation: int = 0  # display rotation (counter-clockwise degrees) of the stored frames


def source_frames() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Upright RGB frames of a real one-face clip, shrunk to ``SIZE``, and YuNet's face boxes on them."""
    frames = []
    with av.open(str(VIDEOS / SOURCE_VIDEO)) as container:
        for frame in container.decode(video=0):
            frames.append(cv2.resize(frame.to_ndarray(format="rgb24"), SIZE, interpolation=cv2.INTER_AREA))
            if len(frames) == FRAMES:
                break
    yunet = YuNet()
    return frames, [yunet.detect(frame).boxes for frame in frames]


def write_video(path: Path, frames: list[np.ndarray], codec: str = "libx264", pixel_format: str = "yuv420p",
                rotation: int = 0, pts: list[int] | None = None, options: dict | None = None,
                color: dict | None = None, faststart: bool = False, exact_pts: bool = False) -> Path:  # fmt: skip
    """Encode RGB ``frames``; ``rotation`` is written as display-matrix side data (degrees);
    ``faststart`` puts an mp4's index (moov) before its packets; ``exact_pts``: the encoder
    keeps ``pts`` (1/1000 s) as they are, else it rounds them to its 1/25 s clock."""
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream(codec, rate=FPS, options=options or {})
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = pixel_format
        stream.time_base = Fraction(1, FPS * 40)
        if exact_pts:
            stream.codec_context.time_base = stream.time_base
        for key, value in (color or {}).items():
            setattr(stream.codec_context, key, value)
        if rotation:
            stream.set_display_rotation(rotation)
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pixel_format)
            frame.pts = (pts[index] if pts else index * 40)
            frame.time_base = stream.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def build(folder: Path) -> list[CorpusFile]:
    """Write the corpus into ``folder``."""
    frames, boxes = source_frames()
    faces = dict(enumerate(boxes))
    rng = random.Random(7)
    items = []
    clean = write_video(folder / "clean.mp4", frames)
    items.append(CorpusFile("control", clean, faces))
    data = clean.read_bytes()
    indexed_first = write_video(folder / "faststart.mp4", frames, faststart=True).read_bytes()
    (folder / "faststart.mp4").unlink()
    for share in (0.5, 0.9):
        path = folder / f"truncated_faststart_{int(share * 100)}.mp4"
        path.write_bytes(indexed_first[: int(len(indexed_first) * share)])
        items.append(CorpusFile("truncated", path, faces))
    for share in (0.1, 0.5, 0.9):
        path = folder / f"truncated_{int(share * 100)}.mp4"
        path.write_bytes(data[: int(len(data) * share)])
        items.append(CorpusFile("truncated", path, faces))
    mdat = data.find(b"mdat")  # the packets (PyAV writes the index, moov, after them)
    for count in (1, 16, 256):
        flipped = bytearray(data)
        for _ in range(count):
            offset = rng.randrange(mdat + 8, len(flipped) // 2)
            flipped[offset] ^= 0xFF
        path = folder / f"flipped_{count}.mp4"
        path.write_bytes(bytes(flipped))
        items.append(CorpusFile("byte-flipped", path, faces))
    (folder / "empty.mp4").write_bytes(b"")
    items.append(CorpusFile("zero-length", folder / "empty.mp4"))
    (folder / "notes.mp4").write_text("minutes of the meeting\n" * 100)
    items.append(CorpusFile("text named .mp4", folder / "notes.mp4"))
    items.append(CorpusFile("audio only", _audio_only(folder / "audio_only.m4a")))
    items.append(CorpusFile("10-bit", write_video(folder / "high10.mp4", frames, pixel_format="yuv420p10le"), faces))
    items.append(CorpusFile("4:4:4", write_video(folder / "yuv444.mp4", frames, pixel_format="yuv444p"), faces))
    hdr = {"color_primaries": 9, "color_trc": 16, "colorspace": 9}  # BT.2020, PQ (SMPTE 2084), BT.2020 NCL
    items.append(CorpusFile("HDR PQ", write_video(folder / "hdr_pq.mkv", frames, "libx265", "yuv420p10le",
                                                  options={"x265-params": "log-level=none"}, color=hdr), faces))  # fmt: skip
    tiny = [np.full((1, 1, 3), 128, np.uint8)] * 3
    items.append(CorpusFile("1x1", write_video(folder / "one_pixel.mkv", tiny, "ffv1", "yuv444p")))
    odd = [np.full((5, 7, 3), 90, np.uint8)] * 3
    items.append(CorpusFile("7x5", write_video(folder / "seven_by_five.mkv", odd, "ffv1", "yuv444p")))
    items.append(CorpusFile("8193x8193 header", _huge_y4m_header(folder / "huge.y4m")))
    for rotation in (90, 180, 270):
        stored = [np.ascontiguousarray(np.rot90(frame, k=-rotation // 90)) for frame in frames]
        path = write_video(folder / f"rotate_{rotation}.mp4", stored, rotation=rotation)
        items.append(CorpusFile(f"rotation {rotation}", path, faces, rotation=rotation))
    gaps = np.cumsum([0] + [rng.choice((20, 40, 80)) for _ in frames[1:]]).tolist()
    items.append(CorpusFile("variable frame rate", write_video(folder / "vfr.mp4", frames, pts=gaps, exact_pts=True), faces))
    # the encoder's 1/25 s clock rounds 20 ms steps: some frames share a timestamp
    items.append(CorpusFile("repeated timestamps", write_video(folder / "repeated_pts.mkv", frames, pts=gaps), faces))
    mkv = write_video(folder / "full.mkv", frames).read_bytes()
    (folder / "full.mkv").unlink()
    (folder / "truncated_50.mkv").write_bytes(mkv[: len(mkv) // 2])
    items.append(CorpusFile("truncated", folder / "truncated_50.mkv", faces))
    sparse = folder / "sparse_3gb.mp4"
    with open(sparse, "wb") as file:
        file.write(data)
        file.truncate(3 * 2**30)
    items.append(CorpusFile("multi-GB sparse file", sparse, faces))
    items += _photos(folder, frames[0], boxes[0])
    return items


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440) * 0.3).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def _huge_y4m_header(path: Path) -> Path:
    """A YUV4MPEG2 file whose header says 8193x8193, with one frame's worth of bytes missing."""
    path.write_bytes(b"YUV4MPEG2 W8193 H8193 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(4096))
    return path


def _photos(folder: Path, image: np.ndarray, boxes: np.ndarray) -> list[CorpusFile]:
    """Image files in every format OpenCV reads, and an awkward folder."""
    items = []
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    photos = folder / "photos"
    photos.mkdir()
    for name, write in {
        "png_alpha.png": lambda p: Image.fromarray(np.dstack([image, np.full(image.shape[:2], 200, np.uint8)])).save(p),
        "tiff_16bit.tif": lambda p: cv2.imwrite(str(p), bgr.astype(np.uint16) * 257),
        "grey.png": lambda p: cv2.imwrite(str(p), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)),
        "cmyk.jpg": lambda p: Image.fromarray(image).convert("CMYK").save(p, quality=95),
        "bmp.bmp": lambda p: cv2.imwrite(str(p), bgr),
        "webp.webp": lambda p: cv2.imwrite(str(p), bgr, [cv2.IMWRITE_WEBP_QUALITY, 95]),
    }.items():
        write(photos / name)
        items.append(CorpusFile(f"image {Path(name).suffix[1:]} ({name})", photos / name, {0: boxes}, photo=True))
    mixed = folder / "mixed_folder"
    mixed.mkdir()
    cv2.imwrite(str(mixed / "good.jpg"), bgr)
    (mixed / "readme.txt").write_text("not an image")
    (mixed / "fake.jpg").write_text("not a jpeg either")
    (mixed / "sub").mkdir()
    locked = mixed / "locked.png"
    cv2.imwrite(str(locked), bgr)
    locked.chmod(0)  # unreadable, except to root
    items.append(CorpusFile("folder with unreadable and non-image files", mixed, {0: boxes}, photo=True))
    return items


@dataclass(slots=True)
class Outcome:
    """What one run of ``dpstream anonymize`` on a corpus file did."""

    item: CorpusFile
    result: str  # "clear error", "output", "unclear error", "internal error", "traceback" or "hang"
    exit_code: int | None
    message: str  # the run's last line on stderr (or the traceback's last line)
    untouched_faces: int = 0  # faces (YuNet sees them in the input) left as they were in the output
    frames: tuple[int, int] = (0, 0)  # decodable frames (photos) in the input and in the output


class _TimeLimit(BaseException):
    """Raised in the run when it takes longer than ``TIME_LIMIT`` (not an ``Exception``, so the
    command line's own handlers cannot swallow it)."""


def run(item: CorpusFile, out_dir: Path, yunet: YuNet) -> Outcome:
    """Anonymize ``item`` with ``dpstream anonymize`` (default method) and judge the outcome."""
    output = output_path(item, out_dir)
    stderr = io.StringIO()

    def expire(signum, frame):
        raise _TimeLimit

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TIME_LIMIT)
    try:
        with contextlib.redirect_stderr(stderr):
            code = cli.main(["anonymize", str(item.path), "-o", str(output), "-q", "--overwrite"])
    except _TimeLimit:
        return Outcome(item, "hang", None, f"still running after {TIME_LIMIT} s")
    except BaseException:  # anything escaping the command line is a traceback for the user
        return Outcome(item, "traceback", None, traceback.format_exc().strip().splitlines()[-1])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    errors = [line for line in lines if line.startswith("dpstream: error: ")]
    if code == cli.EXIT_USAGE:
        clear = len(errors) == 1 and len(lines) == 1 and item.path.name in errors[0]
        return Outcome(item, "clear error" if clear else "unclear error", code, message)
    if code not in (cli.EXIT_OK, cli.EXIT_INPUT_DAMAGED) or not output.exists():
        return Outcome(item, "internal error", code, message)
    frames = (frame_count(item.path, item.photo), frame_count(output, item.photo))
    return Outcome(item, "output", code, message, untouched_faces(item, output, yunet), frames)


def frame_count(path: Path, photo: bool) -> int:
    """Decodable frames of a video, or readable images of a photo file or folder."""
    if photo:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        return sum(1 for file in files if file.is_file() and cv2.imread(str(file)) is not None)
    with av.open(str(path)) as container:
        return sum(1 for _ in _decodable_frames(container))


def output_path(item: CorpusFile, out_dir: Path) -> Path:
    if item.path.is_dir():
        return out_dir / f"{item.path.name}.out"
    return out_dir / (f"{item.path.name}.out{item.path.suffix}" if item.photo else f"{item.path.name}.out.mp4")


def untouched_faces(item: CorpusFile, output: Path, yunet: YuNet) -> int:
    """Faces of ``item.faces`` that YuNet sees in the input frame and whose pixels the output
    left as they were (frames matched in order, turned upright)."""
    pairs = _photo_pairs(item, output) if item.photo else _frame_pairs(item, output)
    count = 0
    for index, (before, after) in pairs:
        visible = yunet.detect(before).boxes
        for x0, y0, x1, y1 in item.faces.get(index, np.zeros((0, 4))).astype(int):
            if not len(visible) or box_iou(np.array([[x0, y0, x1, y1]], np.float32), visible).max() < 0.3:
                continue
            difference = np.abs(before[y0:y1, x0:x1].astype(np.float32) - after[y0:y1, x0:x1]).mean()
            count += int(difference < UNTOUCHED_LEVELS)
    return count


def _frame_pairs(item: CorpusFile, output: Path):
    turns = item.rotation // 90
    with av.open(str(item.path)) as source, av.open(str(output)) as result:
        for index, (before, after) in enumerate(zip(_decodable_frames(source), _decodable_frames(result))):
            yield index, (np.rot90(before, turns), np.rot90(after, turns))


def _decodable_frames(container: av.container.InputContainer):
    """RGB frames of the first video stream, broken packets skipped (as dpstream skips them)."""
    for packet in container.demux(video=0):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue
        yield from (frame.to_ndarray(format="rgb24") for frame in frames)


def _photo_pairs(item: CorpusFile, output: Path):
    files = [(item.path / "good.jpg", output / "good.jpg")] if item.path.is_dir() else [(item.path, output)]
    for before, after in files:
        read = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in (before, after)]
        if all(image is not None for image in read):
            yield 0, tuple(cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for image in read)


def table(outcomes: list[Outcome]) -> list[str]:
    """Markdown: per kind, files tried and how they ended."""
    kinds: dict[str, Counter] = {}
    for outcome in outcomes:
        kind = kinds.setdefault(outcome.item.kind, Counter())
        kind["tried"] += 1
        kind[outcome.result] += 1
        kind["untouched faces"] += outcome.untouched_faces
    columns = ("tried", "clear error", "output", "unclear error", "internal error", "traceback", "hang", "untouched faces")
    lines = ["| input kind | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {kind} | " + " | ".join(str(counts[c]) for c in columns) + " |" for kind, counts in kinds.items()]
    return lines


if __name__ == "__main__":
    out = Path(sys.argv[1])
    (out / "outputs").mkdir(parents=True, exist_ok=True)
    judge = YuNet()
    outcomes = []
    for corpus_file in build(out):
        outcomes.append(run(corpus_file, out / "outputs", judge))
        print(f"{corpus_file.kind:45s} {corpus_file.path.name:28s} {outcomes[-1].result:15s} {outcomes[-1].message[:90]}", flush=True)
    print("\n".join(["", *table(outcomes)]))
