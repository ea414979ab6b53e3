"""iniVation / jAER recordings: AEDAT 4.0 and AEDAT 2.0 (DVS128).

AEDAT 4.0 (DV software): ``#!AER-DAT4.0\\r\\n``, an int32 header length, a
FlatBuffer ``IOHeader`` (compression, data-table position, an XML description
of the streams), then packets: int32 stream id, int32 byte length, and a
size-prefixed FlatBuffer packet, compressed as the header says (none, LZ4 or
ZSTD). Event packets (type ``EVTS``) hold 16-byte structs
``{int64 t; int16 x; int16 y; bool on; pad[3]}`` with absolute µs timestamps.
We read the event stream with the lowest id, skip the others (IMU, frames,
triggers), and stop at the data table at the end of the file. The FlatBuffers
are read by hand, every offset bounds-checked, so a corrupt file gives an
error naming the byte, never a crash.

AEDAT 2.0 (jAER): ``#`` header lines, then big-endian (int32 address, int32
timestamp µs) pairs. For the DVS128 we follow jAER's ``DVS128.Extractor``:
    polarity  ON when address bit 0 is 0
    x         127 - address bits 7..1   (jAER mirrors x so the image is not flipped)
    y         address bits 14..8       (jAER's y grows upwards, origin at the bottom)
    bit 15    marks special (sync/external) events, which are skipped.
tonic's ``read_dvs_128`` neither mirrors x nor reads polarity this way, and
swaps x and y; our output is what jAER shows.
"""
from __future__ import annotations

import os
import re
import struct
import xml.etree.ElementTree as ElementTree

import numpy as np

from ..errors import EventFormatError, SensorSizeError
from ..events import EVENT_DTYPE, SensorSize, empty_events
from .base import BLOCK_BYTES, Recording, check_coordinates, read_exactly, warn_truncated

# ---------------------------------------------------------------------------
# AEDAT 4.0
# ---------------------------------------------------------------------------

AEDAT4_MAGIC = b"#!AER-DAT4.0\r\n"
COMPRESSION_NAMES = {0: "none", 1: "LZ4", 2: "LZ4 (high)", 3: "ZSTD", 4: "ZSTD (high)"}
AEDAT4_EVENT = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("pad", "V3")])
assert AEDAT4_EVENT.itemsize == 16
# A packet larger than this is corrupt, whatever its length field says:
# DV writes packets of a few thousand events.
MAX_PACKET_BYTES = 1 << 30


class _FlatBuffer:
    """Just enough FlatBuffers to read a table's scalar, string and vector fields, bounds-checked."""

    def __init__(self, data: bytes, path, base_offset: int, what: str):
        self.data = data
        self.path = path
        self.base = base_offset
        self.what = what

    def _fail(self, message: str, at: int):
        raise EventFormatError(self.path, f"{self.what}: {message}", offset=self.base + at)

    def u32(self, at: int) -> int:
        if at < 0 or at + 4 > len(self.data):
            self._fail("offset points outside the buffer", at)
        return struct.unpack_from("<I", self.data, at)[0]

    def root(self) -> int:
        return self._check_table(self.u32(0))

    def _check_table(self, table: int) -> int:
        vtable = table - struct.unpack_from("<i", self.data, table)[0] if 0 <= table <= len(self.data) - 4 else -1
        if vtable < 0 or vtable + 4 > len(self.data):
            self._fail("table or vtable outside the buffer", table)
        return table

    def field_position(self, table: int, index: int) -> int | None:
        if not 0 <= table <= len(self.data) - 4:
            self._fail("table outside the buffer", table)
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        if not 0 <= vtable <= len(self.data) - 4:
            self._fail("vtable outside the buffer", table)
        vtable_size = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * index
        if slot + 2 > vtable_size or vtable + slot + 2 > len(self.data):
            return None
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str, default):
        at = self.field_position(table, index)
        if at is None:
            return default
        if at + struct.calcsize(fmt) > len(self.data):
            self._fail("field outside the buffer", at)
        return struct.unpack_from("<" + fmt, self.data, at)[0]

    def vector(self, table: int, index: int, item_size: int) -> tuple[int, int] | None:
        """(start, length) of a vector field, or None if absent."""
        at = self.field_position(table, index)
        if at is None:
            return None
        start = at + self.u32(at)
        length = self.u32(start)
        start += 4
        if start + length * item_size > len(self.data):
            self._fail(f"vector of {length} items runs past the end of the buffer", start)
        return start, length

    def string(self, table: int, index: int) -> str | None:
        found = self.vector(table, index, 1)
        if found is None:
            return None
        start, length = found
        return self.data[start:start + length].decode("utf-8", "replace")


def _decompressor(compression: int, path, offset: int):
    if compression == 0:
        return lambda raw: raw
    if compression in (1, 2):
        import lz4.frame

        return lz4.frame.decompress
    if compression in (3, 4):
        import zstandard

        def zstd(raw, _z=zstandard.ZstdDecompressor()):
            # DV's packets do not record their decompressed size, so stream it.
            return _z.decompressobj().decompress(raw)

        return zstd
    raise EventFormatError(path, f"unknown AEDAT 4 compression type {compression}", offset=offset)


class Aedat4Header:
    """The FlatBuffer ``IOHeader`` of an AEDAT 4.0 file or a DV network stream (the same bytes in both).

    ``where`` (a path or a ``dv://`` address) and ``offset`` name the bytes in errors.
    """

    def __init__(self, header: bytes, where, offset: int):
        fb = _FlatBuffer(header, where, offset, "AEDAT 4 header")
        table = fb.root()
        self.compression = fb.scalar(table, 0, "i", 0)
        self.data_table_position = fb.scalar(table, 1, "q", -1)
        self.decompress = _decompressor(self.compression, where, offset)
        self.streams = _parse_stream_info(fb.string(table, 2) or "", where, offset)
        event_streams = sorted(sid for sid, s in self.streams.items() if s.get("typeIdentifier") == "EVTS")
        self.event_stream = event_streams[0] if event_streams else None
        self.sensor_size = None
        if self.event_stream is not None:
            s = self.streams[self.event_stream]
            if s.get("sizeX", "").isdigit() and s.get("sizeY", "").isdigit():
                self.sensor_size = SensorSize(int(s["sizeX"]), int(s["sizeY"]))


def decode_event_packet(buffer: bytes, where, offset: int) -> np.ndarray:
    """The events of one decompressed event packet (a size-prefixed ``EVTS`` FlatBuffer)."""
    if len(buffer) < 12:
        raise EventFormatError(where, "event packet shorter than a FlatBuffer header", offset=offset)
    body = buffer[4:]
    fb = _FlatBuffer(body, where, offset, "AEDAT 4 event packet")
    if body[4:8] != b"EVTS":
        raise EventFormatError(where, f"packet of the event stream has identifier {body[4:8]!r}, "
                                      "expected b'EVTS'", offset=offset)
    table = fb.root()
    found = fb.vector(table, 0, AEDAT4_EVENT.itemsize)
    if found is None:
        return empty_events(0)
    start, length = found
    raw = np.frombuffer(body, dtype=AEDAT4_EVENT, count=length, offset=start)
    events = np.empty(length, dtype=EVENT_DTYPE)
    events["t"] = raw["t"]
    events["x"] = raw["x"]
    events["y"] = raw["y"]
    events["p"] = raw["on"] != 0
    return events


class Aedat4Recording(Recording):
    format = "aedat4"

    def __init__(self, path, sensor_size=None):
        super().__init__(path, None)
        self.file_size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(len(AEDAT4_MAGIC) + 4)
            if len(head) < len(AEDAT4_MAGIC) + 4 or not head.startswith(AEDAT4_MAGIC):
                raise EventFormatError(self.path, "not an AEDAT 4.0 file, or cut inside its first bytes", offset=0)
            header_size = struct.unpack_from("<i", head, len(AEDAT4_MAGIC))[0]
            header_at = len(AEDAT4_MAGIC) + 4
            if header_size <= 8 or header_at + header_size > self.file_size:
                raise EventFormatError(self.path, f"header length {header_size} does not fit the file "
                                                  f"({self.file_size} bytes)", offset=len(AEDAT4_MAGIC))
            header = f.read(header_size)
        header = Aedat4Header(header, self.path, header_at)
        self.compression = header.compression
        self.data_table_position = header.data_table_position
        self._decompress = header.decompress
        self.data_offset = header_at + header_size
        self.streams = header.streams
        self.event_stream = header.event_stream
        size = header.sensor_size
        if size is not None:
            self.sensor_size, self.sensor_size_source = size, "header"
        elif sensor_size is not None:
            self.sensor_size, self.sensor_size_source = SensorSize.coerce(sensor_size), "argument"

    def _packets(self):
        """(stream id, file offset, decompressed buffer) for each packet of the event stream."""
        end = self.file_size
        if 0 <= self.data_table_position <= self.file_size:
            end = self.data_table_position
        offset = self.data_offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            while offset < end:
                if offset + 8 > self.file_size:
                    warn_truncated(self.path, offset, "the file ends inside a packet header")
                    return
                head = read_exactly(f, 8, self.path, offset)
                stream_id, size = struct.unpack("<ii", head)
                if size < 0 or size > MAX_PACKET_BYTES or stream_id not in self.streams:
                    raise EventFormatError(
                        self.path, f"packet header says stream {stream_id}, {size} bytes; "
                                   f"the file declares streams {sorted(self.streams)}: corrupt", offset=offset)
                if offset + 8 + size > self.file_size:
                    warn_truncated(self.path, offset, f"the file ends inside a {size}-byte packet")
                    return
                if stream_id != self.event_stream:
                    f.seek(size, 1)
                    offset += 8 + size
                    continue
                raw = read_exactly(f, size, self.path, offset + 8)
                try:
                    buffer = self._decompress(raw)
                except Exception as exc:  # lz4/zstd raise their own types for bad data
                    raise EventFormatError(self.path, f"packet of stream {stream_id} does not decompress "
                                                      f"({COMPRESSION_NAMES.get(self.compression)}): {exc}",
                                           offset=offset + 8) from None
                yield stream_id, offset + 8, buffer
                offset += 8 + size

    def _decode_packet(self, buffer: bytes, offset: int) -> np.ndarray:
        return decode_event_packet(buffer, self.path, offset)

    def _blocks(self):
        if self.event_stream is None:
            return
        last_t = None
        for _, offset, buffer in self._packets():
            events = self._decode_packet(buffer, offset)
            if events.size == 0:
                continue
            check_coordinates(events, self.sensor_size, self.path, what="packet event", offset=offset)
            t = events["t"]
            back = np.flatnonzero(t[1:] < t[:-1])
            if (last_t is not None and t[0] < last_t) or back.size:
                raise EventFormatError(self.path, "timestamps step back inside the event stream: corrupt packet",
                                       offset=offset)
            last_t = int(t[-1])
            yield events


def _parse_stream_info(info: str, path, offset: int) -> dict[int, dict[str, str]]:
    streams: dict[int, dict[str, str]] = {}
    if not info.strip():
        return streams
    try:
        root = ElementTree.fromstring(info)
    except ElementTree.ParseError as exc:
        raise EventFormatError(path, f"AEDAT 4 stream description is not valid XML: {exc}", offset=offset) from None
    for node in root.iter("node"):
        if not re.fullmatch(r"\d+", node.get("name", "")) or "outInfo" not in node.get("path", ""):
            continue
        attrs = {a.get("key"): (a.text or "") for a in node.iter("attr")}
        streams[int(node.get("name"))] = attrs
    return streams


# ---------------------------------------------------------------------------
# AEDAT 2.0 (jAER)
# ---------------------------------------------------------------------------

# Timestamps read as unsigned: jAER's int32 counter runs on past 2**31 (negative in Java), and a
# step back by more than 2**31 is its 2**32 wrap.
AEDAT2_RECORD = np.dtype([("address", ">u4"), ("t", ">u4")])
DVS128 = SensorSize(128, 128)
_SPECIAL_EVENT_BIT = 0x8000


class Aedat2Recording(Recording):
    """AEDAT 2.0 from jAER. Only the DVS128 address layout is decoded (see module doc)."""

    format = "aedat2"

    def __init__(self, path, sensor_size=None, *, block_bytes: int = BLOCK_BYTES):
        super().__init__(path, None)
        self.file_size = os.path.getsize(self.path)
        self.block_bytes = max(8, block_bytes - block_bytes % 8)
        with open(self.path, "rb") as f:
            head = f.read(1 << 20)
        lines = []
        pos = 0
        while pos < len(head) and head[pos:pos + 1] == b"#":
            end = head.find(b"\n", pos)
            if end < 0:
                raise EventFormatError(self.path, "the file ends inside its header", offset=pos)
            lines.append(head[pos:end].decode("latin-1").rstrip("\r"))
            pos = end + 1
        self.header_lines = lines
        self.data_offset = pos
        chip = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("# AEChip:")), "")
        self.chip = chip
        if chip and not chip.endswith("DVS128"):
            raise EventFormatError(self.path, f"AEDAT 2.0 from {chip}: only the DVS128 address layout "
                                              "is supported", offset=0)
        if sensor_size is not None and SensorSize.coerce(sensor_size)[:2] != DVS128[:2]:
            raise SensorSizeError(f"{self.path}: a DVS128 recording is 128x128, not {tuple(sensor_size)}")
        self.sensor_size, self.sensor_size_source = DVS128, "header"

    def _blocks(self):
        data_bytes = self.file_size - self.data_offset
        complete = self.data_offset + data_bytes - data_bytes % 8
        offset = self.data_offset
        last_t = None
        wraps = 0
        with open(self.path, "rb") as f:
            f.seek(offset)
            while offset < complete:
                raw = read_exactly(f, min(max(8, self.block_bytes - self.block_bytes % 8), complete - offset),
                                   self.path, offset)
                records = np.frombuffer(raw, dtype=AEDAT2_RECORD)
                address = records["address"]
                t = records["t"].astype(np.int64)
                # jAER's 32-bit timestamps wrap after about 71 minutes.
                if last_t is not None:
                    t += wraps << 32
                steps = np.diff(t, prepend=t[0] if last_t is None else last_t)
                big_back = np.flatnonzero(steps < -(1 << 31))
                if big_back.size:
                    add = np.zeros(t.size, dtype=np.int64)
                    add[big_back] = 1
                    extra = np.cumsum(add)
                    t += extra << 32
                    wraps += int(extra[-1])
                    steps = np.diff(t, prepend=t[0] if last_t is None else last_t)
                back = np.flatnonzero(steps < 0)
                if back.size:
                    i = int(back[0])
                    raise EventFormatError(self.path, f"timestamp steps back to {int(t[i])} us: corrupt AEDAT 2.0 "
                                                      "data (or a jAER timestamp reset)", offset=offset + 8 * i)
                if address.size and int(address.max()) >> 16:
                    i = int(np.flatnonzero(address >> 16)[0])
                    raise EventFormatError(self.path, f"address 0x{int(address[i]):08X} has bits above 15, "
                                                      "which a DVS128 never sets: corrupt", offset=offset + 8 * i)
                if t.size:
                    last_t = int(t[-1])
                keep = (address & _SPECIAL_EVENT_BIT) == 0
                if not keep.all():
                    address, t = address[keep], t[keep]
                events = np.empty(address.size, dtype=EVENT_DTYPE)
                events["t"] = t
                events["x"] = 127 - ((address >> 1) & 0x7F)
                events["y"] = (address >> 8) & 0x7F
                events["p"] = 1 - (address & 1)
                offset += len(raw)
                yield events
        if data_bytes % 8:
            warn_truncated(self.path, complete, f"the last {data_bytes % 8} byte(s) do not make a complete "
                                                "8-byte AEDAT 2.0 record")
