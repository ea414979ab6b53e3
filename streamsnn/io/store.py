"""The project's HDF5 event store.

Layout (format version 1):

    /events/t  int64   µs        one 1-D dataset per field, all the same length,
    /events/x  int16             chunked (CHUNK_EVENTS per chunk), compressed
    /events/y  int16             with shuffle + LZF (built into h5py, fast to
    /events/p  int8              decompress)
    /index/t_min, /index/t_max   int64, one entry per block of INDEX_STRIDE
                                 events: the smallest and largest timestamp in it
    root attributes: streamsnn_format = "events", format_version = 1,
        sensor_size = (w, h, p) or absent, source_format, source_name

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

import os
import time
from pathlib import Path

import numpy as np
from numba import njit, prange

from ..errors import EventFormatError, SensorSizeError
from ..events import EVENT_DTYPE, SensorSize, as_events, empty_events
from .base import Recording

STORE_FORMAT = "events"
STORE_VERSION = 1
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


class EventStoreWriter:
    """Append events to a new HDF5 event store; every ``flush()`` leaves a readable file.

    Events are stored in the order given, so round trips are exact even for
    sources whose timestamps step back a little (EVT 3.0); they must have
    p in {0, 1} and lie inside ``sensor_size`` when one is given.
    """

    def __init__(self, path, sensor_size=None, *, source_format: str | None = None,
                 source_name: str | None = None, overwrite: bool = False, compression: str = "lzf"):
        h5py = _h5py()
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise EventFormatError(self.path, "already exists (pass overwrite=True / --force to replace it)")
        if self.path.is_dir():
            raise EventFormatError(self.path, "is a folder")
        self.sensor_size = None if sensor_size is None else SensorSize.coerce(sensor_size)
        self._file = h5py.File(self.path, "w", libver="latest")
        try:
            f = self._file
            f.attrs["streamsnn_format"] = STORE_FORMAT
            f.attrs["format_version"] = STORE_VERSION
            if self.sensor_size is not None:
                f.attrs["sensor_size"] = np.array(self.sensor_size, dtype=np.int64)
            f.attrs["source_format"] = source_format or ""
            f.attrs["source_name"] = source_name or ""
            events = f.create_group("events")
            for name in FIELDS:
                events.create_dataset(name, shape=(0,), maxshape=(None,), dtype=EVENT_DTYPE[name],
                                      chunks=(CHUNK_EVENTS,), compression=compression, shuffle=True)
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
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class StoreRecording(Recording):
    format = "hdf5"

    def __init__(self, path, sensor_size=None):
        super().__init__(path, None)
        h5py = _h5py()
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            if "already open for write" not in str(exc):
                raise EventFormatError(self.path, f"not a readable HDF5 file: {exc}", offset=0) from None
            # A SWMR writer has the file open, or was killed: only a SWMR read
            # may open it, and it sees everything that writer flushed. Only
            # here, because HDF5's SWMR read retries a corrupt file's metadata
            # for minutes instead of failing (a plain open fails at once).
            try:
                self._file = h5py.File(self.path, "r", libver="latest", swmr=True)
            except OSError as exc2:
                raise EventFormatError(self.path, f"not a readable HDF5 file: {exc2}", offset=0) from None
        try:
            self._open(sensor_size)
        except _H5_ERRORS as exc:
            self._file.close()
            raise EventFormatError(self.path, f"corrupt event store: {exc}") from None
        except BaseException:
            self._file.close()
            raise

    def _open(self, sensor_size):
        f = self._file
        if f.attrs.get("streamsnn_format") != STORE_FORMAT or "events" not in f:
            raise EventFormatError(self.path, "HDF5 file is not a streamsnn event store "
                                              "(no 'streamsnn_format' attribute or /events group)")
        version = int(f.attrs.get("format_version", -1))
        if version != STORE_VERSION:
            raise EventFormatError(self.path, f"event store format version {version}; this reader knows "
                                              f"version {STORE_VERSION}")
        missing = [name for name in FIELDS if name not in f["events"]]
        if missing:
            raise EventFormatError(self.path, f"event store lacks /events/{missing[0]}")
        self._datasets = [f["events"][name] for name in FIELDS]
        self._length = self._measure()
        self._fast = None
        self.source_format = str(f.attrs.get("source_format", ""))
        self.source_name = str(f.attrs.get("source_name", ""))
        stored = f.attrs.get("sensor_size")
        if stored is not None:
            try:
                self.sensor_size, self.sensor_size_source = SensorSize.coerce(stored), "header"
            except SensorSizeError as exc:
                raise EventFormatError(self.path, f"sensor_size attribute: {exc}") from None
        elif sensor_size is not None:
            self.sensor_size, self.sensor_size_source = SensorSize.coerce(sensor_size), "argument"

    def refresh(self) -> None:
        """See events a live writer flushed since this file was opened."""
        for ds in self._datasets:
            ds.refresh()
        for name in ("t_min", "t_max"):
            self._file["index"][name].refresh()
        self._length = self._measure()

    def __len__(self) -> int:
        return self._length

    def _measure(self) -> int:
        return min(ds.shape[0] for ds in self._datasets)

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Events start..stop-1 (by position)."""
        n = len(self)
        start, stop = max(0, start), min(stop, n)
        if stop <= start:
            return empty_events(0)
        if self._fast_path_ok():
            events = self._read_range_fast(start, stop)
            if events is not None:
                return events
        out = np.empty(stop - start, dtype=EVENT_DTYPE)
        try:
            for name, ds in zip(FIELDS, self._datasets):
                out[name] = ds[start:stop]
        except _H5_ERRORS as exc:
            raise EventFormatError(self.path, f"corrupt event store: cannot read events {start}..{stop - 1}: "
                                              f"{exc}") from None
        self._check(out, start)
        return out

    def _fast_path_ok(self) -> bool:
        # Our decoder handles exactly the layout the writer makes; anything
        # else (other filters, chunking) goes through h5py's generic path.
        if self._fast is None:
            ok = True
            for name, ds in zip(FIELDS, self._datasets):
                plist = ds.id.get_create_plist()
                filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
                ok &= (ds.chunks == (CHUNK_EVENTS,) and filters == [_FILTER_SHUFFLE, _FILTER_LZF]
                       and ds.dtype == EVENT_DTYPE[name])
            self._fast = ok
        return self._fast

    def _read_range_fast(self, start: int, stop: int):
        """Read the raw compressed chunks and decode them in parallel with our own LZF decoder.

        h5py decodes one chunk at a time, holding its global lock, then the
        fields must be interleaved into records: together three times slower
        than reading the RAW file. Here each chunk is decompressed, unshuffled
        and interleaved in one pass, on all cores.
        """
        first, last = start // CHUNK_EVENTS, (stop - 1) // CHUNK_EVENTS
        n = len(self)
        out = np.empty(min(n, (last + 1) * CHUNK_EVENTS) - first * CHUNK_EVENTS, dtype=EVENT_DTYPE)
        for batch in range(first, last + 1, _FAST_BATCH_CHUNKS):
            chunks = range(batch, min(last + 1, batch + _FAST_BATCH_CHUNKS))
            raw, offsets, masks = [], np.zeros(4 * len(chunks) + 1, dtype=np.int64), np.zeros(4 * len(chunks), np.int64)
            try:
                k = 0
                for c in chunks:
                    for ds in self._datasets:
                        mask, data = ds.id.read_direct_chunk((c * CHUNK_EVENTS,))
                        raw.append(data)
                        masks[k] = mask
                        offsets[k + 1] = offsets[k] + len(data)
                        k += 1
            except _H5_ERRORS:
                return None  # e.g. a chunk never written by a killed writer: let h5py say what is wrong
            comp = np.frombuffer(b"".join(raw), dtype=np.uint8)
            rows = np.array([min(CHUNK_EVENTS, n - c * CHUNK_EVENTS) for c in chunks], dtype=np.int64)
            width, height = (self.sensor_size.width, self.sensor_size.height) if self.sensor_size else (-1, -1)
            row0 = (batch - first) * CHUNK_EVENTS
            errors = np.zeros(len(chunks), dtype=np.int64)
            _decode_chunks(comp, offsets, masks, rows, out.view(np.int64).reshape(-1, 2)[row0:],
                           CHUNK_EVENTS, width, height, errors)
            bad = np.flatnonzero(errors)
            if bad.size:
                c = chunks[int(bad[0])]
                what = {1: "does not decompress", 2: "holds a polarity other than 0 or 1",
                        3: "holds coordinates outside the sensor"}[int(errors[bad[0]])]
                raise EventFormatError(self.path, f"corrupt event store: chunk {c} (events "
                                                  f"{c * CHUNK_EVENTS}..) {what}")
        base = first * CHUNK_EVENTS
        return out[start - base: stop - base]

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
_FILTER_LZF = 32000
# Chunks whose compressed bytes are gathered per decoding call (64 MiB of events).
_FAST_BATCH_CHUNKS = 64
_FIELD_BYTES = (8, 2, 2, 1)  # t, x, y, p


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


@njit(cache=True, parallel=True)
def _decode_chunks(comp, offsets, masks, rows, out, chunk_events, width, height, errors):
    n_chunks = rows.shape[0]
    for c in prange(n_chunks):
        planes = np.empty(13 * chunk_events, dtype=np.uint8)  # t, x, y, p byte planes, one after another
        plane_start = 0
        for f in range(4):
            k = 4 * c + f
            size = _FIELD_BYTES[f] * chunk_events
            target = planes[plane_start:plane_start + size]
            if masks[k] & 2:  # LZF skipped (the chunk did not compress): stored shuffled only
                if offsets[k + 1] - offsets[k] != size:
                    errors[c] = 1
                    break
                target[:] = comp[offsets[k]:offsets[k + 1]]
            elif _lzf_decompress(comp, offsets[k], offsets[k + 1], target) != size:
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


def convert_to_store(input, output, sensor_size=None, overwrite=False, *, chunk_events: int = 1 << 22) -> dict:
    """Write every event of ``input`` (any readable format) to a new event store at ``output``."""
    from . import open_recording

    started = time.perf_counter()
    output = Path(output)
    if output.exists() and not overwrite:
        raise EventFormatError(output, "already exists (use --force to overwrite)")
    if Path(input).resolve() == output.resolve():
        raise EventFormatError(output, "input and output are the same file")
    temporary = output.with_name(output.name + ".partial")
    with open_recording(input, sensor_size=sensor_size) as rec:
        t_first = t_last = None
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
            os.replace(temporary, output)
        finally:
            if temporary.exists():
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
