"""Live soak: a paced 720p30 RTSP relay on 127.0.0.1 for a long time, with its peers failing.

    python benchmarks/soak.py                         # 30 minutes, an event every 2 minutes
    python benchmarks/soak.py --minutes 2 --event-every 20

Three real processes: a publisher (the shared talking clip, looped, paced by its timestamps,
pushed over RTSP/TCP), `dpstream relay --listen` (the RTSP server the publisher pushes to, and
an RTSP client of the reader), and the reader in this process (FFmpeg's RTSP listener, decoding
everything the relay sends). Events, in turn: the publisher killed and restarted, the publisher
frozen (SIGSTOP: connected, no data) until the relay notices, then killed and restarted, and the
reader dropped and listening again a few seconds later.

Every few seconds the relay's resident memory, threads and open file descriptors are read from
/proc. Every `--judge-every`-th received frame is judged: YuNet finds the faces, dlib's
descriptor compares each with the original person (distance < 0.6 = the same person, a leak).
Neither judge is used by the pipeline. Prints a table (start, end, peak) and the event log, and
writes them to ``benchmarks/results/soak.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.judges import DLIB_SAME_PERSON, DlibRecognizer, YuNet  # noqa: E402

CLIP = "talking_720p_s18.mp4"

PUBLISHER = r"""
import sys, time, av
path, url = sys.argv[1], sys.argv[2]
while True:  # the relay may not listen yet (loading its models, or reconnecting): retry
    try:
        out = av.open(url, "w", format="rtsp", options={"rtsp_transport": "tcp"})
        with av.open(path) as probe:
            stream = out.add_stream_from_template(probe.streams.video[0])
        out.start_encoding()
        break
    except (OSError, av.error.FFmpegError):
        time.sleep(0.2)
start, offset = time.monotonic(), 0  # offset in ticks of the clip's time base
while True:  # the clip looped, timestamps carried on, paced in real time, until killed
    with av.open(path) as source:
        video = source.streams.video[0]
        time_base, first, last = video.time_base, None, 0
        for packet in source.demux(video=0):
            if packet.dts is None:
                continue
            first = packet.dts if first is None else first
            last = max(last, packet.dts - first)
            time.sleep(max(0.0, start + float((offset + packet.dts - first) * time_base) - time.monotonic()))
            packet.dts, packet.pts = packet.dts - first + offset, packet.pts - first + offset
            packet.stream = stream
            out.mux(packet)
    offset += last + round(1 / (video.average_rate * time_base))
"""


def shared_videos() -> Path:
    return Path(os.environ.get("DPSTREAM_SHARED", ROOT.parent / "shared")) / "data" / "videos"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ProcessSample:
    """The relay's resources at one moment, read from /proc."""

    at_s: float
    rss_mb: float
    threads: int
    open_fds: int


def sample_process(pid: int, at_s: float) -> ProcessSample:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return ProcessSample(
        at_s, int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"]), len(os.listdir(f"/proc/{pid}/fd")),
    )


class Reader(threading.Thread):
    """FFmpeg's RTSP listener receiving the relay's output; ``drop()`` closes it and listens again."""

    def __init__(self, url: str, judge_every: int):
        super().__init__(daemon=True)
        self.url, self.judge_every = url, judge_every
        self.arrivals: list[float] = []
        self.to_judge: list[np.ndarray] = []
        self.lock = threading.Lock()
        self.dropping = threading.Event()
        self.stop = threading.Event()
        self.sessions = 0

    def run(self) -> None:
        options = {"rtsp_flags": "listen", "listen_timeout": "5", "timeout": "10000000"}
        while not self.stop.is_set():
            self.dropping.clear()
            try:
                with av.open(self.url, options=options) as container:
                    self.sessions += 1
                    for frame in container.decode(video=0):
                        self.arrivals.append(time.monotonic())
                        if len(self.arrivals) % self.judge_every == 0:
                            with self.lock:
                                self.to_judge.append(frame.to_ndarray(format="rgb24"))
                        if self.dropping.is_set() or self.stop.is_set():
                            break
            except (OSError, av.error.FFmpegError):
                pass  # nobody connected within listen_timeout, or the relay went away: listen again
            if self.dropping.is_set():
                time.sleep(3.0)  # the reader stays away a while before it listens again

    def take(self) -> list[np.ndarray]:
        with self.lock:
            images, self.to_judge = self.to_judge, []
        return images


class LeakJudge:
    """YuNet finds faces in received frames; dlib says whether one is the original person."""

    def __init__(self, originals: list[np.ndarray]):
        self.yunet, self.dlib = YuNet(), DlibRecognizer()
        self.originals = originals
        self.frames = self.faces = self.leaks = 0
        self.closest = float("inf")

    def judge(self, images: list[np.ndarray]) -> None:
        for image in images:
            self.frames += 1
            for box in self.yunet.detect(image).boxes:
                descriptor = self.dlib.descriptor(image, box)
                distance = min(float(np.linalg.norm(descriptor - o)) for o in self.originals)
                self.faces += 1
                self.closest = min(self.closest, distance)
                self.leaks += distance < DLIB_SAME_PERSON


def original_descriptors(clip: Path) -> list[np.ndarray]:
    yunet, dlib = YuNet(), DlibRecognizer()
    with av.open(str(clip)) as container:
        images = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % 20 == 0]
    return [dlib.descriptor(image, box) for image in images for box in yunet.detect(image).boxes]


@dataclass
class SoakResult:
    minutes: float
    samples: list[ProcessSample]
    events: list[str]
    frames_received: int
    frames_after_each_event: list[int]
    reader_sessions: int
    judged_frames: int
    judged_faces: int
    leaks: int
    closest_distance: float
    ledger: dict
    relay_exit: int
    relay_messages: list[str]

    @property
    def start(self) -> ProcessSample:
        """The first sample after the warm-up (models loaded, first frames relayed)."""
        return self.samples[0]

    @property
    def end(self) -> ProcessSample:
        return self.samples[-1]


RELAY_CONFIG = """\
method: dp
detector_recall: normal
transport: tcp
io_timeout: 2.0
reconnect_delay: 0.2
reconnect_max_delay: 1.0
reconnect_jitter: 0.0
preset: ultrafast
live_tune: zerolatency
live_gop: 30
live_queue: 2
"""


def soak(minutes: float, event_every: float, judge_every: int = 60, warmup_s: float = 15.0, report=print) -> SoakResult:
    """Runs the soak and returns its figures; ``report`` gets the event log as it happens."""
    clip = shared_videos() / CLIP
    originals = original_descriptors(clip)
    judge = LeakJudge(originals)
    in_url, out_url = f"rtsp://127.0.0.1:{free_port()}/in", f"rtsp://127.0.0.1:{free_port()}/out"
    with tempfile.TemporaryDirectory(prefix="dpstream-soak-") as folder:
        config, ledger_path, log_path = Path(folder) / "relay.yaml", Path(folder) / "relay.ledger.json", Path(folder) / "relay.log"
        config.write_text(RELAY_CONFIG)
        reader = Reader(out_url, judge_every)
        reader.start()
        with open(log_path, "w") as log:
            relay = subprocess.Popen(
                [sys.executable, "-m", "dpstream", "relay", in_url, out_url, "--listen", "--config", str(config), "--ledger", str(ledger_path), "-q"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )
        publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(clip), in_url])
        events: list[str] = []
        event_starts: list[float] = []
        samples: list[ProcessSample] = []
        began = time.monotonic()

        def log_event(text: str) -> None:
            line = f"{time.monotonic() - began:7.1f} s  {text}"
            events.append(line)
            report(line)

        try:
            wait_for(lambda: len(reader.arrivals) >= 30, 120, "the first relayed frames", relay)
            time.sleep(warmup_s)
            log_event(f"warm: {len(reader.arrivals)} frames received")
            soak_began = time.monotonic()
            next_event, next_sample, kind = soak_began + event_every, soak_began, 0
            while time.monotonic() - soak_began < minutes * 60:
                if relay.poll() is not None:
                    raise RuntimeError(f"the relay exited with {relay.returncode}: {log_path.read_text()[-2000:]}")
                now = time.monotonic()
                if now >= next_sample:
                    samples.append(sample_process(relay.pid, now - soak_began))
                    next_sample += 5.0
                if now >= next_event and now + event_every <= soak_began + minutes * 60:  # time to recover before the end
                    event_starts.append(now)
                    publisher = run_event(kind % 3, publisher, reader, clip, in_url, log_event, log_path)
                    kind += 1
                    next_event = time.monotonic() + event_every
                judge.judge(reader.take())
                time.sleep(0.2)
            samples.append(sample_process(relay.pid, time.monotonic() - soak_began))
        finally:
            publisher.kill()
            publisher.wait(10)
            relay.send_signal(signal.SIGINT)  # finishes the ledger and exits
            try:
                relay_exit = relay.wait(30)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay_exit = relay.wait(10)
            reader.stop.set()
            reader.dropping.set()
            reader.join(15)
        judge.judge(reader.take())
        ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
        messages = log_path.read_text().splitlines()
    bounds = event_starts[1:] + [float("inf")]
    after = [sum(start + 1.0 < t < end for t in reader.arrivals) for start, end in zip(event_starts, bounds)]
    return SoakResult(
        minutes, samples, events, len(reader.arrivals), after, reader.sessions, judge.frames, judge.faces,
        judge.leaks, judge.closest, ledger, relay_exit, messages,
    )


def run_event(kind: int, publisher: subprocess.Popen, reader: Reader, clip: Path, in_url: str, log_event, log_path: Path) -> subprocess.Popen:
    """One failure of a peer; returns the publisher running afterwards."""
    if kind == 0:
        publisher.kill()
        publisher.wait(10)
        log_event("publisher killed, restarted")
        return subprocess.Popen([sys.executable, "-c", PUBLISHER, str(clip), in_url])
    if kind == 1:
        stalls = log_path.read_text().count("stalled")
        publisher.send_signal(signal.SIGSTOP)
        log_event("publisher frozen")
        wait_for(lambda: log_path.read_text().count("stalled") > stalls, 30, "the relay to notice the stall", log_path=log_path)
        publisher.kill()
        publisher.wait(10)
        log_event("stall noticed by the relay; publisher killed, restarted")
        return subprocess.Popen([sys.executable, "-c", PUBLISHER, str(clip), in_url])
    reader.dropping.set()
    log_event("reader dropped, listening again in 3 s")
    return publisher


def wait_for(condition, seconds: float, what: str, relay: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if relay is not None and relay.poll() is not None:
            raise RuntimeError(f"the relay exited with {relay.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            tail = f"; relay log: {log_path.read_text()[-1500:]}" if log_path else ""
            raise TimeoutError(f"timed out waiting for {what}{tail}")
        time.sleep(0.1)


def markdown_report(result: SoakResult, command: str) -> str:
    """The figures as Markdown: resources at start, end and peak, frames, leaks, the event log."""
    peak = max(result.samples, key=lambda s: s.rss_mb)
    rss = np.array([s.rss_mb for s in result.samples])
    minutes = np.array([s.at_s for s in result.samples]) / 60
    trend = f"{np.polyfit(minutes, rss, 1)[0]:+.2f} MB/min over {len(rss)} samples" if len(rss) > 2 else "-"
    totals = result.ledger.get("totals", {})
    lines = [
        "# Live soak: 720p30 RTSP relay on 127.0.0.1 with failing peers",
        "",
        f"Command: `{command}`: {result.minutes:g} min after the warm-up, {len(result.frames_after_each_event)} events "
        "(see `benchmarks/soak.py`).",
        "",
        "| relay process | start | end | peak |",
        "|---|---|---|---|",
        f"| resident memory (MB) | {result.start.rss_mb:.0f} | {result.end.rss_mb:.0f} | {peak.rss_mb:.0f} |",
        f"| threads | {result.start.threads} | {result.end.threads} | {max(s.threads for s in result.samples)} |",
        f"| open file descriptors | {result.start.open_fds} | {result.end.open_fds} | {max(s.open_fds for s in result.samples)} |",
        "",
        f"- resident memory trend: {trend}",
        f"- frames received: {result.frames_received} over {result.reader_sessions} reader sessions; after each event: "
        f"{result.frames_after_each_event}",
        f"- judged: {result.judged_frames} frames, {result.judged_faces} faces, leaks {result.leaks} (closest dlib "
        f"distance to the original {result.closest_distance:.3f}; same person < {DLIB_SAME_PERSON})",
        f"- ledger: people {totals.get('people')}, draws {totals.get('draws')}, finished {result.ledger.get('finished')}; "
        f"relay exit {result.relay_exit}; reconnections logged {sum('reconnected' in m for m in result.relay_messages)}",
        "",
        "Events:",
        "",
        *[f"    {line}" for line in result.events],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length after the warm-up (default 30)")
    parser.add_argument("--event-every", type=float, default=120.0, help="seconds between failures (default 120)")
    parser.add_argument("--judge-every", type=int, default=60, help="judge every Nth received frame (default 60)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "soak.md")
    args = parser.parse_args()
    command = "python benchmarks/soak.py " + " ".join(sys.argv[1:])
    text = markdown_report(soak(args.minutes, args.event_every, args.judge_every), command.strip())
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
