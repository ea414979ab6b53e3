"""The streaming job end to end: real processes, real ZeroMQ sockets, real dv-processing, the bundled
N-MNIST split and recordings the tests write with the project's own writers.

Models here are freshly initialised (plumbing does not need accuracy); the
online-equals-offline test trains one with ``streamsnn train``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_sample, free_port
from streamsnn.stream.bus import Subscriber
from streamsnn.stream.log import read_decision_log
from streamsnn.errors import ConfigError
from streamsnn.stream.job import Pipeline
from streamsnn.stream.queue import EventQueue
from streamsnn.stream.frames import sample_frame_count
from streamsnn.stream.config import PipelineConfig, SourceConfig, load_config

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]


def _synthetic(path, seconds=1.5, rate_hz=40_000, size=(128, 128), seed=0, writer="npy"):
    """A stream with Poisson arrivals over the whole sensor, written as .npy, an HDF5 store or EVT 2.0 RAW."""
    from streamsnn.events import make_events

    rng = np.random.default_rng(seed)
    n = int(seconds * rate_hz)
    t = np.cumsum(rng.exponential(1e6 / rate_hz, n)).astype(np.int64) + 1_000
    events = make_events(rng.integers(0, size[0], n), rng.integers(0, size[1], n), t, rng.integers(0, 2, n))
    if writer == "npy":
        np.save(path, events)
    elif writer == "store":
        from streamsnn.io.store import write_store

        write_store(path, events, size)
    else:
        from streamsnn.io.prophesee import write_raw

        write_raw(path, events, size, encoding=writer)
    return path, events


def _make_checkpoint(path, size=(34, 34), epsilon=0.1, seed=0):
    import torch

    from streamsnn.snn import build_model
    from streamsnn.snn.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = build_model("nmnist", (2, size[1], size[0]), 10)
    save_checkpoint(path, model, {"class_names": [str(i) for i in range(10)], "sensor_size": [size[0], size[1], 2],
                                  "binning": {"time_window": 30_000}, "timesteps": 10,
                                  "cutoff": {"policy": "confidence", "epsilon": epsilon}})
    return path


@pytest.fixture(scope="module")
def ckpt34(tmp_path_factory):
    return _make_checkpoint(tmp_path_factory.mktemp("ckpt") / "n34.pt")


@pytest.fixture(scope="module")
def ckpt128(tmp_path_factory):
    return _make_checkpoint(tmp_path_factory.mktemp("ckpt") / "n128.pt", size=(128, 128))


class LineReader:
    """Collect a child process's stdout lines (JSON) in a thread."""

    def __init__(self, proc):
        self.proc = proc
        self.lines: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                self.lines.append(json.loads(line))

    def decisions(self):
        return [m for m in self.lines if m["topic"].startswith("decision.")]

    def wait_for(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return False


class Collector:
    """An in-process subscriber (connected at once, before the job binds) collecting messages in a thread."""

    def __init__(self, endpoint, **kwargs):
        self.sub = Subscriber(endpoint, **kwargs)
        self.lines: list[dict] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self._stop.is_set():
            item = self.sub.recv(timeout_s=0.1)
            if item is not None:
                self.lines.append({"topic": item[0], **item[1]})

    def decisions(self):
        return [m for m in self.lines if m["topic"].startswith("decision.")]

    def wait_for(self, predicate, timeout):
        return LineReader.wait_for(self, predicate, timeout)

    def close(self):
        self._stop.set()
        self.thread.join(2)
        self.sub.close()


def _subscribe(endpoint, *extra):
    proc = subprocess.Popen([PY, "-m", "streamsnn.cli", "subscribe", endpoint, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, LineReader(proc)


def _run(*args, **kwargs):
    return subprocess.Popen([PY, "-m", "streamsnn.cli", "run", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _toml(path, text):
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the command line job

@pytest.mark.timeout(120)
def test_run_from_toml_two_streams_connected_subscriber_gets_everything(tmp_path, ckpt34, nmnist_root):
    """Two sources share one model with a state each; a subscriber connected before the start gets every
    decision and status; the HDF5 log holds exactly the published decisions."""
    from streamsnn.io import read_events

    single_file = copy_sample(nmnist_root, tmp_path / "single.bin", index=50)
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    sub, reader = _subscribe(endpoint)
    definition = _toml(tmp_path / "job.toml", f"""
[pipeline]
name = "two-streams"
[[source]]
uri = "{nmnist_root / 'Test'}"
stream = "digits"
speed = 0.0
limit = 20
[[source]]
uri = "{single_file}"
stream = "single"
speed = 0.0
[model]
checkpoint = "{ckpt34}"
[cutoff]
epsilon = 0.5
[publish]
endpoint = "{endpoint}"
wait_subscribers = 1
wait_timeout_s = 30.0
[log]
path = "decisions.h5"
""")
    try:
        job = _run(definition, cwd=tmp_path)
        out, err = job.communicate(timeout=90)
        assert job.returncode == 0, err
        assert reader.wait_for(lambda r: sum(1 for m in r.lines if m["topic"].startswith("status.")
                                             and m.get("final")) == 2, 10), reader.lines[-3:]
    finally:
        sub.kill()
    decisions = reader.decisions()
    digits = [m for m in decisions if m["stream"] == "digits"]
    single = [m for m in decisions if m["stream"] == "single"]
    assert [m["seq"] for m in digits] == list(range(20))
    assert [m["seq"] for m in single] == list(range(len(single))) and single
    required = {"schema", "stream", "seq", "label", "confidence", "timesteps", "max_timesteps", "window_start_us",
                "window_end_us", "published_ns", "latency_ms"}
    for m in decisions:
        assert required <= set(m), m
        assert m["topic"] == f"decision.{m['stream']}"
        assert 1 <= m["timesteps"] <= m["max_timesteps"] == 10
        assert m["window_end_us"] - m["window_start_us"] == 30_000 * m["timesteps"]
        assert m["latency_ms"] >= 0
    assert all("target" in m for m in digits) and not any("target" in m for m in single)
    assert [m["target"] for m in digits] == sorted(m["target"] for m in digits)
    log = read_decision_log(tmp_path / "decisions.h5")
    assert len(log) == len(decisions)
    by_key = {(m["stream"], m["seq"]): m for m in decisions}
    for row in log:
        m = by_key[(row["stream"], row["seq"])]
        assert (row["label"], row["timesteps"], row["published_ns"], row["target"]) == \
               (m["label"], m["timesteps"], m["published_ns"], m.get("target"))
    final = {m["stream"]: m for m in reader.lines if m["topic"].startswith("status.") and m.get("final")}
    assert final["digits"]["state"] == "finished" and final["digits"]["decisions"] == 20
    assert final["digits"]["dropped_events"] == 0
    assert final["single"]["events_processed"] == read_events(single_file).size


@pytest.mark.timing
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_within_a_second_with_complete_log(tmp_path, ckpt34, nmnist_root, sig, code):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    log = tmp_path / "d.h5"
    job = _run("--source", nmnist_root / "Test", "--checkpoint", ckpt34, "--publish", endpoint, "--speed", 1,
               "--log", log, "--cutoff-epsilon", 0.5)
    sub = Subscriber(endpoint)
    received = []
    try:
        deadline = time.monotonic() + 60
        while sum(t.startswith("decision.") for t, _ in received) < 4 and time.monotonic() < deadline:
            item = sub.recv(timeout_s=0.5)
            if item:
                received.append(item)
        assert sum(t.startswith("decision.") for t, _ in received) >= 4, job.stderr.read() if job.poll() else ""
        sent = time.monotonic()
        stopped = float("inf")          # stays so if no final status ever comes
        job.send_signal(sig)
        while True:
            item = sub.recv(timeout_s=3)
            if item is None:
                break
            received.append(item)
            if item[0].startswith("status.") and item[1].get("final"):
                stopped = time.monotonic() - sent
                break
        job.wait(timeout=10)
    finally:
        job.kill()
        sub.close()
    assert job.returncode == code, job.stderr.read()
    assert stopped < 1.0
    final = received[-1][1]
    assert final["final"] and final["state"] == "stopped"
    decisions = [m for t, m in received if t.startswith("decision.")]
    rows = read_decision_log(log)
    assert [r["seq"] for r in rows] == list(range(final["decisions"]))
    assert [(r["seq"], r["label"]) for r in rows] == [(m["seq"], m["label"]) for m in decisions]


@pytest.mark.timeout(120)
def test_subscriber_killed_and_restarted_mid_stream(tmp_path, ckpt34, nmnist_root):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    definition = _toml(tmp_path / "job.toml", f"""
[[source]]
uri = "{nmnist_root / 'Test'}"
speed = 3.0
limit = 24
[model]
checkpoint = "{ckpt34}"
[publish]
endpoint = "{endpoint}"
wait_subscribers = 1
wait_timeout_s = 30.0
[log]
path = "{tmp_path / 'd.h5'}"
""")
    first, first_reader = _subscribe(endpoint, "--topic", "decision")
    job = _run(definition)
    second = None
    try:
        assert first_reader.wait_for(lambda r: len(r.lines) >= 3, 60), job.stderr.read() if job.poll() else ""
        first.kill()                     # vanishes without unsubscribing
        first.wait()
        killed_at = len(first_reader.lines)
        second, second_reader = _subscribe(endpoint, "--topic", "decision")
        out, err = job.communicate(timeout=60)
        assert job.returncode == 0, err
        second_reader.wait_for(lambda r: r.lines and r.lines[-1]["seq"] == 23, 5)
    finally:
        job.kill()
        first.kill()
        if second is not None:
            second.kill()
    seqs = [m["seq"] for m in second_reader.lines]
    assert seqs and seqs[-1] == 23
    assert seqs == list(range(seqs[0], 24))               # no gaps once reconnected
    assert seqs[0] >= killed_at
    rows = read_decision_log(tmp_path / "d.h5")
    assert [r["seq"] for r in rows] == list(range(24))   # the job published everything regardless


@pytest.mark.timeout(120)
def test_burst_with_drop_policy_bounds_memory_and_counts_drops(tmp_path, ckpt128):
    """A stream replayed as fast as it can be read (speed 0, looped) into a model that needs milliseconds a
    frame: on any machine reading outruns inference, so the queue stays within its bound, the oldest chunks
    are dropped, every dropped event is counted, and the counts are reported while the job runs."""
    path, events = _synthetic(tmp_path / "burst.npy", seconds=1.0, rate_hz=100_000)
    config = PipelineConfig(
        sources=[SourceConfig(uri=str(path), stream="burst", speed=0.0, loop=True, sensor_size=(128, 128))],
        checkpoint=str(ckpt128), endpoint="tcp://127.0.0.1:*", queue_policy="drop", queue_max_events=4000,
        queue_max_chunks=64, settle_s=0.0, status_interval_s=0.1)
    pipeline = Pipeline(config).open()
    sub = Subscriber(pipeline.endpoint, topic="status")
    time.sleep(0.2)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    statuses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(s["dropped_events"] > 0 for s in statuses):
        if (item := sub.recv(timeout_s=1)) is not None:
            statuses.append(item[1])
    pipeline.stop("test done")
    runner.join(30)
    while (item := sub.recv(timeout_s=1)) is not None:
        statuses.append(item[1])
    sub.close()
    assert not runner.is_alive()
    assert any(s["dropped_events"] > 0 and not s["final"] for s in statuses)   # reported while running
    final = pipeline.final_status[0]
    assert final["events_in"] >= events.size and final["dropped_events"] > 0
    assert final["events_processed"] + final["dropped_events"] + final["queue_events"] == final["events_in"]
    # the queue holds at most max_events, or one chunk when that alone is larger
    slice_us = pipeline.streams[0].slice_us
    largest_chunk = int(np.diff(np.searchsorted(events["t"], np.arange(0, events["t"][-1] + 2 * slice_us,
                                                                       slice_us))).max())
    assert 0 < final["queue_peak_events"] <= max(4000, largest_chunk)
    assert max(s["queue_events"] for s in statuses) <= final["queue_peak_events"]


def test_event_queue_policies():
    from streamsnn.stream.sources import Chunk, WindowStart

    def chunk(n):
        return Chunk(np.zeros(n, dtype=[("t", "<i8")]), 0, 0)

    q = EventQueue("drop", max_events=100, max_chunks=10)
    q.put(WindowStart(0))
    for _ in range(5):
        q.put(chunk(40))
    assert q.events == 80 and q.dropped_events == 120 and q.dropped_chunks == 3 and q.peak_events <= 100
    assert isinstance(q.get(), WindowStart)                 # markers are never dropped
    q = EventQueue("block", max_events=100, max_chunks=10)
    q.put(chunk(80))
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    start = time.monotonic()
    assert not q.put(chunk(80), stop)                      # blocked until stopped
    assert time.monotonic() - start >= 0.15


# --------------------------------------------------------------------------- errors

@pytest.mark.timeout(120)
def test_corrupt_file_is_reported_on_status_and_exits_non_zero(tmp_path, ckpt34, nmnist_root):
    data = bytearray(copy_sample(nmnist_root, tmp_path / "sample.bin").read_bytes())
    middle = len(data) // 2 // 5 * 5
    data[middle:middle + 500] = b"\xff" * 500        # x = 255 on a 34x34 sensor, from a record boundary on
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(bytes(data))
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    sub = Subscriber(endpoint, topic="status")      # connected before the job binds
    try:
        job = _run("--source", corrupt, "--checkpoint", ckpt34, "--publish", endpoint, "--speed", 0)
        out, err = job.communicate(timeout=60)
        statuses = []
        while (item := sub.recv(timeout_s=2)) is not None:
            statuses.append(item[1])
    finally:
        sub.close()
    assert job.returncode == 1
    assert "byte offset" in err and "corrupt.bin" in err
    errors = [m for m in statuses if m.get("state") == "error"]
    assert errors and "byte offset" in errors[-1]["error"]


@pytest.mark.timeout(120)
def test_dv_stream_through_the_job_then_dropped(tmp_path, ckpt128):
    """`streamsnn run --source dv://...` fed by a real NetworkWriter streaming a recording; when the
    sender goes away the job reports it on the status topic and exits non-zero."""
    from test_sources import start_dv_sender

    recording, events = _synthetic(tmp_path / "walk.npy", seconds=9.0, rate_hz=8_000)   # 2.3 s at speed 4
    sender, dv_port = start_dv_sender(tmp_path, recording, speed=4.0)
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    reader = Collector(endpoint)
    try:
        job = _run("--source", f"dv://127.0.0.1:{dv_port}", "--checkpoint", ckpt128, "--publish", endpoint,
                   "--log", tmp_path / "d.h5")
        out, err = job.communicate(timeout=90)
        reader.wait_for(lambda r: any(m.get("final") for m in r.lines), 5)
    finally:
        sender.kill()
        reader.close()
    assert job.returncode == 1, err
    assert "dropped" in err, err
    finals = [m for m in reader.lines if m.get("final")]
    assert finals, (err, reader.lines[-3:])
    final = finals[-1]
    assert final["state"] == "error" and "dropped" in final["error"], final
    assert final["events_in"] == events.size, final
    assert final["events_processed"] + final["dropped_events"] == events.size, final
    decisions = reader.decisions()
    assert decisions and [m["seq"] for m in decisions] == list(range(len(decisions)))
    assert len(read_decision_log(tmp_path / "d.h5")) == len(decisions)


def test_geometry_mismatch_is_refused_with_a_clear_error(tmp_path, ckpt34):
    path, _ = _synthetic(tmp_path / "dvs128.h5", seconds=0.1, writer="store")
    config = PipelineConfig(sources=[SourceConfig(uri=str(path))],
                            checkpoint=str(ckpt34), endpoint="tcp://127.0.0.1:*")
    with pytest.raises(ConfigError, match=r"128x128x2 events .* model expects 34x34x2.*crop"):
        Pipeline(config).open()


# --------------------------------------------------------------------------- definitions

def test_toml_errors_name_the_key_and_the_expected_type(tmp_path):
    cases = {
        '[cutoff]\nepsilon = "0.1"\n': r"\[cutoff\]\.epsilon must be a number in \[0, 1\], got string '0.1'",
        '[[source]]\nuri = "x"\nspeed = true\n': r"\[\[source\]\] #1\.speed must be a number >= 0, got boolean",
        '[binning]\ncrop = [1, 2]\n': r"\[binning\]\.crop must be a list \[x0, y0, width, height\]",
        '[queue]\npolicy = "fast"\n': r'\[queue\]\.policy must be "block" or "drop"',
        '[publish]\nport = 5556\n': r"unknown key \[publish\]\.port",
        '[modle]\n': r"unknown table \[modle\]",
        '[[source]]\nstream = "a"\n': r"\[\[source\]\] #1\.uri is missing",
        '[cutoff]\nepsilon = 2.0\n': r"\[cutoff\]\.epsilon must be a number in \[0, 1\], got 2.0",
        'source = "x"\n[[oops\n': r"not valid TOML",
    }
    for text, pattern in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=pattern):
            load_config(path)


def test_bundled_pipeline_definitions_load(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMSNN_DATA", str(tmp_path))
    files = sorted((REPO / "pipelines").glob("*.toml"))
    assert len(files) >= 4
    names = set()
    for path in files:
        config = load_config(path)
        assert config.sources and config.checkpoint
        assert config.endpoint.startswith("tcp://127.0.0.1:")
        names.add(config.name)
    kinds = {load_config(p).sources[0].uri.split(":")[0] for p in files}
    assert "dv" in kinds and "camera" in kinds
    raw = load_config(REPO / "pipelines" / "prophesee_raw_replay.toml")
    assert raw.crop is not None and raw.downsample is not None


def test_sample_frame_count_matches_to_frame():
    from streamsnn.binning import to_frame
    from streamsnn.events import make_events

    for t_last in (0, 1, 29_999, 30_000, 30_001, 59_999, 60_000, 299_000):
        events = make_events([0, 1], [0, 1], [0, t_last], [0, 1])
        frames = to_frame(events, (34, 34, 2), time_window=30_000, include_incomplete=True)
        assert sample_frame_count(0, t_last, 30_000) == frames.shape[0], t_last


# --------------------------------------------------------------------------- demo

@pytest.mark.timeout(120)
def test_demo_without_data_says_where_to_put_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STREAMSNN_DATA"}
    out = subprocess.run([PY, "-m", "streamsnn.cli", "demo", "--data", str(tmp_path / "nothing")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Test/<digit>/<sample>.bin" in out.stderr and "STREAMSNN_DATA" in out.stderr
    assert "bundled" in out.stderr


@pytest.mark.timeout(120)
def test_demo_replays_and_summarises(ckpt34, nmnist_root):
    port = free_port()
    out = subprocess.run([PY, "-m", "streamsnn.cli", "demo", "--data", str(nmnist_root), "--checkpoint",
                          str(ckpt34), "--limit", "15", "--publish", f"tcp://127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert "samples       15 / 15" in out.stdout
    for word in ("accuracy", "timesteps", "speed-up", "latency", "p99"):
        assert word in out.stdout


@pytest.mark.timeout(120)
def test_demo_with_no_argument_runs_on_the_bundled_split(tmp_path):
    """A fresh user's first command: no data folder, the bundled checkpoint and split, as fast as possible."""
    env = {k: v for k, v in os.environ.items() if k != "STREAMSNN_DATA"}
    env["STREAMSNN_CACHE"] = str(tmp_path / "cache")
    out = subprocess.run([PY, "-m", "streamsnn.cli", "demo", "--speed", "0", "--publish",
                          f"tcp://127.0.0.1:{free_port()}"], env=env, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert "samples       100 / 100" in out.stdout
    # The bundled checkpoint's own evaluation on this split (docs/anytime.md): 96 % at 1.47 mean timesteps.
    assert "accuracy      0.9600" in out.stdout and "timesteps     1.47 on average of T = 10" in out.stdout
    assert list((tmp_path / "cache").glob("nmnist_test100-*/Test/0/*.bin"))


@pytest.mark.timeout(120)
def test_demo_download_without_a_network_is_one_clear_line(tmp_path):
    out = subprocess.run([PY, "-m", "streamsnn.cli", "demo", "--download", str(tmp_path / "nmnist")],
                         capture_output=True, text=True, timeout=100)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not download N-MNIST" in lines[0] and str(tmp_path / "nmnist") in lines[0]
    assert "--data DIR" in lines[0] and "Traceback" not in out.stderr


@pytest.mark.timeout(120)
def test_prophesee_definition_crops_and_downsamples_to_the_model(tmp_path, ckpt34):
    """pipelines/prophesee_raw_replay.toml: a 640x480 RAW recording, looped, cropped to 272x272 and
    downsampled by 8 into the 34x34 model; options on the command line override the file."""
    recording, _ = _synthetic(tmp_path / "gen3.raw", seconds=0.0959, rate_hz=2_000_000, size=(640, 480),
                              writer="evt2")
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    log = tmp_path / "raw.h5"
    job = _run(REPO / "pipelines" / "prophesee_raw_replay.toml", "--source", recording,
               "--checkpoint", ckpt34, "--publish", endpoint, "--speed", 0.5, "--log", log,
               "--cutoff-epsilon", 0.0)
    sub = Subscriber(endpoint, topic="decision")
    got = []
    try:
        while len(got) < 4:
            item = sub.recv(timeout_s=60)
            assert item is not None, job.stderr.read() if job.poll() is not None else "no decision"
            got.append(item[1])
        job.send_signal(signal.SIGINT)
        job.wait(timeout=10)
    finally:
        job.kill()
        sub.close()
    assert job.returncode == 130, job.stderr.read()
    # 95.9 ms per pass at half speed; a window is 10 frames of 30 ms: the loop keeps the clock increasing
    assert all(m["timesteps"] == 10 for m in got)
    assert all(b["window_start_us"] == a["window_end_us"] for a, b in zip(got, got[1:]))
    assert len(read_decision_log(log)) >= 4


@pytest.mark.timeout(120)
def test_job_with_curve_keys_serves_only_allowed_subscribers(tmp_path, ckpt34, nmnist_root):
    keys = tmp_path / "keys"
    made = subprocess.run([PY, "-m", "streamsnn.cli", "keys", str(keys), "--name", "ops"], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    from streamsnn.stream.bus import generate_keys

    other = generate_keys(tmp_path / "other", ["intruder"])
    (tmp_path / "other" / "clients" / "intruder" / "server.key").write_bytes((keys / "server.key").read_bytes())
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    allowed = Subscriber(endpoint, topic="decision", curve_keys=keys / "clients" / "ops")
    intruder = Subscriber(endpoint, topic="decision", curve_keys=other["clients"]["intruder"])
    plain = Subscriber(endpoint, topic="decision")
    definition = _toml(tmp_path / "job.toml", f"""
[[source]]
uri = "{nmnist_root / 'Test'}"
speed = 0.0
limit = 10
[model]
checkpoint = "{ckpt34}"
[publish]
endpoint = "{endpoint}"
curve_keys = "{keys}"
wait_subscribers = 1
""")
    job = _run(definition)
    try:
        got = [allowed.recv(timeout_s=60) for _ in range(10)]
        out, err = job.communicate(timeout=60)
        assert job.returncode == 0, err
        assert all(item is not None for item in got)
        assert [m["seq"] for _, m in got] == list(range(10))
        assert intruder.recv(timeout_s=0.5) is None
        assert plain.recv(timeout_s=0.1) is None
    finally:
        job.kill()
        for s in (allowed, intruder, plain):
            s.close()


def test_source_path_from_an_environment_variable_is_relative_to_the_working_directory(
        tmp_path, monkeypatch):
    (tmp_path / "defs").mkdir()
    definition = tmp_path / "defs" / "job.toml"
    definition.write_text('[[source]]\nuri = "${DATA_UNDER_TEST}/Test"\n\n[model]\ncheckpoint = "ck.pt"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_UNDER_TEST", "data/nmnist")
    config = load_config(definition)
    assert config.sources[0].uri == str(tmp_path / "data" / "nmnist" / "Test")
    # Paths written in the file itself stay relative to the file.
    assert config.checkpoint == str(tmp_path / "defs" / "ck.pt")


@pytest.mark.timeout(120)
def test_demo_sigterm_exits_143_like_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STREAMSNN_DATA"}
    env["STREAMSNN_CACHE"] = str(tmp_path / "cache")
    demo = subprocess.Popen([PY, "-m", "streamsnn.cli", "demo", "--speed", "1", "--publish",
                             f"tcp://127.0.0.1:{free_port()}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "publishing on" in demo.stderr.readline()      # running, its handlers installed
        time.sleep(1.0)
        demo.send_signal(signal.SIGTERM)
        demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 143


@pytest.mark.timeout(120)
def test_demo_pipeline_failure_is_one_line(monkeypatch, capsys, tmp_path):
    from streamsnn import cli

    def broken_start(self):
        raise RuntimeError("the pipeline broke")

    monkeypatch.setenv("STREAMSNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STREAMSNN_DATA", raising=False)
    monkeypatch.setattr(Pipeline, "start", broken_start)
    code = cli.main(["demo", "--limit", "2", "--speed", "0", "--publish", f"tcp://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if "publishing on" not in line]
    assert lines == ["streamsnn demo: error: RuntimeError: the pipeline broke"], err
