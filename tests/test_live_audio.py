"""Audio in the live commands: the source's audio (or a microphone) relayed to every output in
sync with the anonymized video, measured end to end with real PyAV peers.

The sync sources are lavfi graphs where a white flash in the video and a 1 kHz beep in the
audio start together every second; the audio-video offset is the beep's onset minus the first
bright frame's time, read back from the outputs (files, and an RTSP listener on 127.0.0.1).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from conftest import requires_shared
from independent import VIDEOS
from test_live import FACE_VIDEO, Relay, free_port, relay_config, wait_until

from dpstream.cli import main as cli_main
from dpstream.config import Config
from dpstream.errors import ConfigError, InputError
from dpstream.live import run_live
from dpstream.live_sink import LiveSink, live_output
from dpstream.live_source import AUDIO_RATE, AudioChunk, ClockMap, audio_input, live_input, webcam_input
from dpstream.types import VideoFrame

FLASH = "color=c=black:s=320x240:r=30,drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='lt(mod(t,1),0.2)'"
BEEP = "aevalsrc='if(lt(mod(t,1),0.2),0.5*sin(2*PI*1000*t),0)':s={rate}"
SYNC_GRAPH = f"{FLASH}[out0];{BEEP.format(rate=44100)}[out1]"  # 44.1 kHz mono in: resampled to 48 kHz stereo
MAX_OFFSET = 0.060


# ---------------------------------------------------------------------------------------------
# reading the sync marks back


def read_av(container, video: list | None = None, audio: list | None = None) -> tuple[list, list]:
    """Video (time, mean luma) and audio (time, rate, per-sample peak over channels) of an open
    container, appended to ``video`` and ``audio`` as frames are decoded."""
    video, audio = ([] if video is None else video), ([] if audio is None else audio)
    streams = [container.streams.video[0], *container.streams.audio[:1]]
    for frame in container.decode(*streams):
        if frame.time is None:
            continue
        if isinstance(frame, av.VideoFrame):
            video.append((float(frame.time), float(frame.to_ndarray(format="gray").mean())))
        else:
            audio.append((float(frame.time), frame.sample_rate, np.abs(frame.to_ndarray()).max(axis=0)[: frame.samples]))
    return video, audio


def read_file(path) -> tuple[list, list, str | None]:
    with av.open(str(path)) as container:
        codec = container.streams.audio[0].codec_context.name if container.streams.audio else None
        video, audio = read_av(container)
    return video, audio, codec


def audio_onsets(audio) -> list[float]:
    """Times where a beep starts after at least 0.1 s of contiguous silence."""
    onsets, silent_from, expected = [], None, None
    for start, rate, peaks in audio:
        if expected is not None and abs(start - expected) > 0.03:
            silent_from = None  # a gap (a reconnection): what follows is no onset
        expected = start + len(peaks) / rate
        loud = np.flatnonzero(peaks > 0.1)
        if not loud.size:
            silent_from = start if silent_from is None else silent_from
            continue
        onset = start + loud[0] / rate
        if silent_from is not None and onset - silent_from >= 0.1:
            onsets.append(onset)
        silent_from = start + (loud[-1] + 1) / rate if loud[-1] + 1 < len(peaks) else None
    return onsets


def flash_offsets(video, audio) -> list[tuple[float, float]]:
    """Per flash: (beep onset - first bright frame, error), the error being how far the onset is
    outside (last dark frame, first bright frame], where the flash really started: a frame
    dropped unprocessed at the flash makes the first bright frame late, not the audio."""
    beeps = audio_onsets(audio)
    result = []
    for (dark, dark_luma), (bright, bright_luma) in zip(video, video[1:]):
        if not (dark_luma < 128 <= bright_luma and bright - dark <= 0.1) or not beeps:
            continue
        beep = min(beeps, key=lambda onset: abs(onset - bright))
        if abs(beep - bright) < 0.4:
            error = 0.0 if dark < beep <= bright else (beep - bright if beep > bright else beep - dark)
            result.append((beep - bright, error))
    return result


def assert_in_sync(name: str, video, audio, flashes: int) -> None:
    measured = flash_offsets(video, audio)
    print(f"{name}: audio - video offsets (ms): {[round(offset * 1000, 1) for offset, _ in measured]}, "
          f"outside the flash's frames (ms): {[round(error * 1000, 1) for _, error in measured]}")
    assert len(measured) >= flashes, f"{name}: {len(measured)} flashes found"
    assert all(abs(error) <= MAX_OFFSET for _, error in measured), measured
    assert abs(statistics.median(offset for offset, _ in measured)) <= MAX_OFFSET, measured


def spans(times: list[tuple[float, float]], gap: float = 0.5) -> list[tuple[float, float]]:
    """(start, end) of each run of (start, end) intervals without a gap longer than ``gap``."""
    runs: list[list[float]] = []
    for start, end in sorted(times):
        if runs and start - runs[-1][1] <= gap:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    return [(start, end) for start, end in runs]


def video_spans(video, fps: float = 30.0):
    return spans([(t, t + 1 / fps) for t, _ in video])


def audio_spans(audio, gap: float = 0.5):
    return spans([(t, t + len(peaks) / rate) for t, rate, peaks in audio], gap)


def fast_config(tmp_path, **keys) -> Config:
    keys = {"method": "solid", "preset": "ultrafast", "detector_recall": "normal", "ledger": str(tmp_path / "live.ledger.json"), **keys}
    return Config(**keys)


# ---------------------------------------------------------------------------------------------
# inputs, config and the sink on its own


def test_microphones_per_platform():
    assert (audio_input("hw:0", "linux").url, audio_input("hw:0", "linux").format) == ("hw:0", "alsa")
    assert audio_input("default", "linux").format == "alsa"
    assert (audio_input("pulse:alsa_input.usb", "linux").format, audio_input("pulse:alsa_input.usb", "linux").url) == ("pulse", "alsa_input.usb")
    assert (audio_input("alsa:plughw:1,0", "linux").url, audio_input("1", "darwin").url) == ("plughw:1,0", ":1")
    assert (audio_input("Microphone (USB)", "win32").url, audio_input("audio=Mic", "win32").url) == ("audio=Microphone (USB)", "audio=Mic")
    sine = audio_input("lavfi:sine=frequency=1000", "linux")
    assert (sine.format, sine.url, sine.paced) == ("lavfi", "sine=frequency=1000", True)
    with pytest.raises(InputError, match="give the device"):
        audio_input("pulse:", "linux")
    # Linux: a second input beside v4l2; macOS and Windows: the camera's own input
    linux = webcam_input("0", "linux", audio="hw:1")
    assert (linux.url, linux.audio.url, linux.audio.format) == ("/dev/video0", "hw:1", "alsa")
    assert (webcam_input("0", "darwin", audio=":1").url, webcam_input("0", "darwin").url) == ("0:1", "0:none")
    assert webcam_input("Cam", "win32", audio="audio=Mic").url == "video=Cam:audio=Mic"
    assert webcam_input("Cam", "win32", audio="lavfi:sine").audio.format == "lavfi"
    assert live_input("lavfi:testsrc2", Config(capture_audio="lavfi:sine")).audio.url == "sine"


@pytest.mark.parametrize(
    "key, value, message",
    [("live_audio", "yes", "live_audio: must be true or false"), ("audio_bitrate", 1000, "audio_bitrate: must be in"),
     ("capture_audio", "", "capture_audio: must be a non-empty string")],
)
def test_bad_audio_keys_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        Config(**{key: value})


def test_clock_map_follows_the_least_delayed_frames():
    clock_map = ClockMap(window=4, tolerance=0.01)
    assert clock_map.clock_time(1.0) is None
    for source, clock in [(0.0, 10.2), (0.1, 10.25), (0.2, 10.304), (0.3, 10.4)]:
        clock_map.observe(source, clock)
    assert clock_map.offset == pytest.approx(10.104)  # the frame that came with the least delay; 4 ms steps ignored
    for source in (0.4, 0.5, 0.6, 0.7):
        clock_map.observe(source, source + 10.3)  # the path got slower: the offset follows once the window has
    assert clock_map.clock_time(1.0) == pytest.approx(11.3)


@pytest.mark.parametrize(
    "suffix, codec, expected, lead",
    [("ts", "libx264", "aac", 0.1), ("mp4", "libx264", "aac", 0.1), ("mkv", "libx264", "aac", 0.1), ("flv", "libx264", "aac", 0.1),
     ("webm", "libvpx-vp9", "opus", 0.1), ("ts", "libx264", "aac", -0.1)],
)
def test_sink_encodes_audio_per_format_on_the_video_timeline(tmp_path, suffix, codec, expected, lead):
    """Chunks with a 0.3 s hole (filled with silence) and a 2 s one (a jump, as after a source
    reconnection), audio before the first frame (cut) and after the last (cut); the audio comes
    ``lead`` s ahead of its video (as from the live runner), or late."""
    config = Config(codec=codec, preset="ultrafast")
    path = tmp_path / f"out.{suffix}"
    sink = LiveSink(live_output(str(path), config), config)
    sink.with_audio = True
    n = 1024
    tone = np.tile(np.sin(np.arange(n) * 2 * np.pi * 1000 / AUDIO_RATE).astype(np.float32), (2, 1))
    start = 5.0  # the run's clock at the first frame
    holes = {20: 0.3, 60: 2.0}  # chunk index -> seconds missing before it
    chunk_time, audio = start - 0.1, []
    for index in range(200):
        chunk_time += holes.get(index, 0.0)
        audio.append(AudioChunk(tone.copy(), chunk_time))
        chunk_time += n / AUDIO_RATE
    frames = [start + i / 30 for i in range(int((chunk_time - start - 0.2) * 30))]
    image = np.zeros((96, 128, 3), np.uint8)
    for index, frame_time in enumerate(frames):
        while audio and audio[0].time <= frame_time + lead:
            sink.write_audio(audio.pop(0))
        assert sink.write(VideoFrame(image, index, pts=round(frame_time * 90000), time_base=Fraction(1, 90000)))
    for chunk in audio:
        sink.write_audio(chunk)
    sink.close()
    video, audio_read, audio_codec = read_file(path)
    assert audio_codec == expected
    video_end = video[-1][0] + 1 / 30
    (first_start, first_end), (second_start, second_end) = audio_spans(audio_read, gap=0.005)  # the 0.3 s hole is filled
    assert abs(first_start - video[0][0]) < 0.03  # from the first frame on, not before it
    assert abs(second_end - video_end) < 0.03  # up to the end of the last frame, not after it
    hole_at = video[0][0] + 60 * n / AUDIO_RATE + 0.3 - 0.1  # where the 2 s jump starts
    assert 0 <= first_end - hole_at < 0.045  # (the samples before a jump are padded to a whole encoder frame)
    assert abs(second_start - (hole_at + 2.0)) < 0.03


# ---------------------------------------------------------------------------------------------
# live runs, end to end


def test_relay_keeps_audio_in_sync_in_files(tmp_path):
    """A paced lavfi source with flash and beep relayed into four containers at once."""
    config = fast_config(tmp_path)
    outputs = [tmp_path / f"sync.{suffix}" for suffix in ("ts", "mp4", "mkv", "flv")]
    messages: list[str] = []
    summary = run_live(live_input(f"lavfi:{SYNC_GRAPH}", config), [str(p) for p in outputs], config, max_seconds=4.5, report=messages.append)
    assert summary.audio_chunks > 100 and not messages
    for path in outputs:
        video, audio, codec = read_file(path)
        assert codec == "aac", path.name
        assert_in_sync(path.suffix, video, audio, flashes=3)
        [(video_start, video_end)], [(audio_start, audio_end)] = video_spans(video), audio_spans(audio)
        assert abs(audio_start - video_start) < 0.05 and abs(audio_end - video_end) < 0.1, (path.name, video_start, video_end, audio_start, audio_end)


AV_PUBLISHER = r"""
import sys, time, av
url, seconds, graph = sys.argv[1], float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 60
while True:  # the relay listens once its models are loaded: retry until it does
    out = av.open(url, "w", format="rtsp", options={"rtsp_transport": "tcp"})
    video = out.add_stream("libx264", rate=30)
    video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
    video.options = {"preset": "ultrafast", "tune": "zerolatency"}
    audio = out.add_stream("aac", rate=48000, layout="stereo")
    try:
        out.start_encoding()
        break
    except (OSError, av.error.FFmpegError):
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
source = av.open(graph, format="lavfi")
start = time.monotonic()
for frame in source.decode(source.streams.video[0], source.streams.audio[0]):
    if frame.time > seconds:
        break
    time.sleep(max(0.0, start + frame.time - time.monotonic()))
    out.mux((video if isinstance(frame, av.VideoFrame) else audio).encode(frame))
out.close()
"""


class AvReader(threading.Thread):
    """An RTSP listener (FFmpeg's server mode, one publisher) decoding video and audio."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.video: list = []
        self.audio: list = []
        self.codec: str | None = None

    def run(self) -> None:
        # FFmpeg's own timeouts (the in-process publisher holds the GIL while it connects)
        options = {"rtsp_flags": "listen", "listen_timeout": "20", "rtsp_transport": "tcp", "timeout": "15000000"}
        try:
            with av.open(self.url, options=options) as container:
                self.codec = container.streams.audio[0].codec_context.name if container.streams.audio else None
                read_av(container, self.video, self.audio)
        except (OSError, av.error.FFmpegError):
            return  # the publisher went away: the test judges what arrived


def test_rtsp_relay_keeps_audio_in_sync_across_a_source_reconnection(tmp_path):
    """RTSP publisher (H.264 + AAC, flash and beep) -> dpstream relay listening -> RTSP reader;
    the publisher stops and publishes again, the relay's source reconnects, its output stays up."""
    in_url, out_url = f"rtsp://127.0.0.1:{free_port()}/in", f"rtsp://127.0.0.1:{free_port()}/out"
    reader = AvReader(out_url)
    reader.start()
    relay = Relay(in_url, out_url, relay_config(tmp_path, method="solid"))
    relay.start()
    graph = f"{FLASH}[out0];{BEEP.format(rate=48000)}[out1]"
    try:
        for session in range(2):
            publisher = subprocess.Popen([sys.executable, "-c", AV_PUBLISHER, in_url, "3.6", graph])
            try:
                assert publisher.wait(60) == 0
            finally:
                publisher.kill()
            if session == 0:
                wait_until(lambda: any("stream ended" in message for message in relay.messages), 20, "the source to drop")
        time.sleep(1.0)  # the frames still in the relay
    finally:
        summary = relay.finish()
        reader.join(20)
    assert summary.source_reconnections == 1 and reader.codec == "aac", relay.messages
    sessions = video_spans(reader.video, fps=30)
    assert len(sessions) == 2, sessions
    heard = audio_spans(reader.audio)
    for start, end in sessions:  # audio flows in both sessions, over (nearly) all of each
        covered = sum(max(0.0, min(end, b) - max(start, a)) for a, b in heard)
        assert covered >= 0.8 * (end - start), (sessions, heard)
    assert_in_sync("rtsp", reader.video, reader.audio, flashes=3)
    after = [offset for offset, _ in flash_offsets([v for v in reader.video if v[0] > sessions[1][0]], reader.audio)]
    assert after, "no flash measured after the reconnection"


def test_webcam_records_a_microphone(tmp_path):
    """``dpstream webcam`` with a (lavfi) camera and ``--audio`` a second, lavfi, input."""
    output = tmp_path / "webcam.mp4"
    command = ["webcam", f"lavfi:{FLASH}", "--audio", f"lavfi:{BEEP.format(rate=48000)}", "-o", str(output),
               "--method", "solid", "--duration", "4", "--ledger", str(tmp_path / "w.ledger.json"), "-q"]
    assert cli_main(command) == 0
    video, audio, codec = read_file(output)
    assert codec == "aac"
    [(video_start, video_end)], [(audio_start, audio_end)] = video_spans(video), audio_spans(audio)
    assert abs(audio_start - video_start) < 0.05 and abs(audio_end - video_end) < 0.1
    # two inputs opened one after the other: their clocks start a few ms apart
    assert_in_sync("webcam", video, audio, flashes=2)


def test_no_audio_relays_video_only(tmp_path):
    output = tmp_path / "silent.ts"
    assert cli_main(["relay", f"lavfi:{SYNC_GRAPH}", str(output), "--no-audio", "--method", "solid", "--duration", "1.5",
                     "--ledger", str(tmp_path / "n.ledger.json"), "-q"]) == 0
    video, audio, codec = read_file(output)
    assert video and codec is None and not audio


def thumbnail(frame: av.VideoFrame) -> np.ndarray:
    return cv2.resize(frame.to_ndarray(format="gray"), (64, 36), interpolation=cv2.INTER_AREA).astype(np.float32)


def mono_audio(path, seconds: float = 1e9) -> tuple[float, np.ndarray]:
    """(time of the first sample, samples) of the first audio stream, at 48 kHz mono."""
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE)
    first, chunks = None, []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for resampled in resampler.resample(frame):
                first = float(resampled.time) if first is None else first
                chunks.append(resampled.to_ndarray()[0])
            if frame.time > seconds:
                break
    return first, np.concatenate(chunks)


@requires_shared
def test_relay_of_a_paced_file_keeps_its_audio_in_sync(tmp_path):
    """The talking clip (H.264, AAC 44.1 kHz) paced in real time, frames dropped on a busy CPU:
    where the output's video and audio come from in the clip is measured, the video by matching
    each output frame to the clip's frames, the audio by cross-correlation with the clip's."""
    clip, output = VIDEOS / FACE_VIDEO, tmp_path / "talking.ts"
    config = fast_config(tmp_path, method="blur")
    summary = run_live(live_input(str(clip), config), [str(output)], config, max_seconds=3.5)
    assert summary.audio_chunks > 50
    with av.open(str(output)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.sample_rate, stream.codec_context.channels) == ("aac", AUDIO_RATE, 2)
        out_frames = [(float(frame.time), thumbnail(frame)) for frame in container.decode(video=0)]
    out_start, out_audio = mono_audio(output)
    [(video_start, video_end)] = spans([(t, t + 1 / 30) for t, _ in out_frames])
    # the clip's video starts 67 ms before its audio: so does the output's
    assert abs(out_start - video_start) < 0.12 and abs(len(out_audio) / AUDIO_RATE - (video_end - video_start)) < 0.12
    clip_times, clip_thumbnails = [], []
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            clip_times.append(float(frame.time))
            clip_thumbnails.append(thumbnail(frame))
            if frame.time > 6.0:
                break
    thumbnails = np.stack(clip_thumbnails)
    video_shift = statistics.median(  # clip time - output time of the frames shown
        clip_times[int(((thumbnails - image) ** 2).mean(axis=(1, 2)).argmin())] - t for t, image in out_frames
    )
    clip_start, clip_audio = mono_audio(clip, 8.0)
    probe = out_audio[AUDIO_RATE // 2: AUDIO_RATE + AUDIO_RATE // 2]
    window = clip_audio[: 7 * AUDIO_RATE]
    size = len(window) + len(probe)
    correlation = np.fft.irfft(np.fft.rfft(window, size) * np.conj(np.fft.rfft(probe, size)), size)[: len(window) - len(probe) + 1]
    energy = np.concatenate([[0.0], np.cumsum(window.astype(np.float64) ** 2)])
    norm = np.sqrt((energy[len(probe):] - energy[: -len(probe)]) * np.sum(probe.astype(np.float64) ** 2))
    peak = int(np.argmax(correlation / np.maximum(norm, 1e-9)))
    assert float(correlation[peak] / norm[peak]) > 0.9  # the output's audio is the clip's
    audio_shift = clip_start + peak / AUDIO_RATE - (out_start + 0.5)  # clip time - output time of the audio heard
    offset = video_shift - audio_shift  # > 0: the audio is late
    print(f"talking: audio - video offset {offset * 1000:.1f} ms ({summary.dropped} of {summary.captured} frames dropped)")
    assert abs(offset) <= MAX_OFFSET
