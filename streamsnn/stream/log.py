"""The HDF5 decision log: every published decision, one row each.

Layout: one resizable, chunked compound dataset ``/decisions`` with the
fields of the message schema (:mod:`streamsnn.stream.messages`; ``target`` is
-1 when the source does not know it) and the file attribute ``schema``. Rows are buffered and written
every ``flush_every`` rows or ``flush_interval_s`` seconds, and always on
:meth:`DecisionLog.close`, which the pipeline calls on every way out (end of
the source, source error, Ctrl-C, SIGTERM). Opening an existing log appends.

A new log is written complete (table and attributes, no rows) under a name of
its own and renamed into place, so a log exists only as a readable file: a job
killed at any moment leaves every row flushed so far, none before the first
flush (at most ``flush_interval_s`` of rows are lost). A file that is not a
decision log is never written to. Stream names longer than ``STREAM_BYTES``
bytes of UTF-8 are cut at a character boundary.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np

from ..errors import ConfigError, StreamsnnError
from .messages import DECISION_FIELDS, SCHEMA_VERSION, check_decision

LOG_SCHEMA = SCHEMA_VERSION
STREAM_BYTES = 64
# the column type of each logged field of the message schema (``schema`` is a file attribute)
_COLUMN_TYPES = {
    "stream": f"S{STREAM_BYTES}", "seq": "<i8", "label": "<i4", "confidence": "<f4", "timesteps": "<i4",
    "max_timesteps": "<i4", "window_start_us": "<i8", "window_end_us": "<i8", "published_ns": "<i8",
    "latency_ms": "<f4", "target": "<i4",
}
LOGGED_FIELDS = tuple(name for name in DECISION_FIELDS if name != "schema") + ("target",)
LOG_DTYPE = np.dtype([(name, _COLUMN_TYPES[name]) for name in LOGGED_FIELDS])


class DecisionLog:
    def __init__(self, path: str | os.PathLike, *, flush_every: int = 256, flush_interval_s: float = 0.5):
        self.path = Path(path)
        self.flush_every = int(flush_every)
        self.flush_interval_s = float(flush_interval_s)
        self._pending: list[tuple] = []
        self._last_flush = time.monotonic()
        self.rows = 0
        self._file = None
        if not os.path.lexists(self.path):
            self._create()
        self._file = self._open_existing()
        self._dataset = self._file["decisions"]
        self.rows = int(self._dataset.shape[0])

    def _fail(self, what: str):
        raise ConfigError(f"decision log {self.path}: {what}")

    def _create(self) -> None:
        from ..io.base import new_sibling_file, publish_file

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = new_sibling_file(self.path)
        except (OSError, StreamsnnError) as exc:
            self._fail(f"cannot be created ({exc})")
        try:
            with h5py.File(temporary, "w") as f:
                f.create_dataset("decisions", shape=(0,), maxshape=(None,), dtype=LOG_DTYPE, chunks=(1024,))
                f.attrs["schema"] = LOG_SCHEMA
                f.attrs["fields"] = ",".join(LOG_DTYPE.names)
            try:
                publish_file(temporary, self.path, overwrite=False)
            except StreamsnnError:
                pass  # another writer created it meanwhile: it is checked like any existing file
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)

    def _open_existing(self):
        from ..io.detect import PROBE_BYTES, looks_like_hdf5

        if self.path.is_dir():
            self._fail("is a folder")
        if not self.path.is_file():  # opening a FIFO would wait for a writer
            self._fail("is not a regular file (a device, pipe or socket)")
        try:
            with open(self.path, "rb") as f:
                head = f.read(PROBE_BYTES)
        except OSError as exc:
            self._fail(f"cannot be read ({exc.strerror})")
        if not looks_like_hdf5(head):
            self._fail("exists and is not an HDF5 file, so not a decision log; refusing to write to it "
                       "(give a new file name)")
        try:
            file = h5py.File(self.path, "r+")
        except (OSError, ValueError) as exc:
            self._fail(f"cannot be opened for writing ({exc})")
        dataset = file.get("decisions")
        if not isinstance(dataset, h5py.Dataset) or "schema" not in file.attrs:
            file.close()
            self._fail("is an HDF5 file but not a decision log (no /decisions table with a 'schema' "
                       "attribute); refusing to add to it (give a new file name)")
        if dataset.dtype != LOG_DTYPE or dataset.ndim != 1 or dataset.maxshape != (None,):
            file.close()
            self._fail("/decisions has another layout; use a new file")
        return file

    def append(self, message: dict) -> None:
        """Queue one decision (a message of the schema: ValueError otherwise) for the next flush."""
        check_decision(message)
        row = []
        for name in LOGGED_FIELDS:
            value = message.get(name)
            if name == "stream":
                value = stream_name_bytes(value)
            elif name == "target" and value is None:
                value = -1
            row.append(value)
        self._pending.append(tuple(row))
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def seconds_to_flush(self) -> float | None:
        """Seconds until the buffered rows are due (0 when overdue); None when nothing is buffered.
        The writer waits at most this long for the next decision, so that sparse decisions are
        written within ``flush_interval_s`` too, not only when the next one arrives."""
        if not self._pending:
            return None
        return max(0.0, self.flush_interval_s - (time.monotonic() - self._last_flush))

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending or self._file is None:
            return
        rows = np.array(self._pending, dtype=LOG_DTYPE)
        start = self._dataset.shape[0]
        self._dataset.resize((start + len(rows),))
        self._dataset[start:] = rows
        self._pending.clear()
        self.rows = start + len(rows)
        self._file.flush()

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self.flush()
        finally:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stream_name_bytes(stream: str) -> bytes:
    """The stream name as stored: UTF-8, cut to STREAM_BYTES at a character boundary."""
    return str(stream).encode("utf-8")[:STREAM_BYTES].decode("utf-8", "ignore").encode("utf-8")


def read_decision_log(path: str | os.PathLike) -> list[dict]:
    """All rows of a decision log as message-like dicts (``target`` None when unknown)."""
    with h5py.File(path, "r") as f:
        rows = f["decisions"][()]
    out = []
    for row in rows:
        item = {name: row[name].item() for name in LOG_DTYPE.names}
        # logs written before names were cut at character boundaries may end inside one
        item["stream"] = row["stream"].decode("utf-8", "replace")
        if item["target"] < 0:
            item["target"] = None
        out.append(item)
    return out
