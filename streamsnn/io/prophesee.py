"""Prophesee recordings: RAW EVT 2.0, RAW EVT 3.0 and DAT.

All three start with a text header of ``% key value`` lines. The header of a
RAW file names the encoding (``% evt 3.0`` or ``% format EVT3;...``) and
sometimes the geometry; when it does not, the HAL plugin that recorded it
does (``% plugin_name hal_plugin_gen41_evk3`` -> Gen4.1, 1280x720).

Decoding follows the Prophesee reference decoder (openeb):

EVT 2.0, 32-bit little-endian words, type in bits 31..28:
    0x0/0x1 CD_OFF/CD_ON  t low 6 bits [27:22], x [21:11], y [10:0]
    0x8 EVT_TIME_HIGH     t bits 33..6 in [27:0]
    0xA EXT_TRIGGER, 0xE OTHERS, 0xF CONTINUED: not CD events, skipped
    words before the first EVT_TIME_HIGH are skipped (their time is unknown).

EVT 3.0, 16-bit little-endian words, type in bits 15..12, stateful:
    0x0 EVT_ADDR_Y   y [10:0]; the following X/vector words are CD events
    0x1 (EM) ADDR_Y  the following X/vector words are not CD events: skipped
    0x2 EVT_ADDR_X   one event at x [10:0], polarity [11]
    0x3 VECT_BASE_X  base x [10:0] and polarity [11] for the vector words
    0x4 VECT_12      events at base_x + i for each set bit i of [11:0]; base_x += 12
    0x5 VECT_8       events at base_x + i for each set bit i of [7:0]; base_x += 8
    0x6 EVT_TIME_LOW t bits 11..0
    0x8 EVT_TIME_HIGH t bits 23..12; resets TIME_LOW when it changes; a step
                     back by half the range or more is the 2**24 µs counter
                     looping, which adds 2**24 µs
    0x7, 0xA, 0xE, 0xF (CONTINUED_4, EXT_TRIGGER, OTHERS/IMU, CONTINUED_12):
                     skipped
    words before the first EVT_TIME_HIGH are skipped.

Like openeb, CD events outside the sensor are dropped (a warning says how
many); unlike openeb, word types the format does not define are an error,
because that is what garbage after a valid header looks like.

EVT 3.0 timestamps are kept in file order, exactly as the reference decoder
gives them; real files do step back by a few µs (evt3_gen41_sample.raw has
nine EVT_TIME_LOW words that do), so EVT 3.0 events are sorted only up to
those steps.

DAT: header, then one byte event type and one byte event size, then 8-byte
records: uint32 t (µs), uint32 with x [13:0], y [27:14], p [28].
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
import warnings

import numpy as np
from numba import njit

from ..errors import EventFormatError, SensorSizeError
from ..events import EVENT_DTYPE, SensorSize, empty_events
from .base import BLOCK_BYTES, Recording, concat_or_empty, read_array, read_exactly, warn_truncated

# ---------------------------------------------------------------------------
# header
# ---------------------------------------------------------------------------

MAX_HEADER_BYTES = 1 << 20

# Plugin names of the HAL plugins that recorded a RAW file, and their sensors.
# Checked in order: the first pattern found in the plugin name wins.
PLUGIN_SENSORS = (
    ("genx320", SensorSize(320, 320)),
    ("imx636", SensorSize(1280, 720)),
    ("imx646", SensorSize(1280, 720)),
    ("gen41", SensorSize(1280, 720)),
    ("gen4", SensorSize(1280, 720)),
    ("imx8", SensorSize(640, 512)),
    ("gen31", SensorSize(640, 480)),
    ("gen3", SensorSize(640, 480)),
)

GENERATION_SENSORS = {
    "3.0": SensorSize(640, 480), "3.1": SensorSize(640, 480),
    "4.0": SensorSize(1280, 720), "4.1": SensorSize(1280, 720),
}


class PropheseeHeader:
    """The ``% key value`` lines at the top of a Prophesee file."""

    def __init__(self, lines: list[str], data_offset: int):
        self.lines = lines
        self.data_offset = data_offset
        self.fields: dict[str, str] = {}
        for line in lines:
            key, _, value = line[1:].strip().partition(" ")
            if key:
                self.fields.setdefault(key.lower(), value.strip())

    def sensor_size(self) -> tuple[SensorSize | None, str | None]:
        """(size, where it came from), from geometry lines first, then the plugin name."""
        fields = self.fields
        geometry = fields.get("geometry")
        if geometry:
            m = re.match(r"\s*(\d+)\s*x\s*(\d+)", geometry)
            if m:
                return SensorSize(int(m.group(1)), int(m.group(2))), "header"
        fmt = fields.get("format", "")
        width = re.search(r"width\s*=\s*(\d+)", fmt)
        height = re.search(r"height\s*=\s*(\d+)", fmt)
        if width and height:
            return SensorSize(int(width.group(1)), int(height.group(1))), "header"
        # DAT files written by the Metavision SDK say "% Width 1280" / "% Height 720".
        if fields.get("width", "").isdigit() and fields.get("height", "").isdigit():
            return SensorSize(int(fields["width"]), int(fields["height"])), "header"
        plugin = fields.get("plugin_name", "").lower()
        for pattern, size in PLUGIN_SENSORS:
            if pattern in plugin:
                return size, "plugin"
        generation = fields.get("sensor_generation", "").strip()
        if generation in GENERATION_SENSORS:
            return GENERATION_SENSORS[generation], "plugin"
        return None, None


def read_header(path) -> PropheseeHeader:
    """Parse the header; the data starts at the first byte of a line that does not begin with '%'."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(min(size, MAX_HEADER_BYTES))
    lines: list[str] = []
    pos = 0
    while pos < len(head) and head[pos:pos + 1] == b"%":
        end = head.find(b"\n", pos)
        if end < 0:
            raise EventFormatError(path, "the file ends (or the header exceeds "
                                   f"{MAX_HEADER_BYTES} bytes) inside a header line", offset=pos)
        line = head[pos:end].decode("latin-1").rstrip("\r")
        lines.append(line)
        pos = end + 1
        if line.strip().lower() == "% end":
            break
    return PropheseeHeader(lines, pos)


def resolve_sensor_size(path, header: PropheseeHeader, sensor_size, fmt: str, required: bool):
    """Header geometry, else plugin name, else the caller's sensor_size."""
    found, source = header.sensor_size()
    if found is not None:
        if sensor_size is not None and SensorSize.coerce(sensor_size)[:2] != found[:2]:
            warnings.warn(f"{path}: sensor_size={tuple(sensor_size)} ignored; the {source} says "
                          f"{found.width}x{found.height}", stacklevel=4)
        return found, source
    if sensor_size is not None:
        return SensorSize.coerce(sensor_size), "argument"
    if required:
        plugin = header.fields.get("plugin_name", "(none)")
        raise SensorSizeError(
            f"{path}: sensor size unknown: the {fmt} header has no '% geometry' or '% format ...;width=;height=' "
            f"line and the plugin name {plugin!r} is not one of a known sensor; "
            "pass sensor_size=(width, height) (command line: --sensor-size WxH)")
    return None, None


# ---------------------------------------------------------------------------
# decoding kernels
# ---------------------------------------------------------------------------
# The kernels write each event as two int64 words over an EVENT_DTYPE buffer:
# t, then x | y << 16 | p << 32 (little-endian field layout of EVENT_DTYPE),
# which is much faster in Numba than storing record fields one by one.
#
# They are resumable: the decoder state lives in a small int64 array, and a
# call stops when the output is full, so a file is decoded in bounded blocks.

STATUS_DONE = 0
STATUS_FULL = 1
STATUS_BAD_TYPE = 2
STATUS_TIME_BACK = 3  # EVT 2.0 only: its 34-bit time never loops, so a step back is corruption

# EVT 3.0 state slots
_S_TIME_HIGH, _S_TIME_LOW, _S_LOOPS, _S_Y, _S_BASE_X, _S_POL, _S_STARTED, _S_IS_CD, _S_DROPPED = range(9)
# EVT 2.0 state slots
_S2_TIME_HIGH, _S2_STARTED, _S2_DROPPED = range(3)

# Undefined EVT 3.0 word types: 0x9, 0xB, 0xC, 0xD.
_EVT3_UNDEFINED = (1 << 9) | (1 << 11) | (1 << 12) | (1 << 13)
# Defined EVT 2.0 word types: 0x0, 0x1, 0x8, 0xA, 0xE, 0xF.
_EVT2_DEFINED = (1 << 0) | (1 << 1) | (1 << 8) | (1 << 10) | (1 << 14) | (1 << 15)


# How many events each 12-bit vector mask holds.
_POPCOUNT_12 = np.array([bin(m).count("1") for m in range(1 << 12)], dtype=np.uint8)


@njit(cache=True, nogil=True)
def _evt3_bound(words, popcount):
    """Most events the words can decode to: one per EVT_ADDR_X, one per set bit of a vector mask.

    A first pass at memory speed, so that the decoder writes into one buffer
    of the right size, once, instead of filling guessed buffers and copying
    them together.
    """
    bound = 0
    for i in range(np.uint64(words.shape[0])):
        w = words[i]
        kind = w >> 12
        if kind == 0x2:
            bound += 1
        elif kind == 0x4:
            bound += popcount[w & 0xFFF]
        elif kind == 0x5:
            bound += popcount[w & 0xFF]
    return bound


@njit(cache=True, nogil=True)
def _evt3_kernel(words, state, out, width, height):
    """Decode EVT 3.0 words into out (flat int64: t, then x | y << 16 | p << 32 per event).

    Indices are unsigned so that Numba drops its negative-index wraparound
    from every load and store.
    """
    n_words = np.uint64(words.shape[0])
    capacity = np.uint64(out.shape[0] // 2)
    one = np.uint64(1)
    time_high = state[_S_TIME_HIGH]
    time_low = state[_S_TIME_LOW]
    loops = state[_S_LOOPS]
    y = state[_S_Y]
    base_x = state[_S_BASE_X]
    pol = state[_S_POL]
    started = state[_S_STARTED]
    is_cd = state[_S_IS_CD]
    dropped = state[_S_DROPPED]
    t = (loops << 24) | (time_high << 12) | time_low
    y_ok = is_cd != 0 and y < height
    n = np.uint64(0)
    i = np.uint64(0)
    status = STATUS_DONE
    if started == 0:
        while i < n_words and (words[i] >> 12) != 0x8:
            i += one
        if i < n_words:
            started = 1
            time_high = np.int64(words[i] & 0xFFF)
            time_low = 0
            t = (loops << 24) | (time_high << 12)
    while i < n_words:
        w = np.int64(words[i])
        kind = w >> 12
        if kind == 0x2:
            if n >= capacity:
                status = STATUS_FULL
                break
            x = w & 0x7FF
            if y_ok and x < width:
                out[n + n] = t
                out[n + n + one] = x | (y << 16) | (((w >> 11) & 1) << 32)
                n += one
            elif is_cd != 0:
                dropped += 1
        elif kind == 0x4 or kind == 0x5:
            if n + np.uint64(12) > capacity:
                status = STATUS_FULL
                break
            if kind == 0x4:
                mask = w & 0xFFF
                span = 12
            else:
                mask = w & 0xFF
                span = 8
            if mask != 0:
                if is_cd != 0:
                    if y_ok:
                        word = (y << 16) | (pol << 32)
                        k = 0
                        while mask != 0:
                            if mask & 1:
                                x = base_x + k
                                if x < width:
                                    out[n + n] = t
                                    out[n + n + one] = x | word
                                    n += one
                                else:
                                    dropped += 1
                            mask >>= 1
                            k += 1
                    else:
                        while mask != 0:
                            dropped += mask & 1
                            mask >>= 1
            base_x += span
        elif kind == 0x6:
            time_low = w & 0xFFF
            t = (loops << 24) | (time_high << 12) | time_low
        elif kind == 0x0:
            y = w & 0x7FF
            is_cd = 1
            y_ok = y < height
        elif kind == 0x3:
            base_x = w & 0x7FF
            pol = (w >> 11) & 1
        elif kind == 0x8:
            new_high = w & 0xFFF
            if time_high >= new_high + 2048:
                loops += 1
            if new_high != time_high:
                time_low = 0
            time_high = new_high
            t = (loops << 24) | (time_high << 12) | time_low
        elif kind == 0x1:
            is_cd = 0
            y_ok = False
        elif (_EVT3_UNDEFINED >> kind) & 1:
            status = STATUS_BAD_TYPE
            break
        # 0x7, 0xA, 0xE, 0xF: continued words, triggers, IMU and other system events
        i += one
    state[_S_TIME_HIGH] = time_high
    state[_S_TIME_LOW] = time_low
    state[_S_LOOPS] = loops
    state[_S_Y] = y
    state[_S_BASE_X] = base_x
    state[_S_POL] = pol
    state[_S_STARTED] = started
    state[_S_IS_CD] = is_cd
    state[_S_DROPPED] = dropped
    return np.int64(n), np.int64(i), status


@njit(cache=True, nogil=True)
def _evt2_kernel(words, state, out, width, height):
    n_words = words.shape[0]
    capacity = out.shape[0]
    time_high = state[_S2_TIME_HIGH]
    started = state[_S2_STARTED]
    dropped = state[_S2_DROPPED]
    n = 0
    i = 0
    status = STATUS_DONE
    if started == 0:
        while i < n_words and (words[i] >> 28) != 0x8:
            i += 1
        if i < n_words:
            started = 1
            time_high = np.int64(words[i] & 0x0FFFFFFF)
    while i < n_words:
        w = np.int64(words[i])
        kind = w >> 28
        if kind <= 1:
            if n >= capacity:
                status = STATUS_FULL
                break
            x = (w >> 11) & 0x7FF
            y = w & 0x7FF
            if x < width and y < height:
                out[n, 0] = (time_high << 6) | ((w >> 22) & 0x3F)
                out[n, 1] = x | (y << 16) | (kind << 32)
                n += 1
            else:
                dropped += 1
        elif kind == 0x8:
            new_high = w & 0x0FFFFFFF
            if new_high < time_high:
                status = STATUS_TIME_BACK
                break
            time_high = new_high
        elif not (_EVT2_DEFINED >> kind) & 1:
            status = STATUS_BAD_TYPE
            break
        i += 1
    state[_S2_TIME_HIGH] = time_high
    state[_S2_STARTED] = started
    state[_S2_DROPPED] = dropped
    return n, i, status


@njit(cache=True, nogil=True)
def _evt2_scan(words, width, height):
    """Count the CD events expelliarmus would return, and check the words it would see.

    Returns (events, events outside the sensor, index of the first undefined
    word or backwards EVT_TIME_HIGH, or -1).
    """
    n = 0
    outside = 0
    i = 0
    n_words = words.shape[0]
    while i < n_words and (words[i] >> 28) != 0x8:
        i += 1
    first = i
    time_high = 0
    for j in range(n_words):
        w = np.int64(words[j])
        kind = w >> 28
        if kind <= 1:
            if j > first:
                n += 1
                if ((w >> 11) & 0x7FF) >= width or (w & 0x7FF) >= height:
                    outside += 1
        elif kind == 0x8:
            if (w & 0x0FFFFFFF) < time_high:
                return n, outside, j
            time_high = w & 0x0FFFFFFF
        elif not (_EVT2_DEFINED >> kind) & 1:
            return n, outside, j
    return n, outside, -1


# ---------------------------------------------------------------------------
# recordings
# ---------------------------------------------------------------------------


class _RawRecording(Recording):
    word_bytes = 4
    expansion = 1  # most events one word can hold

    def __init__(self, path, sensor_size=None, *, block_bytes: int = BLOCK_BYTES):
        super().__init__(path, None)
        self.header = read_header(self.path)
        self.sensor_size, self.sensor_size_source = resolve_sensor_size(
            self.path, self.header, sensor_size, self.format, required=True)
        self.file_size = os.path.getsize(self.path)
        self.data_offset = self.header.data_offset
        self.block_bytes = max(self.word_bytes, block_bytes - block_bytes % self.word_bytes)
        self.dropped_outside = 0

    def _new_state(self) -> np.ndarray:
        return np.zeros(16, dtype=np.int64)

    def _kernel(self, words, state, out):
        raise NotImplementedError

    def _decode(self, words: np.ndarray, state: np.ndarray, offset: int) -> np.ndarray:
        """Decode whole words (starting at byte ``offset``), carrying the decoder state."""
        parts = []
        start = 0
        while start < words.size:
            remaining = words.size - start
            # Vector words hold up to 12 events, but real data averages about
            # one per word: size for that and go round again if full.
            out = np.empty(min(remaining * self.expansion, remaining + (1 << 16)), dtype=EVENT_DTYPE)
            n, consumed, status = self._kernel(words[start:], state, out.view(np.int64).reshape(-1, 2))
            parts.append(out[:n])
            self._check_status(status, words, start + consumed, state, offset)
            start += consumed
        return concat_or_empty(parts)

    def _check_status(self, status: int, words: np.ndarray, stop: int, state: np.ndarray, offset: int) -> None:
        """Raise EventFormatError if the kernel stopped at words[stop] on a bad word."""
        if status == STATUS_BAD_TYPE:
            kind = int(words[stop]) >> (self.word_bytes * 8 - 4)
            raise EventFormatError(
                self.path, f"word type 0x{kind:X} is not defined in {self.format.upper()}; "
                           "the file is corrupt or not a RAW recording",
                offset=offset + stop * self.word_bytes)
        if status == STATUS_TIME_BACK:
            raise EventFormatError(
                self.path, f"EVT_TIME_HIGH steps back to {int(words[stop]) & 0x0FFFFFFF}"
                           f" (x 64 us) from {int(state[_S2_TIME_HIGH])}; the file is corrupt",
                offset=offset + stop * self.word_bytes)

    def _complete_end(self) -> int:
        data_bytes = self.file_size - self.data_offset
        return self.data_offset + data_bytes - data_bytes % self.word_bytes

    def _finish(self, state: np.ndarray) -> None:
        self.dropped_outside = int(state[_S_DROPPED if self.word_bytes == 2 else _S2_DROPPED])
        if self.dropped_outside:
            warnings.warn(f"{self.path}: {self.dropped_outside} event(s) outside the "
                          f"{self.sensor_size.width}x{self.sensor_size.height} sensor were dropped",
                          stacklevel=3)
        data_bytes = self.file_size - self.data_offset
        if data_bytes % self.word_bytes:
            warn_truncated(self.path, self._complete_end(), f"the last {data_bytes % self.word_bytes} byte(s) "
                           f"do not make a complete {self.word_bytes}-byte word")

    def read(self) -> np.ndarray:
        # One pass over the whole file into one buffer: no per-block
        # allocations and no final concatenation (twice as fast on big files).
        complete = self._complete_end()
        words = read_array(self.path, self._word_dtype, self.data_offset,
                           (complete - self.data_offset) // self.word_bytes)
        state = self._new_state()
        events = self._decode(words, state, self.data_offset)
        self._finish(state)
        return events

    def _blocks(self):
        complete = self._complete_end()
        block = max(self.word_bytes, self.block_bytes - self.block_bytes % self.word_bytes)
        state = self._new_state()
        offset = self.data_offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            while offset < complete:
                raw = read_exactly(f, min(block, complete - offset), self.path, offset)
                events = self._decode(np.frombuffer(raw, dtype=self._word_dtype), state, offset)
                offset += len(raw)
                yield events
        self._finish(state)


class Evt3Recording(_RawRecording):
    format = "evt3"
    word_bytes = 2
    expansion = 12

    _word_dtype = np.dtype("<u2")

    def _decode(self, words: np.ndarray, state: np.ndarray, offset: int) -> np.ndarray:
        """Decode in one pass into one buffer; a file denser than one event per word sizes it exactly.

        Real recordings hold about one event per word, so the buffer starts at
        the word count: written once, in order. Only when vectors make more
        events than that does a counting pass size the rest, and the part
        decoded so far is copied over once.
        """
        width, height = self.sensor_size.width, self.sensor_size.height
        # 12 spare: the kernel wants room for a whole vector before decoding one.
        out = np.empty(words.size + 12, dtype=EVENT_DTYPE)
        n, consumed, status = _evt3_kernel(words, state, out.view(np.int64), width, height)
        if status == STATUS_FULL:
            rest = words[consumed:]
            bigger = np.empty(n + _evt3_bound(rest, _POPCOUNT_12) + 12, dtype=EVENT_DTYPE)
            bigger[:n] = out[:n]
            out = bigger
            more, used, status = _evt3_kernel(rest, state, out[n:].view(np.int64), width, height)
            n, consumed = n + more, consumed + used
        self._check_status(status, words, consumed, state, offset)
        assert status == STATUS_DONE, "the EVT 3.0 bound undercounted"
        return out[:n]


class Evt2Recording(_RawRecording):
    """EVT 2.0. ``read()`` decodes with expelliarmus once our own scan has checked
    every word (expelliarmus trusts its input); chunks use our own decoder."""

    format = "evt2"
    word_bytes = 4

    def __init__(self, path, sensor_size=None, *, block_bytes: int = BLOCK_BYTES, engine: str = "expelliarmus"):
        super().__init__(path, sensor_size, block_bytes=block_bytes)
        if engine not in ("expelliarmus", "numba"):
            raise ValueError(f"engine must be 'expelliarmus' or 'numba', got {engine!r}")
        self.engine = engine

    _word_dtype = np.dtype("<u4")

    def _kernel(self, words, state, out):
        return _evt2_kernel(words, state, out, self.sensor_size.width, self.sensor_size.height)

    def read(self) -> np.ndarray:
        if self.engine == "expelliarmus" and expelliarmus_installed() and self._safe_for_expelliarmus():
            return _expelliarmus_read("evt2", self.path)
        return super().read()


    def _safe_for_expelliarmus(self) -> bool:
        # expelliarmus needs a .raw name, a whole number of words, and words it
        # understands; anything else goes to our decoder, which reports it.
        data_bytes = self.file_size - self.data_offset
        if self.path.suffix.lower() != ".raw" or data_bytes % 4 or data_bytes == 0:
            return False
        words = read_array(self.path, "<u4", self.data_offset, data_bytes // 4)
        # expelliarmus takes any line starting with '%' for header, even after '% end': a first
        # word whose low byte is 0x25 (a TIME_HIGH of t >> 6 = 37) makes it drop events or hang.
        if int(words[0]) & 0xFF == 0x25:
            return False
        _, outside, bad = _evt2_scan(words, self.sensor_size.width, self.sensor_size.height)
        return outside == 0 and bad < 0


DAT_RECORD_BYTES = 8
DAT_CD_TYPES = (0, 12)  # Event2D and EventCD share the 8-byte layout


@njit(cache=True, nogil=True)
def _dat_scan(words, width, height):
    """True when every record has p in {0, 1}, x and y inside the sensor and t not stepping back."""
    last_t = np.int64(0)
    for i in range(0, words.shape[0] - 1, 2):
        t = np.int64(words[i])
        data = np.int64(words[i + 1])
        if t < last_t or (data >> 29) != 0 or (data & 0x3FFF) >= width or ((data >> 14) & 0x3FFF) >= height:
            return False
        last_t = t
    return True


class DatRecording(Recording):
    """DAT. ``read()`` decodes with expelliarmus once the layout is checked; chunks use numpy."""

    format = "dat"

    def __init__(self, path, sensor_size=None, *, block_bytes: int = BLOCK_BYTES, engine: str = "expelliarmus"):
        super().__init__(path, None)
        self.header = read_header(self.path)
        self.sensor_size, self.sensor_size_source = resolve_sensor_size(
            self.path, self.header, sensor_size, "dat", required=False)
        self.file_size = os.path.getsize(self.path)
        self.block_bytes = max(DAT_RECORD_BYTES, block_bytes - block_bytes % DAT_RECORD_BYTES)
        self.engine = engine
        start = self.header.data_offset
        version = self.header.fields.get("version", "2").strip()
        if version.isdigit() and int(version) == 0:
            self.event_type, self.event_size = 0, DAT_RECORD_BYTES
            self.data_offset = start
        else:
            with open(self.path, "rb") as f:
                f.seek(start)
                type_size = f.read(2)
            if len(type_size) < 2:
                raise EventFormatError(self.path, "the file ends before the event type and size bytes "
                                                  "that follow a DAT header", offset=start)
            self.event_type, self.event_size = type_size[0], type_size[1]
            self.data_offset = start + 2
        if self.event_type not in DAT_CD_TYPES or self.event_size != DAT_RECORD_BYTES:
            raise EventFormatError(
                self.path, f"DAT event type {self.event_type} of size {self.event_size} is not supported "
                           f"(CD events: type 0 or 12, size 8)", offset=start)

    def _decode(self, raw: np.ndarray, record_offset: int, last_t):
        records = raw.view("<u4").reshape(-1, 2)
        data = records[:, 1]
        events = np.empty(records.shape[0], dtype=EVENT_DTYPE)
        events["t"] = records[:, 0]
        events["x"] = data & 0x3FFF
        events["y"] = (data >> 14) & 0x3FFF
        polarity = data >> 28
        events["p"] = polarity & 1
        # Real DAT files are time-ordered and use only bit 28 of the top nibble;
        # garbage fails one of the two within a few records.
        bad_p = np.flatnonzero(polarity > 1)
        t = events["t"]
        steps_back = np.flatnonzero(t[1:] < t[:-1]) + 1
        if last_t is not None and t.size and t[0] < last_t:
            steps_back = np.concatenate([[0], steps_back])
        first_bad = min(int(bad_p[0]) if bad_p.size else t.size, int(steps_back[0]) if steps_back.size else t.size)
        if first_bad < t.size:
            offset = self.data_offset + (record_offset + first_bad) * DAT_RECORD_BYTES
            if bad_p.size and first_bad == bad_p[0]:
                what = f"polarity bits 0x{int(polarity[first_bad]):X} (expected 0 or 1)"
            else:
                what = f"timestamp steps back to {int(t[first_bad])} us"
            raise EventFormatError(self.path, f"{what}; the DAT file is corrupt", offset=offset)
        if self.sensor_size is not None:
            from .base import check_coordinates
            check_coordinates(events, self.sensor_size, self.path)
        return events

    def _blocks(self):
        data_bytes = self.file_size - self.data_offset
        complete = self.data_offset + data_bytes - data_bytes % DAT_RECORD_BYTES
        offset = self.data_offset
        last_t = None
        with open(self.path, "rb") as f:
            f.seek(offset)
            while offset < complete:
                raw = read_exactly(f, min(self.block_bytes, complete - offset), self.path, offset)
                events = self._decode(np.frombuffer(raw, dtype=np.uint8),
                                      (offset - self.data_offset) // DAT_RECORD_BYTES, last_t)
                if events.size:
                    last_t = int(events["t"][-1])
                offset += len(raw)
                yield events
        if data_bytes % DAT_RECORD_BYTES:
            warn_truncated(self.path, complete, f"the last {data_bytes % DAT_RECORD_BYTES} byte(s) "
                           f"do not make a complete {DAT_RECORD_BYTES}-byte DAT record")

    def read(self) -> np.ndarray:
        if self.engine != "expelliarmus" or not expelliarmus_installed():
            return super().read()
        # expelliarmus trusts its input: it gets only whole files that our scan
        # finds clean; anything else goes to our decoder, which reports it.
        data_bytes = self.file_size - self.data_offset
        if self.path.suffix.lower() != ".dat" or data_bytes % DAT_RECORD_BYTES or data_bytes == 0:
            return super().read()
        records = read_array(self.path, "<u4", self.data_offset, data_bytes // 4)
        width, height = (self.sensor_size.width, self.sensor_size.height) if self.sensor_size else (1 << 14, 1 << 14)
        clean = _dat_scan(records, width, height)
        del records
        return _expelliarmus_read("dat", self.path) if clean else super().read()


def _same_layout(dtype: np.dtype) -> bool:
    return (dtype.itemsize == EVENT_DTYPE.itemsize and dtype.names is not None
            and set(dtype.names) == set(EVENT_DTYPE.names)
            and all(dtype.fields[f][1] == EVENT_DTYPE.fields[f][1]
                    and dtype.fields[f][0].itemsize == EVENT_DTYPE.fields[f][0].itemsize
                    and dtype.fields[f][0].kind in "iu" for f in EVENT_DTYPE.names))


@functools.cache
def expelliarmus_installed() -> bool:
    """expelliarmus is an optional extra (GPL-2.0): without it, EVT 2.0 and DAT use our own decoders."""
    return importlib.util.find_spec("expelliarmus") is not None


def _expelliarmus_read(encoding: str, path) -> np.ndarray:
    from expelliarmus import Wizard

    arr = Wizard(encoding=encoding, buff_size=1 << 20).read(path)
    if arr is None:
        return empty_events(0)
    if _same_layout(arr.dtype):
        # Same bytes as EVENT_DTYPE (p is uint8 there, holding 0 or 1): no copy.
        return arr.view(EVENT_DTYPE)
    events = np.empty(arr.shape[0], dtype=EVENT_DTYPE)
    events["t"] = arr["t"]
    events["x"] = arr["x"]
    events["y"] = arr["y"]
    events["p"] = arr["p"]
    return events


def read_with_expelliarmus(path, encoding: str) -> np.ndarray:
    """expelliarmus's own decode of a file, unchecked (for tests and benchmarks)."""
    return _expelliarmus_read(encoding, path)


# ---------------------------------------------------------------------------
# writers (synthetic recordings for tests and benchmarks)
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _encode_evt3_kernel(t, x, y, p, out):
    """EVT 3.0 words for time-ordered events, grouping same-(t, y, p) runs into vector words as sensors do."""
    n = t.shape[0]
    w = 0
    last_high = -1
    last_low = -1
    last_y = -1
    i = 0
    while i < n:
        ti = t[i]
        # Each TIME_HIGH can advance by less than half the 2**24 µs loop, so
        # long gaps get intermediate TIME_HIGH words the decoder can follow.
        high_abs = ti >> 12
        if last_high >= 0 and high_abs - last_high >= 2048:
            while high_abs - last_high >= 2048:
                last_high += 2047
                out[w] = 0x8000 | (last_high & 0xFFF)
                w += 1
            last_low = -1
        if high_abs != last_high:
            out[w] = 0x8000 | (high_abs & 0xFFF)
            w += 1
            last_high = high_abs
            last_low = -1
        low = ti & 0xFFF
        if low != last_low:
            out[w] = 0x6000 | low
            w += 1
            last_low = low
        if y[i] != last_y:
            out[w] = y[i] & 0x7FF
            w += 1
            last_y = y[i]
        # run of events with the same t, y, p and increasing x
        j = i + 1
        while j < n and t[j] == ti and y[j] == y[i] and p[j] == p[i] and x[j] > x[j - 1]:
            j += 1
        if j - i == 1:
            out[w] = 0x2000 | (p[i] << 11) | x[i]
            w += 1
        else:
            k = i
            while k < j:
                base = x[k]
                out[w] = 0x3000 | (p[i] << 11) | base
                w += 1
                while k < j and x[k] - base < 12:
                    mask = 0
                    while k < j and x[k] - base < 12:
                        mask |= 1 << (x[k] - base)
                        k += 1
                    out[w] = 0x4000 | mask
                    w += 1
                    base += 12
                    if k < j and x[k] - base >= 12:
                        break
        i = j
    return w


def encode_evt3(events: np.ndarray) -> bytes:
    """EVT 3.0 data words (no header) for time-ordered events."""
    t = np.ascontiguousarray(events["t"], dtype=np.int64)
    if t.size and np.any(t[1:] < t[:-1]):
        raise ValueError("encode_evt3 needs events sorted by t")
    x = np.ascontiguousarray(events["x"], dtype=np.int64)
    y = np.ascontiguousarray(events["y"], dtype=np.int64)
    p = np.ascontiguousarray(events["p"], dtype=np.int64)
    gaps = int(np.sum(np.diff(t) >> 23)) if t.size > 1 else 0
    out = np.empty(4 * t.size + gaps + 8, dtype="<u2")
    return out[: _encode_evt3_kernel(t, x, y, p, out)].tobytes()


def encode_evt2(events: np.ndarray) -> bytes:
    """EVT 2.0 data words (no header) for time-ordered events."""
    t = np.asarray(events["t"], dtype=np.int64)
    if t.size and np.any(t[1:] < t[:-1]):
        raise ValueError("encode_evt2 needs events sorted by t")
    high = t >> 6
    new_high = np.ones(t.size, dtype=bool)
    new_high[1:] = high[1:] != high[:-1]
    cd = ((np.asarray(events["p"], dtype=np.uint32) << 28) | ((t & 0x3F).astype(np.uint32) << 22)
          | (np.asarray(events["x"], dtype=np.uint32) << 11) | np.asarray(events["y"], dtype=np.uint32))
    positions = np.arange(t.size) + np.cumsum(new_high)
    out = np.empty(t.size + int(new_high.sum()), dtype="<u4")
    out[positions] = cd
    out[positions[new_high] - 1] = (0x8 << 28) | (high[new_high] & 0x0FFFFFFF).astype(np.uint32)
    return out.tobytes()


def write_raw(path, events: np.ndarray, sensor_size, encoding: str = "evt3") -> None:
    """Write a RAW file (``% geometry`` header, then EVT 2.0 or 3.0 words)."""
    size = SensorSize.coerce(sensor_size)
    version = {"evt2": "2.0", "evt3": "3.0"}[encoding]
    header = (f"% evt {version}\n% format EVT{version[0]};height={size.height};width={size.width}\n"
              f"% geometry {size.width}x{size.height}\n% integrator_name streamsnn\n% end\n").encode()
    body = encode_evt3(events) if encoding == "evt3" else encode_evt2(events)
    with open(path, "wb") as f:
        f.write(header)
        f.write(body)
