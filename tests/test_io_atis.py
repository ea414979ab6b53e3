import numpy as np
import pytest

from streamsnn.errors import EventFormatError
from streamsnn.events import EVENT_DTYPE, validate_events
from streamsnn.io import open_recording, read_events
from streamsnn.io.atis import TIMESTAMP_WRAP

ATIS_FILES = {
    # name: (events, t first, t last, x max, y max)
    "nmnist_sample.bin": (4325, 654, 311175, 33, 33),
    "atis40_dvs128_clip1.bin": (63471, None, None, 127, 127),
    "atis40_dvs128_clip2.bin": (84260, None, None, 127, 127),
    "atis40_dvs128_clip3.bin": (113063, None, None, 127, 127),
    "atis40_dvs128_clip4.bin": (151879, None, None, 127, 127),
    "atis40_dvs128_clip5.bin": (181179, None, None, 127, 127),
}


def _encode(x, y, t, p) -> bytes:
    t = np.asarray(t, dtype=np.int64)
    out = np.empty((len(t), 5), dtype=np.uint8)
    out[:, 0] = x
    out[:, 1] = y
    out[:, 2] = (np.asarray(p) << 7) | ((t >> 16) & 0x7F)
    out[:, 3] = (t >> 8) & 0xFF
    out[:, 4] = t & 0xFF
    return out.tobytes()


@pytest.mark.parametrize("name", sorted(ATIS_FILES))
def test_real_atis_files(recordings, name):
    count, t_first, t_last, x_max, y_max = ATIS_FILES[name]
    events = read_events(recordings / name)
    assert events.dtype == EVENT_DTYPE
    assert events.size == count
    validate_events(events, (x_max + 1, y_max + 1))
    assert events["x"].max() == x_max and events["y"].max() == y_max
    if t_first is not None:
        assert (events["t"][0], events["t"][-1]) == (t_first, t_last)
    else:
        # DVS128 clips: 1.45 s each.
        assert 1_440_000 < events["t"][-1] - events["t"][0] <= 1_450_000


def test_matches_tonic_reader(recordings):
    from tonic.io import read_mnist_file

    dtype = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
    reference = read_mnist_file(str(recordings / "nmnist_sample.bin"), dtype=dtype)
    events = read_events(recordings / "nmnist_sample.bin")
    for field in "xytp":
        np.testing.assert_array_equal(events[field], reference[field])


def test_nmnist_subset_totals(nmnist_root):
    files = sorted(nmnist_root.glob("*/*/*.bin"))
    assert len(files) == 1100
    total = 0
    for f in files:
        events = read_events(f)
        assert events["x"].max() < 34 and events["y"].max() < 34
        total += events.size
    assert total == 4_518_827


def test_overflow_records_add_a_full_counter_wrap(tmp_path):
    path = tmp_path / "wrap.bin"
    data = _encode([1, 2], [3, 4], [TIMESTAMP_WRAP - 10, 5], [1, 0])
    overflow = bytes([0, 240, 0, 0, 0])
    path.write_bytes(data[:5] + overflow + data[5:])
    events = read_events(path)
    assert events.size == 2
    np.testing.assert_array_equal(events["t"], [TIMESTAMP_WRAP - 10, TIMESTAMP_WRAP + 5])
    np.testing.assert_array_equal(events["p"], [1, 0])


def test_backwards_time_is_reported_with_offset(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(_encode([1, 1, 1], [1, 1, 1], [100, 200, 50], [0, 1, 0]))
    with pytest.raises(EventFormatError) as info:
        read_events(path)
    assert info.value.offset == 10 and str(path) in str(info.value)


def test_coordinates_outside_given_sensor_are_rejected(recordings):
    with pytest.raises(EventFormatError, match="outside the sensor"):
        read_events(recordings / "atis40_dvs128_clip1.bin", sensor_size=(34, 34))


def test_truncated_record_warns_and_keeps_complete_ones(recordings, tmp_path):
    data = (recordings / "nmnist_sample.bin").read_bytes()
    path = tmp_path / "cut.bin"
    path.write_bytes(data[:5 * 100 + 3])
    with pytest.warns(UserWarning, match="byte offset 500"):
        events = read_events(path)
    assert events.size == 100


def test_sensor_size_is_none_unless_given(recordings):
    with open_recording(recordings / "nmnist_sample.bin") as rec:
        assert rec.format == "atis_bin" and rec.sensor_size is None
    with open_recording(recordings / "nmnist_sample.bin", sensor_size=(34, 34)) as rec:
        assert tuple(rec.sensor_size) == (34, 34, 2)
