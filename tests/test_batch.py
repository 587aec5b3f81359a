"""``dpstream batch`` on a real Ray cluster started here on 127.0.0.1 (2 worker CPUs): a folder of
shared clips, parts joined exactly, one draw for a person split over two parts while a worker is
killed mid-task, resume after the driver is killed; bad input."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from conftest import requires_shared

pytest.importorskip("ray")

from dpstream.batch import MANIFEST_NAME, batch  # noqa: E402
from dpstream.cli import main  # noqa: E402
from dpstream.pipeline import anonymize  # noqa: E402

pytestmark = requires_shared
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head with 2 CPUs on 127.0.0.1; its address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run(
        [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard", "false", "--temp-dir", str(temp), "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def stream_facts(path: Path) -> tuple[int, list[int], list[tuple[int, bytes]]]:
    """(frames decoded, video pts in order, audio packets as (pts, bytes))."""
    with av.open(str(path)) as container:
        pts = sorted(p.pts for p in container.demux(container.streams.video[0]) if p.dts is not None)
    with av.open(str(path)) as container:
        audio = [(p.pts, bytes(p)) for p in container.demux(container.streams.audio)] if container.streams.audio else []
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    return frames, pts, [a for a in audio if a[1]]


def key_frame_copy(source: Path, target: Path, seconds: float = 5.0, width: int = 640) -> Path:
    """``source`` re-encoded smaller with a key frame every ``seconds`` (and its audio dropped)."""
    with av.open(str(source)) as reader, av.open(str(target), "w") as writer:
        stream_in = reader.streams.video[0]
        rate = stream_in.average_rate
        out = writer.add_stream("libx264", rate=rate)
        out.width, out.height = width, round(stream_in.codec_context.height * width / stream_in.codec_context.width / 2) * 2
        out.pix_fmt = "yuv420p"
        out.options = {"preset": "ultrafast", "g": str(round(float(rate) * seconds)), "keyint_min": str(round(float(rate) * seconds))}
        for frame in reader.decode(stream_in):
            image = frame.reformat(out.width, out.height).to_ndarray(format="rgb24")
            new = av.VideoFrame.from_ndarray(image, format="rgb24")
            new.pts, new.time_base = frame.pts, frame.time_base
            for packet in out.encode(new):
                writer.mux(packet)
        for packet in out.encode(None):
            writer.mux(packet)
    return target


def test_folder_of_clips_matches_single_runs(cluster, tmp_path, shared_video):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("closeup_512_d3.mp4", "walking_3people_480x270.mp4"):
        shutil.copy(shared_video(name), folder / name)
    (folder / "notes.txt").write_text("not a video\n")  # a folder's other files are left alone
    # blur: the joining is the same for every method (dp's registry and ledgers: the tests below)
    summary = batch(folder, tmp_path / "out", address=cluster, workers=2, chunk_seconds=4.0, method="blur")
    assert summary.done == 2 and not summary.failed and summary.parts == 3  # closeup: key frames at 0 and 8.3 s
    single = anonymize(folder / "walking_3people_480x270.mp4", tmp_path / "single.mp4", method="blur")
    assert single.frames == 41
    assert stream_facts(tmp_path / "out" / "walking_3people_480x270.mp4") == stream_facts(tmp_path / "single.mp4")
    # a single run keeps the source's frames, timestamps and audio packets (tests/test_media_io.py): so must the join
    assert stream_facts(tmp_path / "out" / "closeup_512_d3.mp4") == stream_facts(folder / "closeup_512_d3.mp4")
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert {e["status"] for e in manifest["files"].values()} == {"done"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["closeup_512_d3.mp4", "walking_3people_480x270.mp4", MANIFEST_NAME])


def test_a_list_of_paths_and_urls(cluster, tmp_path, shared_video):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shared_video("x").parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/asl_thanks_640x480.mkv"
        listing = tmp_path / "inputs.txt"
        listing.write_text(f"# a camera's clips\n{url}\n\n{shared_video('walking_3people_480x270.mp4')}\n")
        summary = batch([listing], tmp_path / "out", address=cluster, workers=2, method="blur")
    finally:
        server.shutdown()
    assert summary.done == 2 and not summary.failed
    assert stream_facts(tmp_path / "out" / "asl_thanks_640x480.mkv") == stream_facts(shared_video("asl_thanks_640x480.mkv"))
    assert stream_facts(tmp_path / "out" / "walking_3people_480x270.mp4")[0] == 41


def part_workers() -> list[int]:
    """PIDs of Ray worker processes running a part (Ray names them after the task)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::run_part"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_one_person_over_two_parts_keeps_one_draw_when_a_worker_is_killed(cluster, tmp_path, shared_video):
    clip = key_frame_copy(shared_video("talking_720p_s18.mp4"), tmp_path / "talking_keyed.mp4", seconds=4.7)
    killed = []

    def kill_a_part() -> None:
        victim = wait_for(part_workers, 120, "a worker running a part")[0]
        time.sleep(1.5)  # well into the part: the worker has registered its person
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    killer = threading.Thread(target=kill_a_part, daemon=True)
    killer.start()
    summary = batch([clip], tmp_path / "out", address=cluster, workers=2, chunk_seconds=4.0)
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    assert summary.done == 1 and summary.parts == 2 and not summary.failed  # the killed part was rerun
    assert stream_facts(tmp_path / "out" / clip.name) == stream_facts(clip)  # every frame, the same timestamps
    ledger = json.loads((tmp_path / "out" / "talking_keyed.mp4.ledger.json").read_text())
    assert ledger["parts"] == 2 and ledger["finished"]
    # one person: the second part's track (and the rerun's) matched the registry's draw
    assert ledger["totals"]["people"] == 1 and ledger["totals"]["draws"] == 1 and ledger["totals"]["tracks"] == 2
    assert ledger["worst_case"]["draws"] == 1
    run_ledger = json.loads((tmp_path / "out" / "batch.ledger.json").read_text())
    assert run_ledger["totals"] == {"files": 1, "people": 1, "draws": 1} and run_ledger["worst_case"]["draws"] == 1


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dpstream", "batch", *args, "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, **kwargs,
    )  # fmt: skip


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def done_files(outdir: Path) -> int:
    try:
        files = json.loads((outdir / MANIFEST_NAME).read_text())["files"]
    except (OSError, ValueError):
        return 0
    return sum(e["status"] == "done" for e in files.values())


CLIPS = ("walking_3people_480x270.mp4", "headpose_2people_480x270.mp4", "asl_again_640x480.mkv", "asl_thanks_640x480.mkv")


def test_resume_after_the_driver_is_killed(cluster, tmp_path, shared_video):
    listing = tmp_path / "inputs.txt"
    listing.write_text("# clips\n" + "".join(f"{shared_video(name)}\n" for name in CLIPS))
    outdir = tmp_path / "out"
    args = [str(listing), "-o", str(outdir), "--address", cluster, "--workers", "1", "--chunk-seconds", "0"]
    driver = run_cli(args)
    wait_for(lambda: done_files(outdir) >= 1 or driver.poll() is not None, 180, "a first finished file")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    finished_before = done_files(outdir)
    assert 1 <= finished_before < len(CLIPS), "the run finished before it could be killed"
    for name in CLIPS:  # an output exists only when complete
        if (outdir / name).exists():
            assert stream_facts(outdir / name)[0] == stream_facts(shared_video(name))[0]
    mtimes = {p.name: p.stat().st_mtime_ns for p in outdir.iterdir() if p.name in CLIPS}
    rerun = run_cli(args)
    _, errors = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, errors
    assert f"{finished_before} already done" in errors
    for name in CLIPS:
        assert stream_facts(outdir / name)[0] == stream_facts(shared_video(name))[0]
    assert all((outdir / name).stat().st_mtime_ns == mtime for name, mtime in mtimes.items())  # not redone
    assert done_files(outdir) == len(CLIPS)
    assert json.loads((outdir / "batch.ledger.json").read_text())["totals"]["files"] == len(CLIPS)


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.mp4"], "missing.mp4: no such file"),
        (["nothing*.mp4"], "nothing*.mp4: no file matches"),
        (["{clip}", "--workers", "0"], "--workers: must be an integer >= 1"),
        (["{clip}", "--chunk-seconds", "-1"], "--chunk-seconds: must be a number > 0"),
        (["{clip}", "--epsilon", "1"], "holds a batch run with other settings"),
        (["{clip}", "--method", "dp-pix"], "--method dp-pix: not available in batch runs"),
        (["{inside}"], "is inside the output folder"),
    ],
)
def test_bad_input_is_one_line(tmp_path, shared_video, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / MANIFEST_NAME).write_text(json.dumps({"config_digest": "another", "registry": "run", "files": {}}))
    clip = shared_video("walking_3people_480x270.mp4")
    shutil.copy(clip, outdir / "inside.mp4")
    args = [a.format(clip=clip, inside=outdir / "inside.mp4") for a in args]
    assert main(["batch", *args, "-o", str(outdir)]) == 2
    errors = capsys.readouterr().err
    assert errors.count("\n") == 1 and message in errors, errors
