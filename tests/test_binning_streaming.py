"""StreamingBinner: any chunking of a stream gives the frames to_frame gives on the whole; the streams
are a bundled N-MNIST sample and generated scenes everywhere, and real recordings where the data is."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REAL, RECORDINGS
from streamsnn import StreamingBinner, binning, to_frame
from streamsnn.binning import Frame
from streamsnn.errors import ConfigError, EventValidationError
from streamsnn.events import EVENT_DTYPE, make_events
from streamsnn.io import read_events
from generate import scene_events

REAL_STREAMS = ["nmnist_sample.bin", "atis40_dvs128_clip2.bin", "aedat2_dvs128_walking2.aedat",
                "aedat4_dvxplorer_sample.aedat4", "evt2_gen3_sparklers.raw", "evt3_gen41_sample.raw"]
# Generated scenes like those recordings: sensor (w, h), events, span in µs.
SCENES = {"scene_128x128": ((128, 128), 40_000, 1_450_000), "scene_320x240": ((320, 240), 40_000, 590_000),
          "scene_640x480": ((640, 480), 60_000, 96_000), "scene_1280x720": ((1280, 720), 40_000, 8_801)}
# A slice of a recording keeps each example fast; hypothesis chooses where.
MAX_EVENTS = 4000

PROPERTY_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                               HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", params=["generated", pytest.param("real", marks=REAL)])
def source_streams(request, nmnist_root):
    """name -> (events, sensor size): an N-MNIST sample first (bundled, or the real recording's), then
    generated scenes or the real recordings of other sensors."""
    if request.param == "real":
        recordings = request.getfixturevalue("recordings")
        return {name: (read_events(recordings / name), RECORDINGS[name][1]) for name in REAL_STREAMS}
    out = {"bundled_nmnist_sample": (read_events(sorted((nmnist_root / "Test").glob("*/*.bin"))[0]), (34, 34, 2))}
    for seed, (name, (size, n, span)) in enumerate(SCENES.items()):
        out[name] = (scene_events(n, size, seed=31 + seed, t0=1_000_000, duration_us=span), (*size, 2))
    return out


@pytest.fixture(params=["in place", "low bytes"])
def large_frame_counting(request, monkeypatch):
    """Run a test with the counting binner picks, and again with every window after the first in low bytes."""
    if request.param == "low bytes":
        monkeypatch.setattr(binning, "_LOW_COUNTER_BYTES", 0)
        monkeypatch.setattr(binning, "_LOW_COUNTER_BYTES_PER_EVENT", 10**12)
    return request.param


def concat_frames(frames, shape, dtype=np.int16):
    if not frames:
        return np.zeros((0,) + shape, dtype)
    return np.stack([f.data for f in frames])


@st.composite
def stream_plan(draw, source_streams):
    """A slice of a stream, a window, a start, and a split into chunks with clock flushes between them."""
    name = draw(st.sampled_from(sorted(source_streams)))
    everything, sensor_size = source_streams[name]
    length = draw(st.integers(0, min(MAX_EVENTS, len(everything))))
    first = draw(st.integers(0, len(everything) - length))
    events = everything[first:first + length]
    span = int(everything["t"][-1] - everything["t"][0]) * MAX_EVENTS // len(everything) + 1
    time_window = draw(st.integers(max(span // 25, 1), max(span // 2, 2)))
    t0 = int(events["t"][0]) if length else int(everything["t"][0])
    start_time = draw(st.one_of(st.none(), st.integers(t0 - 2 * time_window, t0 + time_window)))
    cuts = sorted(draw(st.lists(st.integers(0, length), max_size=40)))
    # Runs of one-event chunks somewhere in the stream.
    if length and draw(st.booleans()):
        at = draw(st.integers(0, length - 1))
        cuts = sorted(cuts + list(range(at, min(at + 30, length))))
    # After some chunks the source's clock ticks: flush up to a time no later than the next event.
    flush_after = draw(st.lists(st.booleans(), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    return sensor_size, events, time_window, start_time, cuts, flush_after, draw(st.randoms(use_true_random=False))


@settings(max_examples=100, **PROPERTY_SETTINGS)
@given(data=st.data())
def test_any_chunking_equals_to_frame_on_the_whole(source_streams, data, large_frame_counting):
    sensor_size, events, time_window, start_time, cuts, flush_after, rnd = data.draw(stream_plan(source_streams))
    binner = StreamingBinner(sensor_size, time_window, start_time=start_time)
    chunks = np.split(events, cuts)
    frames = []
    clock = None
    for i, chunk in enumerate(chunks):
        frames += binner.push(chunk)
        if flush_after[i]:
            pushed_until = sum(len(c) for c in chunks[:i + 1])
            lowest = int(events["t"][pushed_until - 1]) if pushed_until else (start_time or 0) - time_window
            highest = int(events["t"][pushed_until]) if pushed_until < len(events) else lowest + 3 * time_window
            tick = rnd.randint(min(lowest, highest), highest)
            frames += binner.flush(tick)
            clock = tick if clock is None else max(clock, tick)
    if not len(events) and start_time is None:
        assert frames == [] and binner.flush(10**9) == []
        return
    start = start_time if start_time is not None else int(events["t"][0])
    end = max([start + time_window] + ([int(events["t"][-1])] if len(events) else [])
              + ([clock] if clock is not None else []))
    frames += binner.flush(end)
    expected = to_frame(events, sensor_size, time_window=time_window, start_time=start, end_time=end)
    shape = (sensor_size[2], sensor_size[1], sensor_size[0])
    assert np.array_equal(concat_frames(frames, shape), expected)
    assert [f.t_start for f in frames] == [start + k * time_window for k in range(len(expected))]
    assert all(f.t_end == f.t_start + time_window for f in frames)


@settings(max_examples=15, **PROPERTY_SETTINGS)
@given(data=st.data())
def test_one_event_chunks_and_empty_chunks(source_streams, data):
    events, sensor_size = next(iter(source_streams.values()))  # the N-MNIST sample
    assert sensor_size == (34, 34, 2)
    first = data.draw(st.integers(0, len(events) - 300))
    events = events[first:first + 300]
    window = data.draw(st.integers(200, 20000))
    binner = StreamingBinner((34, 34, 2), window)
    frames = []
    empty = np.zeros(0, EVENT_DTYPE)
    for i in range(len(events)):
        frames += binner.push(events[i:i + 1])
        frames += binner.push(empty)
    end = max(int(events["t"][-1]), int(events["t"][0]) + window)
    frames += binner.flush(end)
    expected = to_frame(events, (34, 34, 2), time_window=window, end_time=end)
    assert np.array_equal(concat_frames(frames, (2, 34, 34)), expected)


def test_push_returns_frames_as_soon_as_an_event_closes_them():
    binner = StreamingBinner((4, 4, 2), 100, start_time=0)
    assert binner.push(make_events([0, 1], [0, 0], [10, 99], [1, 0])) == []
    frames = binner.push(make_events([2], [3], [100], [1]))
    assert [(f.t_start, f.t_end) for f in frames] == [(0, 100)]
    assert frames[0].data[1, 0, 0] == 1 and frames[0].data[0, 0, 1] == 1 and frames[0].data.sum() == 2
    # A jump over empty windows returns them all, empty.
    frames = binner.push(make_events([0], [0], [450], [0]))
    assert [(f.t_start, f.t_end) for f in frames] == [(100, 200), (200, 300), (300, 400)]
    assert frames[0].data.sum() == 1 and frames[1].data.sum() == 0 and frames[2].data.sum() == 0
    assert binner.open_window == (400, 500)


def test_events_before_start_time_are_ignored_like_to_frame():
    events = make_events([0, 1, 2, 3], [0, 0, 0, 0], [98, 99, 100, 250], [1, 1, 1, 1])
    binner = StreamingBinner((4, 1, 2), 50, start_time=100)
    frames = binner.push(events[:2]) + binner.push(events[2:]) + binner.flush(300)
    expected = to_frame(events, (4, 1, 2), time_window=50, start_time=100, end_time=300)
    assert np.array_equal(concat_frames(frames, (2, 1, 4)), expected)
    assert frames[0].data.sum() == 1 and frames[0].data[1, 0, 2] == 1


def test_flush_yields_empty_frames_for_a_silent_camera_on_time():
    binner = StreamingBinner((4, 4, 2), 1000, start_time=5000)
    assert binner.flush(5999) == []
    frames = binner.flush(8000)
    assert [(f.t_start, f.t_end) for f in frames] == [(5000, 6000), (6000, 7000), (7000, 8000)]
    assert not any(f.data.any() for f in frames)
    assert binner.flush(7500) == []  # a clock going backwards closes nothing


def test_event_before_the_flushed_clock_is_an_error_and_changes_nothing():
    binner = StreamingBinner((4, 4, 2), 100, start_time=0)
    binner.push(make_events([1], [1], [50], [1]))
    binner.flush(120)
    with pytest.raises(EventValidationError, match="flushed up to t = 120") as info:
        binner.push(make_events([1, 1], [1, 1], [110, 130], [1, 1]))
    assert info.value.index == 0 and info.value.field == "t"
    assert binner.push(make_events([2], [2], [120], [0])) == []
    frames = binner.flush(200)
    assert frames[0].data.sum() == 1 and frames[0].data[0, 2, 2] == 1


def test_bad_chunks_raise_and_leave_the_binner_as_it_was():
    binner = StreamingBinner((8, 8, 2), 100)
    binner.push(make_events([1], [1], [10], [1]))
    bad_chunks = [
        (make_events([1, 1], [1, 1], [20, 15], [1, 1]), "chunk event 1 has t = 15", "t"),
        (make_events([1], [1], [5], [1]), "earlier chunks reached t = 10", "t"),
        (make_events([1, 8], [1, 1], [20, 30], [1, 1]), "chunk event 1: x = 8 is outside", "x"),
        (make_events([1, 1], [1, -1], [20, 30], [1, 1]), "chunk event 1: y = -1", "y"),
        (make_events([1, 1], [1, 1], [20, 300], [1, 2]), "chunk event 1: polarity p = 2", "p"),
    ]
    for chunk, message, field in bad_chunks:
        with pytest.raises(EventValidationError, match=message) as info:
            binner.push(chunk)
        assert info.value.field == field
    frames = binner.push(make_events([2], [2], [250], [0]))
    assert [f.data.sum() for f in frames] == [1, 0]


def test_one_polarity_sensor_and_mixed_polarities():
    binner = StreamingBinner((4, 4, 1), 10)
    binner.push(make_events([1], [1], [0], [1]))
    with pytest.raises(EventValidationError, match="one-polarity sensor"):
        binner.push(make_events([1], [1], [3], [0]))
    frames = binner.flush(10)
    assert frames[0].data.shape == (1, 4, 4) and frames[0].data[0, 1, 1] == 1


def test_bad_first_polarity_on_a_one_polarity_sensor_is_an_error():
    binner = StreamingBinner((4, 4, 1), 10)
    with pytest.raises(EventValidationError, match="chunk event 0: polarity p = 5"):
        binner.push(make_events([1], [1], [0], [5]))
    assert binner.push(make_events([1], [1], [0], [0])) == []


def test_reset_starts_a_new_stream_with_its_own_clock():
    binner = StreamingBinner((4, 4, 2), 10)
    binner.push(make_events([1, 1], [1, 1], [1000, 1015], [1, 1]))
    binner.reset()
    assert binner.open_window is None
    frames = binner.push(make_events([2, 2], [2, 2], [3, 14], [0, 0]))
    assert [(f.t_start, f.t_end) for f in frames] == [(3, 13)]
    binner.reset(start_time=0)
    assert binner.open_window == (0, 10)


def test_frames_share_memory_with_torch_tensors_and_keep_their_dtype():
    torch = pytest.importorskip("torch")
    binner = StreamingBinner((4, 3, 2), 10, dtype=np.float32)
    frames = binner.push(make_events([3, 0], [2, 0], [0, 10], [1, 0]))
    tensor = frames[0].as_tensor()
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (2, 3, 4)
    assert tensor.data_ptr() == frames[0].data.ctypes.data
    assert tensor[1, 2, 3] == 1
    assert isinstance(frames[0], Frame) and "t_start=0" in repr(frames[0])


def test_counts_saturate_in_the_stream_too():
    binner = StreamingBinner((2, 2, 2), 10**9, start_time=0)
    n = 33000
    binner.push(make_events(np.zeros(n, int), np.zeros(n, int), np.arange(n), np.ones(n, int)))
    frame, = binner.flush(10**9)
    assert frame.data[1, 0, 0] == 32767


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_pushes_inside_the_window_saturate_and_fail_like_the_general_way(dtype):
    """Chunks that stay in the open window take the one-loop path: a pixel reaching saturation and a bad
    event are taken back there and redone the general way, so the frames equal to_frame's."""
    rng = np.random.default_rng(3)
    n = 40_000
    hot = rng.random(n) < 0.9  # pixel (0, 0) of channel 1 passes 32,767 counts mid-stream
    good = make_events(np.where(hot, 0, rng.integers(0, 4, n)), np.where(hot, 0, rng.integers(0, 4, n)),
                       np.arange(n), np.where(hot, 1, rng.integers(0, 2, n)))
    binner = StreamingBinner((4, 4, 2), 10**6, start_time=0, dtype=dtype)
    for start in range(0, n, 700):
        chunk = good[start:start + 700].copy()
        bad = chunk.copy()
        bad["x"][len(bad) // 2] = 4  # outside the sensor: the whole chunk is refused, nothing of it counted
        with pytest.raises(EventValidationError, match="x = 4 is outside"):
            binner.push(bad)
        assert binner.push(chunk) == []
    # a bad chunk once the pixel is saturated: none of its counts may be taken back from the cap
    late = make_events(np.r_[np.zeros(100, int), 9], np.zeros(101, int), n + np.arange(101), np.ones(101, int))
    with pytest.raises(EventValidationError, match="x = 9 is outside"):
        binner.push(late)
    frames = binner.flush(10**6)
    assert frames[0].data[1, 0, 0] == 32767 or dtype == np.float32
    np.testing.assert_array_equal(np.stack([f.data for f in frames]),
                                  to_frame(good, (4, 4, 2), time_window=10**6, start_time=0, end_time=10**6,
                                           dtype=dtype))


def test_whole_float_window_is_accepted():
    assert StreamingBinner((4, 4, 2), 30000.0).time_window == 30000


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32])
def test_carries_and_saturation_on_a_large_sensor_in_any_chunking(dtype, large_frame_counting):
    # Large dense frames count in bytes and carry every 256th count: hot pixels must still come out exact.
    rng = np.random.default_rng(7)
    n = 150_000
    hot = rng.random(n) < 0.8
    events = make_events(np.where(hot, 3, rng.integers(0, 640, n)), np.where(hot, 2, rng.integers(0, 480, n)),
                         np.arange(n) // 3, np.where(hot, 1, rng.integers(0, 2, n)))
    frames = []
    binner = StreamingBinner((640, 480, 2), 20_000, start_time=0, dtype=dtype)
    for chunk in np.split(events, np.sort(rng.integers(0, n, 25))):
        frames += binner.push(chunk)
    frames += binner.flush(50_000)
    window = dict(time_window=20_000, start_time=0, end_time=50_000)
    expected = to_frame(events, (640, 480, 2), **window, dtype=dtype)
    exact = to_frame(events, (640, 480, 2), **window, dtype=np.int32)
    assert np.array_equal(concat_frames(frames, (2, 480, 640), dtype), expected)
    assert exact.max() > 40_000 and np.array_equal(expected, np.minimum(exact, np.iinfo(np.int16).max)
                                                   if dtype == np.int16 else exact)


@pytest.mark.parametrize("kwargs", [dict(time_window=0), dict(time_window=2.5), dict(time_window=10, dtype="u1")])
def test_bad_parameters_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        StreamingBinner((4, 4, 2), **kwargs)


@pytest.mark.parametrize("hot_in_bad_chunk", [600, 33_000])  # carries to borrow back; a carry that would saturate
def test_bad_chunk_inside_a_window_counted_in_low_bytes_changes_nothing(hot_in_bad_chunk, large_frame_counting):
    def hot(n, t0):
        return make_events(np.full(n, 3), np.full(n, 2), t0 + np.arange(n) // 1000, np.ones(n, int))

    sensor = (640, 480, 2)
    good = [make_events([1, 2], [1, 2], [0, 5], [0, 1]), hot(300, 100_000), hot(40, 100_500)]
    bad = hot(hot_in_bad_chunk, 100_600)
    bad["x"][-1] = 640
    binner = StreamingBinner(sensor, 100_000, start_time=0)
    frames = binner.push(good[0]) + binner.push(good[1])  # the second window: in low bytes if forced
    with pytest.raises(EventValidationError, match="x = 640 is outside"):
        binner.push(bad)
    frames += binner.push(good[2]) + binner.flush(200_000)
    expected = to_frame(np.concatenate(good), sensor, time_window=100_000, start_time=0, end_time=200_000)
    assert np.array_equal(concat_frames(frames, (2, 480, 640)), expected)
    assert expected[1, 1, 2, 3] == 340


def test_strided_and_read_only_chunks_of_the_fast_layout_count_right():
    # the in-window fast path calls compiled code for C-contiguous chunks directly; others count the same
    rng = np.random.default_rng(3)
    events = make_events(rng.integers(0, 8, 4000), rng.integers(0, 8, 4000), np.arange(4000), rng.integers(0, 2, 4000))
    binner = StreamingBinner((8, 8, 2), 10_000, start_time=0)
    binner.push(events[:1000])
    strided = events[1000:3000][::2]
    read_only = events[3000:].copy()
    read_only.flags.writeable = False
    binner.push(strided)
    binner.push(read_only)
    frame, = binner.flush(10_000)
    expected = to_frame(np.concatenate([events[:1000], strided, read_only]), (8, 8, 2), time_window=10_000,
                        start_time=0, end_time=10_000)
    assert np.array_equal(frame.data, expected[0])
