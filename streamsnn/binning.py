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
both polarities on such a sensor are an error, as in tonic. With more
channels, p indexes the channel (0 <= p < P). Events without a ``y`` field
(a 1-D sensor) give frames ``(T, P, W)``, as tonic's.

Any event layout is read in place: the kernels take views of the fields
(any order, integer x/y of any width, integer or float t, bool or integer
p, strided), validate each event in the loop that counts it, and count on
several threads for large inputs (``threads``).

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
* p outside [0, P): tonic indexes the channel with p, so p = -1 silently lands
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
from .events import EVENT_DTYPE, EventFields, SensorSize, event_fields
from .threads import available_threads, run_parts

__all__ = ["to_frame", "StreamingBinner", "Frame", "FRAME_DTYPES"]

# The kernels take the four field views of the caller's array (any order,
# width and stride; see events.event_fields) and read each event where it
# lies: no copy into EVENT_DTYPE. Numba compiles one specialisation per
# combination of field types, reused for every array of that layout.

FRAME_DTYPES = (np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.float32))


def raise_event_error(events: np.ndarray, index: int, sensor: SensorSize | None, p_required: int = -1,
                      previous_t=None, clock_t=None, what: str = "event") -> None:
    """Explain why a kernel stopped at events[index]: raise EventValidationError naming event and field.

    The kernels only report where the first bad event is; finding out what is
    wrong with it here keeps their inner loops to a single branch. p must lie
    in [0, polarities) (in {0, 1} without a sensor).
    """
    ev = events[index]
    t = ev["t"]
    if t != t:
        raise EventValidationError(f"{what} {index}: t is not a number", index=index, field="t")
    before = events["t"][index - 1] if index > 0 else None
    if before is not None and t < before:
        raise EventValidationError(
            f"timestamps are not sorted: {what} {index} has t = {_number(t)} us after "
            f"t = {_number(before)} us", index=index, field="t")
    if index == 0 and previous_t is not None and t < previous_t:
        raise EventValidationError(
            f"timestamps are not sorted: {what} {index} has t = {_number(t)} us, but earlier chunks "
            f"reached t = {_number(previous_t)} us", index=index, field="t")
    if index == 0 and clock_t is not None and t < clock_t:
        raise EventValidationError(
            f"{what} {index} has t = {_number(t)} us, but the stream was flushed up to t = {_number(clock_t)} us: "
            "events must not arrive for time already closed", index=index, field="t")
    p = int(ev["p"])
    polarities = sensor.polarities if sensor is not None else 2
    if not 0 <= p < max(polarities, 2):
        expected = "0 or 1" if polarities <= 2 else f"0 to {polarities - 1}"
        raise EventValidationError(f"{what} {index}: polarity p = {p}, expected {expected}",
                                   index=index, field="p")
    for name, limit in (("x", sensor.width if sensor else None), ("y", sensor.height if sensor else None)):
        if name not in events.dtype.names:
            continue
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


def _number(value):
    """A timestamp for a message: integers without a trailing .0."""
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if float(value).is_integer() else value


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True, inline="always")
def _bisect_t(t, lo, hi, value):
    """First index in [lo, hi) whose t >= value (hi if none), for sorted t."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if t[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(cache=True, nogil=True)
def _searchsorted_left(t, starts, ends):
    """np.searchsorted(t, ., 'left') of window starts and ends, on the t field in place."""
    out = np.empty((2, starts.shape[0]), dtype=np.int64)
    for row in range(2):
        values = starts if row == 0 else ends
        for i in range(values.shape[0]):
            out[row, i] = _bisect_t(t, 0, t.shape[0], values[i])
    return out[0], out[1]


# Frames larger than this are counted, when dense, in one byte per pixel
# first (see _count): half the footprint of int16 keeps the scattered
# counts in L2 (1.7x on a 640x480 frame of uniformly spread events). It costs
# two passes over the frame, so a frame must hold at least one event per
# _LOW_COUNTER_BYTES_PER_EVENT bytes to use it: sparse frames of real scenes
# count faster in place.
_LOW_COUNTER_BYTES = 256 * 1024
_LOW_COUNTER_BYTES_PER_EVENT = 4


_NEVER = np.iinfo(np.int64).max


def _low_counter_min_events(frame_bytes: int) -> int:
    """Events a window needs before counting it in low bytes pays (never, for small frames)."""
    if frame_bytes <= _LOW_COUNTER_BYTES:
        return _NEVER
    return frame_bytes // _LOW_COUNTER_BYTES_PER_EVENT


# Validation happens in the counting loop itself, one well-predicted branch
# per event: the coordinates are read once, for both. Loops index with
# unsigned integers: Numba then drops its negative-index wraparound, whose
# per-access selects (four strided fields) kept LLVM from reducing the
# stride multiplications and cost 2.8x. x, y and p - p_lo are
# compared as unsigned, so a negative value (huge as unsigned) fails the same
# single comparison as one past the sensor. t must not go down; a NaN t
# fails ``t >= previous`` too.

@nb.njit(cache=True, nogil=True, inline="always")
def _pixel(x, y, p, i, width, height, p_lo, p_span):
    """(flat index of event i's pixel, whether x, y and p lie inside); width, height, p_span uint64."""
    xi = np.uint64(np.int64(x[i]))
    yi = np.uint64(np.int64(y[i]))
    ci = np.uint64(np.int64(p[i]) - p_lo)
    return (ci * height + yi) * width + xi, (xi < width) & (yi < height) & (ci <= p_span)


@nb.njit(cache=True, nogil=True)
def _count_fresh(t, x, y, p, lo, hi, target, width, height, p_lo, p_span):
    """_count into a target whose window, these events included, holds no more events than the dtype's
    saturation: no pixel can saturate, so the loop drops that test (1.1-1.2x)."""
    width = np.uint64(width)
    height = np.uint64(height)
    p_span = np.uint64(p_span)
    previous = t[lo - 1] if lo > 0 else t[lo]
    for i in range(np.uint64(lo), np.uint64(hi)):
        ti = t[i]
        index, inside = _pixel(x, y, p, i, width, height, p_lo, p_span)
        if not (inside & (ti >= previous)):
            return np.int64(i)
        previous = ti
        target[index] += 1
    return -1


@nb.njit(cache=True, nogil=True)
def _count(t, x, y, p, lo, hi, target, low, width, height, p_lo, p_span, saturation, stop_at_saturation=False,
           counted=-1):
    """Validate events [lo, hi) and count them into target (flat P*H*W); first bad index or -1.

    counted: how many events target holds already (-1: unknown). When those and these together
    cannot saturate a pixel, the loop without the saturation test runs (_count_fresh).

    Event lo is compared with event lo - 1 (with itself when lo == 0). The
    channel is p - p_lo: p_lo is 0, or the one polarity of a one-polarity
    sensor (p_span 0). low: empty, or a uint8 scratch (flat P*H*W) to count
    in first, every 256th count of a pixel carrying into target; target +
    low is then the true count (capped at saturation), and _carry_low folds
    low into target once the window is over. stop_at_saturation (counting
    in target): return -2 - i instead of letting event i find its pixel
    saturated (or, counting in low, a carry that would saturate), so that every count made so
    far is a true increment (which _uncount can take back).
    """
    in_low = low.shape[0] > 0
    if not in_low and counted >= 0 and counted + (hi - lo) <= saturation:
        return _count_fresh(t, x, y, p, lo, hi, target, width, height, p_lo, p_span)
    width = np.uint64(width)
    height = np.uint64(height)
    p_span = np.uint64(p_span)
    previous = t[lo - 1] if lo > 0 else t[lo]
    for i in range(np.uint64(lo), np.uint64(hi)):
        ti = t[i]
        index, inside = _pixel(x, y, p, i, width, height, p_lo, p_span)
        if not (inside & (ti >= previous)):
            return np.int64(i)
        previous = ti
        added = (_increment_low(target, low, index, saturation, stop_at_saturation) if in_low
                 else _increment(target, index, saturation, stop_at_saturation))
        if not added:
            return -2 - np.int64(i)
    return -1


@nb.njit(cache=True, nogil=True, inline="always")
def _increment(target, k, saturation, stop_at_saturation):
    """One more count at target[k], capped at saturation; False (nothing changed) instead when
    stop_at_saturation and the pixel is saturated already."""
    v = target[k]
    if v < saturation:
        target[k] = v + 1
    elif stop_at_saturation:
        return False
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def _increment_low(target, low, k, saturation, stop_at_saturation):
    """One more count at k in low bytes: every 256th carries 256 into target (capped at saturation);
    False (nothing changed) instead when stop_at_saturation and the carry would saturate."""
    v = low[k]
    if v == 255:
        high = target[k]
        if high < saturation - 255:
            target[k] = high + 256
        elif stop_at_saturation:
            return False
        else:
            target[k] = saturation
        low[k] = 0
    else:
        low[k] = v + 1
    return True


@nb.njit(cache=True, nogil=True)
def _uncount(x, y, p, lo, hi, target, low, width, height, p_lo):
    """Take back _count's increments of the (valid) events [lo, hi), counted in low when it is not
    empty (a low byte at 0 carried 256 into target: borrow them back)."""
    in_low = low.shape[0] > 0
    for i in range(np.uint64(lo), np.uint64(hi)):
        index = np.uint64(((np.int64(p[i]) - p_lo) * height + np.int64(y[i])) * width + np.int64(x[i]))
        if in_low:
            v = low[index]
            if v == 0:
                low[index] = 255
                target[index] -= 256
            else:
                low[index] = v - 1
        else:
            target[index] -= 1


@nb.njit(cache=True, nogil=True)
def _carry_low(target, low, saturation):
    """target += low (capped at saturation), and clear low for the next window."""
    for i in range(np.uint64(target.shape[0])):
        total = target[i] + low[i]
        target[i] = total if total < saturation else saturation
        low[i] = 0


@nb.njit(cache=True, nogil=True)
def _first_bad(t, x, y, p, lo, hi, width, height, p_lo, p_span):
    """First event in [lo, hi) that is bad or earlier than the one before it; -1 if none."""
    width = np.uint64(width)
    height = np.uint64(height)
    p_span = np.uint64(p_span)
    previous = t[lo - 1] if lo > 0 else t[lo]
    for i in range(np.uint64(lo), np.uint64(hi)):
        ti = t[i]
        if not (_pixel(x, y, p, i, width, height, p_lo, p_span)[1] & (ti >= previous)):
            return np.int64(i)
        previous = ti
    return -1


@nb.njit(cache=True, nogil=True)
def first_invalid_event(t, x, y, p, width, height, polarities, previous_t):
    """Index of the first event that is out of order (previous_t before event 0), outside
    width x height, or with p outside [0, polarities); -1 if none."""
    n = t.shape[0]
    if n == 0:
        return -1
    if not t[0] >= previous_t:
        return 0
    return _first_bad(t, x, y, p, 0, n, width, height, 0, polarities - 1)


# A row of the work plan: the frame it fills (-1: only validate), the event
# range, and the scratch slot it counts into (-1: straight into the frame).
_T_FRAME, _T_LO, _T_HI, _T_SLOT = range(4)


@nb.njit(cache=True, nogil=True, inline="always")
def _packed_pixel(word, width, height, p_lo, p_span):
    """_pixel for an EVENT_DTYPE record's second word (x int16, y int16, p int8, padding)."""
    # x and y are signed: a negative one must not pass for a column past 32,767
    xi = np.uint64(np.int64(np.int16(word & np.uint64(0xFFFF))))
    yi = np.uint64(np.int64(np.int16((word >> np.uint64(16)) & np.uint64(0xFFFF))))
    ci = np.uint64(np.int64(np.int8((word >> np.uint64(32)) & np.uint64(0xFF))) - p_lo)  # p is signed
    return (ci * height + yi) * width + xi, (xi < width) & (yi < height) & (ci <= p_span)


@nb.njit(cache=True, nogil=True)
def _count_packed(words, lo, hi, target, width, height, p_lo, p_span, saturation, stop_at_saturation=False,
                  counted=0):
    """_count (in place) of events laid out as EVENT_DTYPE, read as two int64 words each.

    Two passes over blocks of _INDEX_BLOCK events: the first computes every event's pixel and whether
    the block is valid, without a branch, so that LLVM vectorises it (reading the words in place);
    the second adds the counts. One thread bins about twice as many events a second as with the
    single loop that does both (to_frame, time_window, 10 M random 128x128 events, alternated runs:
    270-350 -> 630-670 M/s). A block with a bad event goes to that single loop
    from the block's first event on, which finds the first bad event and counts those before it
    exactly as before.
    """
    can_saturate = not (counted >= 0 and counted + (hi - lo) <= saturation)
    if hi - lo < _MIN_BLOCKED_EVENTS or target.shape[0] > _MAX_BLOCKED_PIXELS:
        return _count_packed_loop(words, lo, hi, target, width, height, p_lo, p_span, saturation, can_saturate,
                                  stop_at_saturation)
    if lo == 0:
        # the blocks compare each event's t with the word before it, which event 0 does not have
        bad = _count_packed_loop(words, 0, 1, target, width, height, p_lo, p_span, saturation, can_saturate,
                                 stop_at_saturation)
        if bad != -1:
            return bad
        lo = 1
    flat = words.reshape(-1)
    index = np.empty(min(_INDEX_BLOCK, hi - lo), np.uint32)
    width32 = np.uint32(width)
    height32 = np.uint32(height)
    p_span32 = np.uint32(p_span)
    p_lo32 = np.int32(p_lo)
    for start in range(lo, hi, _INDEX_BLOCK):
        stop = min(start + _INDEX_BLOCK, hi)
        if _packed_block_pixels(flat, np.uint64(start), np.uint64(stop - start), index, width32, height32,
                                p_lo32, p_span32):
            return _count_packed_loop(words, start, hi, target, width, height, p_lo, p_span, saturation,
                                      can_saturate, stop_at_saturation)
        if can_saturate:
            bad = _add_counts_saturating(index, stop - start, target, saturation, stop_at_saturation)
            if bad >= 0:
                return -2 - (start + bad)
        else:
            _add_counts(index, stop - start, target)
    return -1


# Blocks of this many events: on events streamed from memory, smaller ones lose much of the gain
# (the passes alternate too often for the hardware prefetcher: 390 against 550 M events/s at 1,000
# events; on events in cache the size hardly matters); larger ones leave L1.
_INDEX_BLOCK = 4096
_MIN_BLOCKED_EVENTS = 64
# The blocks' pixel indices are 32-bit: frames of more pixels (P x H x W) take the one loop.
_MAX_BLOCKED_PIXELS = 2**32 - 1


@nb.njit(cache=True, nogil=True)
def _packed_block_pixels(flat, start, count, index, width, height, p_lo, p_span):
    """index[j] = the pixel of event start + j (flat: the records as int64 pairs; start >= 1); nonzero if
    any of these events lies outside the sensor or has t below the event before it.

    Written so that LLVM vectorises it well: no branch; the pixel arithmetic cast back to 32 bits
    after every operation (Numba widens uint32 arithmetic to 64 bits, and 64-bit vector multiplies
    are slow on AVX-512 and missing on AVX2); the previous t carried from one event to the next
    (reading the word before each event instead made LLVM gather it). The two together: this pass
    alone 0.9 -> 1.45 G events a second.
    """
    bad = np.uint32(0)
    two = np.uint64(2)
    previous = flat[two * start - two]
    for j in range(count):
        i = start + j
        word = np.uint64(flat[two * i + np.uint64(1)])
        t = flat[two * i]
        xy = np.uint32(word)
        x = np.uint32(np.int32(np.int16(xy & np.uint32(0xFFFF))))  # signed, as in _packed_pixel
        y = np.uint32(np.int32(np.int16(xy >> np.uint32(16))))
        channel = np.uint32(np.int32(np.int8(word >> np.uint64(32))) - p_lo)  # p is signed
        index[j] = np.uint32(np.uint32(np.uint32(channel * height) + y) * width) + x
        bad |= (np.uint32(x >= width) | np.uint32(y >= height) | np.uint32(channel > p_span)
                | np.uint32(t < previous))
        previous = t
    return bad


@nb.njit(cache=True, nogil=True)
def _count_packed_low(words, t, x, y, p, lo, hi, target, low, width, height, p_lo, p_span, saturation,
                      stop_at_saturation=False):
    """_count into low bytes (see _count) of events laid out as EVENT_DTYPE, in the blocks of
    _count_packed; a block with a bad event, and short ranges, go to _count from there on."""
    one_loop = hi - lo < _MIN_BLOCKED_EVENTS or target.shape[0] > _MAX_BLOCKED_PIXELS
    if lo == 0 or one_loop:
        first = hi if one_loop else 1
        bad = _count(t, x, y, p, lo, first, target, low, width, height, p_lo, p_span, saturation,
                     stop_at_saturation, -1)
        if bad != -1 or first == hi:
            return bad
        lo = first
    flat = words.reshape(-1)
    index = np.empty(min(_INDEX_BLOCK, hi - lo), np.uint32)
    for start in range(lo, hi, _INDEX_BLOCK):
        stop = min(start + _INDEX_BLOCK, hi)
        if _packed_block_pixels(flat, np.uint64(start), np.uint64(stop - start), index, np.uint32(width),
                                np.uint32(height), np.int32(p_lo), np.uint32(p_span)):
            return _count(t, x, y, p, start, hi, target, low, width, height, p_lo, p_span, saturation,
                          stop_at_saturation, -1)
        bad = _add_counts_low(index, stop - start, target, low, saturation, stop_at_saturation)
        if bad >= 0:
            return -2 - (start + bad)
    return -1


@nb.njit(cache=True, nogil=True)
def _add_counts_low(index, count, target, low, saturation, stop_at_saturation):
    """_count's counting in low bytes, at each index: every 256th count carries into target (capped);
    with stop_at_saturation, return the first j whose carry would saturate instead of counting it
    (-1: all counted)."""
    for j in range(np.uint64(count)):
        if not _increment_low(target, low, index[j], saturation, stop_at_saturation):
            return np.int64(j)
    return -1


@nb.njit(cache=True, nogil=True)
def _add_counts(index, count, target):
    for j in range(np.uint64(count)):
        target[index[j]] += 1


@nb.njit(cache=True, nogil=True)
def _add_counts_saturating(index, count, target, saturation, stop_at_saturation):
    """Add one at each index, capped at saturation; with stop_at_saturation, return the first j whose
    pixel is already saturated instead of counting it (-1: all counted)."""
    for j in range(np.uint64(count)):
        if not _increment(target, index[j], saturation, stop_at_saturation):
            return np.int64(j)
    return -1


@nb.njit(cache=True, nogil=True)
def _count_packed_loop(words, lo, hi, target, width, height, p_lo, p_span, saturation, can_saturate,
                       stop_at_saturation):
    """Validate and count in one loop (short ranges, and from a block with a bad event on)."""
    width = np.uint64(width)
    height = np.uint64(height)
    p_span = np.uint64(p_span)
    previous = words[lo - 1, 0] if lo > 0 else words[lo, 0]
    for i in range(np.uint64(lo), np.uint64(hi)):
        ti = words[i, 0]
        index, inside = _packed_pixel(np.uint64(words[i, 1]), width, height, p_lo, p_span)
        if not (inside & (ti >= previous)):
            return np.int64(i)
        previous = ti
        v = target[index]
        if v < saturation or not can_saturate:
            target[index] = v + 1
        elif stop_at_saturation:
            return -2 - np.int64(i)
    return -1


@nb.njit(cache=True, nogil=True)
def _bin_tasks(t, x, y, p, frames, scratch, low, tasks, first, last, width, height, p_lo, p_span, saturation,
               low_min_events, words):
    """Run tasks[first:last] of a work plan; return the first bad event index found, or -1.

    frames (T, P*H*W) and scratch (S, P*H*W) may arrive uninitialised: each
    target is cleared just before it fills, which writes it sequentially into
    cache, where the scattered counts then land. A target of low_min_events
    events or more is counted in low bytes first (low: P*H*W uint8 zeros).
    words: the events as (n, 2) int64 when they are laid out as EVENT_DTYPE
    (counted through _count_packed), else empty.
    Tasks are ordered by their first event, so the first bad index found
    within one run is the first among the events that run covers.
    """
    for k in range(first, last):
        frame = tasks[k, _T_FRAME]
        lo = tasks[k, _T_LO]
        hi = tasks[k, _T_HI]
        if frame < 0:
            bad = _first_bad(t, x, y, p, lo, hi, width, height, p_lo, p_span)
        else:
            slot = tasks[k, _T_SLOT]
            target = frames[frame] if slot < 0 else scratch[slot]
            target[:] = 0
            in_low = hi - lo >= low_min_events
            if words.shape[0] > 0 and not in_low:
                bad = _count_packed(words, lo, hi, target, width, height, p_lo, p_span, saturation)
            elif words.shape[0] > 0:
                bad = _count_packed_low(words, t, x, y, p, lo, hi, target, low, width, height, p_lo, p_span,
                                        saturation)
            else:
                bad = _count(t, x, y, p, lo, hi, target, low if in_low else low[:0], width, height, p_lo,
                             p_span, saturation, False, 0)
            if in_low:
                _carry_low(target, low, saturation)
        if bad >= 0:
            return bad
    return -1


@nb.njit(cache=True, nogil=True)
def _merge_scratch(frames, scratch, tasks, saturation):
    """Add each scratch slot into its frame, saturating: a sum of capped counts capped again is the capped sum."""
    for k in range(tasks.shape[0]):
        slot = tasks[k, _T_SLOT]
        if slot >= 0:
            target = frames[tasks[k, _T_FRAME]]
            part = scratch[slot]
            for i in range(target.shape[0]):
                total = target[i] + part[i]
                target[i] = total if total < saturation else saturation


# --------------------------------------------------------------------------
# work plan and threads
# --------------------------------------------------------------------------

# Below this many events per thread, a thread's start-up and the scratch
# merge cost more than the thread saves.
_EVENTS_PER_THREAD = 250_000


def _thread_count(threads, work: int) -> int:
    if threads is None:
        return 1 if work < 2 * _EVENTS_PER_THREAD else min(available_threads(), work // _EVENTS_PER_THREAD)
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ConfigError(f"threads must be a positive integer or None (choose by input size), got {threads!r}")
    return int(threads)


@nb.njit(cache=True, nogil=True)
def _plan(starts, ends, n):
    """Tasks (frame, lo, hi, slot) in order of lo: one per frame, and one per run of events in no frame.

    Events in no frame (before the first, between frames, after the last)
    are validated all the same. Numba, not numpy: for a sample of a few
    thousand events, numpy's calls cost more than the counting.
    """
    rows = 0
    reach = 0
    for s in range(starts.shape[0]):
        rows += 2 if starts[s] > reach else 1
        reach = max(reach, ends[s])
    if reach < n:
        rows += 1
    tasks = np.empty((rows, 4), np.int64)
    k = 0
    reach = 0
    for s in range(starts.shape[0]):
        if starts[s] > reach:
            tasks[k, _T_FRAME], tasks[k, _T_LO], tasks[k, _T_HI], tasks[k, _T_SLOT] = -1, reach, starts[s], -1
            k += 1
        tasks[k, _T_FRAME], tasks[k, _T_LO], tasks[k, _T_HI], tasks[k, _T_SLOT] = s, starts[s], ends[s], -1
        k += 1
        reach = max(reach, ends[s])
    if reach < n:
        tasks[k, _T_FRAME], tasks[k, _T_LO], tasks[k, _T_HI], tasks[k, _T_SLOT] = -1, reach, n, -1
    return tasks


def _split(tasks: np.ndarray, workers: int) -> tuple[np.ndarray, list[int], int]:
    """Cut the plan into workers runs of equal event counts.

    A frame cut in two counts its second part into a scratch slot, merged
    afterwards; returns (tasks, the first task of each run and the end, slots).
    """
    sizes = tasks[:, _T_HI] - tasks[:, _T_LO]
    total = int(sizes.sum())
    bounds = [0]
    slots = 0
    for w in range(1, workers):
        target = total * w // workers
        done = np.cumsum(tasks[:, _T_HI] - tasks[:, _T_LO])
        k = int(np.searchsorted(done, target, "right"))
        if k >= len(tasks):
            break
        before = int(done[k] - (tasks[k, _T_HI] - tasks[k, _T_LO]))
        cut = int(tasks[k, _T_LO]) + target - before
        if cut > tasks[k, _T_LO]:
            second = tasks[k].copy()
            second[_T_LO] = cut
            if second[_T_FRAME] >= 0:
                second[_T_SLOT] = slots
                slots += 1
            tasks = np.insert(tasks, k + 1, second, axis=0)
            tasks[k, _T_HI] = cut
            k += 1
        if k > bounds[-1]:
            bounds.append(k)
    bounds.append(len(tasks))
    return tasks, bounds, slots


_NO_WORDS = np.zeros((0, 2), np.int64)


def _packed_words(fields: EventFields) -> np.ndarray:
    """The events as (n, 2) int64 words when their fields lie as EVENT_DTYPE lays them (t int64, then
    x int16, y int16 and p int8 in the next word, 16 bytes a record), else an empty array."""
    t, x, y, p = fields.t, fields.x, fields.y, fields.p
    if not (fields.has_y and t.dtype == np.int64 and x.dtype == np.int16 and y.dtype == np.int16
            and p.dtype == np.int8 and t.strides == x.strides == y.strides == p.strides == (16,)):
        return _NO_WORDS
    base = t.__array_interface__["data"][0]
    if base % 8 or [a.__array_interface__["data"][0] - base for a in (x, y, p)] != [8, 10, 12]:
        return _NO_WORDS
    return np.lib.stride_tricks.as_strided(t, shape=(t.shape[0], 2), strides=(16, 8))


def _run_plan(fields: EventFields, frames: np.ndarray, starts, ends, width, height, p_lo, p_span, saturation,
              threads) -> int:
    """Count and validate per the plan, on one thread or several; the first bad event index or -1."""
    n = fields.t.shape[0]
    plane = frames.shape[1]
    frame_bytes = plane * frames.dtype.itemsize
    low_min_events = _low_counter_min_events(frame_bytes)
    low_shape = plane if frame_bytes > _LOW_COUNTER_BYTES else 0
    tasks = _plan(starts, ends, n)
    workers = _thread_count(threads, n)
    t, x, y, p = fields.t, fields.x, fields.y, fields.p
    words = _packed_words(fields)
    if workers == 1:
        return _bin_tasks(t, x, y, p, frames, frames[:0], np.zeros(low_shape, np.uint8), tasks, 0, len(tasks),
                          width, height, p_lo, p_span, saturation, low_min_events, words)
    tasks, bounds, slots = _split(tasks, workers)
    scratch = np.empty((slots, plane), frames.dtype)

    def run(first, last):
        return _bin_tasks(t, x, y, p, frames, scratch, np.zeros(low_shape, np.uint8), tasks, first, last,
                          width, height, p_lo, p_span, saturation, low_min_events, words)

    results = run_parts(run, list(zip(bounds[:-1], bounds[1:])))
    bad = [r for r in results if r >= 0]
    if bad:
        return min(bad)
    _merge_scratch(frames, scratch, tasks, saturation)
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


def _time_window_slices(t, time_window, overlap, include_incomplete, start_time, end_time):
    n_slices, start, stride = _time_window_count(t[0], t[-1], time_window, overlap, include_incomplete,
                                                 start_time, end_time)
    window_start_times = np.arange(n_slices) * stride + start
    window_end_times = window_start_times + time_window
    return _searchsorted_left(t, window_start_times, window_end_times)


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


def _time_bin_slices(t, n_time_bins, overlap):
    time_window = (t[-1] - t[0]) // n_time_bins * (1 + overlap)
    stride = time_window * (1 - overlap)
    window_start_times = np.arange(n_time_bins) * stride + t[0]
    window_end_times = window_start_times + time_window
    return _searchsorted_left(t, window_start_times, window_end_times)


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
def _extent(x, y, p):
    """Smallest and largest x and y, and the polarities seen (bit k: p = k, for 0 <= k < 62; bit 63: any other)."""
    min_x = np.int64(x[0])
    max_x = min_x
    min_y = np.int64(y[0])
    max_y = min_y
    seen_p = np.uint64(0)
    for i in range(x.shape[0]):
        xi = np.int64(x[i])
        yi = np.int64(y[i])
        min_x = min(min_x, xi)
        max_x = max(max_x, xi)
        min_y = min(min_y, yi)
        max_y = max(max_y, yi)
        pi = np.uint64(np.int64(p[i]))
        seen_p |= np.uint64(1) << min(pi, np.uint64(63))
    return min_x, max_x, min_y, max_y, seen_p


def _infer_sensor_size(fields: EventFields) -> SensorSize:
    """tonic's rule for a missing sensor size: max x + 1, max y + 1 (1 without y), number of distinct p."""
    events = fields.events
    if fields.t.shape[0] == 0:
        raise ConfigError("sensor_size is required for an empty event array (nothing to infer it from)")
    min_x, max_x, min_y, max_y, seen_p = _extent(fields.x, fields.y, fields.p)
    for name, smallest in (("x", min_x), ("y", min_y)):
        if smallest < 0:
            bad = int(np.flatnonzero(events[name] < 0)[0])
            raise EventValidationError(f"event {bad}: {name} = {int(events[name][bad])} is negative",
                                       index=bad, field=name)
    seen_p = int(seen_p)
    if seen_p & ~3:
        p = events["p"].astype(np.int64)
        bad = int(np.flatnonzero((p != 0) & (p != 1))[0])
        raise EventValidationError(f"event {bad}: polarity p = {int(p[bad])}, expected 0 or 1",
                                   index=bad, field="p")
    return SensorSize(int(max_x) + 1, int(max_y) + 1, bin(seen_p).count("1"))


def to_frame(events, sensor_size, time_window=None, event_count=None, n_time_bins=None, n_event_bins=None,
             overlap=0, include_incomplete=False, start_time=None, end_time=None, dtype=None,
             threads=None) -> np.ndarray:
    """Count events into frames of shape (T, P, H, W), exactly like ``tonic.transforms.ToFrame``.

    Give exactly one of time_window (µs), event_count, n_time_bins or
    n_event_bins. overlap is in µs for time_window, in events for
    event_count, and a fraction of a bin in [0, 1) for the bin modes.
    include_incomplete applies to time_window and event_count; start_time and
    end_time to time_window. sensor_size is (width, height, polarities), any
    number of polarities (p indexes the channel); None infers it from the
    events as tonic does (max x + 1, max y + 1, number of distinct
    polarities). dtype is int16 (default, as tonic; counts saturate at
    32,767), int32 or float32.

    events may have any layout (fields x, y, t, p in any order and integer
    widths, t integer or float, p bool or integer, strided views included);
    they are read in place. Events without a y field (a 1-D sensor such as
    audio spikes) give frames (T, P, W), as tonic's do.

    threads: how many threads count (frames, or parts of one, in parallel);
    None picks by input size, one thread per 250,000 events up to the cores
    this process may use.

    The module docstring lists tonic's slicing rules, which this function
    reproduces, and the cases where it deliberately differs from tonic.
    The input array is never modified.

    Raises:
        ConfigError: bad parameters.
        EventValidationError: t not sorted, p outside [0, polarities), x or y
            outside the sensor, or both polarities on a one-polarity sensor;
            the message names the first offending event's index and field.
    """
    modes = {"time_window": time_window, "event_count": event_count,
             "n_time_bins": n_time_bins, "n_event_bins": n_event_bins}
    chosen = [name for name, value in modes.items() if value is not None]
    if len(chosen) != 1:
        raise ConfigError("give exactly one of time_window, event_count, n_time_bins, n_event_bins; got "
                          + (", ".join(chosen) if chosen else "none"))
    frame_dtype = _frame_dtype(dtype)
    fields = event_fields(events, require_y=False)
    events, t = fields.events, fields.t
    sensor = _infer_sensor_size(fields) if sensor_size is None else _sensor(sensor_size)
    n = t.shape[0]
    height = sensor.height if fields.has_y else 1
    frame_shape = (sensor.polarities, sensor.height, sensor.width) if fields.has_y \
        else (sensor.polarities, sensor.width)
    if n and t.dtype.kind == "f" and not (math.isfinite(t[0]) and math.isfinite(t[-1])):
        raise_event_error(events, 0 if not math.isfinite(t[0]) else n - 1, sensor)

    if time_window is not None:
        _check_positive("time_window", time_window)
        if not time_window - overlap > 0:
            raise ConfigError(f"overlap ({overlap!r}) must be smaller than time_window ({time_window!r})")
        if n == 0:
            n_slices = 1
            if start_time is not None and end_time is not None:
                n_slices, _, _ = _time_window_count(0, 0, time_window, overlap, include_incomplete,
                                                    start_time, end_time)
            return np.zeros((n_slices,) + frame_shape, frame_dtype)
        starts, ends = _time_window_slices(t, time_window, overlap, include_incomplete, start_time, end_time)
    elif event_count is not None:
        _check_positive_int("event_count", event_count)
        if not event_count - overlap > 0:
            raise ConfigError(f"overlap ({overlap!r}) must be smaller than event_count ({event_count!r})")
        if n == 0:
            return np.zeros((1,) + frame_shape, frame_dtype)
        starts, ends = _event_count_slices(n, event_count, overlap, include_incomplete)
    elif n_time_bins is not None:
        _check_positive_int("n_time_bins", n_time_bins)
        _check_bin_overlap(overlap)
        if n == 0:
            return np.zeros((n_time_bins,) + frame_shape, frame_dtype)
        starts, ends = _time_bin_slices(t, n_time_bins, overlap)
    else:
        _check_positive_int("n_event_bins", n_event_bins)
        _check_bin_overlap(overlap)
        if n == 0:
            return np.zeros((n_event_bins,) + frame_shape, frame_dtype)
        starts, ends = _event_bin_slices(n, n_event_bins, overlap)

    frames = np.empty((len(starts),) + frame_shape, frame_dtype)
    # A one-polarity sensor takes the events of one polarity, whichever it is (tonic's rule).
    p_required = int(fields.p[0]) if sensor.polarities == 1 else -1
    if p_required not in (-1, 0, 1):
        raise_event_error(events, 0, sensor)
    p_lo, p_span = (0, sensor.polarities - 1) if p_required < 0 else (p_required, 0)
    bad_index = _run_plan(fields, frames.reshape(len(starts), -1), np.asarray(starts, np.int64),
                          np.asarray(ends, np.int64), sensor.width, height, p_lo, p_span,
                          _saturation(frame_dtype), threads)
    if bad_index >= 0:
        raise_event_error(events, bad_index, sensor, p_required)
    return frames


# --------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------

# The binner's scalar state lives in one int64 array so that a push costs one
# short Numba dispatch: these are its slots. The times that events are
# checked against (last event, flushed clock) live in a float64 pair, which
# compares exactly with integer t below 2**53 µs and with float t alike.
_S_P_REQUIRED, _S_START, _S_WINDOW, _S_OPEN_INDEX, _S_WIDTH, _S_HEIGHT, _S_POLARITIES, _S_OPEN_EVENTS, \
    _S_OPEN_USES_LOW, _S_LOW_MIN_EVENTS = range(10)
_C_LAST_T, _C_CLOCK_T = range(2)


@nb.njit(cache=True, nogil=True)
def _count_chunk(t, x, y, p, state, open_frame, block, low, saturation, p_lo, p_span, fused):
    """Count a chunk into the open frame and the block of newer frames, validating as it goes.

    Returns (first bad index or -1, i0, open_hi): the events [i0, open_hi)
    went into the open frame. fused (the chunk is not validated yet): the open
    frame is counted in place and stops short of saturating a pixel (-2 - i),
    so that a failure can be taken back; a transition to a window the block
    does not hold can only come from unsorted t, and is reported as the first
    bad event from there. The binner's state changes only on success.
    """
    n = t.shape[0]
    width = state[_S_WIDTH]
    height = state[_S_HEIGHT]
    start = state[_S_START]
    window = state[_S_WINDOW]
    open_index = state[_S_OPEN_INDEX]
    # Events before the stream's start are not counted, but are checked all the same.
    i0 = _bisect_t(t, 0, n, start)
    bad = _first_bad(t, x, y, p, 0, i0, width, height, p_lo, p_span)
    if bad >= 0:
        return bad, i0, i0
    i = i0
    open_hi = i0
    current = 0
    current_end = start + (open_index + 1) * window
    frame = open_frame
    use_low = state[_S_OPEN_USES_LOW] != 0
    window_events = state[_S_OPEN_EVENTS]
    while i < n:
        # The chunk may be unsorted: bisection still gives a j in [i, n], and
        # counting validates every event from i on.
        j = _bisect_t(t, i, n, current_end)
        bad = _count(t, x, y, p, i, j, frame, low if use_low else low[:0], width, height, p_lo, p_span,
                     saturation, fused and current == 0, window_events)
        if current == 0:
            open_hi = j if bad == -1 else (bad if bad >= 0 else -2 - bad)
        if bad != -1:
            return bad, i0, open_hi
        window_events += j - i
        if j == n:
            break
        if not t[j] >= current_end:
            return max(_first_bad(t, x, y, p, j, n, width, height, p_lo, p_span), j), i0, open_hi
        step = np.int64((t[j] - current_end) // window) + 1
        if current + step > block.shape[0]:
            return max(_first_bad(t, x, y, p, j, n, width, height, p_lo, p_span), j), i0, open_hi
        if use_low:
            _carry_low(frame, low, saturation)
        # Windows of one stream are alike: the one that closed picks the next one's counter.
        use_low = window_events >= state[_S_LOW_MIN_EVENTS] and t[j] < current_end + window
        window_events = 0
        # A division only when the window changes, not per event.
        current += step
        current_end = start + (open_index + current + 1) * window
        frame = block[current - 1]
        i = j
    state[_S_OPEN_EVENTS] = window_events
    state[_S_OPEN_USES_LOW] = 1 if use_low else 0
    return -1, i0, open_hi


@nb.njit(cache=True, nogil=True)
def _push_chunk(t, x, y, p, state, clock, open_frame, block, low, saturation):
    """Count a chunk into the open frame and the block of newer frames; a bad chunk changes nothing.

    One pass counts and validates together; if it meets a bad event, the
    counts it put in the open window are taken back (block is the caller's new
    memory, dropped on failure). Where taking back could not be exact -- the
    open window counts in low bytes (see _count) and the chunk closes it, or
    a pixel of it would saturate -- the chunk is validated first and counted
    after. A window that
    follows a dense one (state[_S_LOW_MIN_EVENTS] events or more) is counted
    in low bytes, which carry into its frame when it closes. open_frame and
    the rows of block are flat (P*H*W). Returns the first bad index or -1.
    """
    n = t.shape[0]
    if n == 0:
        return -1
    p_required = state[_S_P_REQUIRED]
    if p_required < 0 and state[_S_POLARITIES] == 1:
        p_required = np.int64(p[0])
        if p_required < 0 or p_required > 1:
            return 0
    if p_required >= 0:
        p_lo = p_required
        p_span = 0
    else:
        p_lo = 0
        p_span = state[_S_POLARITIES] - 1
    if not t[0] >= max(clock[_C_LAST_T], clock[_C_CLOCK_T]):
        return 0
    open_uses_low = state[_S_OPEN_USES_LOW] != 0
    # A chunk that ends inside the open window closes none (unsorted, it fails before leaving the
    # window): its counts in low are all the open window's, and can be taken back one by one.
    fused = not open_uses_low or t[n - 1] < state[_S_START] + (state[_S_OPEN_INDEX] + 1) * state[_S_WINDOW]
    if fused:
        bad, i0, open_hi = _count_chunk(t, x, y, p, state, open_frame, block, low, saturation, p_lo, p_span, True)
        if bad != -1:
            _uncount(x, y, p, i0, open_hi, open_frame, low if open_uses_low else low[:0], state[_S_WIDTH],
                     state[_S_HEIGHT], p_lo)
            if not open_uses_low:
                low[:] = 0  # only windows of this chunk, now dropped, can have used it
            if bad >= 0:
                return bad
            fused = False  # a pixel of the open window saturates: validate first, then count
    if not fused:
        bad = _first_bad(t, x, y, p, 0, n, state[_S_WIDTH], state[_S_HEIGHT], p_lo, p_span)
        if bad >= 0:
            return bad
        _count_chunk(t, x, y, p, state, open_frame, block, low, saturation, p_lo, p_span, False)
    clock[_C_LAST_T] = t[n - 1]
    state[_S_P_REQUIRED] = p_required
    return -1


@nb.njit(cache=True, nogil=True)
def _push_records(events, state, clock, open_frame, no_block, low, saturation):
    """_push_chunk for a chunk that closes no window, given as the structured array itself: one
    dispatch with seven arguments, the fields taken apart here, not in Python (a live source pushes
    thousands of small chunks a second; this halves what a push costs beyond its counting).
    Returns -2, changing nothing, when the chunk's last event reaches a later window (the caller then
    pushes it the general way); otherwise as _push_chunk."""
    return _push_in_window(events, _NO_WORDS, state, clock, open_frame, no_block, low, saturation)


@nb.njit(cache=True, nogil=True)
def _push_event_records(events, state, clock, open_frame, no_block, low, saturation):
    """_push_records for chunks of EVENT_DTYPE itself, counted in place through their int64 words."""
    return _push_in_window(events, events.view(np.int64).reshape(-1, 2), state, clock, open_frame, no_block,
                           low, saturation)


@nb.njit(cache=True, nogil=True, inline="always")
def _push_in_window(events, words, state, clock, open_frame, no_block, low, saturation):
    t = events["t"]
    n = t.shape[0]
    if n == 0:
        return -1
    if not t[n - 1] < state[_S_START] + (state[_S_OPEN_INDEX] + 1) * state[_S_WINDOW]:
        return -2
    x, y, p = events["x"], events["y"], events["p"]
    p_required = state[_S_P_REQUIRED]
    polarities = state[_S_POLARITIES]
    if ((p_required >= 0 or polarities > 1) and t[0] >= state[_S_START]
            and t[0] >= max(clock[_C_LAST_T], clock[_C_CLOCK_T])):
        # The steady state of a live stream, in one loop that counts and validates (_count_chunk's
        # window search and bookkeeping cost a fifth of a 1,000-event push), in place or in the
        # open window's low bytes. Anything unusual -- a bad event, a pixel about to saturate, a
        # carry that would -- is taken back and goes the general way.
        p_lo, p_span = (p_required, 0) if p_required >= 0 else (0, polarities - 1)
        width, height = state[_S_WIDTH], state[_S_HEIGHT]
        open_low = low if state[_S_OPEN_USES_LOW] != 0 else low[:0]
        if words.shape[0] > 0 and open_low.shape[0] == 0:
            bad = _count_packed(words, 0, n, open_frame, width, height, p_lo, p_span, saturation, True,
                                state[_S_OPEN_EVENTS])
        elif words.shape[0] > 0:
            bad = _count_packed_low(words, t, x, y, p, 0, n, open_frame, open_low, width, height, p_lo, p_span,
                                    saturation, True)
        else:
            bad = _count(t, x, y, p, 0, n, open_frame, open_low, width, height, p_lo, p_span, saturation, True,
                         state[_S_OPEN_EVENTS])
        if bad == -1:
            state[_S_OPEN_EVENTS] += n
            clock[_C_LAST_T] = t[n - 1]
            return -1
        _uncount(x, y, p, 0, bad if bad >= 0 else -2 - bad, open_frame, open_low, width, height, p_lo)
    return _push_chunk(t, x, y, p, state, clock, open_frame, no_block, low, saturation)


def _compiled_for(dispatcher, args):
    """dispatcher's machine code for exactly the types of args (C-contiguous, aligned arrays), called
    without the dispatcher's type resolution: 0.6 µs a call instead of 1.4 µs with seven arguments,
    half of what a small push costs beyond its counting. Arguments of other types raise TypeError, but
    the caller must pass only C-contiguous, aligned, 1-D arrays where the compiled code expects them
    (nothing checks layouts). The dispatcher itself where this Numba has no such entry point."""
    signature = tuple(nb.typeof(arg) for arg in args)
    try:
        dispatcher.compile(signature)
        return dispatcher.overloads[signature].entry_point
    except (AttributeError, KeyError):
        return dispatcher


# _push_records compiled for (events layout, frame dtype): looking the entry point up costs ~0.4 ms
# (typing seven arguments, the dispatcher's locks), which every stream's first push paid, all at
# once when 16 streams started together (the run's worst latencies, measured).
_IN_WINDOW_PUSH: dict = {}


def _push_in_window_for(layout: np.dtype, frame_dtype: np.dtype, in_window_args: tuple):
    key = (layout, frame_dtype)
    push = _IN_WINDOW_PUSH.get(key)
    if push is None:
        dispatcher = _push_event_records if layout == EVENT_DTYPE else _push_records
        push = _IN_WINDOW_PUSH[key] = _compiled_for(dispatcher, (np.empty(0, layout), *in_window_args))
    return push


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
        self._plane = int(np.prod(self._frame_shape))
        self._no_block = np.zeros((0, self._plane), self.dtype)
        frame_bytes = self.dtype.itemsize * self._plane
        self._low_min_events = _low_counter_min_events(frame_bytes)
        # The open window's low count bytes (large frames only; see _count).
        self._low = np.zeros(self._plane if frame_bytes > _LOW_COUNTER_BYTES else 0, np.uint8)
        self._state = np.zeros(10, np.int64)
        self._clock = np.zeros(2, np.float64)
        self._in_place_layout = None  # the dtype of chunks last read in place
        self._push_in_window = None   # _push_records compiled for that layout, if it takes it
        self.reset(start_time)

    def reset(self, start_time=None) -> None:
        """Forget the stream: drop the open window; the next window starts at start_time or the next event."""
        self.start_time = None if start_time is None else int(start_time)
        self._open_index = 0
        self._set_open(np.zeros(self._frame_shape, self.dtype))
        self._low[...] = 0
        self._clock[:] = -np.inf
        state = self._state
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

    def _set_open(self, frame: np.ndarray) -> None:
        """frame (P, H, W) becomes the window being filled."""
        self._open = frame
        self._open_flat = frame.reshape(-1)
        self._in_window_args = (self._state, self._clock, self._open_flat, self._no_block, self._low,
                                self._saturation)

    def push(self, chunk) -> list[Frame]:
        """Count a chunk of events (any layout, read in place); return the frames it completed (oldest first)."""
        known_layout = type(chunk) is np.ndarray and chunk.dtype is self._in_place_layout and chunk.ndim == 1
        push_in_window = self._push_in_window
        if known_layout and push_in_window is not None and self.start_time is not None:
            flags = chunk.flags
            # the common case of a live stream: a small chunk inside the open window; anything else (a
            # window closes, a bad event) changes nothing here and goes the general way below
            if flags.c_contiguous and flags.aligned and push_in_window(chunk, *self._in_window_args) == -1:
                return []
        if known_layout:
            # A live source pushes thousands of small chunks a second, all of one layout: skip the checks.
            events, t, x, y, p = chunk, chunk["t"], chunk["x"], chunk["y"], chunk["p"]
        else:
            events, t, x, y, p, has_y = event_fields(chunk, require_y=False)
            if events is chunk and has_y and type(chunk) is np.ndarray:
                self._in_place_layout = chunk.dtype
                takes_records = chunk.dtype.names is not None and all(
                    np.dtype(chunk.dtype.fields[f][0]).kind in "iubf" for f in ("t", "x", "y", "p"))
                self._push_in_window = (_push_in_window_for(chunk.dtype, self.dtype, self._in_window_args)
                                        if takes_records else None)
        n = t.shape[0]
        if n == 0:
            return []
        state = self._state
        start = self.start_time
        if start is None:
            if not t[0] == t[0]:
                raise_event_error(events, 0, self.sensor_size, what="chunk event")
            start = math.floor(t[0])
            state[_S_START] = start
        last_t = t[n - 1].item()
        n_new = int((last_t - start) // self.time_window) - self._open_index if last_t >= start else 0
        block = np.zeros((n_new, self._plane), self.dtype) if n_new > 0 else self._no_block
        bad_index = _push_chunk(t, x, y, p, state, self._clock, self._open_flat, block, self._low,
                                self._saturation)
        if bad_index >= 0:
            last_event_t, clock_t = self._clock
            raise_event_error(events, bad_index, self.sensor_size, int(state[_S_P_REQUIRED]),
                              previous_t=None if last_event_t == -np.inf else last_event_t,
                              clock_t=None if clock_t == -np.inf else clock_t, what="chunk event")
        self.start_time = start
        if n_new <= 0:
            return []
        return self._close(block, n_new)

    def flush(self, until_t) -> list[Frame]:
        """The source's clock reached until_t: return every window ending at or before it."""
        until_t = int(until_t)
        state = self._state
        self._clock[_C_CLOCK_T] = max(self._clock[_C_CLOCK_T], until_t)
        if self.start_time is None or until_t < self.start_time:
            return []
        n_new = (until_t - self.start_time) // self.time_window - self._open_index
        if n_new <= 0:
            return []
        if state[_S_OPEN_USES_LOW]:
            _carry_low(self._open_flat, self._low, self._saturation)
        # The window after a flush starts empty-handed: in-place counting until a dense window shows up.
        state[_S_OPEN_USES_LOW] = 0
        state[_S_OPEN_EVENTS] = 0
        return self._close(np.zeros((n_new, self._plane), self.dtype), n_new)

    def _close(self, block: np.ndarray, n_new: int) -> list[Frame]:
        """Emit the open frame and all but the last of block; the last becomes the open frame."""
        window = self.time_window
        t0 = self.start_time + self._open_index * window
        frames = [Frame(self._open, t0, t0 + window)]
        block = block.reshape((n_new,) + self._frame_shape)
        for i in range(n_new - 1):
            t0 += window
            frames.append(Frame(block[i], t0, t0 + window))
        self._set_open(block[n_new - 1])
        self._open_index += n_new
        self._state[_S_OPEN_INDEX] = self._open_index
        return frames
