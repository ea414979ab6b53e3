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

from ..errors import EventFormatError
from ..events import EVENT_DTYPE
from .base import BLOCK_BYTES, Recording, check_coordinates, read_exactly, warn_truncated

RECORD_BYTES = 5
OVERFLOW_Y = 240
TIMESTAMP_WRAP = 1 << 23


def decode_atis_records(raw: np.ndarray, time_offset: int = 0):
    """Decode complete 5-byte records (uint8 array, length a multiple of 5).

    Returns (events, overflow_count, record_index) where record_index maps
    each event to its record number within ``raw`` (for error offsets).
    """
    records = raw.reshape(-1, RECORD_BYTES)
    y = records[:, 1]
    overflow = y == OVERFLOW_Y
    n_overflow = int(np.count_nonzero(overflow))
    if n_overflow:
        keep = np.flatnonzero(~overflow)
        wraps = np.cumsum(overflow)[keep].astype(np.int64)
        records = records[keep]
    else:
        keep = None
    events = np.empty(records.shape[0], dtype=EVENT_DTYPE)
    events["x"] = records[:, 0]
    events["y"] = records[:, 1]
    byte2 = records[:, 2]
    events["p"] = byte2 >> 7
    t = ((byte2 & 0x7F).astype(np.int64) << 16) | (records[:, 3].astype(np.int64) << 8) | records[:, 4]
    if time_offset:
        t += time_offset
    if n_overflow:
        t += wraps * TIMESTAMP_WRAP
    events["t"] = t
    return events, n_overflow, keep


class AtisBinRecording(Recording):
    format = "atis_bin"

    def __init__(self, path, sensor_size=None, *, block_bytes: int = BLOCK_BYTES):
        super().__init__(path, sensor_size)
        self.block_bytes = max(RECORD_BYTES, block_bytes - block_bytes % RECORD_BYTES)
        self.file_size = os.path.getsize(self.path)

    def _blocks(self):
        path = self.path
        time_offset = 0
        last_t = None
        offset = 0
        complete = self.file_size - self.file_size % RECORD_BYTES
        with open(path, "rb") as f:
            while offset < complete:
                want = min(max(RECORD_BYTES, self.block_bytes - self.block_bytes % RECORD_BYTES), complete - offset)
                raw = np.frombuffer(read_exactly(f, want, path, offset), dtype=np.uint8)
                events, n_overflow, keep = decode_atis_records(raw, time_offset)
                time_offset += n_overflow * TIMESTAMP_WRAP
                self._check_order(events, last_t, offset, keep)
                check_coordinates(events, self.sensor_size, path)
                if events.size:
                    last_t = int(events["t"][-1])
                offset += raw.size
                yield events
        if self.file_size % RECORD_BYTES:
            warn_truncated(path, complete, f"the last {self.file_size % RECORD_BYTES} byte(s) "
                           f"do not make a complete {RECORD_BYTES}-byte ATIS record")

    def _check_order(self, events, last_t, block_offset, keep):
        # Real ATIS files are time-ordered; random or shifted bytes almost
        # never are, so this is what tells a corrupt file from a real one.
        if events.size == 0:
            return
        t = events["t"]
        bad = np.flatnonzero(t[1:] < t[:-1])
        if last_t is not None and t[0] < last_t:
            index, previous = 0, last_t
        elif bad.size:
            index, previous = int(bad[0]) + 1, int(t[bad[0]])
        else:
            return
        record = index if keep is None else int(keep[index])
        raise EventFormatError(
            self.path, f"timestamp steps back from {previous} to {int(t[index])} us; "
                       "not an ATIS 40-bit .bin recording, or a corrupt one",
            offset=block_offset + record * RECORD_BYTES)


def read_atis_bin(path, sensor_size=None) -> np.ndarray:
    with AtisBinRecording(path, sensor_size) as rec:
        return rec.read()


def encode_atis_records(events: np.ndarray) -> bytes:
    """Time-sorted events (x < 256, y < 240) -> ATIS 40-bit records, with a wrap marker each time t
    passes a multiple of 2**23 us (the inverse of :func:`decode_atis_records`)."""
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


__all__ = ["AtisBinRecording", "read_atis_bin", "decode_atis_records", "encode_atis_records", "write_atis_bin"]
