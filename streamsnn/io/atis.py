"""ATIS 40-bit ``.bin`` files (N-MNIST, N-Caltech101, and DVS clips stored the same way).

Each record is 5 bytes, no header:

    byte 0      x
    byte 1      y
    byte 2      bit 7: polarity (1 = ON); bits 6..0: timestamp bits 22..16
    bytes 3, 4  timestamp bits 15..8, 7..0 (µs)

A record with y == 240 is not an event: it marks that the 23-bit timestamp
counter wrapped. We add 2**23 µs to every later timestamp. (Orchard's
reference script and tonic add 2**13, which would make time run backwards
after a wrap of a 23-bit counter; no file in N-MNIST is long enough to wrap,
so the difference only shows on long recordings.)

The format has no header and no magic, so the sensor size comes from the
caller; the reader returns ``sensor_size=None`` otherwise.
"""
from __future__ import annotations

import os

import numpy as np
from numba import njit

from ..errors import EventFormatError
from ..events import EVENT_DTYPE
from . import posix
from .base import BLOCK_BYTES, Recording, outside_sensor_error, read_exactly, warn_truncated

RECORD_BYTES = 5
OVERFLOW_Y = 240
TIMESTAMP_WRAP = 1 << 23


@njit(cache=True, nogil=True)
def _decode_atis(raw, time_offset, last_t, width, height, words):
    """Decode complete 5-byte records (uint8, a multiple of 5 long), checking order and coordinates in
    the same pass (``nogil``: a folder of N-MNIST samples is read while other threads run). Events go
    to ``words`` as two int64 words each (t, then x | y << 16 | p << 32, the layout of EVENT_DTYPE);
    wrap markers add TIMESTAMP_WRAP to every later timestamp.

    Returns (events, time offset after the block, first record whose time is before the one before it
    or -1, that earlier time, the record's time, first event index with x out of range or -1, first with
    y out of range or -1). ``width`` < 0: no coordinate check."""
    n = 0
    previous = last_t
    back_record = -1
    back_from = 0
    back_to = 0
    bad_x = -1
    bad_y = -1
    for r in range(raw.shape[0] // RECORD_BYTES):
        b = r * RECORD_BYTES
        y = np.int64(raw[b + 1])
        if y == OVERFLOW_Y:
            time_offset += TIMESTAMP_WRAP
            continue
        x = np.int64(raw[b])
        byte2 = np.int64(raw[b + 2])
        t = (((byte2 & 0x7F) << 16) | (np.int64(raw[b + 3]) << 8) | np.int64(raw[b + 4])) + time_offset
        if t < previous and back_record < 0:
            back_record = r
            back_from = previous
            back_to = t
        previous = t
        if width >= 0:
            if x >= width and bad_x < 0:
                bad_x = n
            if y >= height and bad_y < 0:
                bad_y = n
        words[2 * n] = t
        words[2 * n + 1] = x | (y << 16) | ((byte2 >> 7) << 32)
        n += 1
    return n, time_offset, back_record, back_from, back_to, bad_x, bad_y


# read() takes files up to this size in one piece (N-MNIST samples are ~4 kB); larger ones in blocks
WHOLE_FILE_BYTES = 64 << 20


@njit(cache=True, nogil=True)
def _read_atis_file(path_z, width, height, max_bytes):
    """Read and decode a whole file in one call without the GIL: (int64 words, events, True) when the
    file holds complete, time-ordered records inside the sensor; otherwise (.., .., False), and the
    caller reads it block by block, which says what is wrong."""
    raw, size = posix.read_file(path_z, max_bytes)
    if size < 0 or raw.size != size or size % RECORD_BYTES != 0:
        return np.empty(0, np.int64), 0, False
    words = np.empty(2 * (size // RECORD_BYTES), np.int64)
    n, _, back, _, _, bad_x, bad_y = _decode_atis(raw, 0, -(1 << 62), width, height, words)
    return words, n, back < 0 and bad_x < 0 and bad_y < 0


class AtisBinRecording(Recording):
    format = "atis_bin"

    def __init__(self, path, sensor_size=None, *, block_bytes: int = BLOCK_BYTES):
        super().__init__(path, sensor_size)
        self.block_bytes = max(RECORD_BYTES, block_bytes - block_bytes % RECORD_BYTES)
        self._file_size: int | None = None

    @property
    def file_size(self) -> int:
        # taken when first needed: read() of a whole file does without (one system call fewer a sample)
        if self._file_size is None:
            self._file_size = os.path.getsize(self.path)
        return self._file_size

    def read(self) -> np.ndarray:
        path_z = posix.path_argument(self.path) if posix.AVAILABLE else None
        if path_z is not None:
            size = self.sensor_size
            width, height = (size.width, size.height) if size is not None else (-1, -1)
            words, n, whole = _read_atis_file(path_z, width, height, WHOLE_FILE_BYTES)
            if whole:
                return words.view(EVENT_DTYPE)[:n]
        return super().read()

    def _blocks(self):
        path = self.path
        time_offset = 0
        last_t = None
        offset = 0
        complete = self.file_size - self.file_size % RECORD_BYTES
        size = self.sensor_size
        width, height = (size.width, size.height) if size is not None else (-1, -1)
        with open(path, "rb") as f:
            while offset < complete:
                want = min(max(RECORD_BYTES, self.block_bytes - self.block_bytes % RECORD_BYTES), complete - offset)
                raw = np.frombuffer(read_exactly(f, want, path, offset), dtype=np.uint8)
                buffer = np.empty(raw.size // RECORD_BYTES, dtype=EVENT_DTYPE)
                n, time_offset, back, back_from, back_to, bad_x, bad_y = _decode_atis(
                    raw, time_offset, -(1 << 62) if last_t is None else last_t, width, height,
                    buffer.view(np.int64))
                events = buffer[:n]
                if back >= 0:
                    # Real ATIS files are time-ordered; random or shifted bytes almost never are, so
                    # this is what tells a corrupt file from a real one.
                    raise EventFormatError(
                        path, f"timestamp steps back from {back_from} to {back_to} us; "
                              "not an ATIS 40-bit .bin recording, or a corrupt one",
                        offset=offset + back * RECORD_BYTES)
                for name, index in (("x", bad_x), ("y", bad_y)):
                    if index >= 0:
                        raise outside_sensor_error(path, size, name, int(events[name][index]), index)
                if n:
                    last_t = int(events["t"][-1])
                offset += raw.size
                yield events
        if self.file_size % RECORD_BYTES:
            warn_truncated(path, complete, f"the last {self.file_size % RECORD_BYTES} byte(s) "
                           f"do not make a complete {RECORD_BYTES}-byte ATIS record")


def read_atis_bin(path, sensor_size=None) -> np.ndarray:
    with AtisBinRecording(path, sensor_size) as rec:
        return rec.read()


def encode_atis_records(events: np.ndarray) -> bytes:
    """Time-sorted events (x < 256, y < 240) -> ATIS 40-bit records, with a wrap marker each time t
    passes a multiple of 2**23 us (what AtisBinRecording reads)."""
    t = np.asarray(events["t"], dtype=np.int64)
    if t.size and (t[0] < 0 or np.any(np.diff(t) < 0)):
        raise ValueError("ATIS records need non-negative, time-sorted timestamps")
    x, y = np.asarray(events["x"]), np.asarray(events["y"])
    if x.size and (x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() >= OVERFLOW_Y):
        raise ValueError(f"ATIS records hold 0 <= x < 256 and 0 <= y < {OVERFLOW_Y}")
    wraps = t // TIMESTAMP_WRAP
    n_markers = int(wraps[-1]) if t.size else 0
    out = np.zeros((t.size + n_markers, RECORD_BYTES), dtype=np.uint8)
    # the event of index i follows wraps[i] markers
    rows = np.arange(t.size) + wraps
    low = t % TIMESTAMP_WRAP
    out[rows, 0] = x
    out[rows, 1] = y
    out[rows, 2] = (np.asarray(events["p"]).astype(np.uint8) << 7) | ((low >> 16) & 0x7F).astype(np.uint8)
    out[rows, 3] = (low >> 8) & 0xFF
    out[rows, 4] = low & 0xFF
    markers = np.setdiff1d(np.arange(out.shape[0]), rows, assume_unique=True)
    out[markers, 1] = OVERFLOW_Y
    return out.tobytes()


def write_atis_bin(path, events: np.ndarray) -> None:
    """Write events as an ATIS 40-bit ``.bin`` file (the N-MNIST / N-Caltech101 format)."""
    with open(path, "wb") as f:
        f.write(encode_atis_records(events))


__all__ = ["AtisBinRecording", "read_atis_bin", "encode_atis_records", "write_atis_bin"]
