"""The streaming job's own guarantees: recording time in the status, warm start, streams joining and leaving."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streamsnn.events import make_events
from streamsnn.io import write_npy
from streamsnn.stream.bus import Subscriber
from streamsnn.stream.config import PipelineConfig, SourceConfig
from streamsnn.stream.job import Pipeline
from streamsnn.stream.log import read_decision_log
from streamsnn.stream.messages import check_status


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    from streamsnn.snn import build_model
    from streamsnn.snn.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("nmnist", (2, 34, 34), 10)
    path = tmp_path_factory.mktemp("ckpt") / "n34.pt"
    save_checkpoint(path, model, {"class_names": [str(i) for i in range(10)], "sensor_size": [34, 34, 2],
                                  "binning": {"time_window": 30_000}, "timesteps": 10,
                                  "cutoff": {"policy": "confidence", "epsilon": 0.5}})
    return path


def _events(n, t0, span_us, seed, width=34, height=34):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(t0, t0 + span_us, n))
    t[0], t[-1] = t0, t0 + span_us - 1
    return make_events(rng.integers(0, width, n), rng.integers(0, height, n), t, rng.integers(0, 2, n))


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory):
    """ROOT/Test/<class>/<n>.npy: 3 classes x 4 samples of 34x34 events, 90-200 ms each."""
    root = tmp_path_factory.mktemp("samples")
    spans = []
    for label in range(3):
        (root / "Test" / str(label)).mkdir(parents=True)
        for i in range(4):
            span = 90_000 + 10_000 * (3 * label + i)
            write_npy(root / "Test" / str(label) / f"{i}.npy", _events(600, 1000 * i, span, 10 * label + i))
            spans.append(span)
    return root, spans


def _config(ckpt, sources, **kw):
    kw.setdefault("settle_s", 0.0)
    return PipelineConfig(sources=sources, checkpoint=str(ckpt), endpoint="tcp://127.0.0.1:*", **kw)


@pytest.mark.timeout(60)
def test_event_time_counts_recording_time_for_files_and_folders(tmp_path, ckpt, sample_folder):
    root, spans = sample_folder
    recording = tmp_path / "stream.npy"
    write_npy(recording, _events(20_000, 5_000, 600_000, 99))
    pipeline = Pipeline(_config(ckpt, [SourceConfig(uri=str(recording), stream="file", speed=1.0),
                                       SourceConfig(uri=str(root / "Test"), stream="folder", speed=4.0)],
                                status_interval_s=0.05, cutoff_epsilon=0.9)).open()   # decides at once
    sub = Subscriber(pipeline.endpoint, topic="status")
    time.sleep(0.2)
    assert pipeline.run() == 0
    statuses = []
    while (item := sub.recv(timeout_s=0.5)) is not None:
        statuses.append(item[1])
    sub.close()
    final = {s["stream"]: s for s in pipeline.final_status}
    assert all(check_status(s) for s in statuses)              # the one schema
    # a sample covers its first event to its last + 1; the folder's time is the sum of its samples'
    assert final["folder"]["event_time_s"] == pytest.approx(sum(spans) / 1e6, abs=1e-9)
    # the rest of a decided sample is skipped by the source, and still counted
    assert final["folder"]["events_processed"] == final["folder"]["events_in"] == 12 * 600
    assert final["folder"]["decisions"] == 12
    assert final["folder"]["mean_timesteps"] == 1 and final["folder"]["frames"] == 12     # decided at once
    # a continuous file: up to the clock of its last chunk (at most one ~1 ms slice past the last event)
    assert 0.6 <= final["file"]["event_time_s"] <= 0.6 + 0.0011
    running = [s["event_time_s"] for s in statuses if s["stream"] == "file" and not s["final"]]
    assert running and 0 < min(running) < 0.6 and running == sorted(running)   # counted while it plays


@pytest.mark.timeout(60)
def test_sources_start_after_warm_up_and_settle(tmp_path, ckpt):
    """The replay's clock starts only once the model and every kernel ran and the publisher settled."""
    import streamsnn.preprocess as preprocess

    recording = tmp_path / "dvs128.npy"
    write_npy(recording, _events(50_000, 0, 2_000_000, 5, width=128, height=128))
    config = _config(ckpt, [SourceConfig(uri=str(recording), stream="clip", speed=1.0, sensor_size=(128, 128))],
                     crop=(0, 0, 68, 68), downsample=(2, 2), settle_s=0.3)
    pipeline = Pipeline(config).open()
    assert preprocess._crop_kernel.signatures and preprocess._downsample_kernel.signatures   # warmed in open()
    assert pipeline.stepper.calls == 0
    runner = threading.Thread(target=pipeline.run)
    before = time.perf_counter()
    runner.start()
    time.sleep(0.8)
    pipeline.stop()
    runner.join(5)
    stream = pipeline.streams[0]
    assert pipeline.sources_started - before >= 0.3                     # the settle came first
    assert stream.source.pacer.first_wall >= pipeline.sources_started   # the clock started after it
    assert pipeline.final_status[0]["dropped_events"] == 0


@pytest.mark.timeout(90)
def test_streams_join_and_leave_a_running_job(tmp_path, ckpt, sample_folder):
    """A folder stream joined to a job that is busy with an endless stream decides exactly as when it
    runs alone; the endless stream leaves; the job ends with the folder; every slot comes back."""
    root, _ = sample_folder
    alone_log = tmp_path / "alone.h5"
    assert Pipeline(_config(ckpt, [SourceConfig(uri=str(root / "Test"), stream="late", speed=0.0)],
                            log=str(alone_log))).run() == 0
    alone = read_decision_log(alone_log)

    endless = tmp_path / "endless.npy"
    write_npy(endless, _events(3000, 0, 300_000, 7))
    log = tmp_path / "joined.h5"
    pipeline = Pipeline(_config(ckpt, [SourceConfig(uri=str(endless), stream="endless", speed=1.0, loop=True)],
                                log=str(log)))
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        time.sleep(0.5)
        assert pipeline.add_stream(SourceConfig(uri=str(root / "Test"), stream="late", speed=0.0)) == "late"
        late = next(s for s in pipeline.streams if s.name == "late")
        assert late.lane.closed.wait(30)
        assert pipeline.remove_stream("endless")
        runner.join(10)
        assert not runner.is_alive()
    finally:
        pipeline.stop()
        runner.join(5)
    assert pipeline.exit_code == 0
    assert pipeline.scheduler.state.in_use == 0
    rows = read_decision_log(log)
    joined = [r for r in rows if r["stream"] == "late"]
    keys = ("seq", "label", "timesteps", "confidence", "target", "window_start_us", "window_end_us")
    assert [tuple(r[k] for k in keys) for r in joined] == [tuple(r[k] for k in keys) for r in alone]
    assert any(r["stream"] == "endless" for r in rows)
    states = {s["stream"]: s["state"] for s in pipeline.final_status}
    assert states == {"late": "finished"}             # the removed stream had its final status then


@pytest.mark.timeout(60)
def test_stop_while_waiting_for_subscribers_ends_the_job_at_once(tmp_path, ckpt):
    """Ctrl-C / SIGTERM during the wait for subscribers (nobody comes) ends the job, it does not wait on."""
    recording = tmp_path / "clip.npy"
    write_npy(recording, _events(3000, 0, 300_000, 3))
    pipeline = Pipeline(_config(ckpt, [SourceConfig(uri=str(recording), stream="clip", speed=1.0)],
                                wait_subscribers=3, wait_timeout_s=30.0)).open()
    codes = []
    runner = threading.Thread(target=lambda: codes.append(pipeline.run()))
    runner.start()
    time.sleep(0.3)
    stopped = time.monotonic()
    pipeline.stop("SIGINT", 130)
    runner.join(10)
    assert not runner.is_alive()
    assert time.monotonic() - stopped < 3.0
    assert codes == [130]


def _rows_on_disk(path) -> int:
    """Rows of a decision log as another process sees it (the job holds the file open)."""
    import os
    import subprocess
    import sys

    code = "import sys, h5py; print(h5py.File(sys.argv[1], 'r')['decisions'].shape[0])"
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
    return int(subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              env=env, check=True).stdout)


@pytest.mark.timeout(60)
def test_a_lone_decision_reaches_the_log_file_within_the_flush_interval(tmp_path, ckpt):
    from conftest import decision_message

    recording = tmp_path / "clip.npy"
    write_npy(recording, _events(3000, 0, 300_000, 3))
    log = tmp_path / "log.h5"
    pipeline = Pipeline(_config(ckpt, [SourceConfig(uri=str(recording), stream="clip")], log=str(log))).open()
    try:
        pipeline.publish_decision("s", dict(decision_message(0), frame_available_ns=time.time_ns()))
        # and no decision after it
        time.sleep(1.5)                                         # the log's flush interval is 0.5 s
        assert _rows_on_disk(log) == 1
    finally:
        pipeline.close()


@pytest.mark.timeout(60)
def test_a_log_write_error_stops_the_job_with_exit_code_1(tmp_path, ckpt, capsys):
    recording = tmp_path / "clip.npy"
    write_npy(recording, _events(3000, 0, 300_000, 3))
    log = tmp_path / "log.h5"
    pipeline = Pipeline(_config(ckpt, [SourceConfig(uri=str(recording), stream="clip", speed=1.0, loop=True)],
                                log=str(log))).open()
    # a row the log cannot write (no fields): the writer's append raises, as on a disk error
    pipeline.publish_decision("s", {"schema": 1, "stream": "s", "frame_available_ns": time.time_ns()})
    assert pipeline.run() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"decision log {log}" in err
    assert pipeline.final_status[0]["log_error"].startswith(f"decision log {log}")


@pytest.mark.timeout(60)
def test_open_failing_part_way_releases_the_port(tmp_path, ckpt):
    from conftest import free_port

    from streamsnn.errors import ConfigError
    from streamsnn.stream.bus import Publisher

    recording = tmp_path / "clip.npy"
    write_npy(recording, _events(3000, 0, 300_000, 3))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = _config(ckpt, [SourceConfig(uri=str(recording), stream="clip")], log="/proc/x.h5")
    config.endpoint = endpoint
    with pytest.raises(ConfigError, match="/proc/x.h5"):
        Pipeline(config).open()
    deadline = time.monotonic() + 3     # ZeroMQ unbinds in its I/O thread, shortly after close()
    while True:
        try:
            Publisher(endpoint).close()      # the port is free again
            break
        except ConfigError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_run_long_latency_percentiles_cost_the_same_at_any_length():
    from streamsnn.stream.stats import LatencyHistogram

    rng = np.random.default_rng(0)
    latencies = rng.lognormal(mean=1.0, sigma=0.8, size=300_000)    # ms: a long run's decisions
    histogram = LatencyHistogram()
    size = histogram.counts.nbytes
    for value in latencies:
        histogram.add(float(value))
    assert histogram.count == 300_000 and histogram.counts.nbytes == size   # nothing kept per decision
    p50, p99 = histogram.percentiles()
    assert p50 == pytest.approx(np.percentile(latencies, 50), rel=0.006)
    assert p99 == pytest.approx(np.percentile(latencies, 99), rel=0.006)
    assert LatencyHistogram().percentiles() == (None, None)


@pytest.mark.timeout(60)
def test_a_removed_stream_sends_its_final_status_and_is_forgotten(tmp_path, ckpt):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    write_npy(a, _events(3000, 0, 300_000, 1))
    write_npy(b, _events(3000, 0, 300_000, 2))
    pipeline = Pipeline(_config(ckpt, [SourceConfig(uri=str(a), stream="a", speed=1.0, loop=True),
                                       SourceConfig(uri=str(b), stream="b", speed=1.0, loop=True)],
                                status_interval_s=0.05)).open()
    sub = Subscriber(pipeline.endpoint, topic="status", streams=["a"])
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        time.sleep(0.5)
        removed = next(s for s in pipeline.streams if s.name == "a")
        assert pipeline.remove_stream("a")
        assert [s.name for s in pipeline.streams] == ["b"]
        assert removed not in pipeline.frame_worker._streams
        time.sleep(0.5)                                 # ten status rounds of the job go by
        statuses = []
        while (item := sub.recv(timeout_s=0.3)) is not None:
            statuses.append(item[1])
        assert statuses and statuses[-1]["final"] is True and statuses[-1]["state"] == "stopped"
        assert sum(s["final"] for s in statuses) == 1
    finally:
        pipeline.stop()
        runner.join(5)
        sub.close()
    assert [s["stream"] for s in pipeline.final_status] == ["b"]


@pytest.mark.timeout(60)
def test_an_error_outside_the_frame_stage_ends_the_stream_and_the_job(tmp_path, ckpt, capsys):
    """Not only a stage's process(): whatever raises in the frame thread for a stream (here its queue)
    closes that stream in error, and the job ends with exit code 1 instead of waiting forever."""
    recording = tmp_path / "clip.npy"
    write_npy(recording, _events(3000, 0, 300_000, 3))
    pipeline = Pipeline(_config(ckpt, [SourceConfig(uri=str(recording), stream="clip", speed=1.0, loop=True)])).open()

    def broken_get_nowait():
        raise RuntimeError("queue broke")

    pipeline.streams[0].queue.get_nowait = broken_get_nowait
    codes = []
    runner = threading.Thread(target=lambda: codes.append(pipeline.run()), daemon=True)
    runner.start()
    runner.join(15)
    assert not runner.is_alive() and codes == [1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: queue broke" in err
    assert pipeline.final_status[0]["state"] == "error"


@pytest.mark.timeout(60)
def test_a_stream_error_after_ctrl_c_keeps_the_signal_exit_code(tmp_path, ckpt):
    from streamsnn.stream.frames import StreamClosed

    recording = tmp_path / "clip.npy"
    write_npy(recording, _events(3000, 0, 300_000, 3))
    pipeline = Pipeline(_config(ckpt, [SourceConfig(uri=str(recording), stream="clip", speed=1.0, loop=True)],
                                log=str(tmp_path / "log.h5"))).open()
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    time.sleep(0.3)
    pipeline.stop("SIGINT", 130)
    lane = pipeline.streams[0].lane
    lane.error = "SourceError: the recording went away"      # what the inference thread reports next
    pipeline._stream_closed(lane, StreamClosed("error", RuntimeError("late")))
    runner.join(10)
    assert pipeline.exit_code == 130
    # and after the log's end marker nothing more is sent (it could not be logged)
    assert pipeline.publish_decision("clip", {"frame_available_ns": time.time_ns()}) >= 0
    assert pipeline.publisher.sent == sum(1 for _ in read_decision_log(tmp_path / "log.h5")) + sum(
        1 for _ in pipeline.final_status)
