"""Every real recording: counts, ranges and spans from the data README; chunked == whole; store round trips."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import write_aedat4_with_dv

from streamsnn.errors import EventFormatError, StreamsnnError
from streamsnn.events import EVENT_DTYPE, make_events, validate_events
from streamsnn.io import FORMATS, detect_format, open_recording, read_events, recording_info
from streamsnn.io.store import INDEX_STRIDE, EventStoreWriter, StoreRecording, convert_to_store, write_store

# name: (format, sensor (w, h) or None, events, duration µs (max t - min t) or None)
RECORDINGS = {
    "evt2_gen3_sample.raw": ("evt2", (640, 480), 539_481, 50_000),
    "evt2_gen3_sparklers.raw": ("evt2", (640, 480), 521_252, 95_871),
    "evt3_gen41_sample.raw": ("evt3", (1280, 720), 219_596, 8_801),
    "evt3_gen41_pedestrians.raw": ("evt3", (1280, 720), 5_000, 45_210),
    "dat_ncars_car.dat": ("dat", None, 4_407, 99_937),
    "dat_ncars_sample.dat": ("dat", None, 2_009, 99_952),
    "aedat4_dvxplorer_sample.aedat4": ("aedat4", (320, 240), 111_954, 589_917),
    "nmnist_sample.bin": ("atis_bin", None, 4_325, 311_175 - 654),
    "aedat2_dvs128_walking.aedat": ("aedat2", (128, 128), 125_028, 8_043_874),
    "aedat2_dvs128_walking2.aedat": ("aedat2", (128, 128), 70_304, 9_243_604),
    "atis40_dvs128_clip1.bin": ("atis_bin", None, 63_471, None),
    "atis40_dvs128_clip2.bin": ("atis_bin", None, 84_260, None),
    "atis40_dvs128_clip3.bin": ("atis_bin", None, 113_063, None),
    "atis40_dvs128_clip4.bin": ("atis_bin", None, 151_879, None),
    "atis40_dvs128_clip5.bin": ("atis_bin", None, 181_179, None),
}


def test_every_recording_is_listed(recordings):
    assert sorted(p.name for p in recordings.iterdir()) == sorted(RECORDINGS)


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_real_recording(recordings, name):
    fmt, sensor, count, duration = RECORDINGS[name]
    assert detect_format(recordings / name) == fmt
    with open_recording(recordings / name) as rec:
        assert rec.format == fmt and rec.path == recordings / name
        assert (tuple(rec.sensor_size[:2]) if rec.sensor_size is not None else None) == sensor
        events = rec.read()
    assert events.dtype == EVENT_DTYPE and events.size == count
    validate_events(events, sensor)
    if duration is not None:
        assert int(events["t"].max() - events["t"].min()) == duration
    else:
        assert 1_440_000 < np.ptp(events["t"]) <= 1_450_000


def test_aedat4_matches_dv_processing(recordings):
    dv = pytest.importorskip("dv_processing")
    reader = dv.io.MonoCameraRecording(str(recordings / "aedat4_dvxplorer_sample.aedat4"))
    parts = []
    while (batch := reader.getNextEventBatch()) is not None:
        parts.append(batch.numpy())
    reference = np.concatenate(parts)
    events = read_events(recordings / "aedat4_dvxplorer_sample.aedat4")
    for ours, theirs in (("t", "timestamp"), ("x", "x"), ("y", "y"), ("p", "polarity")):
        np.testing.assert_array_equal(events[ours], reference[theirs])


@pytest.mark.parametrize("compression", ["ZSTD", "LZ4", "NONE"])
def test_aedat4_compressions(tmp_path, compression):
    path = write_aedat4_with_dv(tmp_path / f"{compression}.aedat4", compression)
    with open_recording(path) as rec:
        assert tuple(rec.sensor_size) == (64, 48, 2)
        events = rec.read()
    np.testing.assert_array_equal(events["t"], 1_000 + 7 * np.arange(3000))
    np.testing.assert_array_equal(events["x"], np.arange(3000) % 64)
    np.testing.assert_array_equal(events["p"], (np.arange(3000) % 3) != 0)


def test_aedat2_follows_jaer_dvs128_conventions(tmp_path, recordings):
    header = b"#!AER-DAT2.0\r\n# AEChip: ch.unizh.ini.jaer.chip.retina.DVS128\r\n"
    # raw x = 5, y = 9, bit 0 = 0 (ON); raw x = 127, y = 0, bit 0 = 1 (OFF); a special event (bit 15)
    addresses = [(9 << 8) | (5 << 1) | 0, (0 << 8) | (127 << 1) | 1, 0x8000]
    records = np.array(list(zip(addresses, [10, 20, 30])), dtype=[("a", ">u4"), ("t", ">i4")])
    path = tmp_path / "jaer.aedat"
    path.write_bytes(header + records.tobytes())
    events = read_events(path)
    assert events.size == 2
    np.testing.assert_array_equal(events["x"], [127 - 5, 0])
    np.testing.assert_array_equal(events["y"], [9, 0])
    np.testing.assert_array_equal(events["p"], [1, 0])
    # the README's note: bit 0 is 0 for ON, so ON events are the addresses with an even value
    real = read_events(recordings / "aedat2_dvs128_walking.aedat")
    assert tuple(np.bincount(real["p"])) == (69_052, 55_976)  # (OFF, ON)


def test_npy_any_integer_layout(tmp_path, recordings):
    events = read_events(recordings / "nmnist_sample.bin")
    tonic_layout = np.empty(events.size, dtype=[("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
    for field in "xytp":
        tonic_layout[field] = events[field]
    np.save(tmp_path / "tonic.npy", tonic_layout)
    np.testing.assert_array_equal(read_events(tmp_path / "tonic.npy"), events)
    np.save(tmp_path / "plain.npy", np.zeros((10, 4)))
    with pytest.raises(EventFormatError, match="structured"):
        read_events(tmp_path / "plain.npy")
    with open_recording(tmp_path / "tonic.npy", sensor_size=(34, 34)) as rec:
        assert rec.format == "npy" and tuple(rec.sensor_size) == (34, 34, 2)


# -- chunked == whole, for every format ----------------------------------------


def _all_formats(recordings, tmp_path):
    paths = {RECORDINGS[n][0]: recordings / n for n in
             ("evt2_gen3_sample.raw", "evt3_gen41_sample.raw", "dat_ncars_car.dat",
              "aedat4_dvxplorer_sample.aedat4", "aedat2_dvs128_walking2.aedat", "atis40_dvs128_clip2.bin")}
    events = read_events(recordings / "atis40_dvs128_clip1.bin")
    np.save(tmp_path / "e.npy", events)
    paths["npy"] = tmp_path / "e.npy"
    convert_to_store(recordings / "evt3_gen41_sample.raw", tmp_path / "e.h5")
    paths["hdf5"] = tmp_path / "e.h5"
    assert sorted(paths) == sorted(FORMATS)
    return paths


def test_chunked_reads_equal_whole_reads_for_every_format(recordings, tmp_path):
    for fmt, path in _all_formats(recordings, tmp_path).items():
        with open_recording(path) as rec:
            whole = rec.read()
            # small decode blocks, so that chunk boundaries fall inside decoder blocks and vice versa
            for attr, small in (("block_bytes", 4096 * 5 * 4 * 2 + 8), ("block_events", 5000)):
                if hasattr(rec, attr):
                    setattr(rec, attr, small)
            for n in (1, 997, 65_536):
                if n == 1 and whole.size > 10_000:
                    continue
                chunks = list(rec.chunks(n_events=n))
                assert all(c.size == n for c in chunks[:-1]) and 0 < chunks[-1].size <= n, fmt
                np.testing.assert_array_equal(np.concatenate(chunks), whole, err_msg=fmt)
            span = int(whole["t"].max() - whole["t"][0])
            for window in (997, span // 7 + 1, span + 1):
                chunks = list(rec.chunks(time_window=window))
                np.testing.assert_array_equal(np.concatenate(chunks), whole, err_msg=fmt)
                t0 = int(whole["t"][0])
                for k, chunk in enumerate(chunks):
                    if chunk.size:
                        assert chunk["t"].min() >= t0 + k * window and chunk["t"].max() < t0 + (k + 1) * window
                assert len(chunks) == span // window + 1


def test_time_window_chunks_yield_empty_windows(tmp_path):
    events = make_events([1, 2, 3], [1, 1, 1], [100, 150, 1_000], [0, 1, 0])
    np.save(tmp_path / "gap.npy", events)
    chunks = list(open_recording(tmp_path / "gap.npy").chunks(time_window=100))
    assert [c.size for c in chunks] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 1]


def test_chunks_needs_exactly_one_argument(recordings):
    with open_recording(recordings / "nmnist_sample.bin") as rec:
        for kwargs in ({}, {"n_events": 5, "time_window": 5}, {"n_events": 0}, {"time_window": -1}):
            with pytest.raises(StreamsnnError):
                next(rec.chunks(**kwargs))


# -- HDF5 store ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_store_round_trip_is_exact(recordings, tmp_path, name):
    stats = convert_to_store(recordings / name, tmp_path / "out.h5")
    original = read_events(recordings / name)
    with open_recording(tmp_path / "out.h5") as rec:
        assert rec.format == "hdf5" and rec.source_format == RECORDINGS[name][0]
        assert rec.sensor_size == open_recording(recordings / name).sensor_size
        np.testing.assert_array_equal(rec.read(), original)
    assert stats["events"] == original.size


def test_store_time_window_uses_the_index(recordings, tmp_path):
    events = read_events(recordings / "evt2_gen3_sample.raw")
    write_store(tmp_path / "s.h5", events, (640, 480))
    with StoreRecording(tmp_path / "s.h5") as rec:
        t = events["t"]
        for start, end in ((t[0], t[0] + 1), (1_330_000, 1_331_234), (t[-1], t[-1] + 1), (0, 10), (t[0], t[-1] + 1)):
            expected = events[(t >= start) & (t < end)]
            np.testing.assert_array_equal(rec.read_window(int(start), int(end)), expected)
        # only the index and the blocks that hold the window are read
        calls = []
        original = rec.read_range
        rec.read_range = lambda a, b: calls.append((a, b)) or original(a, b)
        rec.read_window(1_330_000, 1_330_100)
        assert len(calls) == 1 and calls[0][1] - calls[0][0] <= 2 * INDEX_STRIDE


def test_store_is_appendable_and_compressed(tmp_path, recordings):
    import h5py

    events = read_events(recordings / "evt3_gen41_sample.raw")
    with EventStoreWriter(tmp_path / "a.h5", (1280, 720), source_format="evt3") as writer:
        for piece in np.array_split(events, 7):
            writer.append(piece)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        for field in "txyp":
            ds = f["events"][field]
            # HDF5's built-in scale-offset filter, lossless for integers (scaleoffset=0)
            assert ds.ndim == 1 and ds.chunks is not None and ds.scaleoffset == 0 and ds.maxshape == (None,)
        assert tuple(f.attrs["sensor_size"]) == (1280, 720, 2) and f.attrs["source_format"] == "evt3"
        assert f.attrs["format_version"] == 2
    # compressed: well under the 13 bytes an event of the uncompressed fields
    assert (tmp_path / "a.h5").stat().st_size < 7 * events.size
    np.testing.assert_array_equal(read_events(tmp_path / "a.h5"), events)
    with pytest.raises(EventFormatError, match="exists"):
        EventStoreWriter(tmp_path / "a.h5")
    with pytest.raises(EventFormatError, match="outside the sensor"):
        with EventStoreWriter(tmp_path / "b.h5", (10, 10)) as writer:
            writer.append(events[:5])


_KILLED_WRITER = r"""
import os, signal, sys
import numpy as np
from streamsnn.events import make_events
from streamsnn.io.store import EventStoreWriter
w = EventStoreWriter(sys.argv[1], (100, 100))
n = 0
for k in range(5):
    count = 30_000 + 1_000 * k
    t = np.arange(n, n + count)
    w.append(make_events(t % 100, (t // 100) % 100, t, t % 2))
    n += count
    w.flush()
t = np.arange(n, n + 50_000)
w.append(make_events(t % 100, t % 100, t, t % 2))  # never flushed
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_writer_killed_mid_recording_leaves_flushed_events_readable(tmp_path):
    path = tmp_path / "killed.h5"
    result = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], timeout=120)
    assert result.returncode != 0
    events = read_events(path)
    flushed = sum(30_000 + 1_000 * k for k in range(5))
    assert flushed <= events.size <= flushed + 50_000
    np.testing.assert_array_equal(events["t"], np.arange(events.size))
    np.testing.assert_array_equal(events["x"][:flushed], np.arange(flushed) % 100)


def test_store_reader_sees_live_writer_flushes(tmp_path):
    with EventStoreWriter(tmp_path / "live.h5") as writer:
        writer.append(make_events([1], [1], [10], [1]))
        writer.flush()
        with StoreRecording(tmp_path / "live.h5") as rec:
            assert len(rec) == 1
            writer.append(make_events([2, 3], [2, 3], [20, 30], [0, 1]))
            writer.flush()
            rec.refresh()
            np.testing.assert_array_equal(rec.read()["t"], [10, 20, 30])


def test_convert_refuses_to_overwrite(recordings, tmp_path):
    convert_to_store(recordings / "nmnist_sample.bin", tmp_path / "n.h5")
    with pytest.raises(EventFormatError, match="exists"):
        convert_to_store(recordings / "nmnist_sample.bin", tmp_path / "n.h5")
    stats = convert_to_store(recordings / "nmnist_sample.bin", tmp_path / "n.h5", overwrite=True,
                             sensor_size=(34, 34))
    assert stats["sensor_size"] == [34, 34, 2] and stats["events"] == 4325
    assert not list(tmp_path.glob("*.partial"))


# -- streamsnn info / convert ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_info_on_every_recording(recordings, name):
    fmt, sensor, count, duration = RECORDINGS[name]
    info = recording_info(recordings / name)
    assert info["format"] == fmt and info["events"] == count
    if duration is not None:
        assert info["duration_s"] == pytest.approx(duration / 1e6)
        assert info["event_rate_per_s"] == pytest.approx(count / (duration / 1e6), abs=0.1)
    if sensor is not None:
        assert info["sensor_size_wh"][:2] == list(sensor) and not info["sensor_size_inferred"]
    elif fmt == "atis_bin":
        assert info["sensor_size_inferred"] and "inferred" in info["sensor_size"]
    else:
        assert info["sensor_size_wh"] is None and "unknown" in info["sensor_size"]


def test_info_infers_nmnist_geometry_clearly(recordings):
    info = recording_info(recordings / "nmnist_sample.bin")
    assert info["sensor_size_wh"] == [34, 34, 2] and "inferred" in info["sensor_size"]
    given = recording_info(recordings / "nmnist_sample.bin", sensor_size=(34, 34))
    assert not given["sensor_size_inferred"] and "given" in given["sensor_size"]


def test_cli_info_and_convert(recordings, tmp_path):
    import json

    from streamsnn.cli import main

    run = subprocess.run([sys.executable, "-m", "streamsnn.cli", "info", "--json",
                          str(recordings / "evt3_gen41_pedestrians.raw")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["events"] == 5000 and info["duration_s"] == pytest.approx(0.04521)
    assert main(["convert", str(recordings / "dat_ncars_car.dat"), str(tmp_path / "c.h5")]) == 0
    assert read_events(tmp_path / "c.h5").size == 4407
    assert main(["info", str(tmp_path / "missing.raw")]) == 2


def test_store_fast_decoder_equals_h5py(recordings, tmp_path):
    events = read_events(recordings / "evt2_gen3_sparklers.raw")
    write_store(tmp_path / "f.h5", events, (640, 480))
    with StoreRecording(tmp_path / "f.h5") as rec:
        assert rec._fast_path_ok() and rec._kind == "scaleoffset"
        fast = rec.read()
        rec._fast = False  # h5py's own filters
        slow = rec.read()
        for start, stop in ((0, 1), (65_530, 65_540), (100_000, 400_001), (521_000, 521_252)):
            np.testing.assert_array_equal(rec.read_range(start, stop), events[start:stop])
    np.testing.assert_array_equal(fast, events)
    np.testing.assert_array_equal(slow, events)


def _tricky_events():
    """Chunks scale-offset packs every way: a few bits, a constant, 57..63 bits, full
    precision, values equal to the fill value (0), and a partial last chunk."""
    rng = np.random.default_rng(7)
    n = 7 * INDEX_STRIDE + 1234
    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["t"] = np.cumsum(rng.integers(0, 5, n))
    events["x"] = rng.integers(0, 1280, n)
    events["y"] = rng.integers(0, 720, n)
    events["p"] = rng.integers(0, 2, n)
    c = [slice(k * INDEX_STRIDE, (k + 1) * INDEX_STRIDE) for k in range(8)]
    events["t"][c[1]] = 5                                     # t constant
    events["x"][c[1]], events["y"][c[1]], events["p"][c[1]] = 0, 0, 0   # all fill value
    events["t"][c[2]] = rng.integers(0, 2**58, INDEX_STRIDE)  # 58 bits
    events["t"][c[3]] = rng.integers(-2**62, 2**62, INDEX_STRIDE)  # 63 bits
    events["t"][c[4]] = rng.integers(-2**63, 2**63 - 1, INDEX_STRIDE, dtype=np.int64)  # full precision
    events["t"][c[5]] = -(2**40) + np.arange(INDEX_STRIDE)    # negative
    events["x"][c[5]] = 1279                                  # constant, not the fill value
    events["p"][c[6]] = 1
    events["t"][c[7]] = np.arange(1234)[::-1]                 # partial chunk, stepping back
    return events


@pytest.mark.parametrize("direct,parallel", [(True, False), (False, False), (True, True)])
def test_store_scaleoffset_decoder_equals_h5py_on_every_kind_of_chunk(tmp_path, monkeypatch, direct, parallel):
    from streamsnn.io import store

    monkeypatch.setattr(store, "_PARALLEL_MIN_CHUNKS", 1 if parallel else 10**9)
    events = _tricky_events()
    write_store(tmp_path / "k.h5", events, (1280, 720))
    with StoreRecording(tmp_path / "k.h5") as rec:
        assert rec.format_version == 2 and rec._fast_path_ok() and rec._kind == "scaleoffset"
        if not direct:
            rec._src = False  # the read_direct_chunk path (as for a file a writer has open)
        fast = rec.read()
        parts = [rec.read_range(a, b) for a, b in ((0, 70_000), (70_000, 300_000), (300_000, len(events)))]
        rec._fast = False  # h5py's own filters
        slow = rec.read()
    np.testing.assert_array_equal(slow, events)
    np.testing.assert_array_equal(fast, events)
    np.testing.assert_array_equal(np.concatenate(parts), events)


@pytest.mark.parametrize("direct", [True, False])
def test_store_damaged_scaleoffset_chunk_is_reported(tmp_path, direct):
    import h5py

    events = _tricky_events()[:100_000]
    path = tmp_path / "d.h5"
    write_store(path, events, (1280, 720))
    with h5py.File(path, "r") as f:
        t_chunk = f["events/t"].id.get_chunk_info_by_coord((65_536,))
        x_chunk = f["events/x"].id.get_chunk_info_by_coord((0,))
    data = bytearray(path.read_bytes())
    data[t_chunk.byte_offset] = 200  # minbits beyond 64
    data[x_chunk.byte_offset + 21] |= 0xF0  # x codes far past the sensor's width
    path.write_bytes(bytes(data))
    with StoreRecording(path) as rec:
        if not direct:
            rec._src = False
        with pytest.raises(EventFormatError, match="chunk 1 .* does not decompress"):
            rec.read_range(70_000, 70_010)
        with pytest.raises(EventFormatError, match="chunk 0 .* outside the sensor"):
            rec.read_range(0, 10)


def test_store_version_1_lzf_layout_still_reads(recordings, tmp_path):
    import h5py

    events = read_events(recordings / "evt2_gen3_sparklers.raw")
    with EventStoreWriter(tmp_path / "v1.h5", (640, 480), compression="lzf") as writer:
        writer.append(events)
    with h5py.File(tmp_path / "v1.h5", "r") as f:
        assert f.attrs["format_version"] == 1 and f["events/t"].compression == "lzf" and f["events/t"].shuffle
    with StoreRecording(tmp_path / "v1.h5") as rec:
        assert rec.format_version == 1 and rec._fast_path_ok() and rec._kind == "lzf"
        np.testing.assert_array_equal(rec.read(), events)
        np.testing.assert_array_equal(rec.read_range(65_530, 65_540), events[65_530:65_540])
        rec._src = False
        np.testing.assert_array_equal(rec.read_range(100_000, 400_001), events[100_000:400_001])


def test_store_rejects_unknown_versions(tmp_path):
    import h5py

    write_store(tmp_path / "v.h5", make_events([1], [1], [10], [1]))
    with h5py.File(tmp_path / "v.h5", "r+") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(EventFormatError, match="version 3"):
        read_events(tmp_path / "v.h5")


def test_store_with_other_filters_is_read_by_h5py(recordings, tmp_path):
    import h5py

    events = read_events(recordings / "nmnist_sample.bin")
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.attrs["streamsnn_format"] = "events"
        f.attrs["format_version"] = 1
        for field in "txyp":
            f.create_dataset(f"events/{field}", data=events[field], chunks=(1000,), compression="gzip")
        f.create_dataset("index/t_min", data=events["t"][::INDEX_STRIDE])
        f.create_dataset("index/t_max", data=events["t"][::INDEX_STRIDE])
    with StoreRecording(tmp_path / "g.h5") as rec:
        assert not rec._fast_path_ok()
        np.testing.assert_array_equal(rec.read(), events)


def test_aedat2_timestamp_wrap(tmp_path):
    header = b"#!AER-DAT2.0\r\n# AEChip: ch.unizh.ini.jaer.chip.retina.DVS128\r\n"
    stamps = [2**32 - 20, 2**32 - 1, 5, 30]
    records = np.array(list(zip([0, 2, 4, 6], stamps)), dtype=[("a", ">u4"), ("t", ">u4")])
    (tmp_path / "wrap.aedat").write_bytes(header + records.tobytes())
    events = read_events(tmp_path / "wrap.aedat")
    np.testing.assert_array_equal(events["t"], [2**32 - 20, 2**32 - 1, 2**32 + 5, 2**32 + 30])
