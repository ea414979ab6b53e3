"""Bad input of every kind: each gets the project's own error naming the file, or (for a
truncated recording) the events up to the last complete record with a warning. Never a
crash, a hang, or events with impossible coordinates."""
import os
import struct
import warnings

import numpy as np
import pytest

from conftest import REAL, copy_sample
from streamsnn.errors import EventFormatError, StreamsnnError
from streamsnn.events import EVENT_DTYPE
from streamsnn.io import open_recording, read_events
from streamsnn.io.prophesee import write_raw
from streamsnn.io.store import convert_to_store
from generate import scene_events, write_aedat2, write_aedat4, write_dat

# name, sensor for checking coordinates, sensor to pass for headerless formats
SAMPLES = {
    "evt2": ("evt2_gen3_sample.raw", (640, 480), None),
    "evt3": ("evt3_gen41_sample.raw", (1280, 720), None),
    "dat": ("dat_ncars_car.dat", None, None),
    "aedat4": ("aedat4_dvxplorer_sample.aedat4", (320, 240), None),
    "aedat2": ("aedat2_dvs128_walking2.aedat", (128, 128), None),
    "atis_bin": ("nmnist_sample.bin", (34, 34), (34, 34)),
}
# Generated files of about 100 kB: events per format (the sensor is SAMPLES' one, or 304x240 for DAT).
GENERATED_EVENTS = {"evt2": 25_000, "evt3": 30_000, "dat": 12_000, "aedat4": 20_000, "aedat2": 12_000}
# Keep real sample files small so that many cases run in a few seconds.
MAX_BYTES = 300_000
# Damaged copies per format and test: the generated files run everywhere; the real ones add
# the structures real writers produce and need fewer cases on top.
CASES = {"generated": 100, "real": 50}


class Samples(dict):
    """format -> (bytes, events, sensor, given sensor, suffix), and how many damaged copies to try."""

    def __init__(self, cases: int):
        super().__init__()
        self.cases = cases


def _generated(fmt, path):
    name, sensor, _ = SAMPLES[fmt]
    events = scene_events(GENERATED_EVENTS[fmt], sensor or (304, 240), seed=len(fmt), t0=1_000_000)
    if fmt in ("evt2", "evt3"):
        write_raw(path, events, sensor, fmt)
    elif fmt == "dat":
        write_dat(path, events)
    elif fmt == "aedat4":
        write_aedat4(path, events, sensor, packet_events=2_000)
    else:
        write_aedat2(path, events)
    return path.read_bytes()


@pytest.fixture(scope="module", params=["generated", pytest.param("real", marks=REAL)])
def samples(request, nmnist_root, tmp_path_factory):
    """Per format: (the file's bytes, its events, sensor, given sensor, suffix). Generated files and a
    bundled N-MNIST sample, or the real recordings cut to a whole-record prefix."""
    root = tmp_path_factory.mktemp("samples")
    out = Samples(CASES[request.param])
    for fmt, (name, sensor, given) in SAMPLES.items():
        suffix = os.path.splitext(name)[1]
        path = root / ("base" + suffix)
        if request.param == "real":
            data = (request.getfixturevalue("recordings") / name).read_bytes()
            if len(data) > MAX_BYTES:
                data = _prefix_of_complete_records(fmt, data, MAX_BYTES)
            path.write_bytes(data)
        elif fmt == "atis_bin":
            data = copy_sample(nmnist_root, path).read_bytes()
        else:
            data = _generated(fmt, path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the cut must fall on a record boundary
            events = read_events(path, sensor_size=given)
        assert events.size > 1000
        out[fmt] = (data, events, sensor, given, suffix)
    events = out["atis_bin"][1]
    np.save(root / "e.npy", events)
    out["npy"] = ((root / "e.npy").read_bytes(), events, (34, 34), (34, 34), ".npy")
    convert_to_store(root / "base.bin", root / "e.h5", sensor_size=(34, 34))
    out["hdf5"] = ((root / "e.h5").read_bytes(), events, (34, 34), None, ".h5")
    return out


def _header_length(fmt, data):
    """Bytes before the first event record."""
    if fmt in ("evt2", "evt3", "dat", "aedat2"):
        mark, end = (b"#", 0) if fmt == "aedat2" else (b"%", 0)
        while data[end:end + 1] == mark:
            end = data.index(b"\n", end) + 1
        return end
    return {"aedat4": 14 + 4 + struct.unpack_from("<i", data, 14)[0], "atis_bin": 0, "npy": 128, "hdf5": 512}[fmt]


def _prefix_of_complete_records(fmt, data, limit):
    if fmt in ("evt2", "evt3"):
        header_end = _header_length(fmt, data)
        word = 4 if fmt == "evt2" else 2
        return data[: header_end + (limit - header_end) // word * word]
    if fmt == "aedat4":
        pos = 14 + 4 + struct.unpack_from("<i", data, 14)[0]
        while True:
            size = struct.unpack_from("<i", data, pos + 4)[0]
            if pos + 8 + size > limit:
                return data[:pos]
            pos += 8 + size
    if fmt == "aedat2":
        header = _header_length(fmt, data)
        return data[: header + (limit - header) // 8 * 8]
    raise AssertionError(fmt)


def _read_checked(path, sensor, given):
    """Read a damaged file; return events or the error. Anything else fails the test."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            events = read_events(path, sensor_size=given)
        except StreamsnnError as exc:
            assert str(path) in str(exc), f"error does not name the file: {exc}"
            return exc
    assert events.dtype == EVENT_DTYPE
    if events.size:
        assert set(np.unique(events["p"])) <= {0, 1}
        assert events["x"].min() >= 0 and events["y"].min() >= 0
        if sensor is not None:
            assert events["x"].max() < sensor[0] and events["y"].max() < sensor[1]
    return events


@pytest.mark.parametrize("fmt", sorted(SAMPLES) + ["npy", "hdf5"])
def test_truncated_at_random_bytes(samples, tmp_path, fmt):
    data, full, sensor, given, suffix = samples[fmt]
    rng = np.random.default_rng(len(data))
    cuts = sorted(set(rng.integers(0, len(data), samples.cases).tolist()) | {0, 1, 2, 17, len(data) - 1})
    path = tmp_path / ("cut" + suffix)
    for cut in cuts:
        path.write_bytes(data[:cut])
        result = _read_checked(path, sensor, given)
        if isinstance(result, np.ndarray):
            # a truncated recording gives a prefix of its events, nothing invented
            np.testing.assert_array_equal(result, full[: result.size], err_msg=f"{fmt} cut at {cut}")
            if fmt not in ("hdf5",) and cut < len(data):
                assert result.size < full.size or fmt == "aedat4"


@pytest.mark.parametrize("fmt", sorted(SAMPLES) + ["npy", "hdf5"])
def test_truncation_warns_with_offset(samples, tmp_path, fmt):
    data, full, sensor, given, suffix = samples[fmt]
    if fmt == "hdf5":
        pytest.skip("an HDF5 file cut short is not readable at all; covered by the random cuts")
    end = len(data)
    if fmt == "aedat4":  # cut the last packet, not the index of packets dv-processing writes after it
        (tmp_path / "whole.aedat4").write_bytes(data)
        table = open_recording(tmp_path / "whole.aedat4").data_table_position
        end = table if 0 <= table <= len(data) else end
    path = tmp_path / ("cut" + suffix)
    path.write_bytes(data[: end - 3])
    with pytest.warns(UserWarning, match=r"byte offset \d+"):
        events = read_events(path, sensor_size=given)
    np.testing.assert_array_equal(events, full[: events.size])
    if fmt != "aedat4":  # AEDAT 4 loses the whole last packet (which may hold IMU samples only)
        assert 0 < full.size - events.size <= 12


@pytest.mark.parametrize("fmt", sorted(SAMPLES) + ["npy", "hdf5"])
def test_random_byte_corruption(samples, tmp_path, fmt):
    data, full, sensor, given, suffix = samples[fmt]
    rng = np.random.default_rng(7 + len(data))
    path = tmp_path / ("bad" + suffix)
    for case in range(samples.cases):
        damaged = bytearray(data)
        n = int(rng.integers(1, 64))
        where = rng.integers(0, len(data), n)
        damaged_values = rng.integers(0, 256, n, dtype=np.uint8)
        for i, v in zip(where, damaged_values):
            damaged[i] = v
        path.write_bytes(bytes(damaged))
        _read_checked(path, sensor, given)


@pytest.mark.parametrize("fmt", sorted(SAMPLES) + ["npy", "hdf5"])
def test_known_header_then_garbage(samples, tmp_path, fmt):
    data, full, sensor, given, suffix = samples[fmt]
    header_len = _header_length(fmt, data)
    rng = np.random.default_rng(11)
    path = tmp_path / ("garbage" + suffix)
    errors = 0
    for case in range(10):
        garbage = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
        path.write_bytes(data[:header_len] + garbage)
        errors += isinstance(_read_checked(path, sensor, given), StreamsnnError)
    assert errors == 10, f"{fmt}: garbage after a valid header was accepted"


@pytest.mark.parametrize("suffix", [".raw", ".dat", ".aedat4", ".aedat", ".bin", ".npy", ".h5", ".xyz", ""])
def test_random_bytes_and_empty_files(tmp_path, suffix):
    rng = np.random.default_rng(3)
    path = tmp_path / ("random" + suffix)
    for size in (1, 5, 100, 10_000):
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        result = _read_checked(path, None, None)
        if isinstance(result, np.ndarray):
            # only a headerless ATIS file can be "valid" by chance: a handful of sorted records at most
            assert suffix == ".bin" and result.size <= 1, (suffix, size)
    path.write_bytes(b"")
    with pytest.raises(EventFormatError, match="empty") as info:
        read_events(path)
    assert str(path) in str(info.value)


def test_folder_missing_and_unknown(tmp_path):
    with pytest.raises(EventFormatError, match="folder"):
        read_events(tmp_path)
    with pytest.raises(EventFormatError, match="no such file"):
        read_events(tmp_path / "missing.raw")
    (tmp_path / "a.raw").write_bytes(b"% evt 3.0\n% end\n")
    with pytest.raises(EventFormatError, match="NUL"):      # not the file the name would be cut to
        read_events(str(tmp_path / "a.raw") + "\0.txt")
    (tmp_path / "notes.txt").write_text("hello events\n")
    with pytest.raises(EventFormatError, match="known formats") as info:
        open_recording(tmp_path / "notes.txt")
    assert "EVT 3.0" in str(info.value) and "AEDAT 4.0" in str(info.value)
    (tmp_path / "v3.aedat").write_bytes(b"#!AER-DAT3.1\r\n")
    with pytest.raises(EventFormatError, match="3.1"):
        read_events(tmp_path / "v3.aedat")
    (tmp_path / "evt21.raw").write_bytes(b"% evt 2.1\n% end\n" + bytes(64))
    with pytest.raises(EventFormatError, match="not supported"):
        read_events(tmp_path / "evt21.raw")


def test_extension_is_second_to_content(samples, tmp_path):
    data, full, *_ = samples["evt3"]
    (tmp_path / "renamed.bin").write_bytes(data)
    np.testing.assert_array_equal(read_events(tmp_path / "renamed.bin"), full)
    (tmp_path / "h5_named.npy").write_bytes(samples["hdf5"][0])
    assert open_recording(tmp_path / "h5_named.npy").format == "hdf5"


def test_hdf5_that_is_not_an_event_store(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.arange(10)
    with pytest.raises(EventFormatError, match="not a streamsnn event store"):
        read_events(tmp_path / "other.h5")
