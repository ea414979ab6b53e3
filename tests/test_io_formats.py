"""Every format: files the tests write (with the project's writers, dv-processing's AEDAT 4 writer and
the small writers below) round-trip exactly; every real recording gives the figures of conftest's
RECORDINGS; chunked == whole; store round trips."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL, RECORDINGS
from generate import AEDAT2_DVS128_HEADER, scene_events, write_aedat2, write_aedat4, write_atis_bin, write_dat
from streamsnn.errors import EventFormatError, StreamsnnError
from streamsnn.events import EVENT_DTYPE, make_events, validate_events
from streamsnn.io import FORMATS, detect_format, open_recording, read_events, recording_info
from streamsnn.io.arrays import write_npy
from streamsnn.io.prophesee import write_raw
from streamsnn.io.store import INDEX_STRIDE, EventStoreWriter, StoreRecording, convert_to_store, write_store

# The README's spans for the recordings whose first and last t conftest's RECORDINGS leaves out.
SPANS_NOT_IN_RECORDINGS = {
    "aedat4_dvxplorer_sample.aedat4": 589_917,
    "aedat2_dvs128_walking.aedat": 8_043_874,
    "aedat2_dvs128_walking2.aedat": 9_243_604,
}
# format: (the scene_events arguments, the sensor (w, h) the reader reports, or None)
GENERATED = {
    "evt2": (dict(n=30_000, sensor_size=(640, 480), seed=1, t0=1_317_888), (640, 480)),
    "evt3": (dict(n=30_000, sensor_size=(1280, 720), seed=2, t0=11_718_656), (1280, 720)),
    "dat": (dict(n=6_000, sensor_size=(304, 240), seed=3), None),
    "aedat4": (dict(n=20_000, sensor_size=(320, 240), seed=4, t0=1_700_000_000_000_000), (320, 240)),
    "aedat2": (dict(n=20_000, sensor_size=(128, 128), seed=5, t0=2**31 - 100_000), (128, 128)),
    # crosses one 2**23 µs wrap of the ATIS timestamp counter
    "atis_bin": (dict(n=5_000, sensor_size=(34, 34), seed=6, t0=2**23 - 20_000), None),
    "npy": (dict(n=10_000, sensor_size=(64, 48), seed=7), None),
    "hdf5": (dict(n=30_000, sensor_size=(1280, 720), seed=8, t0=5_840_504), (1280, 720)),
}


def write_generated(root: Path, fmt: str) -> tuple[Path, np.ndarray]:
    spec, reported = GENERATED[fmt]
    events = scene_events(**spec)
    sensor = spec["sensor_size"]
    writers = {
        "evt2": lambda path: write_raw(path, events, sensor, "evt2"),
        "evt3": lambda path: write_raw(path, events, sensor, "evt3"),
        "dat": lambda path: write_dat(path, events),
        "aedat4": lambda path: write_aedat4(path, events, sensor),
        "aedat2": lambda path: write_aedat2(path, events),
        "atis_bin": lambda path: write_atis_bin(path, events),
        "npy": lambda path: write_npy(path, events),
        "hdf5": lambda path: write_store(path, events, sensor, source_format="evt3"),
    }
    suffix = {"evt2": ".raw", "evt3": ".raw", "dat": ".dat", "aedat4": ".aedat4", "aedat2": ".aedat",
              "atis_bin": ".bin", "npy": ".npy", "hdf5": ".h5"}[fmt]
    path = root / f"generated_{fmt}{suffix}"
    writers[fmt](path)
    return path, events


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """format -> (path, the events written into it): one file the tests wrote for every format."""
    root = tmp_path_factory.mktemp("generated")
    assert sorted(GENERATED) == sorted(FORMATS)
    return {fmt: write_generated(root, fmt) for fmt in GENERATED}


@pytest.fixture(params=["bundled", pytest.param("real", marks=REAL)])
def nmnist_sample(request, nmnist_root):
    """An N-MNIST sample: the first bundled one, and the real recording's nmnist_sample.bin."""
    if request.param == "real":
        return request.getfixturevalue("recordings") / "nmnist_sample.bin"
    return sorted((nmnist_root / "Test").glob("*/*.bin"))[0]


@pytest.mark.parametrize("fmt", sorted(GENERATED))
def test_generated_file_round_trips(generated, fmt):
    path, events = generated[fmt]
    reported = GENERATED[fmt][1]
    assert detect_format(path) == fmt
    with open_recording(path) as rec:
        assert rec.format == fmt and rec.path == path
        assert (tuple(rec.sensor_size[:2]) if rec.sensor_size is not None else None) == reported
        decoded = rec.read()
    assert decoded.dtype == EVENT_DTYPE
    np.testing.assert_array_equal(decoded, events)


def test_every_recording_is_listed(recordings):
    assert sorted(p.name for p in recordings.iterdir()) == sorted(RECORDINGS)


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_real_recording(recordings, name):
    _, sensor, count, t_first, t_last = RECORDINGS[name]
    fmt = RECORDINGS[name][0]
    reported = None if fmt == "atis_bin" else sensor  # ATIS .bin has no header to say it
    assert detect_format(recordings / name) == fmt
    with open_recording(recordings / name) as rec:
        assert rec.format == fmt and rec.path == recordings / name
        assert (tuple(rec.sensor_size) if rec.sensor_size is not None else None) == reported
        events = rec.read()
    assert events.dtype == EVENT_DTYPE and events.size == count
    validate_events(events, sensor)
    if t_first is not None:
        assert (int(events["t"][0]), int(events["t"][-1])) == (t_first, t_last)
    elif name in SPANS_NOT_IN_RECORDINGS:
        assert int(np.ptp(events["t"])) == SPANS_NOT_IN_RECORDINGS[name]
    else:  # the DVS128 clips: 1.45 s each
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
    n = np.arange(3000)
    events = make_events(n % 64, (n * 7) % 48, 1_000 + 7 * n, (n % 3) != 0)
    path = write_aedat4(tmp_path / f"{compression}.aedat4", events, (64, 48), compression=compression)
    with open_recording(path) as rec:
        assert tuple(rec.sensor_size) == (64, 48, 2)
        np.testing.assert_array_equal(rec.read(), events)


def test_aedat2_follows_jaer_dvs128_conventions(tmp_path):
    # raw x = 5, y = 9, bit 0 = 0 (ON); raw x = 127, y = 0, bit 0 = 1 (OFF); a special event (bit 15)
    addresses = [(9 << 8) | (5 << 1) | 0, (0 << 8) | (127 << 1) | 1, 0x8000]
    records = np.array(list(zip(addresses, [10, 20, 30])), dtype=[("a", ">u4"), ("t", ">i4")])
    path = tmp_path / "jaer.aedat"
    path.write_bytes(AEDAT2_DVS128_HEADER + records.tobytes())
    events = read_events(path)
    assert events.size == 2
    np.testing.assert_array_equal(events["x"], [127 - 5, 0])
    np.testing.assert_array_equal(events["y"], [9, 0])
    np.testing.assert_array_equal(events["p"], [1, 0])


def test_aedat2_real_polarities_follow_jaer(recordings):
    # the README's note: bit 0 is 0 for ON, so ON events are the addresses with an even value
    real = read_events(recordings / "aedat2_dvs128_walking.aedat")
    assert tuple(np.bincount(real["p"])) == (69_052, 55_976)  # (OFF, ON)


def test_npy_any_integer_layout(tmp_path, nmnist_sample):
    events = read_events(nmnist_sample)
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


def _real_formats(recordings, tmp_path):
    paths = {RECORDINGS[n][0]: recordings / n for n in
             ("evt2_gen3_sample.raw", "evt3_gen41_sample.raw", "dat_ncars_car.dat",
              "aedat4_dvxplorer_sample.aedat4", "aedat2_dvs128_walking2.aedat", "atis40_dvs128_clip2.bin")}
    events = read_events(recordings / "atis40_dvs128_clip1.bin")
    np.save(tmp_path / "e.npy", events)
    paths["npy"] = tmp_path / "e.npy"
    convert_to_store(recordings / "evt3_gen41_sample.raw", tmp_path / "e.h5")
    paths["hdf5"] = tmp_path / "e.h5"
    return paths


@pytest.fixture(params=["generated", pytest.param("real", marks=REAL)])
def file_per_format(request, generated, tmp_path):
    """format -> path: the generated files, and real recordings (npy and hdf5 made from real ones)."""
    if request.param == "real":
        paths = _real_formats(request.getfixturevalue("recordings"), tmp_path)
    else:
        paths = {fmt: path for fmt, (path, _) in generated.items()}
    assert sorted(paths) == sorted(FORMATS)
    return paths


def test_chunked_reads_equal_whole_reads_for_every_format(file_per_format):
    for fmt, path in file_per_format.items():
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


def test_chunks_needs_exactly_one_argument(nmnist_sample):
    with open_recording(nmnist_sample) as rec:
        for kwargs in ({}, {"n_events": 5, "time_window": 5}, {"n_events": 0}, {"time_window": -1}):
            with pytest.raises(StreamsnnError):
                next(rec.chunks(**kwargs))


# -- HDF5 store ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(GENERATED))
def test_store_round_trip_of_generated_files_is_exact(generated, tmp_path, fmt):
    path, events = generated[fmt]
    stats = convert_to_store(path, tmp_path / "out.h5")
    with open_recording(tmp_path / "out.h5") as rec:
        assert rec.format == "hdf5" and rec.source_format == fmt
        assert rec.sensor_size == open_recording(path).sensor_size
        np.testing.assert_array_equal(rec.read(), events)
    assert stats["events"] == events.size


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_store_round_trip_is_exact(recordings, tmp_path, name):
    stats = convert_to_store(recordings / name, tmp_path / "out.h5")
    original = read_events(recordings / name)
    with open_recording(tmp_path / "out.h5") as rec:
        assert rec.format == "hdf5" and rec.source_format == RECORDINGS[name][0]
        assert rec.sensor_size == open_recording(recordings / name).sensor_size
        np.testing.assert_array_equal(rec.read(), original)
    assert stats["events"] == original.size == RECORDINGS[name][2]


@pytest.fixture(scope="module", params=["generated", pytest.param("real", marks=REAL)])
def camera_events(request):
    """(events, sensor) of a 640x480 camera: a generated scene of 520,000 events, and the real
    evt2_gen3_sparklers.raw (521,252): both span several store chunks."""
    if request.param == "real":
        return read_events(request.getfixturevalue("recordings") / "evt2_gen3_sparklers.raw"), (640, 480)
    return scene_events(520_000, (640, 480), seed=9, t0=913_716_224, duration_us=95_871), (640, 480)


def test_store_time_window_uses_the_index(camera_events, tmp_path):
    events, sensor = camera_events
    write_store(tmp_path / "s.h5", events, sensor)
    with StoreRecording(tmp_path / "s.h5") as rec:
        t = events["t"]
        middle = int(t[0] + (t[-1] - t[0]) // 3)
        for start, end in ((t[0], t[0] + 1), (middle, middle + 1_234), (t[-1], t[-1] + 1), (0, 10),
                           (t[0], t[-1] + 1)):
            expected = events[(t >= start) & (t < end)]
            np.testing.assert_array_equal(rec.read_window(int(start), int(end)), expected)
        # only the index and the blocks that hold the window are read
        calls = []
        original = rec.read_range
        rec.read_range = lambda a, b: calls.append((a, b)) or original(a, b)
        rec.read_window(middle, middle + 100)
        assert len(calls) == 1 and calls[0][1] - calls[0][0] <= 2 * INDEX_STRIDE


def test_store_is_appendable_and_compressed(tmp_path, camera_events):
    import h5py

    events, sensor = camera_events
    with EventStoreWriter(tmp_path / "a.h5", sensor, source_format="evt2") as writer:
        for piece in np.array_split(events, 7):
            writer.append(piece)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        for field in "txyp":
            ds = f["events"][field]
            # HDF5's built-in scale-offset filter, lossless for integers (scaleoffset=0)
            assert ds.ndim == 1 and ds.chunks is not None and ds.scaleoffset == 0 and ds.maxshape == (None,)
        assert tuple(f.attrs["sensor_size"]) == (*sensor, 2) and f.attrs["source_format"] == "evt2"
        assert f.attrs["format_version"] == 2
    # compressed: well under the 13 bytes an event of the uncompressed fields
    assert (tmp_path / "a.h5").stat().st_size < 7 * events.size
    np.testing.assert_array_equal(read_events(tmp_path / "a.h5"), events)
    with pytest.raises(EventFormatError, match="exists"):
        EventStoreWriter(tmp_path / "a.h5")
    with pytest.raises(EventFormatError, match="outside the sensor"):
        with EventStoreWriter(tmp_path / "b.h5", (10, 10)) as writer:
            writer.append(events[events["x"] >= 10][:5])


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


def test_convert_refuses_to_overwrite(nmnist_sample, tmp_path):
    count = read_events(nmnist_sample).size
    convert_to_store(nmnist_sample, tmp_path / "n.h5")
    with pytest.raises(EventFormatError, match="exists"):
        convert_to_store(nmnist_sample, tmp_path / "n.h5")
    stats = convert_to_store(nmnist_sample, tmp_path / "n.h5", overwrite=True, sensor_size=(34, 34))
    assert stats["sensor_size"] == [34, 34, 2] and stats["events"] == count
    assert not list(tmp_path.glob("*.partial"))


# -- streamsnn info / convert ---------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(GENERATED))
def test_info_on_every_generated_file(generated, fmt):
    path, events = generated[fmt]
    reported = GENERATED[fmt][1]
    info = recording_info(path)
    duration = int(events["t"][-1] - events["t"][0])
    assert info["format"] == fmt and info["events"] == events.size
    assert info["duration_s"] == pytest.approx(duration / 1e6)
    assert info["event_rate_per_s"] == pytest.approx(events.size / (duration / 1e6), abs=0.1)
    if reported is not None:
        assert info["sensor_size_wh"][:2] == list(reported) and not info["sensor_size_inferred"]
    elif fmt == "atis_bin":
        assert info["sensor_size_inferred"] and "inferred" in info["sensor_size"]
        assert info["sensor_size_wh"] == [34, 34, 2]
    else:
        assert info["sensor_size_wh"] is None and "unknown" in info["sensor_size"]


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_info_on_every_recording(recordings, name):
    _, sensor, count, t_first, t_last = RECORDINGS[name]
    fmt = RECORDINGS[name][0]
    info = recording_info(recordings / name)
    assert info["format"] == fmt and info["events"] == count
    duration = t_last - t_first if t_first is not None else SPANS_NOT_IN_RECORDINGS.get(name)
    if duration is not None:
        assert info["duration_s"] == pytest.approx(duration / 1e6)
        assert info["event_rate_per_s"] == pytest.approx(count / (duration / 1e6), abs=0.1)
    if fmt == "atis_bin":
        assert info["sensor_size_inferred"] and "inferred" in info["sensor_size"]
    elif sensor is not None:
        assert info["sensor_size_wh"] == list(sensor) and not info["sensor_size_inferred"]
    else:
        assert info["sensor_size_wh"] is None and "unknown" in info["sensor_size"]


def test_info_infers_nmnist_geometry_clearly(nmnist_sample):
    info = recording_info(nmnist_sample)
    assert info["sensor_size_wh"] == [34, 34, 2] and "inferred" in info["sensor_size"]
    given = recording_info(nmnist_sample, sensor_size=(34, 34))
    assert not given["sensor_size_inferred"] and "given" in given["sensor_size"]


@pytest.fixture(params=["generated", pytest.param("real", marks=REAL)])
def evt3_and_dat(request, generated):
    """(EVT 3.0 file, its event count and span in µs, DAT file, its event count)."""
    if request.param == "real":
        recordings = request.getfixturevalue("recordings")
        evt3, dat = "evt3_gen41_pedestrians.raw", "dat_ncars_car.dat"
        _, _, count, first, last = RECORDINGS[evt3]
        return recordings / evt3, count, last - first, recordings / dat, RECORDINGS[dat][2]
    (evt3, events), (dat, dat_events) = generated["evt3"], generated["dat"]
    return evt3, events.size, int(np.ptp(events["t"])), dat, dat_events.size


def test_cli_info_and_convert(evt3_and_dat, tmp_path):
    import json

    from streamsnn.cli import main

    evt3, count, span, dat, dat_count = evt3_and_dat
    run = subprocess.run([sys.executable, "-m", "streamsnn.cli", "info", "--json", str(evt3)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["events"] == count and info["duration_s"] == pytest.approx(span / 1e6)
    assert main(["convert", str(dat), str(tmp_path / "c.h5")]) == 0
    assert read_events(tmp_path / "c.h5").size == dat_count
    assert main(["info", str(tmp_path / "missing.raw")]) == 2


def test_store_fast_decoder_equals_h5py(camera_events, tmp_path):
    events, sensor = camera_events
    write_store(tmp_path / "f.h5", events, sensor)
    n = events.size
    with StoreRecording(tmp_path / "f.h5") as rec:
        assert rec._fast_path_ok() and rec._kind == "scaleoffset"
        fast = rec.read()
        rec._fast = False  # h5py's own filters
        slow = rec.read()
        for start, stop in ((0, 1), (65_530, 65_540), (100_000, 400_001), (n - 252, n)):
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

    monkeypatch.setattr(store, "_EVENTS_PER_THREAD", 1000 if parallel else 10**12)
    monkeypatch.setattr(store, "available_threads", lambda: 3)  # three runs, also on a one-core machine
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


@pytest.mark.parametrize("field,byte,message", [("x", 0xF0, "outside the sensor"), ("p", None, "polarity other")])
def test_store_damage_is_found_by_the_whole_chunk_decoder(tmp_path, field, byte, message):
    """Reads of a whole chunk decode x, y and p through lookup tables (short ones do not): a value out
    of range is reported by both, also for a file read by its summary (the damage done with the
    modification time put back, as if the disk had flipped the bits)."""
    import h5py

    events = _tricky_events()[:100_000]
    path = tmp_path / "d.h5"
    write_store(path, events, (1280, 720))
    recorded = path.stat().st_mtime_ns
    with h5py.File(path, "r") as f:
        chunk = f[f"events/{field}"].id.get_chunk_info_by_coord((0,))
    data = bytearray(path.read_bytes())
    if byte is None:
        data[chunk.byte_offset + 5] = 7  # minval 7: every polarity 7 or 8
    else:
        data[chunk.byte_offset + 21] |= byte  # x codes far past the sensor's width
    path.write_bytes(bytes(data))
    os.utime(path, ns=(recorded, recorded))
    with StoreRecording(path) as rec:
        assert rec._summary is not None
        for stop in (10, 65_536):
            with pytest.raises(EventFormatError, match=f"chunk 0 .* {message}"):
                rec.read_range(0, stop)
        np.testing.assert_array_equal(rec.read_range(65_536, 100_000), events[65_536:])


def test_store_summary_opens_a_finished_store_without_hdf5(tmp_path):
    import h5py

    events = _tricky_events()[:300_000]
    path = tmp_path / "s.h5"
    write_store(path, events, (1280, 720), source_format="evt3")
    assert path.read_bytes().startswith(b"streamsnn-store\n") and detect_format(path) == "hdf5"
    with StoreRecording(path) as rec:
        assert rec._summary is not None
        assert (len(rec), rec.format_version, tuple(rec.sensor_size)) == (300_000, 2, (1280, 720, 2))
        assert rec.sensor_size_source == "header"
        np.testing.assert_array_equal(rec.read(), events)
        t = events["t"]
        window = rec.read_window(int(t[70_000]), int(t[140_000]))
        np.testing.assert_array_equal(window, events[(t >= t[70_000]) & (t < t[140_000])])
        assert (rec.source_format, rec.source_name) == ("evt3", "")
        assert rec._hdf5 is None  # HDF5 never opened the file
        rec.refresh()  # unchanged since its writer closed it: nothing to see
        assert rec._summary is not None
    with h5py.File(path, "r") as f:  # still a plain HDF5 file to every other reader
        assert f.userblock_size == 8192
        np.testing.assert_array_equal(f["events/x"][:], events["x"])


def test_store_changed_after_writing_opens_through_hdf5(tmp_path):
    import h5py

    events = _tricky_events()[:100_000]
    more = _tricky_events()[200_000:230_000]
    path = tmp_path / "c.h5"
    write_store(path, events, (1280, 720))
    with StoreRecording(path) as rec:
        assert rec._summary is not None
        with h5py.File(path, "r+") as f:  # another program appends (and the index with it)
            for name in ("t", "x", "y", "p"):
                f["events"][name].resize((130_000,))
                f["events"][name][100_000:] = more[name]
            for name, reduce in (("t_min", np.min), ("t_max", np.max)):
                f["index"][name].resize((2,))
                f["index"][name][1] = reduce(np.concatenate((events["t"][65_536:], more["t"])))
        rec.refresh()  # the file changed: this reader goes on through HDF5
        assert rec._summary is None and len(rec) == 130_000
        np.testing.assert_array_equal(rec.read(), np.concatenate((events, more)))
    with StoreRecording(path) as rec:
        assert rec._summary is None  # the summary no longer matches: HDF5 opens it
        np.testing.assert_array_equal(rec.read(), np.concatenate((events, more)))


def test_store_copy_and_damaged_summary_open_through_hdf5(tmp_path):
    import shutil

    events = _tricky_events()[:100_000]
    path = tmp_path / "o.h5"
    write_store(path, events, (1280, 720))
    shutil.copy(path, tmp_path / "copy.h5")  # a new modification time
    recorded = path.stat().st_mtime_ns
    data = bytearray(path.read_bytes())
    data[8192 - 3] ^= 0x40  # the last chunk's t_max in the summary's table: only the CRC tells
    path.write_bytes(bytes(data))
    os.utime(path, ns=(recorded, recorded))
    for name in ("copy.h5", "o.h5"):
        with StoreRecording(tmp_path / name) as rec:
            assert rec._summary is None
            np.testing.assert_array_equal(rec.read(), events)
            assert isinstance(rec._src, int)  # raw chunks still read straight from the file: the
            # user block in front does not shift HDF5's chunk addresses (checked on one chunk)


def test_chunk_addresses_of_hdf5_before_1_14_4_are_found_behind_the_user_block(tmp_path):
    """HDF5 before 1.14.4 reported chunk addresses without the user block (HDF5 issue #3003; h5py 3.9
    and 3.10 ship such versions): the writer's summary and the reader's direct reads take them as file
    offsets only after finding the first chunk's bytes there, or a user block further on."""
    import h5py

    from streamsnn.io.store import SUMMARY_BYTES, _chunk_address_shift

    class ReportedAs:  # a dataset id whose chunk addresses are moved by ``by``, as an older HDF5's
        def __init__(self, dataset_id, by):
            self.dataset_id, self.by = dataset_id, by

        def get_chunk_info_by_coord(self, coord):
            info = self.dataset_id.get_chunk_info_by_coord(coord)
            return info._replace(byte_offset=info.byte_offset + self.by)

        def read_direct_chunk(self, coord):
            return self.dataset_id.read_direct_chunk(coord)

    path = tmp_path / "a.h5"
    write_store(path, _tricky_events()[:70_000], (1280, 720))
    with h5py.File(path, "r") as f, open(path, "rb") as raw:
        p = f["events/p"].id
        assert _chunk_address_shift(p, raw.fileno(), SUMMARY_BYTES) == 0
        assert _chunk_address_shift(ReportedAs(p, -SUMMARY_BYTES), raw.fileno(), SUMMARY_BYTES) == SUMMARY_BYTES
        assert _chunk_address_shift(ReportedAs(p, 7), raw.fileno(), SUMMARY_BYTES) is None
        assert _chunk_address_shift(ReportedAs(p, -SUMMARY_BYTES), raw.fileno(), 0) is None


def test_stores_without_a_summary_are_still_found_and_read(tmp_path, monkeypatch):
    from streamsnn.io import store

    events = _tricky_events()[:100_000]
    with EventStoreWriter(tmp_path / "g.h5", (1280, 720), compression="gzip") as writer:  # no decoder of ours
        writer.append(events)
    monkeypatch.setattr(store, "SUMMARY_MAX_CHUNKS", 1)  # as a store of more than 4 million events
    write_store(tmp_path / "big.h5", events, (1280, 720))
    for name in ("g.h5", "big.h5"):
        assert (tmp_path / name).read_bytes()[:16] == bytes(16)  # user block left empty
        assert detect_format(tmp_path / name) == "hdf5"
        with StoreRecording(tmp_path / name) as rec:
            assert rec._summary is None
            np.testing.assert_array_equal(rec.read(), events)


def test_store_version_1_lzf_layout_still_reads(camera_events, tmp_path):
    import h5py

    events, sensor = camera_events
    with EventStoreWriter(tmp_path / "v1.h5", sensor, compression="lzf") as writer:
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


def test_store_with_other_filters_is_read_by_h5py(nmnist_sample, tmp_path):
    import h5py

    events = read_events(nmnist_sample)
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
    stamps = [2**32 - 20, 2**32 - 1, 5, 30]
    records = np.array(list(zip([0, 2, 4, 6], stamps)), dtype=[("a", ">u4"), ("t", ">u4")])
    (tmp_path / "wrap.aedat").write_bytes(AEDAT2_DVS128_HEADER + records.tobytes())
    events = read_events(tmp_path / "wrap.aedat")
    np.testing.assert_array_equal(events["t"], [2**32 - 20, 2**32 - 1, 2**32 + 5, 2**32 + 30])


@pytest.mark.parametrize("rows,workers", [([65536, 34464], 2), ([65536] * 5 + [7], 2), ([10], 2), ([65536, 3], 3),
                                          ([65536] * 4, 1)])
def test_store_decoder_shares_events_evenly_and_covers_each_once(rows, workers):
    from streamsnn.io.store import _split_events

    rows = np.array(rows, dtype=np.int64)
    pieces, bounds = _split_events(rows, workers)
    covered = [np.zeros(r, np.int64) for r in rows]
    for chunk, first, end in pieces:
        assert 0 <= first < end <= rows[chunk]
        covered[chunk][first:end] += 1
    assert all((c == 1).all() for c in covered)
    shares = [int((pieces[a:b, 2] - pieces[a:b, 1]).sum()) for a, b in zip(bounds[:-1], bounds[1:])]
    assert len(shares) == workers and max(shares) - min(shares) <= 1
