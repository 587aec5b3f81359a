"""The live status page (``--status-port``): a real live run serving it, loaded twice in a real
headless Chromium whose script-updated DOM must show live, growing figures."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from dpstream.cli import main as cli_main
from dpstream.config import Config
from dpstream.live import LiveRun
from dpstream.live_source import live_input
from dpstream.status_page import RecentFrames, privacy_figures, redact

CHROMIUM = Path("/usr/bin/chromium")
SOURCE = "lavfi:testsrc2=size=320x240:rate=15,format=yuv420p,realtime"
FPS = 15


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rendered(url: str, profile: Path) -> str:
    """The page's DOM after its script ran for 3 s of virtual time."""
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom", url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout


def figure(dom: str, name: str) -> str:
    match = re.search(rf'id="{name}"[^>]*>([^<]*)<', dom)
    assert match, f"no #{name} in the page"
    return match.group(1).strip()


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (CI installs it)")
def test_status_page_shows_live_figures_in_headless_chromium(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    config = Config(method="blur", preset="ultrafast", detector_recall="normal")
    messages: list[str] = []
    run = LiveRun(live_input(SOURCE, config), [str(tmp_path / "live.ts")], config, max_seconds=40,
                  report=messages.append, status_port=port)
    thread = threading.Thread(target=run.run, name="test-live-run", daemon=True)
    thread.start()
    try:
        wait_until(lambda: run.summary.written > 0, 30, "the first frame written")
        first = rendered(url, tmp_path / "profile1")
        started = time.monotonic()
        second = rendered(url, tmp_path / "profile2")
        with urllib.request.urlopen(url + "status.json", timeout=5) as answer:
            status = json.load(answer)
        elapsed = time.monotonic() - started
    finally:
        run.stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert messages[0] == f"status page: {url}"

    assert figure(first, "state") == figure(second, "state") == "running"
    assert figure(second, "method") == "blur" and "testsrc2" in figure(second, "source")
    written = [int(figure(dom, "written")) for dom in (first, second)]
    assert 0 < written[0] < written[1], written  # the script updated the numbers, and they grow
    # the JSON was read after the second page: a little later, at the source's frame rate
    assert written[1] <= status["written"] <= written[1] + FPS * elapsed + 5, (written, status["written"], elapsed)
    assert int(figure(second, "captured")) >= written[1]
    assert float(figure(second, "fps")) > 0 and float(figure(second, "uptime_s")) > 0
    p50, p95, p99 = (float(value) for value in figure(second, "latency").split(" / "))
    assert 0 < p50 <= p95 <= p99 < 5000
    assert figure(second, "reconnections") == "0 / 0"
    assert figure(second, "persons") == "-"  # blur keeps no person records
    assert status["state"] == "running" and status["fps"] > 0 and status["epsilon_spent"] is None
    # stopped with the run
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "status.json", timeout=2)


def test_bad_status_port_is_a_one_line_error(tmp_path, capsys):
    command = ["relay", SOURCE, str(tmp_path / "out.ts"), "--method", "blur", "-q", "--status-port"]
    assert cli_main([*command, "70000"]) == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_main([*command, str(port)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("dpstream: error: --status-port 70000: not a port number")
    assert lines[1].startswith(f"dpstream: error: --status-port {port}: cannot serve the status page on 127.0.0.1")
    assert not (tmp_path / "out.ts").exists()


def test_status_figures():
    recent = RecentFrames(window=2.0)
    for n in range(100):
        recent.add((n + 1) / 1000, now=10.0 + n * 0.01)
    fps, latency = recent.figures(now=11.5)
    assert fps == 50 and latency == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert recent.figures(now=20.0) == (0.0, {"p50": None, "p95": None, "p99": None})
    assert redact("rtsp://admin:secret@cam.local:554/s1") == "rtsp://***@cam.local:554/s1"
    assert redact("testsrc2=size=320x240") == "testsrc2=size=320x240"
    assert privacy_figures(None) == {"persons": None, "epsilon_spent": None, "delta_spent": None}
    dp = {"totals": {"people": 3}, "worst_case": {"draws": 2, "epsilon": 2.8284271, "delta": 1e-6}}
    assert privacy_figures(dp) == {"persons": 3, "epsilon_spent": 2.8284, "delta_spent": 1e-6}
