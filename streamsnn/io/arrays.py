"""``.npy`` files holding a structured array with fields x, y, t, p (any integer types; tonic's layout works).

Read block by block, so chunks never load the whole file (and never memory-mapped: a
mapped file that shrinks kills the reader with SIGBUS). A ``.npy`` file has no place for
the sensor size: it comes from ``sensor_size=`` or is None.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import EventFormatError, EventValidationError
from ..events import EVENT_FIELDS, as_events
from .base import Recording, check_coordinates, read_exactly, warn_truncated

# Events per block when iterating: 4M events is 64 MiB of EVENT_DTYPE.
BLOCK_EVENTS = 1 << 22


class NpyRecording(Recording):
    format = "npy"

    def __init__(self, path, sensor_size=None, *, block_events: int = BLOCK_EVENTS):
        super().__init__(path, sensor_size)
        self.block_events = block_events
        self.file_size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                reader = {(1, 0): np.lib.format.read_array_header_1_0,
                          (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if reader is None:
                    raise ValueError(f"unsupported .npy version {version}")
                shape, fortran, dtype = reader(f)
            except Exception as exc:  # numpy raises ValueError, SyntaxError, tokenize errors...
                raise EventFormatError(self.path, f"not a readable .npy header: {exc}", offset=0) from None
            self.data_offset = f.tell()
        if dtype.names is None or dtype.hasobject:
            raise EventFormatError(self.path, f".npy holds a {dtype} array of shape {shape}; expected a 1-D "
                                              f"structured array with fields {', '.join(EVENT_FIELDS)}", offset=0)
        missing = [name for name in EVENT_FIELDS if name not in dtype.names]
        if missing or len(shape) != 1 or fortran:
            raise EventFormatError(self.path, f".npy structured array of shape {shape} with fields "
                                              f"{dtype.names}; expected 1-D with {', '.join(EVENT_FIELDS)}", offset=0)
        self.dtype = dtype
        declared = int(shape[0])
        available = (self.file_size - self.data_offset) // dtype.itemsize if dtype.itemsize else 0
        self.count = min(declared, available)
        self._truncated = available < declared

    def _blocks(self):
        if self.count == 0:
            if self._truncated:
                warn_truncated(self.path, self.data_offset, "the file ends before its first record")
            return
        last_t = None
        with open(self.path, "rb") as f:
            f.seek(self.data_offset)
            for start in range(0, self.count, self.block_events):
                where = self.data_offset + start * self.dtype.itemsize
                n = min(self.block_events, self.count - start)
                block = np.frombuffer(read_exactly(f, n * self.dtype.itemsize, self.path, where), dtype=self.dtype)
                try:
                    events = as_events(block, source=str(self.path))
                except EventValidationError as exc:
                    raise EventFormatError(self.path, f"from event {start}: {exc}", offset=where) from None
                if not events.flags.writeable:
                    events = events.copy()  # the bytes read are immutable; callers may shift timestamps in place
                self._check(events, last_t, start, where)
                if events.size:
                    last_t = int(events["t"][-1])
                yield events
        if self._truncated:
            warn_truncated(self.path, self.data_offset + self.count * self.dtype.itemsize,
                           f"the file ends inside record {self.count}")

    def _check(self, events, last_t, start, where):
        t = events["t"]
        back = np.flatnonzero(t[1:] < t[:-1]) + 1
        if last_t is not None and t.size and t[0] < last_t:
            back = np.concatenate([[0], back])
        p = events["p"]
        bad_p = np.flatnonzero((p != 0) & (p != 1))
        for bad, what in ((back, "timestamp steps back"), (bad_p, "polarity is not 0 or 1")):
            if bad.size:
                i = int(bad[0])
                raise EventFormatError(self.path, f"event {start + i}: {what}",
                                       offset=where + i * self.dtype.itemsize)
        check_coordinates(events, self.sensor_size, self.path, offset=where, first_index=start)


def write_npy(path, events) -> None:
    """Save events as a structured ``.npy`` (EVENT_DTYPE)."""
    np.save(path, as_events(events), allow_pickle=False)
