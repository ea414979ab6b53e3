"""The HDF5 decision log: every published decision, one row each.

Layout: one resizable, chunked compound dataset ``/decisions`` with the
fields of the message schema (:mod:`streamsnn.stream.messages`; ``target`` is
-1 when the source does not know it) and the file attribute ``schema``. Rows are buffered and written
every ``flush_every`` rows or ``flush_interval_s`` seconds, and always on
:meth:`DecisionLog.close`, which the pipeline calls on every way out (end of
the source, source error, Ctrl-C, SIGTERM). Opening an existing log appends.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np

from ..errors import ConfigError
from .messages import DECISION_FIELDS, SCHEMA_VERSION

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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self.path, "a")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"decision log {self.path}: cannot open for writing ({exc})") from exc
        if "decisions" in self._file:
            dataset = self._file["decisions"]
            if dataset.dtype != LOG_DTYPE:
                self._file.close()
                raise ConfigError(f"decision log {self.path}: /decisions has another layout; "
                                  "use a new file")
        else:
            dataset = self._file.create_dataset("decisions", shape=(0,), maxshape=(None,), dtype=LOG_DTYPE,
                                                chunks=(1024,))
            self._file.attrs["schema"] = LOG_SCHEMA
            self._file.attrs["fields"] = ",".join(LOG_DTYPE.names)
        self._dataset = dataset
        self.rows = int(dataset.shape[0])

    def append(self, message: dict) -> None:
        row = []
        for name in LOGGED_FIELDS:
            value = message.get(name)
            if name == "stream":
                value = str(value).encode("utf-8")[:STREAM_BYTES]
            elif name == "target" and value is None:
                value = -1
            row.append(value)
        self._pending.append(tuple(row))
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

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


def read_decision_log(path: str | os.PathLike) -> list[dict]:
    """All rows of a decision log as message-like dicts (``target`` None when unknown)."""
    with h5py.File(path, "r") as f:
        rows = f["decisions"][()]
    out = []
    for row in rows:
        item = {name: row[name].item() for name in LOG_DTYPE.names}
        item["stream"] = row["stream"].decode("utf-8")
        if item["target"] < 0:
            item["target"] = None
        out.append(item)
    return out
