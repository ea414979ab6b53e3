"""Recordings the tests write: a sensor-like event generator, and writers for the formats streamsnn
reads but does not write itself (its own writers are write_raw, write_npy and write_store)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamsnn.events import EVENT_DTYPE

AEDAT2_DVS128_HEADER = b"#!AER-DAT2.0\r\n# AEChip: ch.unizh.ini.jaer.chip.retina.DVS128\r\n"
DAT_HEADER = b"% Data file containing Event2D events.\n% Version 2\n% Date 2026-12-01 12:00:00\n"
ATIS_OVERFLOW_RECORD = bytes([0, 240, 0, 0, 0])


def scene_events(n: int, sensor_size, *, seed: int = 0, t0: int = 0, duration_us: int | None = None) -> np.ndarray:
    """A sensor-like stream: an edge sweeping across the sensor fires runs of neighbouring pixels on
    a row at one timestamp (EVT 3.0 vector words; neighbours for denoise), and a fifth of the groups
    are isolated noise events. Sorted by t, inside the sensor, both polarities."""
    rng = np.random.default_rng(seed)
    width, height = int(sensor_size[0]), int(sensor_size[1])
    duration_us = 10 * n if duration_us is None else duration_us
    lengths = np.minimum(rng.geometric(0.4, n), min(12, width))
    noise = rng.random(n) < 0.2
    lengths[noise] = 1
    groups = int(np.searchsorted(np.cumsum(lengths), n)) + 1
    lengths, noise = lengths[:groups], noise[:groups]
    lengths[-1] -= int(lengths.sum() - n)
    t = t0 + np.sort(rng.integers(0, duration_us + 1, groups))
    edge = (t - t0) * 2 * width // max(duration_us, 1) % width  # sweeps the sensor twice
    x0 = np.where(noise, rng.integers(0, width, groups), edge + rng.integers(-2, 3, groups))
    x0 = np.clip(x0, 0, width - lengths)
    y = np.where(noise, rng.integers(0, height, groups),
                 (height // 2 + rng.normal(0, height / 5, groups)).astype(np.int64) % height)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    events = np.empty(n, dtype=EVENT_DTYPE)
    events["t"] = np.repeat(t, lengths)
    events["x"] = np.repeat(x0, lengths) + (np.arange(n) - starts)
    events["y"] = np.repeat(y, lengths)
    events["p"] = np.repeat(rng.integers(0, 2, groups), lengths)
    return events


def write_atis_bin(path, events) -> Path:
    """ATIS 40-bit records; an overflow record wherever t passes a multiple of 2**23 µs."""
    t = np.asarray(events["t"], dtype=np.int64)
    records = np.empty((t.size, 5), dtype=np.uint8)
    records[:, 0] = events["x"]
    records[:, 1] = events["y"]
    records[:, 2] = (np.asarray(events["p"], dtype=np.int64) << 7) | ((t >> 16) & 0x7F)
    records[:, 3] = (t >> 8) & 0xFF
    records[:, 4] = t & 0xFF
    wraps = np.diff(t >> 23, prepend=0)
    pieces, start = [], 0
    for i in np.flatnonzero(wraps):
        pieces += [records[start:i].tobytes(), ATIS_OVERFLOW_RECORD * int(wraps[i])]
        start = i
    pieces.append(records[start:].tobytes())
    Path(path).write_bytes(b"".join(pieces))
    return Path(path)


def write_dat(path, events, sensor_size=None) -> Path:
    """Prophesee DAT v2, Event2D records; "% Width"/"% Height" lines only when sensor_size is given."""
    header = DAT_HEADER
    if sensor_size is not None:
        header += f"% Width {sensor_size[0]}\n% Height {sensor_size[1]}\n".encode()
    records = np.empty((events.size, 2), dtype="<u4")
    records[:, 0] = events["t"]
    records[:, 1] = (events["x"].astype(np.uint32) | (events["y"].astype(np.uint32) << 14)
                     | (events["p"].astype(np.uint32) << 28))
    Path(path).write_bytes(header + bytes([0, 8]) + records.tobytes())
    return Path(path)


def write_aedat2(path, events) -> Path:
    """jAER DVS128 AEDAT 2.0: big-endian (address, t); x mirrored, address bit 0 is 0 for ON."""
    records = np.empty(events.size, dtype=[("a", ">u4"), ("t", ">i4")])
    records["a"] = ((events["y"].astype(np.uint32) << 8) | ((127 - events["x"].astype(np.uint32)) << 1)
                    | (1 - events["p"].astype(np.uint32)))
    records["t"] = events["t"]
    Path(path).write_bytes(AEDAT2_DVS128_HEADER + records.tobytes())
    return Path(path)


def write_aedat4(path, events, sensor_size, *, compression: str = "LZ4", packet_events: int = 4000) -> Path:
    """AEDAT 4.0 through dv-processing's own writer, one writeEvents call per packet_events events."""
    dv = pytest.importorskip("dv_processing")
    from streamsnn.stream.sources import array_to_event_store

    config = dv.io.MonoCameraWriter.EventOnlyConfig("streamsnn_test", (int(sensor_size[0]), int(sensor_size[1])))
    config.compression = getattr(dv.CompressionType, compression)
    writer = dv.io.MonoCameraWriter(str(path), config)
    for start in range(0, events.size, packet_events):
        writer.writeEvents(array_to_event_store(events[start:start + packet_events]))
    del writer  # closes the file
    return Path(path)
