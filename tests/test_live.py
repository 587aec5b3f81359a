"""Live streams: webcam option mapping, live runner on paced sources, and RTSP relays between
real FFmpeg peers on 127.0.0.1 (a publisher process, dpstream relaying, a listening reader)."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import requires_shared
from independent import VIDEOS

from dpstream.cli import main as cli_main
from dpstream.config import Config, load_config
from dpstream.errors import ConfigError, InputError, OutputError
from dpstream.live import DropOldestQueue, LatencyHistogram, LiveRun, run_live
from dpstream.live_sink import LiveOutput, LiveSink, live_output
from dpstream.live_source import Backoff, live_input, webcam_input
from dpstream.types import VideoFrame

FACE_VIDEO = "talking_720p_s18.mp4"
LAVFI_720P30 = "lavfi:testsrc2=size=1280x720:rate=30"

# ---------------------------------------------------------------------------------------------
# webcam options per platform, source and output classification


@pytest.mark.parametrize(
    "device, platform, expected_url, expected_format, expected_options",
    [
        (None, "linux", "/dev/video0", "v4l2", {"video_size": "1280x720", "framerate": "30", "input_format": "mjpeg"}),
        ("2", "linux", "/dev/video2", "v4l2", {"video_size": "1280x720", "framerate": "30", "input_format": "mjpeg"}),
        ("/dev/v4l/by-id/usb-cam", "linux", "/dev/v4l/by-id/usb-cam", "v4l2", {"video_size": "1280x720", "framerate": "30", "input_format": "mjpeg"}),
        (None, "darwin", "0:none", "avfoundation", {"video_size": "1280x720", "framerate": "30", "pixel_format": "mjpeg"}),
        ("1", "darwin", "1:none", "avfoundation", {"video_size": "1280x720", "framerate": "30", "pixel_format": "mjpeg"}),
        ("FaceTime HD Camera", "darwin", "FaceTime HD Camera:none", "avfoundation", {"video_size": "1280x720", "framerate": "30", "pixel_format": "mjpeg"}),
        ("Integrated Camera", "win32", "video=Integrated Camera", "dshow", {"video_size": "1280x720", "framerate": "30", "vcodec": "mjpeg"}),
        ("video=USB Cam", "win32", "video=USB Cam", "dshow", {"video_size": "1280x720", "framerate": "30", "vcodec": "mjpeg"}),
    ],
)
def test_webcam_options_per_platform(device, platform, expected_url, expected_format, expected_options):
    spec = webcam_input(device, platform, size="1280x720", fps=30.0, pixel_format="mjpeg")
    assert (spec.url, spec.format, spec.options, spec.kind) == (expected_url, expected_format, expected_options, "device")
    assert spec.reconnects and not spec.paced


def test_webcam_pixel_formats_and_defaults_per_platform():
    assert webcam_input("0", "linux").options == {}
    assert webcam_input("0", "linux", fps=29.97).options == {"framerate": "29.97"}
    assert webcam_input("0", "darwin", pixel_format="uyvy422").options == {"pixel_format": "uyvy422"}
    assert webcam_input("Cam", "win32", pixel_format="yuyv422").options == {"pixel_format": "yuyv422"}


@pytest.mark.parametrize("device", [None, "0"])
def test_windows_webcam_needs_a_name(device):
    with pytest.raises(InputError, match="give the camera's name"):
        webcam_input(device, "win32")


def test_sources_are_classified(tmp_path):
    config = Config(transport="udp")
    rtsp = live_input("rtsp://cam.local:554/stream1", config)
    assert (rtsp.kind, rtsp.options, rtsp.reconnects, rtsp.paced) == ("network", {"rtsp_transport": "udp"}, True, False)
    server = live_input("rtsp://0.0.0.0:8554/in", Config(listen=True, io_timeout=3.0))
    assert server.listen and server.options == {"rtsp_transport": "tcp", "rtsp_flags": "listen", "listen_timeout": "3"}
    assert live_input("srt://0.0.0.0:9000", Config(listen=True)).options == {"mode": "listener"}
    assert live_input("rtmp://0.0.0.0/live/cam", Config(listen=True)).options == {"listen": "1"}
    lavfi = live_input(LAVFI_720P30, config)
    assert (lavfi.url, lavfi.format, lavfi.kind, lavfi.paced) == ("testsrc2=size=1280x720:rate=30", "lavfi", "lavfi", True)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert live_input(str(video), config).kind == "file"
    with pytest.raises(InputError, match="nope.mp4: no such file, and not a stream URL"):
        live_input(str(tmp_path / "nope.mp4"), config)


def test_outputs_are_classified(tmp_path):
    config = Config(transport="udp")
    assert live_output("rtsp://127.0.0.1:8554/out", config) == LiveOutput("rtsp://127.0.0.1:8554/out", "rtsp", {"rtsp_transport": "udp"}, True)
    assert live_output("udp://239.0.0.1:1234", config).format == "mpegts"
    assert live_output("srt://127.0.0.1:9000", config).format == "mpegts"
    assert live_output("rtmp://127.0.0.1/live/x", config).format == "flv"
    assert live_output(str(tmp_path / "out.ts"), config).network is False
    existing = tmp_path / "old.mp4"
    existing.write_bytes(b"x")
    with pytest.raises(OutputError, match="already exists"):
        live_output(str(existing), config)
    with pytest.raises(OutputError, match="unsupported output"):
        live_output("ftp://host/x", config)
    with pytest.raises(OutputError, match="does not exist"):
        live_output(str(tmp_path / "missing" / "out.mp4"), config)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("transport", "http", "transport: must be one of tcp, udp"),
        ("capture_size", "720p", "capture_size: must be WIDTHxHEIGHT"),
        ("live_queue", 0, "live_queue: must be"),
        ("io_timeout", 0, "io_timeout: must be"),
        ("reconnect_jitter", 1.5, "reconnect_jitter: must be in [0, 1]"),
        ("reconnect_max_delay", 0.1, "reconnect_max_delay: must be >= 0.5"),
    ],
)
def test_bad_live_keys_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        Config(**{key: value})


def test_live_profiles_are_valid_low_latency_configs():
    for name in ("webcam", "relay"):
        config = load_config(f"configs/{name}.yaml")
        assert (config.live_tune, config.preset) == ("zerolatency", "ultrafast")
        assert config.live_gop <= 60 and config.live_queue <= 4


# ---------------------------------------------------------------------------------------------
# building blocks


def test_backoff_doubles_up_to_the_maximum_with_bounded_jitter():
    backoff = Backoff(delay=0.5, max_delay=4.0, jitter=0.25, rng=random.Random(7))
    waits = [backoff.next_wait() for _ in range(8)]
    for wait, base in zip(waits, [0.5, 1, 2, 4, 4, 4, 4, 4]):
        assert base * 0.75 <= wait <= base * 1.25
    assert len(set(waits)) == len(waits)  # jittered: no two equal
    backoff.reset()
    assert backoff.next_wait() <= 0.5 * 1.25


def test_queue_drops_the_oldest_frame_when_full():
    queue = DropOldestQueue(2)
    assert [queue.put(n) for n in range(5)] == [False, False, True, True, True]
    queue.close()
    assert [queue.get(0.1), queue.get(0.1), queue.get(0.1)] == [3, 4, None]
    assert queue.finished()


def test_latency_percentiles():
    histogram = LatencyHistogram()
    assert histogram.percentile_ms(50) is None
    for ms in range(1, 101):
        histogram.add(ms / 1000 - 0.0005)
    assert histogram.percentile_ms(50) == 50
    assert histogram.percentile_ms(99) == 99


# ---------------------------------------------------------------------------------------------
# the live runner on real paced sources


def test_lavfi_720p30_source_to_file_runs_live(tmp_path):
    """A 720p30 generator paced in real time through capture, anonymize and encode threads."""
    output = tmp_path / "live.mp4"
    config = Config(method="blur", preset="ultrafast", detector_recall="normal")
    summary = run_live(live_input(LAVFI_720P30, config), [str(output)], config, max_seconds=3.0)
    assert summary.written > 0 and summary.captured >= summary.written + summary.dropped
    assert summary.latency_ms["p50"] is not None
    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (1280, 720)
        times = [frame.time for frame in container.decode(video=0)]
    assert len(times) == summary.written
    assert all(b > a for a, b in zip(times, times[1:]))  # monotonic output timestamps
    assert 1.5 < times[-1] < 4.0  # real-time paced: about 3 s of frames, not all at once


def test_live_sink_reconnects_after_the_reader_drops():
    """An RTSP publish whose listening reader goes away and comes back."""
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/out"
    config = Config(io_timeout=3.0, reconnect_delay=0.2, reconnect_max_delay=0.5, reconnect_jitter=0.0, preset="ultrafast", detector_recall="normal")
    sink = LiveSink(live_output(url, config), config)
    image = np.zeros((240, 320, 3), np.uint8)
    outcomes: list[bool] = []
    for session in range(2):
        reader = RtspReader(url, frames_wanted=10)
        reader.start()
        deadline = time.monotonic() + 10
        while reader.is_alive() and time.monotonic() < deadline:
            image[:] = len(outcomes) % 256
            frame = VideoFrame(image.copy(), len(outcomes), pts=round(len(outcomes) * 3000), time_base=Fraction(1, 90000))
            outcomes.append(sink.write(frame))
            time.sleep(1 / 30)
        reader.join(5)
        assert len(reader.frames) >= 10, f"session {session}: reader got {len(reader.frames)} frames"
        if session == 0:  # the reader is gone: writes fail until it listens again
            for _ in range(20):
                outcomes.append(sink.write(VideoFrame(image.copy(), len(outcomes), pts=len(outcomes) * 3000, time_base=Fraction(1, 90000))))
                time.sleep(1 / 30)
    sink.close()
    assert False in outcomes and sink.reconnections >= 1


# ---------------------------------------------------------------------------------------------
# RTSP relay between real peers: publisher process -> dpstream relay -> reader


PUBLISHER = r"""
import sys, time, av
path, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + 60
while True:  # the relay listens once its models are loaded: retry until it does
    source = av.open(path)
    out = av.open(url, "w", format="rtsp", options={"rtsp_transport": "tcp"})
    stream = out.add_stream_from_template(source.streams.video[0])
    try:
        out.start_encoding()
        break
    except (OSError, av.error.FFmpegError):
        source.close()
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
start, first = time.monotonic(), None
for packet in source.demux(video=0):
    if packet.dts is None:
        continue
    t = float(packet.dts * packet.time_base)
    first = t if first is None else first
    if t - first > seconds:
        break
    time.sleep(max(0.0, start + t - first - time.monotonic()))
    packet.stream = stream
    out.mux(packet)
out.close()
"""


def start_publisher(url: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, str(VIDEOS / FACE_VIDEO), url, str(seconds)])


class RtspReader(threading.Thread):
    """An RTSP listener (FFmpeg's server mode for one publisher) decoding what it receives."""

    def __init__(self, url: str, frames_wanted: int = 10_000, keep_every: int = 0, wait: float = 60.0):
        super().__init__(daemon=True)
        self.url, self.frames_wanted, self.keep_every, self.wait = url, frames_wanted, keep_every, wait
        self.frames: list[float] = []  # arrival times
        self.kept: list[np.ndarray] = []
        self.stop = threading.Event()

    def run(self) -> None:
        # FFmpeg's own timeouts, not PyAV's: PyAV's timeout callback needs the GIL, which the
        # in-process publisher holds while it connects to this reader
        options = {"rtsp_flags": "listen", "listen_timeout": str(int(self.wait)), "timeout": "10000000"}
        try:
            with av.open(self.url, options=options) as container:
                for frame in container.decode(video=0):
                    self.frames.append(time.monotonic())
                    if self.keep_every and len(self.frames) % self.keep_every == 0:
                        self.kept.append(frame.to_ndarray(format="rgb24"))
                    if len(self.frames) >= self.frames_wanted or self.stop.is_set():
                        return
        except (OSError, av.error.FFmpegError):
            return  # the publisher went away or never came: the test judges what arrived


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def relay_config(tmp_path, **keys) -> Config:
    return Config(
        listen=True, io_timeout=2.0, reconnect_delay=0.2, reconnect_max_delay=1.0, preset="ultrafast", detector_recall="normal",
        ledger=str(tmp_path / "relay.ledger.json"), **keys,
    )


class Relay(threading.Thread):
    """dpstream relaying in a background thread until ``run.stop`` is set."""

    def __init__(self, source_url: str, sink_url: str, config: Config):
        super().__init__(daemon=True)
        self.messages: list[str] = []
        self.live = LiveRun(live_input(source_url, config), [sink_url], config, report=self.messages.append)
        self.summary = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.summary = self.live.run()
        except BaseException as error:
            self.error = error

    def finish(self):
        self.live.stop.set()
        self.join(30)
        assert not self.is_alive(), "relay did not stop"
        if self.error is not None:
            raise self.error
        return self.summary


def face_descriptors(images: list[np.ndarray]) -> list[np.ndarray]:
    """dlib descriptors of every face YuNet finds in ``images``."""
    from tools.judges import DlibRecognizer, YuNet

    yunet, dlib = YuNet(), DlibRecognizer()
    return [dlib.descriptor(image, box) for image in images for box in yunet.detect(image).boxes]


def original_descriptors() -> list[np.ndarray]:
    with av.open(str(VIDEOS / FACE_VIDEO)) as container:
        images = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % 40 == 0]
    descriptors = face_descriptors(images)
    assert len(descriptors) >= len(images) - 1  # the judges see the real face
    return descriptors


def leaks(received: list[np.ndarray], originals: list[np.ndarray]) -> list[float]:
    """Distances of received faces that dlib takes for the original person (< 0.6)."""
    from tools.judges import DLIB_SAME_PERSON

    distances = [min(float(np.linalg.norm(r - o)) for o in originals) for r in face_descriptors(received)]
    return [d for d in distances if d < DLIB_SAME_PERSON]


@requires_shared
def test_rtsp_relay_delivers_anonymized_frames(tmp_path):
    in_url, out_url = f"rtsp://127.0.0.1:{free_port()}/in", f"rtsp://127.0.0.1:{free_port()}/out"
    reader = RtspReader(out_url, keep_every=6)
    reader.start()
    relay = Relay(in_url, out_url, relay_config(tmp_path))
    relay.start()
    publisher = start_publisher(in_url, seconds=6)
    try:
        publisher.wait(90)
        time.sleep(1.0)  # the frames still in the relay
    finally:
        publisher.kill()
        summary = relay.finish()
        reader.stop.set()
        reader.join(15)
    assert len(reader.frames) >= 20, f"reader got {len(reader.frames)} frames"
    assert summary.written >= len(reader.frames) - 1 and summary.faces > 0
    assert reader.kept and reader.kept[0].shape == (720, 1280, 3)
    assert not leaks(reader.kept, original_descriptors())


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# command line


def test_live_commands_report_bad_input_in_one_line(tmp_path, capsys):
    assert cli_main(["relay", str(tmp_path / "missing.mp4"), str(tmp_path / "out.mp4")]) == 2
    assert cli_main(["webcam", "lavfi:testsrc2"]) == 2
    assert cli_main(["relay", LAVFI_720P30, "rtsp://127.0.0.1:1/x", "--config", str(tmp_path / "none.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("dpstream: error: ") for line in lines)
    assert "missing.mp4: no such file" in lines[0] and "no output" in lines[1] and "none.yaml" in lines[2]


def test_relay_command_writes_a_file_from_a_paced_source(tmp_path):
    output = tmp_path / "relayed.mp4"
    assert cli_main(["relay", "lavfi:testsrc2=size=320x240:rate=30", str(output), "--method", "solid", "--duration", "2", "-q"]) == 0
    with av.open(str(output)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 10



def test_sigterm_stops_a_live_run_cleanly(tmp_path):
    output = tmp_path / "stopped.mp4"
    command = [sys.executable, "-m", "dpstream", "relay", "lavfi:testsrc2=size=320x240:rate=30", str(output), "--method", "solid", "-q"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(output.exists, 60, "the output to open")
        time.sleep(1.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 130
    finally:
        process.kill()
    assert "frames written" in process.stderr.read()
    with av.open(str(output)) as container:  # finalized: the index is written
        assert sum(1 for _ in container.decode(video=0)) >= 20


def test_preview_without_a_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("the display check is Linux's")
    with pytest.raises(OutputError, match="--preview: no display"):
        LiveRun(live_input(LAVFI_720P30, Config()), [], Config(), preview=True)


# ---------------------------------------------------------------------------------------------
# key frames in live runs: a face appearing between key frames


def face_appearing_between_key_frames(path) -> list:
    """A 720p, 25 frames/s synthetic clip (an LFW eval face on a room background) whose face is
    off screen until frame 7 and then in the middle of the frame (key frames: 0, 5, 10, ...)."""
    from tools.synthetic_sequences import Key, PersonPath, Scenario, write_video

    keys = (Key(0, 1.6, 0.45, 0.30), Key(6, 1.6, 0.45, 0.30), Key(7, 0.50, 0.45, 0.30), Key(24, 0.55, 0.47, 0.30, roll=6))
    return write_video(Scenario("appears_at_7", 1280, 720, 25, (PersonPath(keys),), "room", 25, seed=5), path)


def uncovered(image: np.ndarray, original: np.ndarray, truth) -> bool:
    """The true face's inner box (eyes, nose, mouth) is left as it was (mean change < 3 levels)."""
    if not len(truth.boxes):
        return False
    (x0, y0), (x1, y1) = truth.inner_points[0].min(0).astype(int), truth.inner_points[0].max(0).astype(int)
    return float(np.abs(image[y0:y1, x0:x1].astype(int) - original[y0:y1, x0:x1]).mean()) < 3.0


@requires_shared
def test_live_run_covers_a_face_that_appears_between_key_frames(tmp_path):
    """Through the live runner (a paced file, capture -> track -> replace -> write threads): every
    written frame from the face's first one on has it covered. Without the whole-frame check on
    the frames between key frames the same clip shows the face uncovered in frames 7-9."""
    from dpstream.pipeline import Anonymizer

    clip = tmp_path / "appears.mp4"
    truths = face_appearing_between_key_frames(clip)
    originals = [f.to_ndarray(format="rgb24") for f in av.open(str(clip)).decode(video=0)]
    assert [i for i in range(25) if len(truths[i].boxes)] == list(range(7, 25))

    config = relay_config(tmp_path, method="solid", detect_every=5, live_queue=30)
    written: dict[int, np.ndarray] = {}
    summary = run_live(live_input(str(clip), config), [str(tmp_path / "out.ts")], config,
                       on_frame=lambda result, _: written.setdefault(result.frame.index, result.frame.image.copy()))  # fmt: skip
    assert summary.dropped == 0 and sorted(written) == list(range(25))
    assert [i for i in written if uncovered(written[i], originals[i], truths[i])] == []
    assert summary.faces == 18  # found on its first frame, once per frame

    anonymizer = Anonymizer(Config(method="solid", detect_every=5, detector_recall="normal"))
    anonymizer.tracking.key_frames.spread_tiles = False  # key frames only: 0, 5, 10, ...
    try:
        frames = (VideoFrame(originals[i].copy(), i, i, Fraction(1, 25)) for i in range(11))
        key_frames_only = [r.frame.image for r in anonymizer.stream(frames, overlap=False, look_ahead=False)]
    finally:
        anonymizer.close()
    assert [i for i in range(11) if uncovered(key_frames_only[i], originals[i], truths[i])] == [7, 8, 9]
