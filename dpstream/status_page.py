"""A small status page for live runs (``--status-port``): ``GET /`` a plain HTML page whose
inline script polls ``GET /status.json`` twice a second. Standard library only, served on a
daemon thread; nothing on the page is fetched from anywhere else.

The page reads ``LiveRun.status()``, which uses only counters and copies kept by the run's
threads: the HTTP thread never calls the anonymizer or the replacer.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, urlunsplit

from dpstream.errors import OutputError

DEFAULT_HOST = "127.0.0.1"
WINDOW_SECONDS = 2.0
"""fps and the recent latency percentiles are over the frames written in the last 2 s."""


class RecentFrames:
    """Write times and capture -> write latencies of the frames of the last ``window`` seconds
    (thread-safe: added by the write thread, read by the HTTP thread)."""

    def __init__(self, window: float = WINDOW_SECONDS, max_frames: int = 4096):
        self.window = window
        self.frames: deque[tuple[float, float]] = deque(maxlen=max_frames)
        self.lock = threading.Lock()

    def add(self, latency: float, now: float | None = None) -> None:
        with self.lock:
            self.frames.append((time.monotonic() if now is None else now, latency))

    def figures(self, now: float | None = None) -> tuple[float, dict[str, float | None]]:
        """Frames per second over the window, and latency p50/p95/p99 in ms over its frames."""
        now = time.monotonic() if now is None else now
        with self.lock:
            while self.frames and self.frames[0][0] < now - self.window:
                self.frames.popleft()
            latencies = sorted(latency for _, latency in self.frames)
        percentiles = {f"p{q}": _percentile_ms(latencies, q) for q in (50, 95, 99)}
        return len(latencies) / self.window, percentiles


def _percentile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1)] * 1000, 1)


def privacy_figures(ledger: dict | None) -> dict:
    """What the page shows of a run's ledger (``RunLedger.contents``): person records and the
    worst-case (ε, δ) one real person has spent; None for methods without such a figure."""
    ledger = ledger or {}
    worst = ledger.get("worst_case") or {}
    epsilon, delta = worst.get("epsilon"), worst.get("delta")
    return {
        "persons": (ledger.get("totals") or {}).get("people"),
        "epsilon_spent": None if epsilon is None else round(float(epsilon), 4),
        "delta_spent": delta,
    }


def redact(url: str) -> str:
    """``url`` without a user name or password (an RTSP camera's ``rtsp://user:pass@host``)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


class StatusPage:
    """Serves ``status()`` (a JSON-able dict) at ``http://HOST:PORT/status.json`` and a page at ``/``."""

    def __init__(self, status: Callable[[], dict], port: int, host: str = DEFAULT_HOST):
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise OutputError(f"--status-port {port}: not a port number (1-65535; 0 for no status page)")
        self.status, self.port, self.host = status, port, host or DEFAULT_HOST
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> str:
        """Bind and serve on a daemon thread; the page's URL. A port in use is an ``OutputError``."""
        server_class = _Server6 if ":" in self.host else _Server
        try:
            self.server = server_class((self.host, self.port), _Handler)
        except OSError as error:
            why = error.strerror or str(error)
            raise OutputError(f"--status-port {self.port}: cannot serve the status page on {self.host} ({why})") from None
        self.server.status = self.status
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.2,), name="dpstream-status", daemon=True)
        self.thread.start()
        return self.url

    def close(self) -> None:
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(2)
        self.server = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    status: Callable[[], dict]


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = urlsplit(self.path).path
        if path == "/status.json":
            try:
                body = json.dumps(self.server.status(), allow_nan=False, default=str).encode()
            except Exception as error:  # a figure that could not be read: say so, keep serving
                body = json.dumps({"error": f"{type(error).__name__}: {error}"}).encode()
            self._send(200, "application/json", body)
        elif path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.encode())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 (http.server's name)
        pass  # no access log on the live status line


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dpstream live</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th { text-align: left; font-weight: normal; color: #555; padding: 2px 1.5em 2px 0; }
td { font-variant-numeric: tabular-nums; padding: 2px 0; }
#state.running { color: #070; } #state.finished, #state.stopped { color: #a00; }
</style>
</head>
<body>
<h1>dpstream live: <span id="state">loading</span></h1>
<table>
<tr><th>source</th><td id="source">-</td></tr>
<tr><th>outputs</th><td id="outputs">-</td></tr>
<tr><th>method</th><td id="method">-</td></tr>
<tr><th>uptime (s)</th><td id="uptime_s">-</td></tr>
<tr><th>frames captured</th><td id="captured">-</td></tr>
<tr><th>frames written</th><td id="written">-</td></tr>
<tr><th>frames dropped</th><td id="dropped">-</td></tr>
<tr><th>drop rate</th><td id="drop_rate">-</td></tr>
<tr><th>frames/s (last 2 s)</th><td id="fps">-</td></tr>
<tr><th>latency p50 / p95 / p99 (ms, last 2 s)</th><td id="latency">-</td></tr>
<tr><th>latency p50 / p95 / p99 (ms, whole run)</th><td id="latency_run">-</td></tr>
<tr><th>faces</th><td id="faces">-</td></tr>
<tr><th>fallbacks</th><td id="fallbacks">-</td></tr>
<tr><th>people</th><td id="persons">-</td></tr>
<tr><th>&epsilon; spent (worst case per person)</th><td id="epsilon_spent">-</td></tr>
<tr><th>reconnections: source / outputs</th><td id="reconnections">-</td></tr>
<tr><th>frames lost while an output was down</th><td id="lost_to_outputs">-</td></tr>
</table>
<p><small>updated <span id="updated">never</span></small></p>
<script>
function text(v) { return v === null || v === undefined ? "-" : String(v); }
function ms(p) { return p ? [p.p50, p.p95, p.p99].map(text).join(" / ") : "-"; }
function set(id, v) { document.getElementById(id).textContent = text(v); }
async function poll() {
  try {
    const s = await (await fetch("status.json", {cache: "no-store"})).json();
    for (const k of ["source", "method", "uptime_s", "captured", "written", "dropped", "fps",
                     "faces", "fallbacks", "persons", "epsilon_spent", "lost_to_outputs"]) set(k, s[k]);
    set("outputs", (s.outputs || []).join(", "));
    set("drop_rate", (100 * s.drop_rate).toFixed(1) + " %");
    set("latency", ms(s.latency_ms));
    set("latency_run", ms(s.latency_run_ms));
    set("reconnections", text(s.source_reconnections) + " / " + text(s.output_reconnections));
    const state = document.getElementById("state");
    state.textContent = s.state; state.className = s.state;
    set("updated", new Date().toLocaleTimeString());
  } catch (e) {
    const state = document.getElementById("state");
    state.textContent = "stopped (no answer)"; state.className = "stopped";
  }
  setTimeout(poll, 500);
}
poll();
</script>
</body>
</html>
"""
