"""ATIS 40-bit .bin: the bundled N-MNIST samples and files the tests write everywhere; the real
recordings of conftest's RECORDINGS and the full N-MNIST subset where the data folder is."""
import numpy as np
import pytest

from conftest import BUNDLED_TEST_CLASS_COUNTS, RECORDINGS, copy_sample
from streamsnn.errors import EventFormatError
from streamsnn.events import EVENT_DTYPE, validate_events
from streamsnn.io import open_recording, read_events
from streamsnn.io.atis import TIMESTAMP_WRAP
from generate import scene_events, write_atis_bin
from test_io_formats import nmnist_sample  # noqa: F401 (nmnist_sample: a fixture)

ATIS_FILES = sorted(name for name, figures in RECORDINGS.items() if figures[0] == "atis_bin")
# The data README: every N-MNIST sample has 1,069 to 7,152 events over about 300 ms.
NMNIST_EVENTS_PER_SAMPLE = (1_069, 7_152)


@pytest.mark.parametrize("name", ATIS_FILES)
def test_real_atis_files(recordings, name):
    _, sensor, count, t_first, t_last = RECORDINGS[name]
    events = read_events(recordings / name)
    assert events.dtype == EVENT_DTYPE
    assert events.size == count
    validate_events(events, sensor)
    assert events["x"].max() == sensor[0] - 1 and events["y"].max() == sensor[1] - 1
    if t_first is not None:
        assert (events["t"][0], events["t"][-1]) == (t_first, t_last)
    else:
        # DVS128 clips: 1.45 s each.
        assert 1_440_000 < events["t"][-1] - events["t"][0] <= 1_450_000


def test_bundled_nmnist_samples(nmnist_root):
    files = sorted((nmnist_root / "Test").glob("*/*.bin"))
    counts = [len(list((nmnist_root / "Test" / str(digit)).glob("*.bin"))) for digit in range(10)]
    assert tuple(counts) == BUNDLED_TEST_CLASS_COUNTS and len(files) == sum(counts)
    for f in files:
        events = read_events(f)
        validate_events(events, (34, 34))
        assert NMNIST_EVENTS_PER_SAMPLE[0] <= events.size <= NMNIST_EVENTS_PER_SAMPLE[1], f
        assert 0 <= events["t"][0] and events["t"][-1] < 400_000, f  # about 300 ms
        records = np.frombuffer(f.read_bytes(), dtype=np.uint8).reshape(-1, 5)
        assert not (records[:, 1] == 240).any(), f  # the README: no timestamp-overflow records


@pytest.fixture(scope="module")
def bundled_samples(nmnist_root):
    """Every fifth bundled sample."""
    return sorted((nmnist_root / "Test").glob("*/*.bin"))[::5]


def _assert_same_as_tonic(path):
    from tonic.io import read_mnist_file

    dtype = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
    reference = read_mnist_file(str(path), dtype=dtype)
    events = read_events(path)
    for field in "xytp":
        np.testing.assert_array_equal(events[field], reference[field], err_msg=f"{path.name}: {field}")


def test_matches_tonic_reader_on_bundled_samples(bundled_samples):
    for path in bundled_samples:
        _assert_same_as_tonic(path)


def test_matches_tonic_reader(recordings):
    _assert_same_as_tonic(recordings / "nmnist_sample.bin")


def test_nmnist_subset_totals(nmnist_full_root):
    files = sorted(nmnist_full_root.glob("*/*/*.bin"))
    assert len(files) == 1100
    total = 0
    for f in files:
        events = read_events(f)
        assert events["x"].max() < 34 and events["y"].max() < 34
        total += events.size
    assert total == 4_518_827


def test_written_file_round_trips_across_counter_wraps(tmp_path):
    # 200 ms around the second wrap of the 23-bit µs counter
    events = scene_events(8_000, (128, 128), seed=3, t0=2 * TIMESTAMP_WRAP - 100_000, duration_us=200_000)
    events["t"][-1000:] += TIMESTAMP_WRAP  # a silent gap of more than a whole wrap
    path = write_atis_bin(tmp_path / "wraps.bin", events)
    # overflow records: one before the first event, one where the stream crosses 2 * 2**23 µs, one in the gap
    assert path.stat().st_size == 5 * (events.size + 3)
    np.testing.assert_array_equal(read_events(path), events)


def test_overflow_records_add_a_full_counter_wrap(tmp_path):
    path = write_atis_bin(tmp_path / "wrap.bin", np.array([(TIMESTAMP_WRAP - 10, 1, 3, 1), (TIMESTAMP_WRAP + 5, 2, 4, 0)],
                                                             dtype=EVENT_DTYPE))
    data = path.read_bytes()
    assert data[5:10] == bytes([0, 240, 0, 0, 0])  # the writer's overflow record, as N-MNIST's tools write it
    events = read_events(path)
    assert events.size == 2
    np.testing.assert_array_equal(events["t"], [TIMESTAMP_WRAP - 10, TIMESTAMP_WRAP + 5])
    np.testing.assert_array_equal(events["p"], [1, 0])


def test_backwards_time_is_reported_with_offset(tmp_path):
    events = np.array([(100, 1, 1, 0), (200, 1, 1, 1), (50, 1, 1, 0)], dtype=EVENT_DTYPE)
    path = write_atis_bin(tmp_path / "bad.bin", events)
    with pytest.raises(EventFormatError) as info:
        read_events(path)
    assert info.value.offset == 10 and str(path) in str(info.value)


def test_coordinates_outside_given_sensor_are_rejected_in_a_written_file(tmp_path):
    path = write_atis_bin(tmp_path / "dvs128.bin", scene_events(2_000, (128, 128), seed=4))
    with pytest.raises(EventFormatError, match="outside the sensor") as info:
        read_events(path, sensor_size=(34, 34))
    assert str(path) in str(info.value)
    assert read_events(path, sensor_size=(128, 128)).size == 2_000


def test_coordinates_outside_given_sensor_are_rejected(recordings):
    with pytest.raises(EventFormatError, match="outside the sensor"):
        read_events(recordings / "atis40_dvs128_clip1.bin", sensor_size=(34, 34))


def test_truncated_record_warns_and_keeps_complete_ones(nmnist_sample, tmp_path):
    whole = read_events(nmnist_sample)
    data = nmnist_sample.read_bytes()
    path = tmp_path / "cut.bin"
    path.write_bytes(data[:5 * 100 + 3])
    with pytest.warns(UserWarning, match="byte offset 500"):
        events = read_events(path)
    np.testing.assert_array_equal(events, whole[:100])


def test_damaged_copy_of_a_bundled_sample_names_record_and_file(nmnist_root, tmp_path):
    path = copy_sample(nmnist_root, tmp_path / "damaged.bin", index=7)
    data = bytearray(path.read_bytes())
    data[5 * 50 + 2] = 0x7F  # record 50 now lies at t >= 8,323,072 µs; record 51 steps back from it
    path.write_bytes(bytes(data))
    with pytest.raises(EventFormatError) as info:
        read_events(path)
    assert info.value.offset == 5 * 51 and str(path) in str(info.value)


def test_sensor_size_is_none_unless_given(nmnist_sample):
    with open_recording(nmnist_sample) as rec:
        assert rec.format == "atis_bin" and rec.sensor_size is None
    with open_recording(nmnist_sample, sensor_size=(34, 34)) as rec:
        assert tuple(rec.sensor_size) == (34, 34, 2)


def test_whole_file_read_in_one_call_equals_the_block_reader(nmnist_sample, tmp_path):
    from streamsnn.io import posix
    from streamsnn.io.atis import WHOLE_FILE_BYTES, AtisBinRecording, _read_atis_file

    wraps = scene_events(8_000, (128, 128), seed=5, t0=TIMESTAMP_WRAP - 100_000, duration_us=200_000)
    for path, size in ((nmnist_sample, (34, 34)), (nmnist_sample, None),
                       (write_atis_bin(tmp_path / "wraps.bin", wraps), (128, 128))):
        recording = AtisBinRecording(path, sensor_size=size, block_bytes=5 * 97)   # blocks: many
        by_blocks = np.concatenate(list(recording.chunks(n_events=1_000)))
        width, height = (size[0], size[1]) if size else (-1, -1)
        words, n, whole = _read_atis_file(posix.path_argument(path), width, height, WHOLE_FILE_BYTES)
        if posix.AVAILABLE:
            assert whole
            np.testing.assert_array_equal(words.view(EVENT_DTYPE)[:n], by_blocks)
        np.testing.assert_array_equal(recording.read(), by_blocks)


def test_files_the_one_call_read_leaves_to_the_block_reader(nmnist_sample, tmp_path, monkeypatch):
    import streamsnn.io.atis as atis
    from streamsnn.io import posix

    expected = read_events(nmnist_sample)
    for bad in (lambda data: data[:5 * 100 + 3],                                       # a record cut short
                lambda data: data[:12] + bytes([data[12] | 0x7F]) + data[13:]):          # time steps back
        path = tmp_path / "odd.bin"
        path.write_bytes(bad(nmnist_sample.read_bytes()))
        assert not atis._read_atis_file(posix.path_argument(path), 34, 34, atis.WHOLE_FILE_BYTES)[2]
    monkeypatch.setattr(atis, "WHOLE_FILE_BYTES", 1_000)                                # larger than that
    assert not atis._read_atis_file(posix.path_argument(nmnist_sample), 34, 34, atis.WHOLE_FILE_BYTES)[2]
    np.testing.assert_array_equal(read_events(nmnist_sample), expected)


@pytest.mark.skipif(not __import__("os").name == "posix", reason="reads through the C library on POSIX only")
def test_reading_a_file_in_compiled_code_refuses_what_is_not_a_regular_file(nmnist_sample, tmp_path):
    import os

    from streamsnn.io.atis import AtisBinRecording
    from streamsnn.io.posix import path_argument, read_file

    contents, size = read_file(path_argument(nmnist_sample), 1 << 20)
    assert size == nmnist_sample.stat().st_size and contents.tobytes() == nmnist_sample.read_bytes()
    assert read_file(path_argument(tmp_path / "missing.bin"), 1 << 20)[1] == -1
    assert read_file(path_argument(tmp_path), 1 << 20)[0].size == 0                     # a folder
    fifo = tmp_path / "fifo.bin"
    os.mkfifo(fifo)
    assert read_file(path_argument(fifo), 1 << 20)[0].size == 0                         # no writer: no wait
    assert read_file(path_argument(nmnist_sample), 100)[0].size == 0                    # over the limit
    # a name with a NUL is not cut there (it would open the bundled sample): the ordinary way refuses it
    assert path_argument(str(nmnist_sample) + "\0.txt") is None
    with pytest.raises(ValueError, match="null"):
        AtisBinRecording(str(nmnist_sample) + "\0.txt", sensor_size=(34, 34)).read()
