"""to_frame against tonic 1.7.0's ToFrame, value for value, and where streamsnn deliberately differs.

The differential tests compare every mode over a grid of parameters scaled to each stream: generated
scenes of every sensor size and the bundled N-MNIST samples everywhere, and every real recording
(read through streamsnn.io) where the data folder is.
"""
from __future__ import annotations

import numpy as np
import pytest
import tonic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REAL, RECORDINGS
from streamsnn import StreamingBinner, binning, to_frame
from streamsnn.errors import ConfigError, EventValidationError
from streamsnn.events import EVENT_DTYPE, make_events
from streamsnn.io import read_events
from generate import scene_events

# Generated scenes: name -> (sensor size given to to_frame and tonic, scene_events arguments).
# None: neither is told the size and both infer it from the events, as for the DAT recordings.
SCENES = {
    "scene_34x34": ((34, 34, 2), dict(n=5_000, sensor_size=(34, 34), seed=21, duration_us=300_000)),
    "scene_128x128": ((128, 128, 2), dict(n=40_000, sensor_size=(128, 128), seed=22, duration_us=1_450_000)),
    "scene_320x240": ((320, 240, 2), dict(n=60_000, sensor_size=(320, 240), seed=23, t0=1_700_000_000_000_000)),
    "scene_640x480": ((640, 480, 2), dict(n=100_000, sensor_size=(640, 480), seed=24, duration_us=50_000)),
    "scene_1280x720": ((1280, 720, 2), dict(n=60_000, sensor_size=(1280, 720), seed=25, t0=11_718_656,
                                            duration_us=8_801)),
    "scene_unsized": (None, dict(n=4_000, sensor_size=(54, 60), seed=26, duration_us=100_000)),
}
BUNDLED = "bundled_nmnist_sample"


def sensor_of(name):
    if name in SCENES:
        return SCENES[name][0]
    return (34, 34, 2) if name == BUNDLED else RECORDINGS[name][1]


def streams(*names):
    """Test parameters: the real recordings among names are marked as needing the data folder."""
    return [pytest.param(n, marks=REAL) if n in RECORDINGS else n for n in names]


@pytest.fixture(scope="module")
def loaded():
    return {}


@pytest.fixture
def stream(request, loaded, nmnist_root):
    """name -> events: a generated scene, the first bundled N-MNIST sample, or a real recording; read once."""
    def get(name):
        if name not in loaded:
            if name in SCENES:
                loaded[name] = scene_events(**SCENES[name][1])
            elif name == BUNDLED:
                loaded[name] = read_events(sorted((nmnist_root / "Test").glob("*/*.bin"))[0])
            else:
                loaded[name] = read_events(request.getfixturevalue("recordings") / name)
        return loaded[name]
    return get


def tonic_frames(events, sensor_size, **kwargs):
    # tonic writes p = 0 into its input for a one-polarity sensor: give it a copy.
    return tonic.transforms.ToFrame(sensor_size=sensor_size, **kwargs)(events.copy())


def parameter_grid(events):
    """Parameters for every mode, scaled to the recording so that each gives a handful of frames."""
    t = events["t"]
    span = int(t[-1] - t[0])
    n = len(events)
    window = max(span // 7, 1)
    odd_window = span / 11.3  # a float window, as tonic allows
    grid = [
        dict(time_window=window),
        dict(time_window=window, include_incomplete=True),
        dict(time_window=window, overlap=window // 3),
        dict(time_window=window, overlap=window // 3, include_incomplete=True),
        dict(time_window=odd_window),
        dict(time_window=odd_window, overlap=odd_window / 4, include_incomplete=True),
        dict(time_window=window, start_time=int(t[0]) - window // 2, end_time=int(t[-1]) + window),
        dict(time_window=window, start_time=int(t[0]) + span // 3, include_incomplete=True),
        dict(time_window=window, end_time=int(t[0]) + span // 2),
        dict(time_window=2 * span),  # longer than the recording: one incomplete frame
        dict(event_count=max(n // 6, 1)),
        dict(event_count=max(n // 6, 1), include_incomplete=True),
        dict(event_count=max(n // 6, 1), overlap=n // 20),
        dict(event_count=max(n // 6, 1), overlap=n // 20, include_incomplete=True),
        dict(event_count=n + 5),  # more than the recording holds
        dict(n_time_bins=1),
        dict(n_time_bins=6),
        dict(n_time_bins=6, overlap=0.25),
        dict(n_time_bins=9, overlap=0.5),
        dict(n_event_bins=1),
        dict(n_event_bins=7),
        dict(n_event_bins=7, overlap=0.1),
        dict(n_event_bins=4, overlap=0.5),
    ]
    return grid


@pytest.mark.parametrize("name", streams(*SCENES, *sorted(RECORDINGS)))
def test_to_frame_equals_tonic(stream, name):
    events = stream(name)
    sensor_size = sensor_of(name)
    before = events.copy()
    for kwargs in parameter_grid(events):
        expected = tonic_frames(events, sensor_size, **kwargs)
        got = to_frame(events, sensor_size, **kwargs)
        assert got.dtype == expected.dtype == np.int16, kwargs
        assert got.shape == expected.shape, kwargs
        assert np.array_equal(got, expected), kwargs
    assert np.array_equal(events, before), "to_frame modified its input"


def _assert_nmnist_samples_equal_tonic(paths):
    for path in paths:
        events = read_events(path)
        for kwargs in parameter_grid(events)[::2]:
            expected = tonic_frames(events, (34, 34, 2), **kwargs)
            got = to_frame(events, (34, 34, 2), **kwargs)
            assert got.shape == expected.shape and np.array_equal(got, expected), (path.name, kwargs)


def test_to_frame_equals_tonic_on_bundled_nmnist_samples(nmnist_root):
    paths = sorted((nmnist_root / "Test").glob("*/*.bin"))
    assert len(paths) == 100
    _assert_nmnist_samples_equal_tonic(paths)


def test_to_frame_equals_tonic_on_nmnist_train_samples(nmnist_full_root):
    # Every tenth Train sample of the N-MNIST subset (its Test split is the bundled one).
    paths = sorted((nmnist_full_root / "Train").glob("*/*.bin"))[::10]
    assert len(paths) == 100
    _assert_nmnist_samples_equal_tonic(paths)


@pytest.mark.parametrize("name", streams("scene_320x240", "scene_640x480", "scene_1280x720", "evt2_gen3_sample.raw",
                                         "aedat4_dvxplorer_sample.aedat4", "evt3_gen41_sample.raw"))
def test_large_frames_counted_in_low_bytes_equal_tonic(stream, name, monkeypatch):
    # Real scenes are too sparse to pick low-byte counting by themselves: force it.
    monkeypatch.setattr(binning, "_LOW_COUNTER_BYTES_PER_EVENT", 10**12)
    events = stream(name)
    for kwargs in parameter_grid(events)[::3]:
        expected = tonic_frames(events, sensor_of(name), **kwargs)
        assert np.array_equal(to_frame(events, sensor_of(name), **kwargs), expected), kwargs


@pytest.mark.parametrize("name", streams("scene_unsized", BUNDLED, "scene_1280x720", "nmnist_sample.bin",
                                         "evt3_gen41_pedestrians.raw", "dat_ncars_car.dat"))
def test_inferred_sensor_size_equals_tonic(stream, name):
    events = stream(name)
    for kwargs in (dict(time_window=20000), dict(n_event_bins=3)):
        assert np.array_equal(to_frame(events, None, **kwargs), tonic_frames(events, None, **kwargs))


@pytest.mark.parametrize("name", streams("scene_128x128", "atis40_dvs128_clip1.bin"))
def test_one_polarity_sensor_equals_tonic_and_leaves_input_alone(stream, name):
    events = stream(name)
    on_only = events[events["p"] == 1]
    before = on_only.copy()
    for kwargs in (dict(time_window=100000), dict(event_count=5000, overlap=100)):
        expected = tonic_frames(on_only, (128, 128, 1), **kwargs)
        got = to_frame(on_only, (128, 128, 1), **kwargs)
        assert got.shape[1] == 1 and np.array_equal(got, expected)
    assert np.array_equal(on_only, before)


@pytest.mark.parametrize("name", streams(BUNDLED, "nmnist_sample.bin"))
def test_tonic_field_order_and_types_are_accepted(stream, name):
    events = stream(name)
    tonic_style = np.zeros(len(events), dtype=[("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
    for field in "xytp":
        tonic_style[field] = events[field]
    expected = tonic_frames(tonic_style, (34, 34, 2), time_window=10000)
    assert np.array_equal(to_frame(tonic_style, (34, 34, 2), time_window=10000), expected)
    strided = events[::3]
    assert np.array_equal(to_frame(strided, (34, 34, 2), n_time_bins=4),
                          tonic_frames(strided, (34, 34, 2), n_time_bins=4))


@pytest.mark.parametrize("name", streams("scene_320x240", "aedat4_dvxplorer_sample.aedat4"))
def test_dtype_option_gives_the_same_counts(stream, name):
    events = stream(name)
    reference = to_frame(events, (320, 240, 2), n_event_bins=5)
    for dtype in (np.int32, np.float32):
        got = to_frame(events, (320, 240, 2), n_event_bins=5, dtype=dtype)
        assert got.dtype == dtype and np.array_equal(got, reference)
    with pytest.raises(ConfigError, match="dtype"):
        to_frame(events, (320, 240, 2), n_event_bins=5, dtype=np.uint8)


# --- tonic's slicing rules, pinned on small hand-made streams --------------

def small_stream(ts, xs=None):
    n = len(ts)
    xs = list(range(n)) if xs is None else xs
    return make_events(xs, [0] * n, ts, [1] * n)


@pytest.mark.parametrize("kwargs, expected_counts", [
    # Without include_incomplete only windows ending at or before t[-1] = 45: 40 and 45 are dropped.
    (dict(time_window=10), [2, 1, 1, 1]),
    # With it, ceil() opens no window for an event exactly on the last boundary.
    (dict(time_window=10, include_incomplete=True), [2, 1, 1, 2]),
    # A stream shorter than one window still gives one frame.
    (dict(time_window=1000), [7]),
    (dict(event_count=3), [3, 3]),
    (dict(event_count=3, include_incomplete=True), [3, 3, 1]),
    (dict(event_count=100), [7]),  # more than there are: one frame of all, even without include_incomplete
    # n_time_bins floor-divides the span first; the last event is never in a bin.
    (dict(n_time_bins=4), [3, 1, 1, 1]),
    (dict(n_event_bins=2), [3, 3]),  # the 7th event is dropped
    (dict(n_event_bins=10), [0] * 10),  # fewer events than bins: nothing counted
])
def test_slicing_rules(kwargs, expected_counts):
    events = small_stream([0, 5, 10, 20, 30, 40, 45])
    if kwargs.get("include_incomplete") and "time_window" in kwargs:
        events = small_stream([0, 5, 10, 20, 30, 35, 40])
    got = to_frame(events, (10, 1, 2), **kwargs)
    assert np.array_equal(got, tonic_frames(events, (10, 1, 2), **kwargs))
    assert got.sum(axis=(1, 2, 3)).tolist() == expected_counts


def test_time_bins_shorter_than_bin_count_are_empty():
    events = small_stream([100, 101, 102])
    got = to_frame(events, (10, 1, 2), n_time_bins=5)
    assert np.array_equal(got, tonic_frames(events, (10, 1, 2), n_time_bins=5))
    assert got.sum() == 0


# --- where tonic is wrong, streamsnn is right --------------------------------

@pytest.mark.parametrize("kwargs, frames", [
    (dict(time_window=1000), 1), (dict(event_count=10), 1), (dict(n_time_bins=3), 3), (dict(n_event_bins=4), 4),
    (dict(time_window=1000, start_time=0, end_time=5000), 5),
])
def test_empty_input_gives_int16_frames_in_t_p_h_w(kwargs, frames):
    got = to_frame(np.zeros(0, EVENT_DTYPE), (40, 30, 2), **kwargs)
    assert got.dtype == np.int16 and got.shape == (frames, 2, 30, 40) and not got.any()
    # tonic: float64, width and height swapped.
    assert tonic_frames(np.zeros(0, EVENT_DTYPE), (40, 30, 2), **kwargs).shape[2:] == (40, 30)


def test_counts_saturate_instead_of_wrapping():
    n = 40000
    events = make_events(np.full(n, 3), np.full(n, 2), np.arange(n), np.ones(n, int))
    assert tonic_frames(events, (5, 5, 2), n_time_bins=1)[0, 1, 2, 3] < 0  # tonic wraps int16 around
    # n_time_bins drops the last event (tonic's rule), hence n - 1.
    assert to_frame(events, (5, 5, 2), n_time_bins=1)[0, 1, 2, 3] == 32767
    assert to_frame(events, (5, 5, 2), n_time_bins=1, dtype=np.int32)[0, 1, 2, 3] == n - 1
    assert to_frame(events, (5, 5, 2), n_time_bins=1, dtype=np.float32)[0, 1, 2, 3] == n - 1


@pytest.mark.parametrize("low_bytes", [False, True])
@pytest.mark.parametrize("dtype, expected", [(np.int16, 32767), (np.int32, 40000), (np.float32, 40000)])
def test_counts_saturate_on_a_large_sensor_too(dtype, expected, low_bytes, monkeypatch):
    if low_bytes:  # count every large frame in low bytes, however sparse
        monkeypatch.setattr(binning, "_LOW_COUNTER_BYTES_PER_EVENT", 10**12)
    # 640x480 frames are counted in bytes first, with carries: the totals must come out the same.
    n = 40000
    events = make_events(np.r_[np.full(n, 3), np.full(1000, 5)], np.r_[np.full(n, 2), np.full(1000, 7)],
                         np.arange(n + 1000), np.ones(n + 1000, int))
    events = events[np.argsort(events["t"], kind="stable")]
    frames = to_frame(events, (640, 480, 2), n_time_bins=1, dtype=dtype)
    # n_time_bins drops the last event, one of the 1000 at (5, 7).
    assert frames[0, 1, 2, 3] == expected and frames[0, 1, 7, 5] == 999
    assert frames.sum() == expected + 999


@pytest.mark.parametrize("sensor_size", [(64, 48, 2), (640, 480, 2)])
@pytest.mark.parametrize("kwargs", [dict(time_window=20), dict(time_window=20, overlap=15), dict(event_count=3),
                                    # gaps: events before the first window and between windows
                                    dict(time_window=10, start_time=35), dict(time_window=10, overlap=-15),
                                    dict(event_count=2, overlap=-2)])
def test_bad_events_inside_and_outside_frames_on_small_and_large_sensors(sensor_size, kwargs, monkeypatch):
    monkeypatch.setattr(binning, "_LOW_COUNTER_BYTES_PER_EVENT", 10**12)
    t = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    for index, field, value in ((3, "t", 5), (6, "x", 64000 % 32768), (9, "y", -2), (8, "p", 2)):
        events = make_events([1] * 10, [1] * 10, t, [0] * 10)
        events[field][index] = value if field != "x" else sensor_size[0]
        with pytest.raises(EventValidationError) as info:
            to_frame(events, sensor_size, **kwargs)
        assert info.value.index == index and info.value.field == field, (kwargs, field)


def test_polarity_outside_0_1_is_an_error_naming_event_and_field():
    events = make_events([1, 2, 3], [0, 0, 0], [0, 1, 2], [1, -1, 0])
    # tonic counts p = -1 in the last channel without a word.
    assert tonic_frames(events, (5, 1, 2), time_window=10)[0, 1, 0, 2] == 1
    with pytest.raises(EventValidationError, match="event 1: polarity p = -1") as info:
        to_frame(events, (5, 1, 2), time_window=10)
    assert info.value.index == 1 and info.value.field == "p"


def test_unsorted_timestamps_are_an_error():
    events = make_events([1, 2, 3, 4], [0] * 4, [0, 50, 20, 60], [1] * 4)
    for kwargs in (dict(time_window=10), dict(event_count=2), dict(n_time_bins=2), dict(n_event_bins=2),
                   dict(time_window=20, overlap=10), dict(n_event_bins=2, overlap=0.5)):
        with pytest.raises(EventValidationError, match="not sorted: event 2 has t = 20") as info:
            to_frame(events, (5, 1, 2), **kwargs)
        assert info.value.index == 2 and info.value.field == "t"


def test_unsorted_events_outside_every_frame_are_still_an_error():
    events = make_events([1, 2, 3, 4, 4], [0] * 5, [0, 5, 100, 200, 150], [1] * 5)
    with pytest.raises(EventValidationError, match="event 4"):
        to_frame(events, (5, 1, 2), time_window=10)


@pytest.mark.parametrize("field, value, message", [
    ("x", 64, "x = 64 is outside the sensor"), ("x", -1, "x = -1 is outside"),
    ("y", 48, "y = 48 is outside"), ("y", -3, "y = -3 is outside"),
])
def test_coordinates_outside_the_sensor_are_an_error(field, value, message):
    events = make_events([1] * 6, [1] * 6, np.arange(6) * 10, [0] * 6)
    events[field][4] = value
    for kwargs in (dict(event_count=2), dict(event_count=3, overlap=1)):
        with pytest.raises(EventValidationError, match=f"event 4: {message}") as info:
            to_frame(events, (64, 48, 2), **kwargs)
        assert info.value.index == 4 and info.value.field == field


def test_both_polarities_on_a_one_polarity_sensor_is_an_error():
    events = make_events([1, 2, 3], [0, 0, 0], [0, 1, 2], [0, 0, 1])
    with pytest.raises(EventValidationError, match="event 2: polarity p = 1 on a one-polarity sensor"):
        to_frame(events, (5, 1, 1), time_window=10)


@pytest.mark.parametrize("polarities", [1, 2])
def test_bad_polarity_on_the_first_event_is_caught_for_either_sensor(polarities):
    events = make_events([1, 2], [0, 0], [0, 1], [-1, -1])
    with pytest.raises(EventValidationError, match="event 0: polarity p = -1"):
        to_frame(events, (5, 1, polarities), time_window=10)


def test_input_is_never_modified():
    events = make_events([1, 2], [0, 0], [0, 1], [1, 1])
    before = events.copy()
    to_frame(events, (5, 1, 1), time_window=10)
    assert np.array_equal(events, before)
    tonic_frames(before, (5, 1, 1), time_window=10)
    tonic.transforms.ToFrame(sensor_size=(5, 1, 1), time_window=10)(before)
    assert (before["p"] == 0).all()  # tonic's mutation, for the record


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one of"),
    (dict(time_window=10, event_count=3), "exactly one of"),
    (dict(time_window=0), "time_window must be a positive"),
    (dict(time_window=-5), "time_window must be a positive"),
    (dict(time_window=10, overlap=10), "overlap"),
    (dict(event_count=0), "event_count must be a positive integer"),
    (dict(event_count=2.5), "event_count must be a positive integer"),
    (dict(event_count=5, overlap=5), "overlap"),
    (dict(n_time_bins=0), "n_time_bins"),
    (dict(n_time_bins=3, overlap=1.0), "overlap"),
    (dict(n_event_bins=3, overlap=-0.1), "overlap"),
])
def test_bad_parameters_are_config_errors(kwargs, message):
    events = small_stream([0, 5, 10])
    with pytest.raises(ConfigError, match=message):
        to_frame(events, (10, 1, 2), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(event_count=5, overlap=5), dict(event_count=5, overlap=7.5),
                                    dict(time_window=10, overlap=10), dict(time_window=10, overlap=12.5)])
def test_overlap_not_below_the_window_fails_in_tonic_and_is_a_config_error_here(kwargs):
    # The one way the parameters random_case leaves out break tonic: a stride <= 0, which tonic
    # reports with a bare Exception or an assert.
    events = small_stream([0, 5, 10, 20, 30, 40])
    with pytest.raises(Exception) as tonic_error:
        tonic_frames(events, (10, 1, 2), **kwargs)
    assert type(tonic_error.value) in (AssertionError, Exception)  # nothing more specific
    with pytest.raises(ConfigError, match="overlap"):
        to_frame(events, (10, 1, 2), **kwargs)


def test_empty_input_without_sensor_size_is_a_config_error():
    with pytest.raises(ConfigError, match="sensor_size"):
        to_frame(np.zeros(0, EVENT_DTYPE), None, time_window=10)


# --- random small streams and parameters, against tonic --------------------------

@st.composite
def random_case(draw):
    n = draw(st.integers(1, 200))
    t = np.sort(np.array(draw(st.lists(st.integers(0, 5000), min_size=n, max_size=n)), dtype=np.int64))
    x = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    y = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    p = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    events = make_events(x, y, t, p)
    mode = draw(st.sampled_from(["time_window", "event_count", "n_time_bins", "n_event_bins"]))
    if mode == "time_window":
        window = draw(st.one_of(st.integers(1, 3000), st.floats(0.5, 3000)))
        kwargs = dict(time_window=window, include_incomplete=draw(st.booleans()),
                      overlap=draw(st.one_of(st.just(0), st.floats(-window, window * 0.9))))
        if draw(st.booleans()):
            kwargs["start_time"] = draw(st.integers(-2000, 6000))
        if draw(st.booleans()):
            kwargs["end_time"] = draw(st.integers(-2000, 8000))
    elif mode == "event_count":
        count = draw(st.integers(1, 250))
        kwargs = dict(event_count=count, include_incomplete=draw(st.booleans()),
                      overlap=draw(st.one_of(st.just(0), st.integers(-count, count - 1),
                                             st.floats(0, count - 0.5))))
    else:
        kwargs = {mode: draw(st.integers(1, 30)), "overlap": draw(st.one_of(st.just(0), st.floats(0, 0.95)))}
    return events, kwargs


@pytest.fixture(params=["as chosen", "frame by frame in low bytes"])
def kernel_choice(request, monkeypatch):
    """Run a test with the kernels to_frame picks, and again forcing its large-frame kernel on every frame."""
    if request.param != "as chosen":
        monkeypatch.setattr(binning, "_LOW_COUNTER_BYTES", 0)
        monkeypatch.setattr(binning, "_LOW_COUNTER_BYTES_PER_EVENT", 10**12)
    return request.param


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=random_case())
def test_random_streams_and_parameters_equal_tonic(case, kernel_choice):
    # random_case draws only parameters tonic accepts: tonic raising here is a failure like any other.
    events, kwargs = case
    expected = tonic_frames(events, (7, 5, 2), **kwargs)
    got = to_frame(events, (7, 5, 2), **kwargs)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)


# Events laid out as EVENT_DTYPE are validated a block of 4,096 at a time before any of the block is
# counted; a block with a bad event is handed to the one-event-at-a-time loop from its first event on.
@pytest.mark.parametrize("position", [0, 1, 63, 4095, 4096, 4097, 8191, 12_387])
@pytest.mark.parametrize("defect", ["x", "y", "p", "t"])
@pytest.mark.parametrize("counting", ["in place", "low bytes"])
def test_event_dtype_blocks_name_the_first_bad_event_wherever_it_lies(position, defect, counting, monkeypatch):
    if defect == "t" and position == 0:
        return  # the first event has nothing before it to be earlier than
    if counting == "low bytes":  # as large dense frames count: every frame in bytes first, with carries
        monkeypatch.setattr(binning, "_LOW_COUNTER_BYTES", 0)
        monkeypatch.setattr(binning, "_LOW_COUNTER_BYTES_PER_EVENT", 10**12)
    rng = np.random.default_rng(position)
    n = 12_388
    events = make_events(rng.integers(0, 128, n), rng.integers(0, 96, n), np.sort(rng.integers(0, 10**6, n)),
                         rng.integers(0, 2, n))
    tonic_layout = np.empty(n, [("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "<i1")])
    for name in "xytp":
        tonic_layout[name] = events[name]
    # the same frames as the field-by-field loop (used for every other layout) gives on the same events
    np.testing.assert_array_equal(to_frame(events, (128, 96, 2), n_event_bins=3),
                                  to_frame(tonic_layout, (128, 96, 2), n_event_bins=3))
    bad = events.copy()
    if defect == "x":
        bad["x"][position] = 128
    elif defect == "y":
        bad["y"][position] = -1
    elif defect == "p":
        bad["p"][position] = 2
    else:
        bad["t"][position] = bad["t"][position - 1] - 1
    # a later bad event of another kind must not be the one reported
    if position < n - 1:
        bad["x"][-1] = -5
    with pytest.raises(EventValidationError) as raised:
        to_frame(bad, (128, 96, 2), n_event_bins=3, threads=1)
    assert raised.value.index == position and raised.value.field == defect


@pytest.mark.parametrize("n", [20, 5000])  # the one-event loop and the blocks
@pytest.mark.parametrize("field", ["x", "y"])
def test_negative_coordinates_fail_on_a_sensor_wider_than_16_bits(n, field):
    # EVENT_DTYPE's x and y are int16, read from the record's bits: -1 must not pass for column 65,535
    events = make_events(np.zeros(n, int), np.zeros(n, int), np.arange(n), np.zeros(n, int))
    events[field][n - 1] = -1
    sensor = (70_000, 1, 1) if field == "x" else (1, 70_000, 1)
    with pytest.raises(EventValidationError) as raised:
        to_frame(events, sensor, n_event_bins=1)
    assert raised.value.index == n - 1 and raised.value.field == field
    with pytest.raises(EventValidationError, match=f"{field} = -1"):
        StreamingBinner(sensor, 10**6, start_time=0).push(events)
