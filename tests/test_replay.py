"""The replay thread (stream/replay.py): many replays paced on one thread, each as its own thread would."""
from __future__ import annotations

import threading
import time
import types

import numpy as np
import pytest

from streamsnn.stream.queue import EventQueue, SourceEnd, SourceFailure
from streamsnn.stream.replay import ReplayDriver, paced_by_driver
from streamsnn.stream.sources import Chunk, WindowStart, make_source, pacing_slice_us
from conftest import copy_sample

WINDOW_US = 30_000


def _stream(uri, name, *, speed=4.0, limit=None, queue=None):
    source = make_source(str(uri), name, speed=speed, limit=limit)
    source.open(default_sensor_size=(34, 34, 2))
    source.warm_up(pacing_slice_us(WINDOW_US, speed, source.kind))
    return types.SimpleNamespace(source=source, name=name, queue=queue or EventQueue("block"),
                                 stop=threading.Event(), slice_us=pacing_slice_us(WINDOW_US, speed, source.kind))


def _drain(stream, timeout_s=30.0, hold_s=0.0):
    """Everything the stream's queue gets, with the perf_counter time of its arrival, until its end."""
    items = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = stream.queue.get(timeout=0.05)
        if item is None:
            continue
        items.append((time.perf_counter(), item))
        if isinstance(item, (SourceEnd, SourceFailure)):
            return items
        if hold_s:
            time.sleep(hold_s)
    raise AssertionError(f"{stream.name}: no end within {timeout_s} s")


def _expected_items(stream_uri, name, limit, slice_us=WINDOW_US):
    """The same source's items from its own generator, unpaced (speed 0 gives the same windows)."""
    source = make_source(str(stream_uri), name, speed=0.0, limit=limit)
    source.open(default_sensor_size=(34, 34, 2))
    return list(source.items(threading.Event(), slice_us))


def _replay_all(streams, hold_s=0.0):
    """Every stream through one replay thread, each drained by a consumer thread of its own: the items
    with their arrival times, per stream, and the time the replay started."""
    stop = threading.Event()
    driver = ReplayDriver(stop)
    results = {}
    threads = [threading.Thread(target=lambda s=s: results.__setitem__(s.name, _drain(s, hold_s=hold_s)))
               for s in streams]
    for t in threads:
        t.start()
    started = time.perf_counter()
    for s in streams:
        driver.add(s)
    for t in threads:
        t.join(60)
    stop.set()
    driver.thread.join(5)
    return results, started


def _assert_same_items(got, expected):
    """A stream's items, ended by a SourceEnd, are the source's own unpaced items."""
    assert isinstance(got[-1], SourceEnd) and not got[-1].stopped
    assert [type(i) for i in got[:-1]] == [type(i) for i in expected]
    for mine, theirs in zip(got, expected):
        if isinstance(mine, Chunk):
            assert mine.clock_us == theirs.clock_us and np.array_equal(mine.events, theirs.events)


def test_streams_get_their_items_in_order_and_on_time(nmnist_root):
    streams = [_stream(nmnist_root / "Test", f"s{k}", limit=3) for k in range(3)]
    assert all(paced_by_driver(s) for s in streams)
    results, _ = _replay_all(streams)
    expected = _expected_items(nmnist_root / "Test", "x", 3)
    for s in streams:
        _assert_same_items([item for _, item in results[s.name]], expected)
        # paced at speed 4: a chunk never arrives before its event time, and never much after it
        pacer = s.source.pacer
        chunks = [(when, item) for when, item in results[s.name] if isinstance(item, Chunk)]
        first_when, first = chunks[0]
        for when, item in chunks[1:]:
            due = first_when + (item.clock_us - first.clock_us) / 1e6 / 4.0
            assert when >= due - 0.002, (when, due)
        assert pacer.lags.count == len(chunks) and pacer.max_lag < 0.05
        assert s.source.stats()["pacing_lag_p99_ms"] < 50


def test_a_full_queue_holds_back_only_its_own_stream(nmnist_root):
    """Queue of one chunk, a consumer that takes 40 ms per item: everything still arrives, in order,
    nothing dropped, and the other stream is not slowed down."""
    stop = threading.Event()
    driver = ReplayDriver(stop)
    slow = _stream(nmnist_root / "Test", "slow", speed=8.0, limit=2, queue=EventQueue("block", max_chunks=1))
    fast = _stream(nmnist_root / "Test", "fast", speed=8.0, limit=2)
    results = {}
    workers = [threading.Thread(target=lambda: results.__setitem__("slow", _drain(slow, hold_s=0.04))),
               threading.Thread(target=lambda: results.__setitem__("fast", _drain(fast)))]
    for w in workers:
        w.start()
    start = time.perf_counter()
    driver.add(slow)
    driver.add(fast)
    for w in workers:
        w.join(60)
    stop.set()
    expected = _expected_items(nmnist_root / "Test", "x", 2)
    for name in ("slow", "fast"):
        got = [item for _, item in results[name]]
        assert [type(i) for i in got[:-1]] == [type(i) for i in expected]
    assert slow.queue.dropped_chunks == 0
    fast_end = results["fast"][-1][0] - start
    slow_end = results["slow"][-1][0] - start
    assert slow_end > fast_end + 0.1          # the slow consumer held its own stream back ...
    recording_s = sum(1 for i in expected if isinstance(i, WindowStart)) * 0.3 / 8.0
    assert fast_end < recording_s + 0.5       # ... and not the other one


def test_a_failing_source_ends_in_failure_and_the_others_go_on(nmnist_root, tmp_path):
    sample = copy_sample(nmnist_root, tmp_path / "good.bin")
    data = bytearray(sample.read_bytes())
    data[len(data) // 2 // 5 * 5:] = b"\xff" * (len(data) - len(data) // 2 // 5 * 5)   # x = 255 on 34x34
    bad_path = tmp_path / "bad.bin"
    bad_path.write_bytes(bytes(data))
    stop = threading.Event()
    driver = ReplayDriver(stop)
    bad = _stream(bad_path, "bad", speed=8.0)
    good = _stream(sample, "good", speed=8.0)
    driver.add(bad)
    driver.add(good)
    bad_items, good_items = _drain(bad), _drain(good)
    stop.set()
    assert isinstance(bad_items[-1][1], SourceFailure) and "outside the sensor" in str(bad_items[-1][1].error)
    assert isinstance(good_items[-1][1], SourceEnd)
    assert sum(i.events.size for _, i in good_items if isinstance(i, Chunk)) == good.source.events_read > 0


def test_a_stopped_stream_ends_at_once_and_its_source_is_closed(nmnist_root):
    stop = threading.Event()
    driver = ReplayDriver(stop)
    stream = _stream(nmnist_root / "Test", "s", speed=1.0)
    closed = []
    original_close = stream.source.close
    stream.source.close = lambda: (closed.append(True), original_close())
    driver.add(stream)
    time.sleep(0.2)
    stream.stop.set()
    asked = time.perf_counter()
    items = _drain(stream, timeout_s=5)
    assert isinstance(items[-1][1], SourceEnd) and items[-1][1].stopped
    assert items[-1][0] - asked < 0.1 and closed == [True]
    stop.set()
    driver.thread.join(2)
    assert not driver.thread.is_alive()


@pytest.mark.parametrize("speed", [1.0, 0.0])
def test_replays_at_any_speed_go_to_the_replay_thread_and_live_sources_do_not(nmnist_root, speed):
    stream = _stream(nmnist_root / "Test", "s", speed=speed, limit=1)
    assert stream.source.kind == "folder" and paced_by_driver(stream)
    live = types.SimpleNamespace(source=make_source("dv://127.0.0.1:7777", "cam"))   # not opened: no connection
    assert live.source.live and not paced_by_driver(live)


def test_replays_at_speed_0_go_as_fast_as_their_queues_take_them(nmnist_root):
    """Speed 0 on the replay thread: nothing paced, nothing lost, a full queue ("block") only waits."""
    streams = [_stream(nmnist_root / "Test", f"s{k}", speed=0.0, limit=4, queue=EventQueue("block", max_chunks=1))
               for k in range(2)]
    results, started = _replay_all(streams, hold_s=0.002)
    expected = _expected_items(nmnist_root / "Test", "x", 4, slice_us=streams[0].slice_us)
    for s in streams:
        _assert_same_items([item for _, item in results[s.name]], expected)
        assert s.queue.dropped_events == 0
    # four samples of ~300 ms each: far faster than real time
    assert max(when for r in results.values() for when, _ in r) - started < 0.6


def test_stopping_the_replay_thread_closes_every_source(nmnist_root):
    stop = threading.Event()
    driver = ReplayDriver(stop)
    streams = [_stream(nmnist_root / "Test", f"s{k}", speed=1.0) for k in range(5)]
    closed = []
    for s in streams:
        original_close = s.source.close
        s.source.close = lambda s=s, original_close=original_close: (closed.append(s.name), original_close())
        driver.add(s)
    time.sleep(0.2)
    stop.set()
    driver.thread.join(2)
    assert not driver.thread.is_alive()
    assert sorted(closed) == sorted(s.name for s in streams)
    for s in streams:
        items = []
        while (item := s.queue.get(timeout=0)) is not None:
            items.append(item)
        assert isinstance(items[-1], SourceEnd) and items[-1].stopped
