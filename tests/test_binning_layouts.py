"""Event layouts users actually hold: to_frame, StreamingBinner and preprocessing read them in place.

Against tonic 1.7.0: a hypothesis sweep over field layouts x modes, tonic's
own frame tests (test/test_representations.py) with ToFrame swapped for
to_frame, and the threaded paths against the one-thread path. No recordings
needed.
"""
from __future__ import annotations

import numpy as np
import pytest
import tonic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsnn import StreamingBinner, binning, preprocess, to_frame
from streamsnn.errors import EventValidationError
from streamsnn.events import EVENT_DTYPE, event_fields

# A handful of layouts, each compiled once by Numba: the project's own,
# tonic's (x, y int16, t int64, p bool, packed to 13 bytes), t first with
# unsigned coordinates, float t, and tonic's test default (all int64).
LAYOUTS = {
    "streamsnn": EVENT_DTYPE,
    "tonic": np.dtype([("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "?")]),
    "t first, uint16": np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")]),
    "float t": np.dtype([("p", "<i4"), ("t", "<f8"), ("y", "<i4"), ("x", "<i4")]),
    "int64": np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")]),
}


def layout(events: np.ndarray, dtype: np.dtype) -> np.ndarray:
    out = np.zeros(len(events), dtype)
    for name in dtype.names:
        out[name] = events[name]
    return out


def random_events(dtype, n, width, height, t_max, seed) -> np.ndarray:
    """n events in dtype: uniform pixels and polarities, sorted integer t below t_max."""
    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype)
    events["x"] = rng.integers(0, width, n)
    events["y"] = rng.integers(0, height, n)
    events["t"] = np.sort(rng.integers(0, t_max, n))
    events["p"] = rng.integers(0, 2, n)
    return events


def tonic_frames(events, sensor_size, **kwargs):
    # tonic writes p = 0 into its input for a one-polarity sensor: give it a copy.
    return tonic.transforms.ToFrame(sensor_size=sensor_size, **kwargs)(events.copy())


@st.composite
def layout_case(draw):
    name = draw(st.sampled_from(sorted(LAYOUTS)))
    dtype = LAYOUTS[name]
    polarities = draw(st.sampled_from([1, 2, 3] if dtype["p"].kind != "b" else [1, 2]))
    n = draw(st.integers(1, 300))
    sensor = (draw(st.integers(1, 9)), draw(st.integers(1, 6)), polarities)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    events = np.zeros(n, dtype)
    events["x"] = rng.integers(0, sensor[0], n)
    events["y"] = rng.integers(0, sensor[1], n)
    t = np.sort(rng.integers(0, draw(st.integers(1, 5000)), n))
    events["t"] = t + (rng.random(n).round(2) if dtype["t"].kind == "f" else 0)
    events["t"] = np.sort(events["t"])
    events["p"] = rng.integers(0, polarities, n) if polarities > 1 else draw(st.integers(0, 1))
    if draw(st.booleans()):  # a strided view of a longer array
        longer = np.zeros(2 * n, dtype)
        longer[::2] = events
        events = longer[::2]
    mode = draw(st.sampled_from(["time_window", "event_count", "n_time_bins", "n_event_bins"]))
    if mode == "time_window":
        window = draw(st.integers(1, 3000))
        kwargs = dict(time_window=window, include_incomplete=draw(st.booleans()),
                      overlap=draw(st.sampled_from([0, window // 3])))
    elif mode == "event_count":
        count = draw(st.integers(1, 120))
        kwargs = dict(event_count=count, include_incomplete=draw(st.booleans()),
                      overlap=draw(st.sampled_from([0, count // 2])))
    else:
        kwargs = {mode: draw(st.integers(1, 12)), "overlap": draw(st.sampled_from([0, 0.25]))}
    return name, events, sensor, kwargs, draw(st.sampled_from([None, 1, 2, 3]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=layout_case())
def test_any_layout_equals_tonic_in_every_mode(case):
    name, events, sensor, kwargs, threads = case
    before = events.copy()
    expected = tonic_frames(events, sensor, **kwargs)
    got = to_frame(events, sensor, threads=threads, **kwargs)
    assert got.dtype == expected.dtype and got.shape == expected.shape, (name, kwargs)
    assert np.array_equal(got, expected), (name, kwargs)
    assert np.array_equal(events, before)


def test_layouts_are_read_in_place_not_copied():
    events = np.zeros(10, LAYOUTS["tonic"])
    fields = event_fields(events)
    assert fields.events is events and np.shares_memory(fields.x, events)
    recarray = np.rec.array(np.zeros(4, LAYOUTS["t first, uint16"]))
    assert np.shares_memory(event_fields(recarray).t, recarray)
    # Field types the kernels do not read (float coordinates) are converted, values checked.
    floats = np.zeros(3, [("x", "<f4"), ("y", "<f4"), ("t", "<i8"), ("p", "<i1")])
    assert event_fields(floats).events.dtype == EVENT_DTYPE
    floats["x"][1] = 0.5
    with pytest.raises(EventValidationError, match="non-integer"):
        event_fields(floats)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_streaming_binner_reads_every_layout(name):
    events = random_events(LAYOUTS[name], 5000, 17, 9, 100_000, seed=3)
    binner = StreamingBinner((17, 9, 2), 7000, start_time=0)
    frames = []
    for chunk in np.array_split(events, 37):
        frames += binner.push(chunk)
    frames += binner.flush(100_000)
    expected = to_frame(events, (17, 9, 2), time_window=7000, start_time=0, end_time=100_000)
    assert np.array_equal(np.stack([f.data for f in frames]), expected)
    assert np.array_equal(expected, tonic_frames(events, (17, 9, 2), time_window=7000, start_time=0,
                                                 end_time=100_000))


def test_streaming_binner_names_a_bad_event_in_any_layout_and_keeps_its_state():
    events = np.zeros(4, LAYOUTS["tonic"])
    events["t"] = [0, 10, 20, 30]
    events["x"] = [1, 2, 3, 4]
    binner = StreamingBinner((5, 1, 2), 100, start_time=0)
    binner.push(events[:1])
    bad = events[1:].copy()
    bad["x"][2] = 5
    with pytest.raises(EventValidationError, match="chunk event 2: x = 5 is outside") as info:
        binner.push(bad)
    assert info.value.field == "x"
    frames = binner.push(events[1:]) + binner.flush(100)
    assert frames[0].data.sum() == 4 and frames[0].data[0, 0].tolist() == [0, 1, 1, 1, 1]


@pytest.mark.parametrize("name", ["tonic", "t first, uint16", "float t"])
def test_preprocessing_reads_every_layout(name):
    events = random_events(LAYOUTS[name], 3000, 40, 30, 200_000, seed=5)
    reference = layout(events, EVENT_DTYPE)
    sensor = (40, 30, 2)
    for function, args in ((preprocess.downsample, (3,)), (preprocess.crop, ((20, 10),)),
                           (preprocess.merge_polarities, ()), (preprocess.denoise, (5000,))):
        kwargs = {} if function is preprocess.merge_polarities else dict(sensor_size=sensor)
        assert np.array_equal(function(events, *args, **kwargs), function(reference, *args, **kwargs)), function
    stage = preprocess.Denoise(5000, sensor)
    streamed = np.concatenate([stage.push(chunk) for chunk in np.array_split(events, 11)])
    assert np.array_equal(streamed, preprocess.denoise(reference, 5000, sensor_size=sensor))


# --- threads: the split work merges to the one-thread result -------------------

@pytest.mark.parametrize("kwargs", [dict(n_time_bins=1), dict(time_window=900), dict(event_count=700, overlap=300),
                                    dict(time_window=500, start_time=3000), dict(n_event_bins=4, overlap=0.5)])
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_threads_split_frames_and_merge_to_the_same_counts(kwargs, threads):
    rng = np.random.default_rng(11)
    n = 20_000
    events = np.zeros(n, LAYOUTS["tonic"])
    # Hot pixels saturate int16 in the one-frame case: parts of a frame are merged saturating.
    hot = rng.random(n) < 0.3
    events["x"] = np.where(hot, 2, rng.integers(0, 64, n))
    events["y"] = np.where(hot, 1, rng.integers(0, 48, n))
    events["t"] = np.arange(n) // 2
    events["p"] = rng.integers(0, 2, n).astype(bool)
    one = to_frame(events, (64, 48, 2), threads=1, **kwargs)
    assert np.array_equal(to_frame(events, (64, 48, 2), threads=threads, **kwargs), one)
    assert np.array_equal(one, tonic_frames(events, (64, 48, 2), **kwargs)) or one.max() == 32767
    exact = to_frame(events, (64, 48, 2), threads=threads, dtype=np.int32, **kwargs)
    assert np.array_equal(np.minimum(exact, 32767), one)


def test_threads_find_the_first_bad_event_whichever_thread_meets_it():
    n = 40_000
    events = np.zeros(n, LAYOUTS["tonic"])
    events["t"] = np.arange(n)
    events["x"][[5000, 31000]] = 99  # one in the first thread's part, one in the last's
    for threads in (1, 2, 4):
        with pytest.raises(EventValidationError, match="event 5000: x = 99") as info:
            to_frame(events, (10, 1, 2), n_time_bins=3, threads=threads)
        assert info.value.index == 5000


def test_threads_must_be_a_positive_integer():
    events = np.zeros(3, EVENT_DTYPE)
    for threads in (0, -1, 1.5, True):
        with pytest.raises(Exception, match="threads"):
            to_frame(events, (4, 4, 2), time_window=10, threads=threads)


def test_threads_are_chosen_by_input_size(monkeypatch):
    monkeypatch.setattr(binning, "available_threads", lambda: 2)
    assert binning._thread_count(None, 10_000) == 1
    assert binning._thread_count(None, 10 * binning._EVENTS_PER_THREAD) == 2
    assert binning._thread_count(3, 10) == 3


# --- tonic's own frame tests (tonic test/test_representations.py), ToFrame -> to_frame ---

def create_random_input(sensor_size, n_events=10000,
                        dtype=np.dtype([("x", int), ("y", int), ("t", int), ("p", int)]), seed=0):
    """tonic's test helper: uniform coordinates and polarities, sorted t over one second."""
    rng = np.random.default_rng(seed)
    events = np.zeros(n_events, dtype=dtype)
    events["x"] = rng.random(n_events) * sensor_size[0]
    events["p"] = rng.random(n_events) * sensor_size[2]
    events["t"] = np.sort(rng.random(n_events) * 1e6)
    if "y" in dtype.names:
        events["y"] = rng.random(n_events) * sensor_size[1]
    return events, sensor_size


@pytest.mark.parametrize(
    "time_window, event_count, n_time_bins, n_event_bins, overlap, include_incomplete, sensor_size",
    [
        (20000, None, None, None, 0, False, (40, 20, 2)),
        (20000, None, None, None, 200, True, (40, 20, 1)),
        (10000, None, None, None, 100, True, (40, 20, 3)),
        (None, 2000, None, None, 0, False, (40, 20, 2)),
        (None, 2000, None, None, 200, True, (20, 20, 1)),
        (None, 2000, None, None, 100, True, (10, 20, 2)),
        (None, None, 5, None, 0, False, (40, 20, 2)),
        (None, None, 5, None, 0.1, False, (10, 20, 2)),
        (None, None, 5, None, 0.25, True, (40, 20, 2)),
        (None, None, None, 5, 0, True, (40, 20, 2)),
        (None, None, None, 5, 0.1, False, (40, 20, 2)),
        (None, None, None, 5, 0.25, False, (10, 20, 1)),
    ],
)
def test_tonic_representation_frame(time_window, event_count, n_time_bins, n_event_bins, overlap,
                                    include_incomplete, sensor_size):
    n_events = 10000
    orig_events, _ = create_random_input(sensor_size=sensor_size, n_events=n_events)
    kwargs = dict(time_window=time_window, event_count=event_count, n_time_bins=n_time_bins,
                  n_event_bins=n_event_bins, overlap=overlap, include_incomplete=include_incomplete)
    frames = to_frame(orig_events, sensor_size, **kwargs)
    assert np.array_equal(frames, tonic_frames(orig_events, sensor_size, **kwargs))
    # tonic's own assertions, unchanged:
    assert frames.shape[1:] == sensor_size[::-1]
    if time_window is not None:
        stride = time_window - overlap
        times = orig_events["t"]
        if include_incomplete:
            assert frames.shape[0] == int(np.ceil(((times[-1] - times[0]) - time_window) / stride) + 1)
        else:
            assert frames.shape[0] == int(np.floor(((times[-1] - times[0]) - time_window) / stride) + 1)
    if event_count is not None:
        assert event_count == frames[0].sum()
        stride = event_count - overlap
        if include_incomplete:
            assert frames.shape[0] == int(np.ceil((n_events - event_count) / stride) + 1)
        else:
            assert frames.shape[0] == int(np.floor((n_events - event_count) / stride) + 1)
    if n_time_bins is not None:
        assert frames.shape[0] == n_time_bins
    if n_event_bins is not None:
        assert frames.shape[0] == n_event_bins
        assert frames[0].sum() == (1 + overlap) * (n_events // n_event_bins)
    assert frames is not orig_events


def test_tonic_representation_inferred_frame():
    sensor_size = (20, 10, 2)
    orig_events, _ = create_random_input(n_events=30000, sensor_size=sensor_size)
    frames = to_frame(orig_events, None, time_window=25000)
    assert frames.shape[1:] == sensor_size[::-1]
    assert np.array_equal(frames, tonic_frames(orig_events, None, time_window=25000))


@pytest.mark.parametrize("sensor_size", [(200, 1, 2), None])
def test_tonic_representation_audio_frame(sensor_size):
    # A 1-D sensor (audio spikes): no y field; frames are (T, P, W).
    orig_events, _ = create_random_input(sensor_size=(200, 1, 2),
                                         dtype=np.dtype([("x", int), ("t", int), ("p", int)]))
    frames = to_frame(orig_events, sensor_size, time_window=25000)
    assert frames.shape[1:] == (2, 200)
    assert np.array_equal(frames, tonic_frames(orig_events, sensor_size, time_window=25000))
    binner = StreamingBinner((200, 1, 2), 25000, start_time=int(orig_events["t"][0]))
    streamed = binner.push(orig_events) + binner.flush(int(orig_events["t"][-1]))
    assert np.array_equal(np.stack([f.data[:, 0] for f in streamed]), frames)


def test_three_polarity_channels_and_the_errors_that_name_them():
    events, sensor = create_random_input((40, 20, 3), n_events=2000)
    assert np.array_equal(to_frame(events, sensor, n_event_bins=3), tonic_frames(events, sensor, n_event_bins=3))
    events["p"][7] = 3
    with pytest.raises(EventValidationError, match="event 7: polarity p = 3, expected 0 to 2"):
        to_frame(events, sensor, n_event_bins=3)


def test_a_bad_chunk_is_taken_back_exactly_even_next_to_a_saturated_pixel():
    dtype = LAYOUTS["tonic"]

    def chunk(xs, ts):
        events = np.zeros(len(xs), dtype)
        events["x"], events["t"] = xs, ts
        return events

    for dtype_frames, first_count in ((np.int16, 32767), (np.int32, 40000)):
        binner = StreamingBinner((3, 1, 2), 100_000, start_time=0, dtype=dtype_frames)
        binner.push(chunk(np.zeros(40000, int), np.arange(40000)))
        # Counts pixels 0 and 1 of the open window, spills into later windows, then meets x = 3.
        bad = chunk([1, 0, 1, 0, 2, 3], [40000, 40001, 40002, 150_000, 250_000, 260_000])
        with pytest.raises(EventValidationError, match="chunk event 5: x = 3"):
            binner.push(bad)
        frames = binner.push(chunk([2], [40005])) + binner.flush(100_000)
        assert frames[0].data[0, 0].tolist() == [first_count, 0, 1]
