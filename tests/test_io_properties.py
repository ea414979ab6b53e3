"""Property tests: any event stream survives encode -> decode, and any chunking equals the whole read."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsnn.events import EVENT_DTYPE
from streamsnn.io import open_recording, read_events
from streamsnn.io.prophesee import write_raw
from streamsnn.io.store import write_store

WIDTH, HEIGHT = 1280, 720
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def event_streams(draw):
    n = draw(st.integers(0, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # small steps, repeats (vector words) and, sometimes, huge gaps across the 2**24 µs EVT 3.0 loop
    steps = rng.choice([0, 0, 1, 3, 4095, 4097, 40_000_000], size=n, p=[.3, .2, .2, .1, .08, .08, .04])
    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["t"] = draw(st.integers(0, 2**30)) + np.cumsum(steps)
    events["y"] = rng.integers(0, HEIGHT, n)
    events["x"] = rng.integers(0, WIDTH, n)
    events["p"] = rng.integers(0, 2, n)
    # runs of neighbours at the same (t, y, p), which the encoder turns into vector words
    same = np.flatnonzero(steps == 0)
    same = same[same > 0]
    events["y"][same] = events["y"][same - 1]
    events["p"][same] = events["p"][same - 1]
    events["x"][same] = np.minimum(events["x"][same - 1] + rng.integers(1, 14, same.size), WIDTH - 1)
    return events


@SETTINGS
@given(events=event_streams(), encoding=st.sampled_from(["evt2", "evt3"]), n=st.integers(1, 500),
       window=st.integers(1, 10_000_000))
def test_raw_round_trip_and_chunking(tmp_path, events, encoding, n, window):
    if encoding == "evt3" and events.size:
        # EVT 3.0 time starts inside the first 2**24 µs loop: a file cannot say how many loops came before
        events = events.copy()
        events["t"] -= (int(events["t"][0]) >> 24) << 24
    path = tmp_path / f"p.{encoding}.raw"
    write_raw(path, events, (WIDTH, HEIGHT), encoding)
    if events.size:  # at most ~1000 windows: every empty window is yielded
        window = max(window, int(events["t"][-1] - events["t"][0]) // 1000 + 1)
    with open_recording(path) as rec:
        rec.block_bytes = 64  # decoder blocks far smaller than the chunks
        decoded = rec.read()
        np.testing.assert_array_equal(decoded, events)
        by_count = list(rec.chunks(n_events=n))
        by_time = list(rec.chunks(time_window=window))
    if events.size:
        np.testing.assert_array_equal(np.concatenate(by_count), events)
        np.testing.assert_array_equal(np.concatenate(by_time), events)
        assert len(by_time) == (int(events["t"][-1]) - int(events["t"][0])) // window + 1
    else:
        assert by_count == [] and by_time == []


@SETTINGS
@given(events=event_streams(), start=st.integers(0, 2**31), length=st.integers(1, 2**26))
def test_store_round_trip_and_windows(tmp_path, events, start, length):
    path = tmp_path / "p.h5"
    write_store(path, events, (WIDTH, HEIGHT), overwrite=True)
    np.testing.assert_array_equal(read_events(path), events)
    with open_recording(path) as rec:
        t = events["t"]
        if t.size:
            start = int(t[0]) + start % max(1, int(t[-1] - t[0]) + 1)
        np.testing.assert_array_equal(rec.read_window(start, start + length),
                                      events[(t >= start) & (t < start + length)])
