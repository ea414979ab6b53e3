"""Preprocessing against tonic, and the streaming stages against the whole-array functions: on a
bundled N-MNIST sample and generated scenes everywhere, and on real recordings where the data is."""
from __future__ import annotations

import numpy as np
import pytest
import tonic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsnn import StreamingBinner, to_frame
from streamsnn.errors import ConfigError, EventValidationError
from streamsnn.events import EVENT_DTYPE, SensorSize, make_events
from streamsnn.preprocess import (Chain, Crop, Denoise, Downsample, MergePolarities, crop, denoise, downsample,
                                  merge_polarities)
from test_binning import BUNDLED, SCENES, loaded, sensor_of, stream, streams  # noqa: F401 (loaded, stream: fixtures)
from conftest import REAL

REAL_STREAMS = ["nmnist_sample.bin", "atis40_dvs128_clip3.bin", "aedat2_dvs128_walking.aedat",
                "aedat4_dvxplorer_sample.aedat4", "evt2_gen3_sample.raw", "evt3_gen41_sample.raw",
                "evt3_gen41_pedestrians.raw", "dat_ncars_car.dat"]
GENERATED_STREAMS = [BUNDLED, *SCENES]
FIELDS = ("t", "x", "y", "p")


def same_events(a, b):
    return len(a) == len(b) and all(np.array_equal(a[f], b[f]) for f in FIELDS)


@pytest.mark.parametrize("name", streams(BUNDLED, "scene_128x128", "scene_1280x720", "scene_unsized", *REAL_STREAMS))
def test_denoise_keeps_the_events_tonic_keeps(stream, name):
    events = stream(name)
    # tonic's Python loop takes about 2 s per million events: a prefix keeps this quick.
    events = events[:150_000]
    before = events.copy()
    for filter_time in (500, 5000, 2500.5):
        expected = tonic.transforms.Denoise(filter_time=filter_time)(events)
        assert same_events(denoise(events, filter_time), expected), filter_time
    assert np.array_equal(events, before)


def test_denoise_keeps_early_events_as_tonic_does():
    # tonic's memory starts at filter_time: before t = filter_time every event with a neighbour inside
    # the bounds survives, even alone. After it, an isolated event is dropped.
    events = make_events([5, 20, 5, 20], [5, 20, 5, 20], [100, 200, 20_000, 20_100], [1, 1, 1, 1])
    expected = tonic.transforms.Denoise(filter_time=1000)(events)
    got = denoise(events, 1000)
    assert same_events(got, expected) and got["t"].tolist() == [100, 200]


def test_denoise_bounds_differ_only_when_every_event_is_on_pixel_0_0():
    # Before filter_time every in-bounds neighbour counts as recent, so tonic's bounds (max x + 1,
    # max y + 1) and the sensor's disagree only when tonic's leave no neighbour at all: a 1 x 1 box.
    events = make_events([0, 0], [0, 0], [10, 20], [1, 1])
    assert len(tonic.transforms.Denoise(filter_time=1000)(events)) == 0
    assert len(denoise(events, 1000)) == 0
    assert denoise(events, 1000, sensor_size=(16, 1, 2))["t"].tolist() == [10, 20]
    events = make_events([0, 9], [0, 0], [10, 20], [1, 1])
    assert same_events(denoise(events, 1000), denoise(events, 1000, sensor_size=(16, 4, 2)))


@pytest.mark.parametrize("name", streams(BUNDLED, "scene_320x240", "scene_640x480", "scene_1280x720",
                                         "nmnist_sample.bin", "evt2_gen3_sample.raw", "evt3_gen41_sample.raw",
                                         "aedat4_dvxplorer_sample.aedat4"))
def test_downsample_crop_merge_equal_tonic(stream, name):
    events = stream(name)
    sensor = sensor_of(name)
    before = events.copy()
    for factor in (2, 3, 4, 5):
        expected = tonic.transforms.Downsample(spatial_factor=1 / factor)(events)
        assert same_events(downsample(events, factor, sensor), expected), factor
    for size in ((20, 24), (sensor[0] // 2, sensor[1] // 3), (sensor[0] + 6, sensor[1] + 2)):
        expected = tonic.transforms.CenterCrop(sensor_size=sensor, size=size)(events)
        assert same_events(crop(events, size, sensor_size=sensor), expected), size
    assert same_events(merge_polarities(events), tonic.transforms.MergePolarities()(events))
    assert np.array_equal(events, before)


def test_downsample_is_exact_where_tonic_rounds_wrong():
    events = make_events([48, 49, 98], [0, 0, 0], [0, 1, 2], [0, 0, 0])
    assert downsample(events, 49)["x"].tolist() == [0, 1, 2]
    assert tonic.transforms.Downsample(spatial_factor=1 / 49)(events)["x"].tolist() == [0, 0, 1]


def test_crop_with_origin_and_pair_factor():
    events = make_events([0, 10, 19, 20, 15], [0, 5, 9, 5, 10], [0, 1, 2, 3, 4], [1, 0, 1, 1, 0])
    got = crop(events, (10, 5), origin=(10, 5))
    assert got["x"].tolist() == [0, 9] and got["y"].tolist() == [0, 4] and got["t"].tolist() == [1, 2]
    got = downsample(events, (4, 2))
    assert got["x"].tolist() == [0, 2, 4, 5, 3] and got["y"].tolist() == [0, 2, 4, 2, 5]


def test_output_sensor_sizes():
    assert Downsample(4).output_sensor_size((640, 480, 2)) == SensorSize(160, 120, 2)
    assert Downsample((5, 4)).output_sensor_size((1280, 720, 2)) == SensorSize(256, 180, 2)
    assert Downsample(4).output_sensor_size((34, 34, 2)) == SensorSize(9, 9, 2)
    assert Crop((128, 128), sensor_size=(640, 480, 2)).output_sensor_size((640, 480, 2)) == SensorSize(128, 128, 2)
    assert MergePolarities().output_sensor_size((34, 34, 2)) == SensorSize(34, 34, 1)
    assert Denoise(1000, (34, 34, 2)).output_sensor_size((34, 34, 2)) == SensorSize(34, 34, 2)
    chain = Chain(Crop((600, 480), sensor_size=(640, 480, 2)), Downsample(4), MergePolarities())
    assert chain.output_sensor_size((640, 480, 2)) == SensorSize(150, 120, 1)


STREAM_SETTINGS = settings(max_examples=100, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def streamed(stage, events, cuts):
    parts = [stage.push(chunk) for chunk in np.split(events, cuts)]
    return np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)


@pytest.fixture(params=["generated", pytest.param("real", marks=REAL)])
def sized_streams(request):
    """The names of the streams whose sensor size is known: generated ones, or real recordings."""
    names = GENERATED_STREAMS if request.param == "generated" else REAL_STREAMS
    return [name for name in names if sensor_of(name) is not None]


@STREAM_SETTINGS
@given(data=st.data())
def test_streaming_stages_equal_whole_array_functions(stream, sized_streams, data):
    name = data.draw(st.sampled_from(sized_streams))
    sensor = SensorSize.coerce(sensor_of(name))
    everything = stream(name)
    length = data.draw(st.integers(0, min(6000, len(everything))))
    first = data.draw(st.integers(0, len(everything) - length))
    events = everything[first:first + length]
    cuts = sorted(data.draw(st.lists(st.integers(0, length), max_size=30)))
    if length and data.draw(st.booleans()):
        at = data.draw(st.integers(0, length - 1))
        cuts = sorted(cuts + list(range(at, min(at + 20, length))))
    filter_time = data.draw(st.sampled_from([200, 3000, 50_000, 1234.5]))
    factor = data.draw(st.integers(1, 7))
    size = (data.draw(st.integers(1, sensor.width)), data.draw(st.integers(1, sensor.height)))

    assert same_events(streamed(Denoise(filter_time, sensor), events, cuts), denoise(events, filter_time, sensor))
    assert same_events(streamed(Downsample(factor, sensor), events, cuts), downsample(events, factor, sensor))
    assert same_events(streamed(Crop(size, sensor_size=sensor), events, cuts),
                       crop(events, size, sensor_size=sensor))
    assert same_events(streamed(MergePolarities(), events, cuts), merge_polarities(events))

    chain = Chain(Denoise(filter_time, sensor), Crop(size, sensor_size=sensor), Downsample(factor), MergePolarities())
    whole = merge_polarities(downsample(crop(denoise(events, filter_time, sensor), size, sensor_size=sensor), factor))
    assert same_events(streamed(chain, events, cuts), whole)


@pytest.mark.parametrize("name", streams("scene_640x480", "evt2_gen3_sample.raw"))
def test_chain_feeds_the_binner_like_to_frame(stream, name):
    events = stream(name)
    sensor = (640, 480, 2)
    chain = Chain(Denoise(2000, sensor), Crop((480, 480), sensor_size=sensor), Downsample(4), MergePolarities())
    out_sensor = chain.output_sensor_size(sensor)
    binner = StreamingBinner(out_sensor, 5000, start_time=int(events["t"][0]))
    frames = []
    for chunk in np.array_split(events, 37):
        frames += binner.push(chain.push(chunk))
    end = int(events["t"][-1])
    frames += binner.flush(end)
    processed = merge_polarities(downsample(crop(denoise(events, 2000, sensor), (480, 480), sensor_size=sensor), 4))
    expected = to_frame(processed, out_sensor, time_window=5000, start_time=int(events["t"][0]), end_time=end)
    assert np.array_equal(np.stack([f.data for f in frames]), expected)
    assert expected.shape[1:] == (1, 120, 120) and expected.sum() > 0


def test_denoise_reset_forgets_the_memory():
    stage = Denoise(1000, (4, 1, 2))
    first = make_events([1, 2], [0, 0], [5000, 5100], [1, 1])
    assert stage.push(first)["t"].tolist() == [5100]
    stage.reset()
    assert stage.push(make_events([2], [0], [5200], [1]))["t"].tolist() == []


def test_bad_input_and_parameters():
    events = make_events([1, 2, 3], [0, 0, 0], [0, 10, 5], [1, 1, 1])
    for function in (lambda e: denoise(e, 100), lambda e: downsample(e, 2), merge_polarities,
                     lambda e: crop(e, 2, origin=(0, 0))):
        with pytest.raises(EventValidationError, match="event 2 has t = 5") as info:
            function(events)
        assert info.value.field == "t"
    with pytest.raises(EventValidationError, match="event 0: x = 40 is outside"):
        denoise(make_events([40], [0], [0], [1]), 100, sensor_size=(34, 34, 2))
    with pytest.raises(EventValidationError, match="x = -2 is negative"):
        downsample(make_events([-2], [0], [0], [1]), 2)
    with pytest.raises(EventValidationError, match="polarity p = 3"):
        merge_polarities(make_events([1], [0], [0], [3]))
    stage = Denoise(100, (4, 4, 2))
    stage.push(make_events([1], [1], [50], [1]))
    with pytest.raises(EventValidationError, match="earlier chunks reached t = 50"):
        stage.push(make_events([1], [1], [40], [1]))
    for bad in (lambda: downsample(events[:0], 0), lambda: Downsample(2.5), lambda: denoise(events, 0),
                lambda: Denoise(-1, (4, 4, 2)), lambda: crop(events, (0, 3), origin=(0, 0)),
                lambda: Crop((3, 3))):
        with pytest.raises(ConfigError):
            bad()
