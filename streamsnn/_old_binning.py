"""Event binning: tonic's ``ToFrame`` frames, value for value, from Numba kernels, and a streaming binner.

``to_frame`` returns exactly what ``tonic.transforms.ToFrame`` (tonic 1.7.0)
returns for the same arguments -- values, dtype (int16) and shape
``(T, P, H, W)`` -- except where tonic is plainly wrong (listed below).

How tonic 1.7.0 slices (verified empirically against its source and output)
---------------------------------------------------------------------------
Every mode cuts the sorted events into T slices ``[start_i, end_i)`` of event
indices (slices may overlap) and counts each slice into frame i at
``[p, y, x]``.

time_window (µs), overlap (µs), include_incomplete, start_time, end_time:
    ``stride = time_window - overlap`` (must be > 0). ``start`` is the first
    event's t unless start_time is given, ``end`` the last event's t unless
    end_time is given; ``duration = end - start``.
    ``T = floor((duration - time_window) / stride) + 1`` (``ceil`` instead of
    ``floor`` with include_incomplete), and at least 1.
    Window i is ``[start + i*stride, start + i*stride + time_window)`` in time
    (``searchsorted(t, ., 'left')``), so:

    * without include_incomplete, only windows that end at or before ``end``
      are made: the events after the last complete window are dropped;
    * a recording shorter than one window still gives one (incomplete) frame,
      even without include_incomplete;
    * with include_incomplete, an event lying exactly on the end boundary of
      the last window (``t[-1] == start + k*stride + time_window``) is dropped,
      because ceil() does not open a window for it;
    * events before start_time, and after end_time's last window, are dropped;
      start_time and end_time are ignored by the other three modes.

event_count, overlap (events), include_incomplete:
    ``stride = event_count - overlap`` (must be > 0); ``count = min(event_count,
    n)``; ``T = floor((n - count) / stride) + 1`` (ceil with include_incomplete);
    slice i is ``[int(i*stride), int(i*stride) + count)``, cut at n. So a
    recording with fewer than event_count events gives one frame of all of
    them even without include_incomplete, and trailing events that do not fill
    a slice are dropped otherwise.

n_time_bins, overlap (fraction of a bin, 0 <= overlap < 1):
    ``window = (t[-1] - t[0]) // n_time_bins * (1 + overlap)`` -- the span is
    floor-divided first, in integer µs -- and ``stride = window * (1 -
    overlap)``; bin i is ``[t[0] + i*stride, t[0] + i*stride + window)``. The
    bins therefore never reach t[-1]: the last event (and every event in the
    rounded-off tail) is always dropped, and a recording spanning fewer µs than
    n_time_bins gives all-zero frames.

n_event_bins, overlap (fraction of a bin, 0 <= overlap < 1):
    ``count = int(n // n_event_bins * (1 + overlap))``, ``stride = int(count *
    (1 - overlap))``; slice i is ``[i*stride, i*stride + count)``, cut at n. The
    ``n % n_event_bins`` trailing events (or more, with overlap) are dropped, and
    fewer events than bins gives all-zero frames.

A one-polarity sensor (``P == 1``) puts every event in channel 0; events of
both polarities on such a sensor are an error, as in tonic.

Where streamsnn deliberately differs from tonic
-----------------------------------------------
* Empty input: tonic returns a float64 array shaped ``(T, P, W, H)`` (width and
  height swapped). streamsnn returns zeros of the requested dtype (int16 by
  default) shaped ``(T, P, H, W)``, T being 1 for time_window/event_count (or
  the number of windows between start_time and end_time when both are
  given) and the bin count for the bin modes.
* Counts past 32,767 on one pixel: tonic's int16 wraps around silently to
  negative values. streamsnn saturates at the dtype's maximum, and
  ``dtype=np.int32`` or ``np.float32`` gives exact counts.
* p outside {0, 1}: tonic indexes the channel with p, so p = -1 silently lands
  in the last channel. Unsorted timestamps give tonic wrong frames silently;
  coordinates outside the sensor raise IndexError or (if negative) wrap to the
  other edge. streamsnn raises EventValidationError naming the event index
  and field.
* tonic sets ``events["p"] = 0`` in the caller's array for a one-polarity
  sensor; streamsnn never writes to its input.
* Invalid parameters (zero or negative window, stride <= 0, overlap outside
  [0, 1) for the bin modes, none or several modes) raise ConfigError; tonic
  raises AssertionError, a bare Exception, or UnboundLocalError.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from .errors import ConfigError, EventValidationError
from .events import EVENT_DTYPE, SensorSize, as_events

__all__ = ["to_frame", "StreamingBinner", "Frame", "FRAME_DTYPES"]

# The kernels read each 16-byte event as two int64 words (t, then x|y<<16|p<<32
# plus padding) of one flat int64 array: it dispatches to Numba far faster
# than a record array, one aligned load fetches x, y and p together, and the
# constant stride lets LLVM vectorise the validation.
assert EVENT_DTYPE.itemsize == 16 and EVENT_DTYPE.fields["t"][1] == 0
assert EVENT_DTYPE.fields["x"][1] == 8 and EVENT_DTYPE.fields["y"][1] == 10
assert EVENT_DTYPE.fields["p"][1] == 12

FRAME_DTYPES = (np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.float32))

_INT64_MIN = np.iinfo(np.int64).min


def packed_view(events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (events as contiguous EVENT_DTYPE, the same memory as flat int64 words).

    Word 2i is event i's t, word 2i+1 holds x | y << 16 | p << 32.
    """
    events = as_events(events)
    if events.ndim != 1:
        raise EventValidationError(f"expected a 1-d event array, got shape {events.shape}")
    if not events.flags.c_contiguous:
        events = np.ascontiguousarray(events)
    return events, events.view(np.int64)


def raise_event_error(events: np.ndarray, index: int, sensor: SensorSize | None, p_required: int = -1,
                      previous_t: int | None = None, clock_t: int | None = None, what: str = "event") -> None:
    """Explain why a kernel stopped at events[index]: raise EventValidationError naming event and field.

    The kernels only report where the first bad event is; finding out what is
    wrong with it here keeps their inner loops to a single branch.
    """
    ev = events[index]
    t = int(ev["t"])
    if index > 0 and t < int(events["t"][index - 1]):
        raise EventValidationError(
            f"timestamps are not sorted: {what} {index} has t = {t} us after "
            f"t = {int(events['t'][index - 1])} us", index=index, field="t")
    if index == 0 and previous_t is not None and t < previous_t:
        raise EventValidationError(
            f"timestamps are not sorted: {what} {index} has t = {t} us, but earlier chunks "
            f"reached t = {previous_t} us", index=index, field="t")
    if index == 0 and clock_t is not None and t < clock_t:
        raise EventValidationError(
            f"{what} {index} has t = {t} us, but the stream was flushed up to t = {clock_t} us: "
            "events must not arrive for time already closed", index=index, field="t")
    p = int(ev["p"])
    if p not in (0, 1):
        raise EventValidationError(f"{what} {index}: polarity p = {p}, expected 0 or 1",
                                   index=index, field="p")
    for name, limit in (("x", sensor.width if sensor else None), ("y", sensor.height if sensor else None)):
        value = int(ev[name])
        if value < 0 and limit is None:
            raise EventValidationError(f"{what} {index}: {name} = {value} is negative", index=index, field=name)
        if limit is not None and not 0 <= value < limit:
            raise EventValidationError(
                f"{what} {index}: {name} = {value} is outside the sensor "
                f"(0 <= {name} < {limit} for sensor size {tuple(sensor)})", index=index, field=name)
    if p_required >= 0 and p != p_required:
        raise EventValidationError(
            f"{what} {index}: polarity p = {p} on a one-polarity sensor {tuple(sensor)} whose earlier "
            f"events have p = {p_required}; merge polarities first (streamsnn.preprocess) or declare "
            "2 polarities", index=index, field="p")
    raise AssertionError(f"kernel rejected {what} {index} but no rule explains why")


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True)
def _searchsorted_left(packed, starts, ends):
    """np.searchsorted(t, ., 'left') of window starts and ends, on the t words without copying them out."""
    n = packed.shape[0] // 2
    out = np.empty((2, starts.shape[0]), dtype=np.int64)
    for row in range(2):
        values = starts if row == 0 else ends
        for i in range(values.shape[0]):
            v = values[i]
            lo = 0
            hi = n
            while lo < hi:
                mid = (lo + hi) >> 1
                if packed[2 * mid] < v:
                    lo = mid + 1
                else:
                    hi = mid
            out[row, i] = lo
    return out[0], out[1]


# Events are validated a block at a time, then counted: a branch-free check
# over a block that is then still in L1 costs far less than a branch per
# event inside the scattered counting loop.
_BLOCK = 2048
# Overlapping frames are filled together, block by block, while this many
# bytes of them fit in a core's L2 together with the events; else one by one.
_INTERLEAVED_BYTES = 1 << 20
# Frames larger than this are filled one at a time, and dense ones are
# counted in one byte per pixel first (see _count_run_low): half the
# footprint of int16 keeps the scattered counts in L2 (1.7x on a 640x480
# frame of uniformly spread events). It costs two passes over the frame, so
# a frame must hold at least one event per _LOW_COUNTER_BYTES_PER_EVENT bytes
# to use it: sparse frames of real scenes count faster in place.
_LOW_COUNTER_BYTES = 256 * 1024
_LOW_COUNTER_BYTES_PER_EVENT = 4


def _low_counter_min_events(frame_bytes: int) -> int:
    """Events a window needs before counting it in low bytes pays (never, for small frames)."""
    if frame_bytes <= _LOW_COUNTER_BYTES:
        return np.iinfo(np.int64).max
    return frame_bytes // _LOW_COUNTER_BYTES_PER_EVENT


@nb.njit(cache=True, nogil=True, inline="always")
def _event_is_bad(word, width, height, p_lo, p_hi):
    # Negative x, y or p read as unsigned are >= 32768 (or 128): one
    # comparison each rejects both ends of the range.
    p = (word >> 32) & 0xFF
    return ((word & 0xFFFF) >= width) | (((word >> 16) & 0xFFFF) >= height) | (p > p_hi) | (p < p_lo)


@nb.njit(cache=True, nogil=True, inline="always")
def _any_bad(packed, lo, hi, width, height, p_lo, p_hi):
    """Whether any event in [lo, hi) (lo >= 1) is bad or earlier than the one before it.

    Written as min/max reductions, which LLVM vectorises, rather than as a
    test per event.
    """
    max_x = 0
    max_y = 0
    max_p = 0
    min_p = 255
    min_step = 0
    for i in range(lo, hi):
        word = packed[2 * i + 1]
        max_x = max(max_x, word & 0xFFFF)
        max_y = max(max_y, (word >> 16) & 0xFFFF)
        p = (word >> 32) & 0xFF
        max_p = max(max_p, p)
        min_p = min(min_p, p)
        min_step = min(min_step, packed[2 * i] - packed[2 * (i - 1)])
    return (max_x >= width) | (max_y >= height) | (max_p > p_hi) | ((min_p < p_lo) & (hi > lo)) | (min_step < 0)


@nb.njit(cache=True, nogil=True, inline="always")
def _first_bad(packed, lo, hi, width, height, p_lo, p_hi):
    for i in range(lo, hi):
        if (packed[2 * i] < packed[2 * (i - 1)]) | _event_is_bad(packed[2 * i + 1], width, height, p_lo, p_hi):
            return i
    return -1


@nb.njit(cache=True, nogil=True)
def first_invalid_event(packed, width, height, previous_t):
    """Index of the first event that is out of order (previous_t before event 0), outside
    width x height, or with p not in {0, 1}; -1 if none. packed as from packed_view."""
    n = packed.shape[0] // 2
    if n == 0:
        return -1
    if (packed[0] < previous_t) | _event_is_bad(packed[1], width, height, 0, 1):
        return 0
    if _any_bad(packed, 1, n, width, height, 0, 1):
        return _first_bad(packed, 1, n, width, height, 0, 1)
    return -1


@nb.njit(cache=True, nogil=True, inline="always")
def _bisect_t(packed, lo, hi, value):
    """First index in [lo, hi) whose t >= value (hi if none), for sorted t."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if packed[2 * mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(cache=True, nogil=True)
def _count_run(packed, lo, hi, frame, channel_mask, saturation):
    """Count events [lo, hi) into one frame: the hot loop of the whole module.

    A separate function keeps the frame fixed in its loop. Indexing a slice
    from 0 and masking the channel with a non-negative mask let LLVM prove
    every index non-negative and drop Numba's negative-index wraparound.
    """
    run = packed[2 * lo:2 * hi]
    mask = channel_mask & 1
    for i in range(run.shape[0] // 2):
        word = run[2 * i + 1]
        x = word & 0xFFFF
        y = (word >> 16) & 0xFFFF
        c = (word >> 32) & mask
        v = frame[c, y, x]
        if v < saturation:
            frame[c, y, x] = v + 1


@nb.njit(cache=True, nogil=True)
def _count_run_low(packed, lo, hi, low, frame, channel_mask, saturation):
    """Count events [lo, hi) in low (uint8); every 256th count of a pixel carries into frame.

    frame + low is the true count (capped at saturation); _carry_low folds low
    into frame once the window is over.
    """
    run = packed[2 * lo:2 * hi]
    mask = channel_mask & 1
    for i in range(run.shape[0] // 2):
        word = run[2 * i + 1]
        x = word & 0xFFFF
        y = (word >> 16) & 0xFFFF
        c = (word >> 32) & mask
        v = low[c, y, x]
        if v == 255:
            low[c, y, x] = 0
            high = frame[c, y, x]
            frame[c, y, x] = high + 256 if high < saturation - 255 else saturation
        else:
            low[c, y, x] = v + 1


@nb.njit(cache=True, nogil=True)
def _carry_low(frame, low, saturation):
    """frame += low (capped at saturation), and clear low for the next window."""
    high = frame.ravel()
    counts = low.ravel()
    for i in range(high.shape[0]):
        total = high[i] + counts[i]
        high[i] = total if total < saturation else saturation
    counts[:] = 0


@nb.njit(cache=True, nogil=True)
def _bin_slices(packed, starts, ends, frames, width, height, p_lo, p_hi, saturation):
    """Count event k into every frame s with starts[s] <= k < ends[s], validating every event.

    frames may arrive uninitialised: each is cleared here just before it
    first fills, which writes it sequentially into cache, where the scattered
    counts then land, instead of missing cache on every count into a cold
    zero page. starts and ends are non-decreasing in every tonic mode, so the
    events split into runs that all belong to the same frames [lo, hi): one
    pass over the events, a block of which is validated and then counted
    into each of its frames while it is still in L1. Polarities outside
    [p_lo, p_hi] are bad; p_lo == p_hi is a one-polarity sensor, counted in
    channel 0. Returns the index of the first bad event, or -1.
    """
    n = packed.shape[0] // 2
    n_slices = starts.shape[0]
    channel_mask = 1 if p_hi > p_lo else 0
    if n > 0 and _event_is_bad(packed[1], width, height, p_lo, p_hi):
        return 0
    lo = 0
    hi = 0
    zeroed = 0
    k = 0
    while k < n:
        while lo < n_slices and ends[lo] <= k:
            lo += 1
        while hi < n_slices and starts[hi] <= k:
            hi += 1
        while zeroed < hi:
            frames[zeroed].ravel()[:] = 0
            zeroed += 1
        stop = n
        if lo < n_slices and ends[lo] < stop:
            stop = ends[lo]
        if hi < n_slices and starts[hi] < stop:
            stop = starts[hi]
        for b0 in range(k, stop, _BLOCK):
            b1 = min(b0 + _BLOCK, stop)
            if _any_bad(packed, max(b0, 1), b1, width, height, p_lo, p_hi):
                return _first_bad(packed, max(b0, 1), b1, width, height, p_lo, p_hi)
            # A run in several (small, overlapping) frames is counted into
            # each while the block is still in L1.
            for s in range(lo, hi):
                _count_run(packed, b0, b1, frames[s], channel_mask, saturation)
        k = stop
    while zeroed < n_slices:
        frames[zeroed].ravel()[:] = 0
        zeroed += 1
    return -1


@nb.njit(cache=True, nogil=True)
def _bin_frame_by_frame(packed, starts, ends, frames, low, width, height, p_lo, p_hi, saturation,
                        low_min_events):
    """_bin_slices for large frames: fill one whole frame at a time.

    Each event is still validated once, block by block, the first time a
    frame's range reaches it (events in no frame are validated too).
    Overlapping windows read their shared events again rather than keep
    several large frames in cache at once. A frame of at least
    low_min_events events is counted in low bytes first; low is a (P, H, W)
    uint8 scratch.
    """
    n = packed.shape[0] // 2
    channel_mask = 1 if p_hi > p_lo else 0
    if n > 0 and _event_is_bad(packed[1], width, height, p_lo, p_hi):
        return 0
    checked = 1
    low.ravel()[:] = 0
    for s in range(starts.shape[0]):
        frame = frames[s]
        frame.ravel()[:] = 0
        use_low = ends[s] - starts[s] >= low_min_events
        for b0 in range(starts[s], ends[s], _BLOCK):
            b1 = min(b0 + _BLOCK, ends[s])
            if b1 > checked:
                # From where validation stopped: events in no frame (before
                # this one, or between two) are checked too.
                if _any_bad(packed, checked, b1, width, height, p_lo, p_hi):
                    return _first_bad(packed, checked, b1, width, height, p_lo, p_hi)
                checked = b1
            if use_low:
                _count_run_low(packed, b0, b1, low, frame, channel_mask, saturation)
            else:
                _count_run(packed, b0, b1, frame, channel_mask, saturation)
        if use_low:
            _carry_low(frame, low, saturation)
    if n > checked and _any_bad(packed, checked, n, width, height, p_lo, p_hi):
        return _first_bad(packed, checked, n, width, height, p_lo, p_hi)
    return -1


# --------------------------------------------------------------------------
# slicing rules (tonic's arithmetic, reproduced expression for expression)
# --------------------------------------------------------------------------

def _check_positive(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _check_positive_int(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_bin_overlap(overlap):
    if not (0 <= overlap < 1):
        raise ConfigError(f"overlap for n_time_bins / n_event_bins is a fraction of a bin, "
                          f"0 <= overlap < 1; got {overlap!r}")


def _time_window_count(first_t, last_t, time_window, overlap, include_incomplete, start_time, end_time):
    stride = time_window - overlap
    start = first_t if start_time is None else start_time
    end = last_t if end_time is None else end_time
    duration = end - start
    if include_incomplete:
        n_slices = int(np.ceil((duration - time_window) / stride) + 1)
    else:
        n_slices = int(np.floor((duration - time_window) / stride) + 1)
    return max(n_slices, 1), start, stride


def _time_window_slices(packed, time_window, overlap, include_incomplete, start_time, end_time):
    t0 = packed[0]
    t1 = packed[-2]
    n_slices, start, stride = _time_window_count(t0, t1, time_window, overlap, include_incomplete,
                                                 start_time, end_time)
    window_start_times = np.arange(n_slices) * stride + start
    window_end_times = window_start_times + time_window
    return _searchsorted_left(packed, window_start_times, window_end_times)


def _event_count_slices(n_events, event_count, overlap, include_incomplete):
    count = min(event_count, n_events)
    stride = event_count - overlap
    if include_incomplete:
        n_slices = int(np.ceil((n_events - count) / stride) + 1)
    else:
        n_slices = int(np.floor((n_events - count) / stride) + 1)
    starts = (np.arange(n_slices) * stride).astype(np.int64)
    ends = starts + count
    return np.minimum(starts, n_events), np.minimum(ends, n_events)


def _time_bin_slices(packed, n_time_bins, overlap):
    t0 = packed[0]
    t1 = packed[-2]
    time_window = (t1 - t0) // n_time_bins * (1 + overlap)
    stride = time_window * (1 - overlap)
    window_start_times = np.arange(n_time_bins) * stride + t0
    window_end_times = window_start_times + time_window
    return _searchsorted_left(packed, window_start_times, window_end_times)


def _event_bin_slices(n_events, n_event_bins, overlap):
    count = int(n_events // n_event_bins * (1 + overlap))
    stride = int(count * (1 - overlap))
    starts = np.arange(n_event_bins, dtype=np.int64) * stride
    ends = starts + count
    return np.minimum(starts, n_events), np.minimum(ends, n_events)


_SENSOR_CACHE: dict = {}


def _sensor(sensor_size) -> SensorSize:
    """SensorSize.coerce, remembered for hashable sizes: to_frame is called once per sample in training."""
    try:
        return _SENSOR_CACHE[sensor_size]
    except KeyError:
        if len(_SENSOR_CACHE) > 64:
            _SENSOR_CACHE.clear()
        sensor = _SENSOR_CACHE[sensor_size] = SensorSize.coerce(sensor_size)
        return sensor
    except TypeError:  # a list or an array: not hashable
        return SensorSize.coerce(sensor_size)


def _frame_dtype(dtype) -> np.dtype:
    dtype = np.dtype(np.int16 if dtype is None else dtype)
    if dtype not in FRAME_DTYPES:
        raise ConfigError(f"frame dtype must be one of {', '.join(str(d) for d in FRAME_DTYPES)}; got {dtype}")
    return dtype


# The count at which a pixel stops growing, in the frame's own type: the
# integer maximum, or never for floats.
_SATURATION = {dtype: dtype.type(np.iinfo(dtype).max) if dtype.kind == "i" else dtype.type(np.inf)
               for dtype in FRAME_DTYPES}


def _saturation(dtype: np.dtype):
    return _SATURATION[dtype]


@nb.njit(cache=True, nogil=True)
def _extent(packed):
    """Largest x and y, and the polarities seen (bit 0: p = 0, bit 1: p = 1, bit 2: anything else).

    x and y are read as unsigned 16-bit: a negative one shows as >= 32768.
    """
    max_x = 0
    max_y = 0
    seen_p = 0
    for i in range(packed.shape[0] // 2):
        word = packed[2 * i + 1]
        max_x = max(max_x, word & 0xFFFF)
        max_y = max(max_y, (word >> 16) & 0xFFFF)
        seen_p |= 1 << min((word >> 32) & 0xFF, 2)
    return max_x, max_y, seen_p


def _infer_sensor_size(events: np.ndarray, packed: np.ndarray) -> SensorSize:
    """tonic's rule for a missing sensor size: max x + 1, max y + 1, number of distinct p."""
    if events.size == 0:
        raise ConfigError("sensor_size is required for an empty event array (nothing to infer it from)")
    max_x, max_y, seen_p = _extent(packed)
    for name, largest in (("x", max_x), ("y", max_y)):
        if largest >= 1 << 15:
            bad = int(np.flatnonzero(events[name] < 0)[0])
            raise EventValidationError(f"event {bad}: {name} = {int(events[name][bad])} is negative",
                                       index=bad, field=name)
    if seen_p & 4:
        bad = int(np.flatnonzero((events["p"] != 0) & (events["p"] != 1))[0])
        raise EventValidationError(f"event {bad}: polarity p = {int(events['p'][bad])}, expected 0 or 1",
                                   index=bad, field="p")
    return SensorSize(int(max_x) + 1, int(max_y) + 1, bin(int(seen_p)).count("1"))


def to_frame(events, sensor_size, time_window=None, event_count=None, n_time_bins=None, n_event_bins=None,
             overlap=0, include_incomplete=False, start_time=None, end_time=None, dtype=None) -> np.ndarray:
    """Count events into frames of shape (T, P, H, W), exactly like ``tonic.transforms.ToFrame``.

    Give exactly one of time_window (µs), event_count, n_time_bins or
    n_event_bins. overlap is in µs for time_window, in events for
    event_count, and a fraction of a bin in [0, 1) for the bin modes.
    include_incomplete applies to time_window and event_count; start_time and
    end_time to time_window. sensor_size is (width, height, polarities); None
    infers it from the events as tonic does (max x + 1, max y + 1, number of
    distinct polarities). dtype is int16 (default, as tonic; counts saturate
    at 32,767), int32 or float32.

    The module docstring lists tonic's slicing rules, which this function
    reproduces, and the cases where it deliberately differs from tonic.
    The input array is never modified.

    Raises:
        ConfigError: bad parameters.
        EventValidationError: t not sorted, p not in {0, 1}, x or y outside the
            sensor, or both polarities on a one-polarity sensor; the message
            names the first offending event's index and field.
    """
    modes = {"time_window": time_window, "event_count": event_count,
             "n_time_bins": n_time_bins, "n_event_bins": n_event_bins}
    chosen = [name for name, value in modes.items() if value is not None]
    if len(chosen) != 1:
        raise ConfigError("give exactly one of time_window, event_count, n_time_bins, n_event_bins; got "
                          + (", ".join(chosen) if chosen else "none"))
    frame_dtype = _frame_dtype(dtype)
    events, packed = packed_view(events)
    sensor = _infer_sensor_size(events, packed) if sensor_size is None else _sensor(sensor_size)
    n = packed.shape[0] // 2

    if time_window is not None:
        _check_positive("time_window", time_window)
        if not time_window - overlap > 0:
            raise ConfigError(f"overlap ({overlap!r}) must be smaller than time_window ({time_window!r})")
        if n == 0:
            n_slices = 1
            if start_time is not None and end_time is not None:
                n_slices, _, _ = _time_window_count(0, 0, time_window, overlap, include_incomplete,
                                                    start_time, end_time)
            return np.zeros((n_slices, sensor.polarities, sensor.height, sensor.width), frame_dtype)
        starts, ends = _time_window_slices(packed, time_window, overlap, include_incomplete,
                                           start_time, end_time)
    elif event_count is not None:
        _check_positive_int("event_count", event_count)
        if not event_count - overlap > 0:
            raise ConfigError(f"overlap ({overlap!r}) must be smaller than event_count ({event_count!r})")
        if n == 0:
            return np.zeros((1, sensor.polarities, sensor.height, sensor.width), frame_dtype)
        starts, ends = _event_count_slices(n, event_count, overlap, include_incomplete)
    elif n_time_bins is not None:
        _check_positive_int("n_time_bins", n_time_bins)
        _check_bin_overlap(overlap)
        if n == 0:
            return np.zeros((n_time_bins, sensor.polarities, sensor.height, sensor.width), frame_dtype)
        starts, ends = _time_bin_slices(packed, n_time_bins, overlap)
    else:
        _check_positive_int("n_event_bins", n_event_bins)
        _check_bin_overlap(overlap)
        if n == 0:
            return np.zeros((n_event_bins, sensor.polarities, sensor.height, sensor.width), frame_dtype)
        starts, ends = _event_bin_slices(n, n_event_bins, overlap)

    frames = np.empty((len(starts), sensor.polarities, sensor.height, sensor.width), frame_dtype)
    # A one-polarity sensor takes the events of one polarity, whichever it is (tonic's rule).
    p_required = int(events["p"][0]) if sensor.polarities == 1 else -1
    if p_required not in (-1, 0, 1):
        raise_event_error(events, 0, sensor)
    p_lo, p_hi = (0, 1) if p_required < 0 else (p_required, p_required)
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    saturation = _saturation(frame_dtype)
    frame_bytes = frames[0].nbytes if len(frames) else 0
    interleave = frame_bytes <= _LOW_COUNTER_BYTES
    # Slices overlap only when overlap > 0, in every mode. Counting a block
    # into all its frames at once pays while those frames fit in cache
    # together; beyond that, filling one frame at a time is faster.
    if interleave and overlap > 0 and len(starts) > 1:
        depth = int(np.max(np.searchsorted(starts, ends, "left") - np.arange(len(starts))))
        interleave = depth * frame_bytes <= _INTERLEAVED_BYTES
    if interleave:
        bad_index = _bin_slices(packed, starts, ends, frames, sensor.width, sensor.height, p_lo, p_hi,
                                saturation)
    else:
        low = np.empty(frames.shape[1:], np.uint8)
        bad_index = _bin_frame_by_frame(packed, starts, ends, frames, low, sensor.width, sensor.height,
                                        p_lo, p_hi, saturation, _low_counter_min_events(frame_bytes))
    if bad_index >= 0:
        raise_event_error(events, bad_index, sensor, p_required)
    return frames


# --------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------

# The binner's scalar state lives in one int64 array so that a push costs one
# short Numba dispatch: these are its slots.
_S_LAST_T, _S_CLOCK_T, _S_P_REQUIRED, _S_START, _S_WINDOW, _S_OPEN_INDEX, _S_WIDTH, _S_HEIGHT, \
    _S_POLARITIES, _S_OPEN_EVENTS, _S_OPEN_USES_LOW, _S_LOW_MIN_EVENTS = range(12)


@nb.njit(cache=True, nogil=True)
def _push_chunk(packed, state, open_frame, block, low, saturation):
    """Validate a whole chunk, then count it into the open frame and the block of newer frames.

    Validation runs to the end before anything is written, so a bad chunk
    leaves the binner exactly as it was. A window that follows a dense one
    (state[_S_LOW_MIN_EVENTS] events or more) is counted in low bytes first,
    as in _bin_frame_by_frame, which carry into its frame when it closes.
    Returns the first bad index or -1.
    """
    n = packed.shape[0] // 2
    if n == 0:
        return -1
    width = state[_S_WIDTH]
    height = state[_S_HEIGHT]
    p_required = state[_S_P_REQUIRED]
    if p_required < 0 and state[_S_POLARITIES] == 1:
        p_required = (packed[1] >> 32) & 0xFF
        if p_required > 1:
            return 0
    if p_required >= 0:
        p_lo = p_required
        p_hi = p_required
    else:
        p_lo = 0
        p_hi = 1
    if (packed[0] < max(state[_S_LAST_T], state[_S_CLOCK_T])) \
            | _event_is_bad(packed[1], width, height, p_lo, p_hi):
        return 0
    if _any_bad(packed, 1, n, width, height, p_lo, p_hi):
        return _first_bad(packed, 1, n, width, height, p_lo, p_hi)
    state[_S_LAST_T] = packed[2 * (n - 1)]
    state[_S_P_REQUIRED] = p_required
    start = state[_S_START]
    window = state[_S_WINDOW]
    open_index = state[_S_OPEN_INDEX]
    channel_mask = 1 if p_hi > p_lo else 0
    # The chunk is sorted now: window edges are found by bisection, not by a test per event.
    i = _bisect_t(packed, 0, n, start)
    current = 0
    current_end = start + (open_index + 1) * window
    frame = open_frame
    use_low = state[_S_OPEN_USES_LOW] != 0
    window_events = state[_S_OPEN_EVENTS]
    while i < n:
        j = _bisect_t(packed, i, n, current_end)
        if use_low:
            _count_run_low(packed, i, j, low, frame, channel_mask, saturation)
        else:
            _count_run(packed, i, j, frame, channel_mask, saturation)
        window_events += j - i
        if j == n:
            break
        if use_low:
            _carry_low(frame, low, saturation)
        # Windows of one stream are alike: the one that closed picks the next one's counter.
        use_low = window_events >= state[_S_LOW_MIN_EVENTS] and packed[2 * j] < current_end + window
        window_events = 0
        # A division only when the window changes, not per event.
        current += (packed[2 * j] - current_end) // window + 1
        current_end = start + (open_index + current + 1) * window
        frame = block[current - 1]
        i = j
    state[_S_OPEN_EVENTS] = window_events
    state[_S_OPEN_USES_LOW] = 1 if use_low else 0
    return -1


class Frame:
    """One binned window: ``data`` (P, H, W) counts of the events with t_start <= t < t_end (µs)."""

    __slots__ = ("data", "t_start", "t_end")

    def __init__(self, data: np.ndarray, t_start: int, t_end: int):
        self.data = data
        self.t_start = t_start
        self.t_end = t_end

    def as_tensor(self):
        """The counts as a torch tensor sharing this frame's memory (no copy)."""
        import torch  # the binner itself never needs torch; only callers that ask for tensors do

        return torch.from_numpy(self.data)

    def __repr__(self) -> str:
        return (f"Frame(t_start={self.t_start}, t_end={self.t_end}, shape={self.data.shape}, "
                f"events={int(self.data.sum())})")


class StreamingBinner:
    """Bin a live event stream into consecutive time windows of ``time_window`` µs.

    Windows are ``[start + k*time_window, start + (k+1)*time_window)``, start
    being ``start_time`` or, when None, the first event's t -- the same
    windows as ``to_frame(events, sensor_size, time_window=..., start_time=start)``.

    * ``push(chunk)`` counts a chunk of events (any size, empty included) and
      returns the frames that the chunk's last event closed: a window is over
      once an event at or after its end has been seen.
    * ``flush(until_t)`` tells the binner that the source's clock has reached
      until_t (no event with t < until_t will come), and returns the windows
      that end at or before it, empty or not -- so a silent camera still yields
      frames on time. Pushing an event with t < until_t afterwards is an error.
      Windows need an origin: without start_time, nothing is flushed before
      the first event has set it.
    * ``reset(start_time=None)`` drops the open window and starts a new stream
      (a new sample or inference window); timestamps may start over.

    For any split of a stream into chunks, the frames returned by the pushes
    followed by ``flush(end)`` equal ``to_frame(whole, sensor_size,
    time_window=time_window, start_time=start, end_time=end)`` for any end at
    or after the last event and ``start + time_window`` (to_frame, like tonic,
    always gives at least one frame).
    Events before start_time are ignored. A bad chunk raises
    EventValidationError and leaves the binner as it was.

    Frames are new arrays (windows closed together share one block of memory);
    ``Frame.as_tensor()`` wraps them for torch without copying.
    """

    def __init__(self, sensor_size, time_window, start_time=None, dtype=None):
        self.sensor_size = SensorSize.coerce(sensor_size)
        # Whole microseconds keep window edges exact integers, equal to the
        # edges to_frame computes; 30000.0 (say, from JSON metadata) is whole.
        if isinstance(time_window, (float, np.floating)) and float(time_window).is_integer():
            time_window = int(time_window)
        _check_positive_int("time_window", time_window)
        self.time_window = int(time_window)
        self.dtype = _frame_dtype(dtype)
        self._saturation = _saturation(self.dtype)
        self._frame_shape = (self.sensor_size.polarities, self.sensor_size.height, self.sensor_size.width)
        self._no_block = np.zeros((0,) + self._frame_shape, self.dtype)
        frame_bytes = self.dtype.itemsize * int(np.prod(self._frame_shape))
        self._low_min_events = _low_counter_min_events(frame_bytes)
        # The open window's low count bytes (large frames only; see _count_run_low).
        self._low = np.zeros(self._frame_shape if frame_bytes > _LOW_COUNTER_BYTES else (0, 0, 0), np.uint8)
        self._state = np.zeros(12, np.int64)
        self.reset(start_time)

    def reset(self, start_time=None) -> None:
        """Forget the stream: drop the open window; the next window starts at start_time or the next event."""
        self.start_time = None if start_time is None else int(start_time)
        self._open_index = 0
        self._open = np.zeros(self._frame_shape, self.dtype)
        self._low[...] = 0
        state = self._state
        state[_S_LAST_T] = _INT64_MIN
        state[_S_CLOCK_T] = _INT64_MIN
        state[_S_P_REQUIRED] = -1
        state[_S_START] = 0 if start_time is None else int(start_time)
        state[_S_WINDOW] = self.time_window
        state[_S_OPEN_INDEX] = 0
        state[_S_WIDTH], state[_S_HEIGHT], state[_S_POLARITIES] = self.sensor_size
        state[_S_OPEN_EVENTS] = 0
        state[_S_OPEN_USES_LOW] = 0
        state[_S_LOW_MIN_EVENTS] = self._low_min_events

    @property
    def open_window(self) -> tuple[int, int] | None:
        """(t_start, t_end) of the window being filled, or None before the stream has a start."""
        if self.start_time is None:
            return None
        t0 = self.start_time + self._open_index * self.time_window
        return t0, t0 + self.time_window

    def push(self, chunk) -> list[Frame]:
        """Count a chunk of events; return the frames it completed (oldest first)."""
        if type(chunk) is np.ndarray and chunk.dtype is EVENT_DTYPE and chunk.flags.c_contiguous:
            # The common case, kept short: a live source pushes thousands of small chunks a second.
            events, packed = chunk, chunk.view(np.int64)
        else:
            events, packed = packed_view(chunk)
        n = packed.shape[0] // 2
        if n == 0:
            return []
        state = self._state
        start = self.start_time
        if start is None:
            start = int(packed[0])
            state[_S_START] = start
        last_t = int(packed[2 * (n - 1)])
        n_new = (last_t - start) // self.time_window - self._open_index if last_t >= start else 0
        block = np.zeros((n_new,) + self._frame_shape, self.dtype) if n_new > 0 else self._no_block
        bad_index = _push_chunk(packed, state, self._open, block, self._low, self._saturation)
        if bad_index >= 0:
            last_event_t = int(state[_S_LAST_T])
            clock_t = int(state[_S_CLOCK_T])
            raise_event_error(events, bad_index, self.sensor_size, int(state[_S_P_REQUIRED]),
                              previous_t=None if last_event_t == _INT64_MIN else last_event_t,
                              clock_t=None if clock_t == _INT64_MIN else clock_t, what="chunk event")
        self.start_time = start
        if n_new <= 0:
            return []
        return self._close(block, n_new)

    def flush(self, until_t) -> list[Frame]:
        """The source's clock reached until_t: return every window ending at or before it."""
        until_t = int(until_t)
        state = self._state
        state[_S_CLOCK_T] = max(int(state[_S_CLOCK_T]), until_t)
        if self.start_time is None or until_t < self.start_time:
            return []
        n_new = (until_t - self.start_time) // self.time_window - self._open_index
        if n_new <= 0:
            return []
        if state[_S_OPEN_USES_LOW]:
            _carry_low(self._open, self._low, self._saturation)
        # The window after a flush starts empty-handed: in-place counting until a dense window shows up.
        state[_S_OPEN_USES_LOW] = 0
        state[_S_OPEN_EVENTS] = 0
        return self._close(np.zeros((n_new,) + self._frame_shape, self.dtype), n_new)

    def _close(self, block: np.ndarray, n_new: int) -> list[Frame]:
        """Emit the open frame and all but the last of block; the last becomes the open frame."""
        window = self.time_window
        t0 = self.start_time + self._open_index * window
        frames = [Frame(self._open, t0, t0 + window)]
        for i in range(n_new - 1):
            t0 += window
            frames.append(Frame(block[i], t0, t0 + window))
        self._open = block[n_new - 1]
        self._open_index += n_new
        self._state[_S_OPEN_INDEX] = self._open_index
        return frames
