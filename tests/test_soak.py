"""The live soak in short form: `benchmarks/soak.py` (a real publisher process, `dpstream relay
--listen` as a process, a real RTSP reader) for about half a minute with an event every 10 s;
the 30-minute form is `python benchmarks/soak.py`."""

from __future__ import annotations

from conftest import requires_shared

from benchmarks.soak import soak
from dpstream.cli import EXIT_INTERRUPTED


@requires_shared
def test_relay_survives_publisher_kill_freeze_and_reader_drop_with_flat_resources():
    result = soak(minutes=0.75, event_every=10.0, judge_every=20, warmup_s=5.0, report=lambda line: None)
    assert len(result.events) >= 4, result.events  # warm-up, kill, freeze, reader drop
    assert all(frames >= 20 for frames in result.frames_after_each_event), (result.frames_after_each_event, result.relay_messages)
    assert result.reader_sessions >= 2  # the reader dropped and the relay published to it again
    assert result.judged_faces >= 10 and result.leaks == 0, (result.judged_faces, result.closest_distance)
    # a reconnection leaks no thread or descriptor; memory does not grow with them
    assert result.end.threads <= result.start.threads + 1, result.samples
    assert result.end.open_fds <= result.start.open_fds + 1, result.samples
    assert result.end.rss_mb - result.start.rss_mb < 60, result.samples
    # one person over every reconnection: one draw, and a finished ledger
    assert (result.ledger["totals"]["people"], result.ledger["totals"]["draws"]) == (1, 1), result.ledger["people"]
    assert result.ledger["finished"] is True and result.relay_exit == EXIT_INTERRUPTED
