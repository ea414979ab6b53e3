"""The project's HDF5 event store.

Layout (format version 2):

    /events/t  int64   µs        one 1-D dataset per field, all the same length,
    /events/x  int16             chunked (CHUNK_EVENTS per chunk), compressed
    /events/y  int16             with HDF5's built-in scale-offset filter
    /events/p  int8              (h5py ``scaleoffset=0``: lossless for integers)
    /index/t_min, /index/t_max   int64, one entry per block of INDEX_STRIDE
                                 events: the smallest and largest timestamp in it
    root attributes: streamsnn_format = "events", format_version = 2,
        sensor_size = (w, h, p) or absent, source_format, source_name

Scale-offset stores each chunk as its minimum plus every value's offset from
it in the fewest bits that hold the chunk's range: t in ~14..22 bits (a
chunk of 65,536 events spans milliseconds to a second), x ~11, y ~10, p 1,
about 5 bytes an event, near the size of the RAW file. Decoding is bit
unpacking, which the reader does itself (Numba, straight from the raw chunks
read from the file, the events shared among threads for long reads): several times
faster than LZF, and faster than decoding the RAW file. Any HDF5 reader
(plain h5py included) decodes the same files with the library's own filter.

Format version 1 (shuffle + LZF, 13 bytes an event before compression) is
still read, with its own parallel LZF decoder; ``compression="lzf"`` still
writes it.

A finished store of up to 4.2 million events carries a summary in the HDF5
user block (the first SUMMARY_BYTES of the file, which HDF5 leaves to the
application): the event count, sensor size, each chunk's file offset, size
and filter mask, and the time index. A reader opens such a file without HDF5
(one 8 kB read instead of ~1 ms of object headers, attributes and chunk
indexes) as long as the file is exactly as its writer left it (size and
modification time as recorded); a copied or changed file opens through HDF5
as before.

A time-window read looks only at the index (a few kB for a billion events)
to find the blocks that can hold the window, and reads just those; min/max
per block keeps it exact even where timestamps step back a little (EVT 3.0).

The writer opens the file in HDF5's single-writer/multiple-reader (SWMR)
mode, which keeps the file consistent on disk after every flush: a writer
killed mid-recording leaves a readable file with everything it flushed. The
field datasets are grown one after the other, so a reader takes the shortest
as the event count.
"""
from __future__ import annotations

import functools
import json
import os
import time
import zlib
from pathlib import Path

import numpy as np
from numba import njit

from ..errors import EventFormatError, SensorSizeError
from ..events import EVENT_DTYPE, SensorSize, as_events, empty_events
from ..threads import available_threads, run_parts
from .base import Recording, new_sibling_file, publish_file
from .detect import STORE_SUMMARY_MAGIC as SUMMARY_MAGIC

STORE_FORMAT = "events"
STORE_VERSION = 2
# Versions this reader knows: 1 = shuffle + LZF, 2 = scale-offset (same datasets).
READABLE_VERSIONS = (1, 2)
CHUNK_EVENTS = 1 << 16
INDEX_STRIDE = CHUNK_EVENTS
FIELDS = ("t", "x", "y", "p")
# Events per block when reading sequentially (a multiple of the index stride).
READ_BLOCK_EVENTS = 1 << 22


# What h5py raises for damaged files (it maps HDF5 errors onto these).
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, AttributeError)


def _h5py():
    import h5py

    return h5py


# A SWMR reader re-reads metadata whose checksum fails, in case it caught a
# writer mid-flush, sleeping twice as long before each try; HDF5's default of
# 100 tries makes a file with one damaged bit hang for longer than anyone waits
# (in C, deaf to Ctrl-C). A torn read heals within a few tries; 24 tries
# give up after about 20 ms (28: 0.3 s, 32: 4 s, measured).
SWMR_METADATA_READ_ATTEMPTS = 24


@functools.lru_cache(maxsize=None)
def _hdf5_library():
    """The HDF5 library h5py is running on (ctypes), for the calls h5py does not expose."""
    import ctypes
    import re

    _h5py()
    try:
        with open("/proc/self/maps") as maps:  # the libraries loaded, h5py's own copy of HDF5 among them
            paths = sorted(set(re.findall(r"(/\S*/libhdf5[-.][^/\s]*)", maps.read())))
    except OSError:
        return None
    for path in paths:
        if "libhdf5_" in path:  # libhdf5_hl and friends
            continue
        library = ctypes.CDLL(path)
        if hasattr(library, "H5Pset_metadata_read_attempts"):
            library.H5Pset_metadata_read_attempts.argtypes = [ctypes.c_int64, ctypes.c_uint]
            library.H5Pset_metadata_read_attempts.restype = ctypes.c_int
            return library
    return None


def _open_swmr_read(path):
    """h5py.File(path, "r", libver="latest", swmr=True)'s FileID, with a bounded number of metadata read attempts."""
    h5py = _h5py()
    library = _hdf5_library()
    if library is None:
        raise OSError("the file is marked open by a writer (SWMR), and the HDF5 library in use does not "
                      "let this reader bound its retries; run `h5clear -s` on it if no writer is left")
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    if library.H5Pset_metadata_read_attempts(fapl.id, SWMR_METADATA_READ_ATTEMPTS) < 0:
        raise OSError("H5Pset_metadata_read_attempts failed")
    return h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)


class EventStoreWriter:
    """Append events to a new HDF5 event store; every ``flush()`` leaves a readable file.

    Events are stored in the order given, so round trips are exact even for
    sources whose timestamps step back a little (EVT 3.0); they must have
    p in {0, 1} and lie inside ``sensor_size`` when one is given.
    """

    def __init__(self, path, sensor_size=None, *, source_format: str | None = None,
                 source_name: str | None = None, overwrite: bool = False,
                 compression: str = "scaleoffset"):
        """``compression``: "scaleoffset" (format version 2, the default: fast to read) or
        "lzf" / "gzip" (version 1's shuffle + LZF layout, or gzip in its place)."""
        h5py = _h5py()
        if compression not in ("scaleoffset", "lzf", "gzip"):
            raise ValueError(f"compression must be 'scaleoffset', 'lzf' or 'gzip', not {compression!r}")
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise EventFormatError(self.path, "already exists (pass overwrite=True / --force to replace it)")
        if self.path.is_dir():
            raise EventFormatError(self.path, "is a folder")
        self.sensor_size = None if sensor_size is None else SensorSize.coerce(sensor_size)
        # "w-" creates the file and fails if one appeared since the check above
        self._file = h5py.File(self.path, "w" if overwrite else "w-", libver="latest",
                               userblock_size=SUMMARY_BYTES)
        self._kind = "scaleoffset" if compression == "scaleoffset" else ("lzf" if compression == "lzf" else None)
        try:
            f = self._file
            f.attrs["streamsnn_format"] = STORE_FORMAT
            f.attrs["format_version"] = STORE_VERSION if compression == "scaleoffset" else 1
            if self.sensor_size is not None:
                f.attrs["sensor_size"] = np.array(self.sensor_size, dtype=np.int64)
            f.attrs["source_format"] = source_format or ""
            f.attrs["source_name"] = source_name or ""
            events = f.create_group("events")
            if compression == "scaleoffset":
                # lossless for integers: per chunk, the minimum + each value's offset in the fewest bits
                filters = {"scaleoffset": 0}
            else:
                filters = {"compression": compression, "shuffle": True}
            for name in FIELDS:
                events.create_dataset(name, shape=(0,), maxshape=(None,), dtype=EVENT_DTYPE[name],
                                      chunks=(CHUNK_EVENTS,), **filters)
            index = f.create_group("index")
            for name in ("t_min", "t_max"):
                index.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
            f.swmr_mode = True
        except Exception:
            self._file.close()
            raise
        self.count = 0

    def append(self, events) -> None:
        events = as_events(events, source=str(self.path))
        if events.size == 0:
            return
        t = events["t"]
        p = events["p"]
        if np.any((p != 0) & (p != 1)):
            raise EventFormatError(self.path, "appended events have a polarity other than 0 or 1")
        if self.sensor_size is not None:
            from .base import check_coordinates

            check_coordinates(events, self.sensor_size, self.path, what="appended event")
        f = self._file
        start, end = self.count, self.count + events.size
        for name in FIELDS:
            dataset = f["events"][name]
            dataset.resize((end,))
            dataset[start:end] = events[name]
        self._update_index(start, end, t)
        self.count = end

    def _update_index(self, start: int, end: int, t: np.ndarray) -> None:
        t_min_ds, t_max_ds = self._file["index"]["t_min"], self._file["index"]["t_max"]
        first_block, last_block = start // INDEX_STRIDE, (end - 1) // INDEX_STRIDE
        boundaries = np.arange(first_block, last_block + 2) * INDEX_STRIDE
        boundaries[0], boundaries[-1] = start, end
        offsets = boundaries - start
        t_min = np.minimum.reduceat(t, offsets[:-1])
        t_max = np.maximum.reduceat(t, offsets[:-1])
        old = t_min_ds.shape[0]
        if old > first_block:  # the last block was partly filled: merge with its entry
            t_min[0] = min(t_min[0], int(t_min_ds[first_block]))
            t_max[0] = max(t_max[0], int(t_max_ds[first_block]))
        for ds, values in ((t_min_ds, t_min), (t_max_ds, t_max)):
            ds.resize((last_block + 1,))
            ds[first_block:last_block + 1] = values

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.flush()
            summary = self._summary()
            self._file.close()
            if summary is not None:
                _write_summary(self.path, *summary)

    def _summary(self):
        """(facts, table) for the file's summary, or None where our readers could not use one."""
        if self._kind is None or self.count > SUMMARY_MAX_CHUNKS * CHUNK_EVENTS:
            return None
        f = self._file
        chunks = (self.count + CHUNK_EVENTS - 1) // CHUNK_EVENTS
        dataset_ids = [f["events"][name].id for name in FIELDS]
        fill = []
        for name, dataset_id in zip(FIELDS, dataset_ids):
            kind, cd = _fast_kind(dataset_id, EVENT_DTYPE[name])
            if kind != self._kind:
                return None
            fill.append([int(cd[7]), _scaleoffset_fill(cd, dataset_id.dtype)] if kind == "scaleoffset" else [0, 0])
        places = _chunk_places(dataset_ids, chunks)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            shift = _chunk_address_shift(dataset_ids[-1], fd, SUMMARY_BYTES) if chunks else 0
        finally:
            os.close(fd)
        if places is None or shift is None or np.any(places[0] < 0):
            return None
        table = np.zeros((chunks, _SUMMARY_COLUMNS), np.int64)
        for k, column in enumerate(places):  # per field: file offset, size, filter mask
            table[:, k:12:3] = column.T
        table[:, 0:12:3] += shift
        table[:, 12] = f["index"]["t_min"][:chunks]
        table[:, 13] = f["index"]["t_max"][:chunks]
        facts = {"events": self.count, "format_version": int(f.attrs["format_version"]), "kind": self._kind,
                 "sensor_size": None if self.sensor_size is None else [int(v) for v in self.sensor_size],
                 "source_format": str(f.attrs["source_format"]), "source_name": str(f.attrs["source_name"]),
                 "fill": fill}
        return facts, table

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class StoreRecording(Recording):
    format = "hdf5"

    def __init__(self, path, sensor_size=None):
        super().__init__(path, None)
        self._hdf5 = None  # (file id, the field datasets' ids) once HDF5 has opened the file
        self._h5py_file = None
        self._h5py_datasets = None
        self._summary = None  # the facts of the file's summary, while this reader goes by it
        self._summary_fd = None
        self._time_index = None  # (t_min, t_max) per chunk, from the summary
        self._fast = None
        self._src = None  # the file descriptor for our own reads of raw chunks (False: not to be)
        self._table = None  # every chunk's file offset, size and filter mask, per field
        self._source = None  # (source_format, source_name), read when first asked for
        try:
            if not self._open_from_summary(sensor_size):
                self._open(sensor_size)
        except EventFormatError:            # names the file and what is wrong already
            self.close()
            raise
        except _H5_ERRORS as exc:
            self.close()
            raise EventFormatError(self.path, f"corrupt event store: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _open_from_summary(self, sensor_size) -> bool:
        """Open a finished store by its summary, without HDF5; False where it has none to trust."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return False  # HDF5 says what is wrong
        found = _read_summary(fd)
        if found is None or int(found[0]["format_version"]) not in READABLE_VERSIONS:
            os.close(fd)
            return False
        facts, table = found
        self._summary, self._summary_fd, self._src = facts, fd, fd
        self.format_version = int(facts["format_version"])
        self._length = int(facts["events"])
        self._bytes_at_open = int(facts["file_bytes"])
        self._fast, self._kind = True, facts["kind"]
        fill = np.array(facts["fill"], dtype=np.int64).reshape(4, 2)
        self._fill_defined, self._fill_value = fill[:, 0].copy(), fill[:, 1].copy()
        places = table[:, :12].reshape(-1, 4, 3)
        self._table = tuple(np.ascontiguousarray(places[:, :, k].T) for k in range(3))
        self._time_index = table[:, 12].copy(), table[:, 13].copy()
        self._source = str(facts["source_format"]), str(facts["source_name"])
        self._set_sensor_size(facts["sensor_size"], sensor_size)
        return True

    def _leave_summary(self) -> None:
        """Go on through HDF5 (the file changed since its writer closed it)."""
        os.close(self._summary_fd)
        self._summary = self._summary_fd = self._time_index = None
        self._src = self._table = self._fast = None

    def _open(self, sensor_size):
        fid = self._fid
        self._bytes_at_open = self._file_bytes()
        self._length = self._measure()
        self._set_sensor_size(_attribute(fid, "sensor_size"), sensor_size)

    def _set_sensor_size(self, stored, given) -> None:
        if stored is not None:
            try:
                self.sensor_size, self.sensor_size_source = SensorSize.coerce(stored), "header"
            except SensorSizeError as exc:
                raise EventFormatError(self.path, f"sensor_size attribute: {exc}") from None
        elif given is not None:
            self.sensor_size, self.sensor_size_source = SensorSize.coerce(given), "argument"

    @property
    def _fid(self):
        return self._hdf5_objects()[0]

    @property
    def _dataset_ids(self):
        return self._hdf5_objects()[1]

    def _hdf5_objects(self):
        """(file id, field dataset ids), opening the file through HDF5 the first time."""
        if self._hdf5 is None:
            fid = self._open_file_id()
            try:
                self._hdf5 = fid, self._open_fields(fid)
            except BaseException:
                fid.close()
                raise
        return self._hdf5

    def _open_file_id(self):
        h5py = _h5py()
        try:
            return h5py.h5f.open(os.fsencode(self.path), h5py.h5f.ACC_RDONLY, fapl=_read_fapl())
        except OSError as exc:
            if "already open for write" not in str(exc):
                raise EventFormatError(self.path, f"not a readable HDF5 file: {exc}", offset=0) from None
        # A SWMR writer has the file open, or was killed: only a SWMR read
        # may open it, and it sees everything that writer flushed.
        try:
            return _open_swmr_read(self.path)
        except _H5_ERRORS as exc:
            raise EventFormatError(self.path, f"not a readable HDF5 file: {exc}", offset=0) from None

    def _open_fields(self, fid):
        # Every HDF5 object touched for the first time after opening is read
        # from the file: here only low-level calls (a third to a half of the
        # time of h5py's high-level ones), no h5py.Dataset objects until h5py
        # itself must read (they cost more than the read of a small file), and
        # source_format / source_name only when asked for.
        h5py = _h5py()
        if _attribute(fid, "streamsnn_format") != STORE_FORMAT or not fid.links.exists(b"events"):
            raise EventFormatError(self.path, "HDF5 file is not a streamsnn event store "
                                              "(no 'streamsnn_format' attribute or /events group)")
        version = int(_attribute(fid, "format_version", -1))
        if version not in READABLE_VERSIONS:
            raise EventFormatError(self.path, f"event store format version {version}; this reader knows "
                                              f"versions {', '.join(map(str, READABLE_VERSIONS))}")
        self.format_version = version
        events = h5py.h5g.open(fid, b"events")
        missing = [name for name in FIELDS if not events.links.exists(name.encode())]
        if missing:
            raise EventFormatError(self.path, f"event store lacks /events/{missing[0]}")
        return [h5py.h5d.open(events, name.encode()) for name in FIELDS]

    @property
    def _datasets(self):
        """The field datasets as h5py.Dataset objects, for h5py's own reads."""
        if self._h5py_datasets is None:
            self._h5py_datasets = [_h5py().Dataset(dataset_id) for dataset_id in self._dataset_ids]
        return self._h5py_datasets

    @property
    def _file(self):
        """The file as an h5py.File, for the reads that are simpler through it (the time index)."""
        if self._h5py_file is None:
            self._h5py_file = _h5py().File(self._fid)
        return self._h5py_file

    @property
    def source_format(self) -> str:
        """The format the events were converted from ("" if unknown)."""
        return self._source_attributes()[0]

    @property
    def source_name(self) -> str:
        """The name of the file the events were converted from ("" if unknown)."""
        return self._source_attributes()[1]

    def _source_attributes(self) -> tuple[str, str]:
        if self._source is None:
            self._source = tuple(str(_attribute(self._fid, name, "")) for name in ("source_format", "source_name"))
        return self._source

    def refresh(self) -> None:
        """See events a live writer flushed since this file was opened."""
        if self._summary is not None:
            if _as_written(self._summary, os.fstat(self._summary_fd)):
                return  # a finished file, as its writer left it
            self._leave_summary()
        for dataset_id in self._dataset_ids:
            dataset_id.refresh()
        for name in ("t_min", "t_max"):
            self._file["index"][name].refresh()
        self._length = self._measure()
        self._bytes_at_open = self._file_bytes()
        self._table = None

    def __len__(self) -> int:
        return self._length

    def _measure(self) -> int:
        return min(dataset_id.shape[0] for dataset_id in self._dataset_ids)

    def close(self) -> None:
        self._src = None  # HDF5's own descriptor: closed with the file
        if self._summary_fd is not None:
            os.close(self._summary_fd)
            self._summary_fd = None
        if self._hdf5 is None:
            return
        fid, dataset_ids = self._hdf5
        if self._h5py_file is not None:
            if self._h5py_file.id.valid:
                self._h5py_file.close()  # and every object open in it
            return
        # the file closes when the last object open in it does (HDF5's default close degree)
        for dataset_id in dataset_ids:
            if dataset_id.valid:
                dataset_id.close()
        if fid.valid:
            fid.close()

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Events start..stop-1 (by position)."""
        n = len(self)
        start, stop = max(0, start), min(stop, n)
        if stop <= start:
            return empty_events(0)
        try:
            events = self._read_range_fast(start, stop) if self._fast_path_ok() else None
            if events is None:
                events = self._read_range_h5py(start, stop)
        except EventFormatError:
            self._raise_if_shrunk()  # the cause, rather than the damage it did
            raise
        self._raise_if_shrunk()  # HDF5 reads the bytes past the end of a file as zeros
        return events

    def _read_range_h5py(self, start: int, stop: int) -> np.ndarray:
        out = np.empty(stop - start, dtype=EVENT_DTYPE)
        try:
            for name, ds in zip(FIELDS, self._datasets):
                out[name] = ds[start:stop]
        except _H5_ERRORS as exc:
            raise EventFormatError(self.path, f"corrupt event store: cannot read events {start}..{stop - 1}: "
                                              f"{exc}") from None
        self._check(out, start)
        return out

    def _file_bytes(self) -> int:
        if self._summary_fd is not None:
            return os.fstat(self._summary_fd).st_size
        try:
            return os.fstat(self._fid.get_vfd_handle()).st_size
        except (OSError, TypeError, ValueError):  # a driver without a file descriptor
            return os.path.getsize(self.path)

    def _raise_if_shrunk(self) -> None:
        """A store only grows (a live writer appends): smaller than when opened, it was cut or replaced."""
        now = self._file_bytes()
        if now < self._bytes_at_open:
            raise EventFormatError(self.path, f"the file shrank from {self._bytes_at_open} to {now} bytes "
                                              "while being read")

    def _fast_path_ok(self) -> bool:
        # Our decoders handle exactly the layouts the writer makes (scale-offset,
        # or version 1's shuffle + LZF); anything else (other filters, chunking,
        # byte order) goes through h5py's generic path.
        if self._fast is None:
            kinds, params = [], []
            for name, dataset_id in zip(FIELDS, self._dataset_ids):
                kind, cd = _fast_kind(dataset_id, EVENT_DTYPE[name])
                kinds.append(kind)
                params.append(cd)
            self._fast = kinds[0] is not None and all(k == kinds[0] for k in kinds)
            self._kind = kinds[0]
            if self._fast and self._kind == "scaleoffset":
                # HDF5 stores the dataset's fill value (when one is set) as the all-ones code
                self._fill_defined = np.array([cd[7] for cd in params], dtype=np.int64)
                self._fill_value = np.array([_scaleoffset_fill(cd, dataset_id.dtype) for cd, dataset_id in
                                             zip(params, self._dataset_ids)], dtype=np.int64)
        return self._fast

    def _read_range_fast(self, start: int, stop: int):
        """Decode the raw compressed chunks in parallel with our own decoders.

        h5py decodes one chunk at a time, holding its global lock, then the
        fields must be interleaved into records: several times slower than
        reading the RAW file. Here each chunk is unpacked (scale-offset) or
        decompressed and unshuffled (LZF) and interleaved in one pass, on all
        cores, from the chunks' bytes read straight from the file where that
        is safe (a file no writer has open), else from h5py's ``read_direct_chunk``.
        """
        first, last = start // CHUNK_EVENTS, (stop - 1) // CHUNK_EVENTS
        n = len(self)
        out = np.empty(min(n, (last + 1) * CHUNK_EVENTS) - first * CHUNK_EVENTS, dtype=EVENT_DTYPE)
        records = out.view(np.int64).reshape(-1, 2)
        src = self._direct()
        table = None if src is None else self._chunk_table(first, last)
        if table is not None:
            self._decode(*self._read_chunks(*table), range(first, last + 1), n, records)
        else:
            for batch in range(first, last + 1, _FAST_BATCH_CHUNKS):
                chunks = range(batch, min(last + 1, batch + _FAST_BATCH_CHUNKS))
                raw, offsets = [], np.zeros(4 * len(chunks) + 1, dtype=np.int64)
                masks = np.zeros(4 * len(chunks), np.int64)
                try:
                    k = 0
                    for c in chunks:
                        for dataset_id in self._dataset_ids:
                            mask, data = dataset_id.read_direct_chunk((c * CHUNK_EVENTS,))
                            raw.append(data)
                            masks[k] = mask
                            offsets[k + 1] = offsets[k] + len(data)
                            k += 1
                except _H5_ERRORS:
                    return None  # e.g. a chunk never written by a killed writer: let h5py say what is wrong
                comp = np.frombuffer(b"".join(raw), dtype=np.uint8)
                self._decode(comp, offsets[:-1], offsets[1:], masks, chunks, n,
                             records[(batch - first) * CHUNK_EVENTS:])
        base = first * CHUNK_EVENTS
        return out[start - base: stop - base]

    def _decode(self, src, begins, ends, masks, chunks, n, records) -> None:
        rows = np.array([min(CHUNK_EVENTS, n - c * CHUNK_EVENTS) for c in chunks], dtype=np.int64)
        width, height = (self.sensor_size.width, self.sensor_size.height) if self.sensor_size else (-1, -1)
        errors = np.zeros(len(chunks), dtype=np.int64)
        workers = max(1, min(available_threads(), int(rows.sum()) // _EVENTS_PER_THREAD))
        if self._kind == "scaleoffset":
            # scale-offset codes split anywhere: the events are shared evenly
            pieces, bounds = _split_events(rows, workers)
            piece_errors = np.zeros(len(pieces), dtype=np.int64)
            # x and y are int16: 32768 and above are negative, hence outside any sensor
            _run_split(_decode_scaleoffset_pieces, bounds, src, begins, ends, masks, rows, records, CHUNK_EVENTS,
                       width if width >= 0 else 32768, height if height >= 0 else 32768, self._fill_defined,
                       self._fill_value, pieces, piece_errors)
            for k in np.flatnonzero(piece_errors):  # per chunk, the lowest code (the one a single pass gives)
                c = pieces[k, 0]
                errors[c] = piece_errors[k] if errors[c] == 0 else min(errors[c], piece_errors[k])
        else:  # LZF streams decompress from their start: whole chunks per thread
            workers = min(workers, len(chunks))
            _run_split(_decode_lzf_range, [len(chunks) * w // workers for w in range(workers + 1)], src, begins,
                       ends, masks, rows, records, CHUNK_EVENTS, width, height, errors)
        bad = np.flatnonzero(errors)
        if bad.size:
            c = chunks[int(bad[0])]
            what = {1: "does not decompress", 2: "holds a polarity other than 0 or 1",
                    3: "holds coordinates outside the sensor"}[int(errors[bad[0]])]
            raise EventFormatError(self.path, f"corrupt event store: chunk {c} (events "
                                              f"{c * CHUNK_EVENTS}..) {what}")

    def _direct(self):
        """The file descriptor to read raw chunks from at their file offsets, or None where that is not safe.

        Not while a writer may have the file open (SWMR): it can move a chunk
        it rewrites. Not for a file with a user block (a summarised store opened
        through HDF5) unless the chunk addresses HDF5 reports are file offsets
        (see _chunk_address_shift). HDF5's own descriptor (this reader opened the file
        with the default driver): the very file HDF5 reads, even if the path
        has been replaced since. Read with ``preadv``, never memory-mapped: a
        mapped file that shrinks under the reader kills the process with
        SIGBUS, a short read is a clean error.
        """
        if self._src is None:
            fid = self._fid
            self._src = False
            if not fid.get_intent() & _h5py().h5f.ACC_SWMR_READ:
                try:
                    handle = fid.get_vfd_handle()
                except (OSError, TypeError, ValueError):
                    handle = False
                user_block = fid.get_create_plist().get_userblock()
                if handle is not False and (user_block == 0 or len(self) == 0 or _chunk_address_shift(
                        self._dataset_ids[-1], handle, user_block) == 0):
                    self._src = handle
        return None if self._src is False else self._src

    def _read_chunks(self, begins, ends, masks):
        """The bytes of the chunks at file offsets begins..ends, as (buffer, begins, ends, masks)
        with offsets into the buffer. The writer appends chunks in order, so a range of them
        usually lies together in the file: one read; scattered ones are read one by one."""
        lo, hi = int(begins.min()), int(ends.max())
        sizes = ends - begins
        total = int(sizes.sum())
        if hi - lo <= 2 * total + _GATHER_SLACK_BYTES:
            buffer = np.empty(hi - lo, np.uint8)
            self._read_exactly(buffer, lo)
            return buffer, begins - lo, ends - lo, masks
        packed_ends = np.cumsum(sizes)
        packed_begins = packed_ends - sizes
        buffer = np.empty(total, np.uint8)
        for begin, packed, size in zip(begins.tolist(), packed_begins.tolist(), sizes.tolist()):
            self._read_exactly(buffer[packed:packed + size], begin)
        return buffer, packed_begins, packed_ends, masks

    def _read_exactly(self, buffer: np.ndarray, offset: int) -> None:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):  # every pass reads at least one byte or raises
            got = os.preadv(self._src, [view[done:]], offset + done)
            if got == 0:
                raise EventFormatError(self.path, f"the file ends at byte {offset + done} while reading a chunk "
                                                  f"that ends at byte {offset + len(view)}: it shrank or was "
                                                  "rewritten while being read", offset=offset + done)
            done += got

    def _chunk_table(self, first: int, last: int):
        """File offsets (begins, ends) and filter masks of chunks first..last of each field,
        field by field within a chunk; None if a chunk is missing or lies outside the file."""
        count = last - first + 1
        if self._table is None and 4 * count >= (len(self) + CHUNK_EVENTS - 1) // CHUNK_EVENTS:
            # a good part of the file: list every chunk at once (a few µs each; one by one
            # costs several times that, but only for the chunks asked for)
            self._table = self._whole_chunk_table()
        begins, sizes = np.zeros(4 * count, np.int64), np.zeros(4 * count, np.int64)
        masks = np.zeros(4 * count, np.int64)
        try:
            if self._table is not None:
                addr, size, mask = self._table
                if addr.shape[1] <= last:
                    return None
                begins[:] = addr[:, first:last + 1].T.ravel()
                sizes[:] = size[:, first:last + 1].T.ravel()
                masks[:] = mask[:, first:last + 1].T.ravel()
            else:
                k = 0
                for c in range(first, last + 1):
                    for dataset_id in self._dataset_ids:
                        info = dataset_id.get_chunk_info_by_coord((c * CHUNK_EVENTS,))
                        if info.byte_offset is None:
                            return None
                        begins[k], sizes[k], masks[k] = info.byte_offset, info.size, info.filter_mask
                        k += 1
        except _H5_ERRORS:
            return None
        if np.any(begins < 0) or np.any(begins + sizes > os.fstat(self._src).st_size):
            return None
        return begins, begins + sizes, masks

    def _whole_chunk_table(self):
        return _chunk_places(self._dataset_ids, (len(self) + CHUNK_EVENTS - 1) // CHUNK_EVENTS)

    def _check(self, events: np.ndarray, start: int) -> None:
        # A damaged chunk can decompress to the wrong values; never pass on
        # impossible polarities or coordinates.
        p = events["p"]
        bad = np.flatnonzero((p != 0) & (p != 1))
        if bad.size:
            raise EventFormatError(self.path, f"event {start + int(bad[0])}: polarity {int(p[bad[0]])}; "
                                              "the store is corrupt")
        if self.sensor_size is not None:
            from .base import check_coordinates

            check_coordinates(events, self.sensor_size, self.path, first_index=start)
        elif events.size and (events["x"].min() < 0 or events["y"].min() < 0):
            raise EventFormatError(self.path, "negative coordinates; the store is corrupt")

    def _blocks(self):
        n = len(self)
        for start in range(0, n, READ_BLOCK_EVENTS):
            yield self.read_range(start, min(n, start + READ_BLOCK_EVENTS))

    def read(self) -> np.ndarray:
        return self.read_range(0, len(self))

    def read_window(self, t_start: int, t_end: int) -> np.ndarray:
        """Events with t_start <= t < t_end, reading only the blocks the index points to."""
        n = len(self)
        blocks = (n + INDEX_STRIDE - 1) // INDEX_STRIDE
        try:
            if self._time_index is not None:
                t_min, t_max = self._time_index
            else:
                t_min = self._file["index"]["t_min"][:blocks]
                t_max = self._file["index"]["t_max"][:blocks]
        except _H5_ERRORS as exc:
            raise EventFormatError(self.path, f"corrupt event store index: {exc}") from None
        if t_min.size < blocks:
            raise EventFormatError(self.path, f"event store index has {t_min.size} entries for {blocks} blocks")
        hits = np.flatnonzero((t_max >= t_start) & (t_min < t_end))
        if hits.size == 0:
            return empty_events(0)
        events = self.read_range(int(hits[0]) * INDEX_STRIDE, (int(hits[-1]) + 1) * INDEX_STRIDE)
        t = events["t"]
        return events[(t >= t_start) & (t < t_end)]


_FILTER_SHUFFLE = 2
_FILTER_SCALEOFFSET = 6
_FILTER_LZF = 32000
# Scale-offset's filter parameters (H5Zscaleoffset.c): scale type, scale factor, then the
# "local" ones HDF5 sets per dataset: elements per chunk, class, size, sign, byte order,
# fill value defined, fill value (from index 8, 4 bytes per entry, least significant first).
_SO_INT, _SO_CLASS_INTEGER, _SO_ORDER_LE = 2, 0, 0
# Bytes in front of every scale-offset chunk: minbits (4, little-endian), the size of
# minval (1), minval (8, little-endian, sign-extended), 8 unused.
_SO_HEADER = 21
_H5D_CHUNKED = 2


def _attribute(object_id, name: str, default=None):
    """attrs.get(name, default) of the HDF5 object object_id, through h5py's low-level calls (a third of the time)."""
    h5py = _h5py()
    key = name.encode()
    if not h5py.h5a.exists(object_id, key):
        return default
    attribute = h5py.h5a.open(object_id, key)
    value = np.empty(attribute.shape, attribute.dtype)
    attribute.read(value)
    if value.shape != ():
        return value
    value = value[()]
    return value.decode() if isinstance(value, bytes) else value  # variable-length strings arrive as bytes


@functools.lru_cache(maxsize=None)
def _read_fapl():
    """File access properties for reading: HDF5's defaults (the sec2 driver), as h5py.File's, whose close
    degree a second open of a file in this process must match."""
    h5py = _h5py()
    return h5py.h5p.create(h5py.h5p.FILE_ACCESS)


# The file summary: what a reader needs to read a finished store without HDF5, in the
# HDF5 user block (bytes HDF5 leaves to the application; any HDF5 reader skips them).
# Opening a small store through HDF5 costs as much as decoding it (the library reads
# every object header, attribute and chunk index it is asked for: ~1 ms), more than
# reading the whole RAW file it came from. The summary is trusted only while the file
# is exactly as its writer left it (size and modification time as recorded, the way
# Python's .pyc files trust their source's); anything else opens through HDF5.
#   [0:16] SUMMARY_MAGIC, [16:20] length L of the JSON facts, [20:24] CRC-32 of what follows,
#   [24:24 + L] JSON facts, and ending the block int64 rows, one per chunk of CHUNK_EVENTS
#   events: (file offset, bytes, filter mask) of t, x, y and p's chunk, then t_min, t_max.
SUMMARY_BYTES = 8192
SUMMARY_VERSION = 1
_SUMMARY_COLUMNS = 14
# Rows that fit beside the facts (112 bytes each): larger stores (4.2 million events up) open
# through HDF5, whose cost is small beside their decoding.
SUMMARY_MAX_CHUNKS = 64


def _chunk_places(dataset_ids, chunks: int):
    """(addresses, sizes, filter masks), each (4, chunks), of the first ``chunks`` chunks of the field
    datasets as HDF5 reports them (address -1: a chunk not written); None for an HDF5 without
    H5Dchunk_iter (then chunk by chunk)."""
    addr = np.full((4, chunks), -1, np.int64)
    size, mask = np.zeros((4, chunks), np.int64), np.zeros((4, chunks), np.int64)
    try:
        for f, dataset_id in enumerate(dataset_ids):
            def note(info, f=f):
                c = info.chunk_offset[0] // CHUNK_EVENTS
                if c < chunks:
                    addr[f, c], size[f, c], mask[f, c] = info.byte_offset, info.size, info.filter_mask
            dataset_id.chunk_iter(note)
    except (AttributeError, *_H5_ERRORS):
        return None
    return addr, size, mask


def _chunk_address_shift(dataset_id, fd: int, user_block: int) -> int | None:
    """What turns the chunk addresses HDF5 reports into offsets in the file open as fd: 0 (HDF5
    1.14.4 on adds the user block itself), ``user_block`` (earlier versions report addresses after
    it, HDF5 issue #3003; h5py 3.9-3.10 ship those), or None where neither finds the bytes of the
    dataset's first chunk there."""
    try:
        info = dataset_id.get_chunk_info_by_coord((0,))
        if info.byte_offset is None:
            return None
        _, data = dataset_id.read_direct_chunk((0,))
        for shift in (0, user_block) if user_block else (0,):
            if os.pread(fd, info.size, info.byte_offset + shift) == data:
                return shift
    except (OSError, *_H5_ERRORS):
        pass
    return None


def _as_written(facts: dict, stat: os.stat_result) -> bool:
    """The file is as its writer left it when it wrote the summary: size and modification time."""
    return facts["file_bytes"] == stat.st_size and facts["mtime_ns"] == stat.st_mtime_ns


def _summary_block(facts: dict, table: np.ndarray, file_bytes: int, mtime_ns: int) -> bytes | None:
    """The SUMMARY_BYTES of the user block, or None if the facts and the table do not fit."""
    facts = dict(facts, summary_version=SUMMARY_VERSION, file_bytes=file_bytes, mtime_ns=mtime_ns)
    text = json.dumps(facts, separators=(",", ":")).encode()
    rows = np.ascontiguousarray(table, dtype="<i8").tobytes()
    table_at = SUMMARY_BYTES - len(rows)  # the table ends the block
    if 24 + len(text) > table_at:
        return None
    body = text.ljust(table_at - 24, b" ") + rows
    return SUMMARY_MAGIC + len(text).to_bytes(4, "little") + zlib.crc32(body).to_bytes(4, "little") + body


def _write_summary(path, facts: dict, table: np.ndarray) -> bool:
    """Write the summary into the user block of the closed store at path, and set the file's
    modification time to the one it records; False (and no summary) where that cannot be done."""
    fd = os.open(path, os.O_RDWR)
    try:
        mtime_ns = time.time_ns()
        for _ in range(2):  # a file system with coarse timestamps keeps fewer digits: once more with those
            block = _summary_block(facts, table, os.fstat(fd).st_size, mtime_ns)
            if block is None:
                return False
            os.pwrite(fd, block, 0)
            stat = os.fstat(fd)
            os.utime(fd if os.utime in os.supports_fd else path, ns=(stat.st_atime_ns, mtime_ns))
            kept = os.fstat(fd).st_mtime_ns
            if kept == mtime_ns:
                return True
            mtime_ns = kept
        os.pwrite(fd, bytes(len(SUMMARY_MAGIC)), 0)
        return False
    finally:
        os.close(fd)


def _read_summary(fd: int):
    """(facts, table) from the summary of the store open as fd, or None unless the file is as its
    writer left it and the summary is whole and consistent."""
    try:
        head = os.pread(fd, SUMMARY_BYTES, 0)
        if not head.startswith(SUMMARY_MAGIC) or len(head) < SUMMARY_BYTES:
            return None
        length = int.from_bytes(head[16:20], "little")
        if 24 + length > SUMMARY_BYTES or zlib.crc32(head[24:]) != int.from_bytes(head[20:24], "little"):
            # the CRC covers the facts, the padding and the table to the block's end
            return None
        facts = json.loads(head[24:24 + length])
        stat = os.fstat(fd)
        if facts.get("summary_version") != SUMMARY_VERSION or not _as_written(facts, stat):
            return None
        events = int(facts["events"])
        chunks = (events + CHUNK_EVENTS - 1) // CHUNK_EVENTS
        table_at = SUMMARY_BYTES - chunks * 8 * _SUMMARY_COLUMNS
        if events < 0 or 24 + length > table_at:
            return None
        table = np.frombuffer(head, "<i8", chunks * _SUMMARY_COLUMNS, table_at).reshape(chunks, _SUMMARY_COLUMNS)
        places = table[:, :12].reshape(chunks, 4, 3)
        if (facts["kind"] not in ("scaleoffset", "lzf") or np.any(places[:, :, 0] < SUMMARY_BYTES)
                or np.any(places[:, :, 1] <= 0) or np.any(places[:, :, 0] + places[:, :, 1] > stat.st_size)
                or len(facts["fill"]) != 4):
            return None
        return facts, table.astype(np.int64)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _scaleoffset_fill(params, dtype) -> int:
    size = dtype.itemsize
    raw = b"".join(int(v).to_bytes(4, "little") for v in params[8:8 + (size + 3) // 4])[:size]
    return int.from_bytes(raw, "little", signed=True)


def _fast_kind(dataset_id, dtype):
    """("scaleoffset" or "lzf", filter parameters) when our decoders read this dataset's
    chunks exactly, else (None, None)."""
    plist = dataset_id.get_create_plist()
    stored = dataset_id.dtype
    if (stored != dtype or stored.byteorder not in ("<", "=", "|") or plist.get_layout() != _H5D_CHUNKED
            or plist.get_chunk() != (CHUNK_EVENTS,)):
        return None, None
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    ids = [f[0] for f in filters]
    if ids == [_FILTER_SHUFFLE, _FILTER_LZF]:
        return "lzf", None
    if ids == [_FILTER_SCALEOFFSET]:
        cd = filters[0][2]
        if (len(cd) >= 8 + (dtype.itemsize + 3) // 4 and cd[0] == _SO_INT and cd[1] == 0
                and cd[2] == CHUNK_EVENTS and cd[3] == _SO_CLASS_INTEGER and cd[4] == dtype.itemsize
                and cd[5] == 1 and cd[6] == _SO_ORDER_LE and cd[7] in (0, 1)):
            return "scaleoffset", cd
    return None, None


_FAST_BATCH_CHUNKS = 64
# Chunks to read whose span in the file exceeds twice their bytes plus this are read one by one.
_GATHER_SLACK_BYTES = 1 << 20
# Events a thread decodes at the least (0.5-0.7 ms on one core). A pool thread woken on the
# other core starts 0.1-0.3 ms later on the 2-core VMs measured (a no-op round trip to an idle
# core is 12-30 µs, but a thread woken while the caller computes waits for its vCPU to wake).
_EVENTS_PER_THREAD = 100_000
_FIELD_BYTES = (8, 2, 2, 1)  # t, x, y, p
# Events per field-by-field block of the scale-offset decoder (16 kB of records: L1).
_DECODE_BLOCK = 1024
# Widest x/y/p codes decoded through lookup tables (32 kB each at most).
_TABLE_BITS = 12
_BAD_XY_FLAG = 1 << 61
_BAD_P_FLAG = 1 << 62


@njit(cache=True, nogil=True)
def _lzf_decompress(src, begin, end, dst):
    """LZF (liblzf, as h5py's filter writes it) from src[begin:end] into dst; bytes written, or -1 if corrupt."""
    ip = begin
    op = 0
    capacity = dst.shape[0]
    while ip < end:
        ctrl = np.int64(src[ip])
        ip += 1
        if ctrl < 32:
            length = ctrl + 1
            if op + length > capacity or ip + length > end:
                return -1
            for k in range(length):
                dst[op + k] = src[ip + k]
            op += length
            ip += length
        else:
            length = ctrl >> 5
            if length == 7:
                if ip >= end:
                    return -1
                length += np.int64(src[ip])
                ip += 1
            if ip >= end:
                return -1
            ref = op - ((ctrl & 0x1F) << 8) - 1 - np.int64(src[ip])
            ip += 1
            length += 2
            if ref < 0 or op + length > capacity:
                return -1
            distance = op - ref
            if distance == 1:  # a run of one byte value (the constant high bytes of t)
                value = dst[ref]
                for k in range(length):
                    dst[op + k] = value
            else:  # may overlap its own output when distance < length: byte by byte, in order
                for k in range(length):
                    dst[op + k] = dst[ref + k]
            op += length
    return op


@njit(cache=True, nogil=True)
def _decode_lzf_range(comp, begins, ends, masks, rows, out, chunk_events, width, height, errors, first, last):
    for c in range(first, last):
        planes = np.empty(13 * chunk_events, dtype=np.uint8)  # t, x, y, p byte planes, one after another
        plane_start = 0
        for f in range(4):
            k = 4 * c + f
            size = _FIELD_BYTES[f] * chunk_events
            target = planes[plane_start:plane_start + size]
            if masks[k] & 2:  # LZF skipped (the chunk did not compress): stored shuffled only
                if ends[k] - begins[k] != size:
                    errors[c] = 1
                    break
                target[:] = comp[begins[k]:ends[k]]
            elif _lzf_decompress(comp, begins[k], ends[k], target) != size:
                errors[c] = 1
                break
            plane_start += size
        if errors[c]:
            continue
        # Plane by plane, then one branch-free pass: five times faster than
        # gathering each record's 13 bytes from 13 planes with checks in between.
        n = rows[c]
        t = np.zeros(n, dtype=np.int64)
        for b in range(8):
            plane = planes[b * chunk_events:b * chunk_events + n]
            shift = 8 * b
            for i in range(n):
                t[i] |= np.int64(plane[i]) << shift
        x_lo, x_hi = planes[8 * chunk_events:], planes[9 * chunk_events:]
        y_lo, y_hi = planes[10 * chunk_events:], planes[11 * chunk_events:]
        p_plane = planes[12 * chunk_events:]
        # x and y are int16: 32768 and above are negative, hence outside any sensor
        x_limit = width if width >= 0 else 32768
        y_limit = height if height >= 0 else 32768
        bad_p = False
        bad_xy = False
        base = c * chunk_events
        for i in range(n):
            x = np.int64(x_lo[i]) | (np.int64(x_hi[i]) << 8)
            y = np.int64(y_lo[i]) | (np.int64(y_hi[i]) << 8)
            p = np.int64(p_plane[i])
            bad_p |= p > 1
            bad_xy |= (x >= x_limit) | (y >= y_limit)
            out[base + i, 0] = t[i]
            out[base + i, 1] = x | (y << 16) | (p << 32)
        if bad_p:
            errors[c] = 2
        elif bad_xy:
            errors[c] = 3


@njit(cache=True, inline="always")
def _unpack(src, at, keep):
    """The ``64 - keep`` bits (1..56) of the big-endian bit stream in src from bit ``at``;
    reads the 8 bytes src[at // 8:at // 8 + 8]."""
    # unsigned indices (no negative-index wraparound): LLVM makes this one load + byte swap
    u = np.uint64(at >> 3)
    word = ((np.uint64(src[u]) << np.uint64(56)) | (np.uint64(src[u + np.uint64(1)]) << np.uint64(48))
            | (np.uint64(src[u + np.uint64(2)]) << np.uint64(40))
            | (np.uint64(src[u + np.uint64(3)]) << np.uint64(32))
            | (np.uint64(src[u + np.uint64(4)]) << np.uint64(24))
            | (np.uint64(src[u + np.uint64(5)]) << np.uint64(16))
            | (np.uint64(src[u + np.uint64(6)]) << np.uint64(8)) | np.uint64(src[u + np.uint64(7)]))
    return np.int64((word << np.uint64(at & 7)) >> keep)


@njit(cache=True)
def _bits_within(src, at, nbits, end):
    """As _bits, for any nbits up to 64, reading no byte at or past ``end`` (taken as zero)."""
    value = np.int64(0)
    for k in range(nbits):
        bit = at + k
        byte = bit >> 3
        b = np.int64(src[byte]) if byte < end else np.int64(0)
        value = (value << 1) | ((b >> (7 - (bit & 7))) & 1)
    return value


@njit(cache=True)
def _scaleoffset_header(src, begin, end, mask, size, chunk_events):
    """(mode, minbits, minval, first data byte) of one scale-offset chunk. mode 0: packed
    codes, 1: values as they are (full precision, or the filter skipped), 2: all equal to
    minval, -1: not what HDF5's scale-offset filter writes."""
    nbytes = end - begin
    if mask & 1:  # the filter was skipped for this chunk: values stored as they are
        return (1 if nbytes == chunk_events * size else -1), 8 * size, np.int64(0), begin
    if nbytes < _SO_HEADER or src[begin + 4] != 8:
        return -1, 0, np.int64(0), begin
    minbits = (np.int64(src[begin]) | (np.int64(src[begin + 1]) << 8) | (np.int64(src[begin + 2]) << 16)
               | (np.int64(src[begin + 3]) << 24))
    minval = np.int64(0)
    for k in range(8):
        minval |= np.int64(src[begin + 5 + k]) << (8 * k)
    start = begin + _SO_HEADER
    if minbits > 8 * size:
        return -1, minbits, minval, start
    if minbits == 8 * size:
        return (1 if nbytes - _SO_HEADER >= chunk_events * size else -1), minbits, minval, start
    if minbits == 0:
        return 2, minbits, minval, start
    return (0 if nbytes - _SO_HEADER >= (chunk_events * minbits + 7) >> 3 else -1), minbits, minval, start


@njit(cache=True)
def _scaleoffset_value(src, i, mode, minbits, minval, start, end, size, fill_defined, fill_value):
    """Value i of a chunk whose header _scaleoffset_header read (any mode but -1), bounds-checked."""
    if mode == 2:
        return minval
    if mode == 1:
        v = np.int64(0)
        for k in range(size):
            v |= np.int64(src[start + i * size + k]) << (8 * k)
        if size < 8 and (v >> (8 * size - 1)) & 1:  # sign-extend
            v -= np.int64(1) << (8 * size)
        return v
    code = _bits_within(src, 8 * start + i * minbits, minbits, end)
    if fill_defined and code == (np.int64(1) << minbits) - 1:
        return fill_value
    return code + minval


@njit(cache=True)
def _code_table(bits, minval, ones, fill, mask, limit, shift, bad_flag):
    """The record bits of every code of a field packed in ``bits`` bits: (value & mask) << shift,
    or'ed with bad_flag where the value is ``limit`` or more."""
    table = np.empty(np.int64(1) << bits, np.int64)
    for code in range(table.shape[0]):
        value = (fill if code == ones else code + minval) & mask
        table[code] = (value << shift) | (bad_flag if value >= limit else 0)
    return table


@njit(cache=True)
def _decode_scaleoffset_chunk(c, lo, hi, src, begins, ends, masks, rows, out, chunk_events, x_limit, y_limit,
                              fill_defined, fill_value):
    """Unpack events lo..hi-1 of chunk c's four fields (src[begins[4c + f]:ends[4c + f]]) into
    records out[c * chunk_events + lo:]; 0, or the error code (1 bad chunk, 2 bad polarity,
    3 bad x/y). Every code sits at a fixed bit offset (i * minbits), so a chunk splits anywhere."""
    n = min(hi, rows[c])
    base = c * chunk_events
    mode = np.zeros(4, np.int64)
    bits = np.zeros(4, np.int64)
    low = np.zeros(4, np.int64)
    at = np.zeros(4, np.int64)
    fast_n = n
    for f in range(4):
        k = 4 * c + f
        m, minbits, minval, start = _scaleoffset_header(src, begins[k], ends[k], masks[k], _FIELD_BYTES[f],
                                                        chunk_events)
        mode[f], bits[f], low[f], at[f] = m, minbits, minval, 8 * start
        if m == -1:
            return 1
        if m != 0 or minbits > 56:
            fast_n = 0
        else:  # events whose 8-byte reads stay inside the chunk
            fast_n = min(fast_n, max(0, (8 * (ends[k] - 8) - 8 * start) // minbits + 1))
    bad_p = False
    bad_xy = False
    # The common case: every field packed in at most 56 bits, one pass over the events.
    # HDF5 stores the fill value (when the dataset has one) as the all-ones code.
    t_step, x_step, y_step, p_step = bits[0], bits[1], bits[2], bits[3]
    t_keep, x_keep, y_keep, p_keep = (np.uint64(64 - t_step), np.uint64(64 - x_step), np.uint64(64 - y_step),
                                      np.uint64(64 - p_step))
    t_min, x_min, y_min, p_min = low[0], low[1], low[2], low[3]
    t_ones = (np.int64(1) << t_step) - 1 if fill_defined[0] else np.int64(-1)
    x_ones = (np.int64(1) << x_step) - 1 if fill_defined[1] else np.int64(-1)
    y_ones = (np.int64(1) << y_step) - 1 if fill_defined[2] else np.int64(-1)
    p_ones = (np.int64(1) << p_step) - 1 if fill_defined[3] else np.int64(-1)
    t_fill, x_fill, y_fill, p_fill = fill_value[0], fill_value[1], fill_value[2], fill_value[3]
    t_at, x_at, y_at, p_at = at[0] + lo * t_step, at[1] + lo * x_step, at[2] + lo * y_step, at[3] + lo * p_step
    # Records as one flat int64 array indexed with unsigned integers: no negative-index
    # wraparound on the stores (2 words per event). t, then x/y/p, over blocks that stay in
    # L1: one loop unpacking all four fields keeps ~24 values live and spills to the stack.
    flat = out.reshape(-1)
    end = min(fast_n, n)
    # x, y and p codes of up to _TABLE_BITS bits (every sensor up to 4096 wide) look their
    # record bits up in tables built per chunk: one load instead of the fill test, the add,
    # the mask and the range check, with a flag bit for a value out of range.
    tabled = x_step <= _TABLE_BITS and y_step <= _TABLE_BITS and p_step <= _TABLE_BITS and end - lo >= 4096
    flags = np.int64(0)
    if tabled:
        x_table = _code_table(x_step, x_min, x_ones, x_fill, 0xFFFF, x_limit, 0, _BAD_XY_FLAG)
        y_table = _code_table(y_step, y_min, y_ones, y_fill, 0xFFFF, y_limit, 16, _BAD_XY_FLAG)
        p_table = _code_table(p_step, p_min, p_ones, p_fill, 0xFF, 2, 32, _BAD_P_FLAG)
    else:
        x_table = y_table = p_table = np.empty(0, np.int64)
    for block in range(lo, end, _DECODE_BLOCK):
        stop = min(block + _DECODE_BLOCK, end)
        slot = np.uint64(2 * (base + block))
        for i in range(block, stop):
            t = _unpack(src, t_at, t_keep)
            t_at += t_step
            flat[slot] = t_fill if t == t_ones else t + t_min
            slot += np.uint64(2)
        slot = np.uint64(2 * (base + block) + 1)
        if tabled:
            for i in range(block, stop):
                word = (x_table[np.uint64(_unpack(src, x_at, x_keep))] | y_table[np.uint64(_unpack(src, y_at, y_keep))]
                        | p_table[np.uint64(_unpack(src, p_at, p_keep))])
                x_at += x_step
                y_at += y_step
                p_at += p_step
                flags |= word
                flat[slot] = word
                slot += np.uint64(2)
            continue
        for i in range(block, stop):  # short pieces, or codes too wide for a table
            x = _unpack(src, x_at, x_keep)
            y = _unpack(src, y_at, y_keep)
            p = _unpack(src, p_at, p_keep)
            x_at += x_step
            y_at += y_step
            p_at += p_step
            x = (x_fill if x == x_ones else x + x_min) & 0xFFFF
            y = (y_fill if y == y_ones else y + y_min) & 0xFFFF
            p = (p_fill if p == p_ones else p + p_min) & 0xFF
            bad_p |= p > 1
            bad_xy |= (x >= x_limit) | (y >= y_limit)
            flat[slot] = x | (y << 16) | (p << 32)
            slot += np.uint64(2)
    bad_xy |= (flags & _BAD_XY_FLAG) != 0
    bad_p |= (flags & _BAD_P_FLAG) != 0
    # the rest (the last few events of the chunk, or a chunk in another mode): bounds-checked
    k = 4 * c
    for i in range(max(lo, fast_n), n):
        t = _scaleoffset_value(src, i, mode[0], bits[0], low[0], at[0] // 8, ends[k], 8,
                               fill_defined[0], fill_value[0])
        x = _scaleoffset_value(src, i, mode[1], bits[1], low[1], at[1] // 8, ends[k + 1], 2,
                               fill_defined[1], fill_value[1]) & 0xFFFF
        y = _scaleoffset_value(src, i, mode[2], bits[2], low[2], at[2] // 8, ends[k + 2], 2,
                               fill_defined[2], fill_value[2]) & 0xFFFF
        p = _scaleoffset_value(src, i, mode[3], bits[3], low[3], at[3] // 8, ends[k + 3], 1,
                               fill_defined[3], fill_value[3]) & 0xFF
        bad_p |= p > 1
        bad_xy |= (x >= x_limit) | (y >= y_limit)
        out[base + i, 0] = t
        out[base + i, 1] = x | (y << 16) | (p << 32)
    return 2 if bad_p else (3 if bad_xy else 0)


@njit(cache=True, nogil=True)
def _decode_scaleoffset_pieces(src, begins, ends, masks, rows, out, chunk_events, x_limit, y_limit,
                               fill_defined, fill_value, pieces, errors, first, last):
    """Pieces first..last-1, each (chunk, first event, end event); errors per piece."""
    for k in range(first, last):
        errors[k] = _decode_scaleoffset_chunk(pieces[k, 0], pieces[k, 1], pieces[k, 2], src, begins, ends, masks,
                                              rows, out, chunk_events, x_limit, y_limit, fill_defined,
                                              fill_value)


def _split_events(rows: np.ndarray, workers: int):
    """Chunks of rows[c] events cut into pieces (chunk, first, end) so that workers share the events
    evenly: (pieces, bounds), worker w taking pieces bounds[w]..bounds[w + 1] - 1."""
    starts = np.concatenate(([0], np.cumsum(rows)))
    total = int(starts[-1])
    shares = [total * w // workers for w in range(workers + 1)]
    cuts = sorted(set(starts.tolist()) | set(shares))
    pieces = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        c = int(np.searchsorted(starts, a, side="right")) - 1
        pieces.append((c, a - int(starts[c]), b - int(starts[c])))
    bounds = [cuts.index(share) for share in shares]
    return np.array(pieces, dtype=np.int64).reshape(-1, 3), bounds


def _run_split(kernel, bounds, *args) -> None:
    """kernel(*args, first, last) for each run bounds[w]..bounds[w + 1], the runs at the same time."""
    run_parts(kernel, [(*args, first, last) for first, last in zip(bounds[:-1], bounds[1:]) if last > first])




def convert_to_store(input, output, sensor_size=None, overwrite=False, *, chunk_events: int = 1 << 22) -> dict:
    """Write every event of ``input`` (any readable format) to a new event store at ``output``."""
    from . import open_recording

    started = time.perf_counter()
    output = Path(output)
    if os.path.lexists(output) and not overwrite:
        raise EventFormatError(output, "already exists (use --force to overwrite)")
    if output.is_dir():
        raise EventFormatError(output, "is a folder")
    if not output.parent.is_dir():
        raise EventFormatError(output, f"cannot be written: {output.parent} is not a folder")
    if Path(input).resolve() == output.resolve():
        raise EventFormatError(output, "input and output are the same file")
    with open_recording(input, sensor_size=sensor_size) as rec:
        t_first = t_last = None
        temporary = new_sibling_file(output)  # renamed onto the output only once complete
        try:
            with EventStoreWriter(temporary, rec.sensor_size, source_format=rec.format,
                                  source_name=Path(input).name, overwrite=True) as writer:
                for chunk in rec.chunks(n_events=chunk_events):
                    if chunk.size == 0:
                        continue
                    if t_first is None:
                        t_first = int(chunk["t"][0])
                    t_last = int(chunk["t"][-1])
                    writer.append(chunk)
                count = writer.count
            publish_file(temporary, output, overwrite)
        finally:
            if os.path.lexists(temporary):
                temporary.unlink()
        fmt, size = rec.format, rec.sensor_size
    return {
        "input": os.fspath(input),
        "output": os.fspath(output),
        "source_format": fmt,
        "sensor_size": None if size is None else list(size),
        "events": count,
        "t_first_us": t_first,
        "t_last_us": t_last,
        "input_bytes": os.path.getsize(input),
        "output_bytes": os.path.getsize(output),
        "seconds": round(time.perf_counter() - started, 3),
    }


def write_store(path, events, sensor_size=None, *, source_format: str | None = None, overwrite: bool = False):
    """Write an event array to a new store in one go."""
    with EventStoreWriter(path, sensor_size, source_format=source_format, overwrite=overwrite) as writer:
        writer.append(events)
    return Path(path)


__all__ = ["EventStoreWriter", "StoreRecording", "convert_to_store", "write_store"]
