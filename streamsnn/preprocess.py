"""Preprocessing on the way into the binner: downsample, crop, polarity merge, denoise.

Each operation is a plain function over a whole event array and a streaming
object with ``push(events) -> events``, ``output_sensor_size(sensor_size)``
and ``reset()``. For any split of a stream into chunks, the concatenated
outputs of ``push`` equal the function applied to the whole stream; the
streaming job chains them (``Chain``) in front of a ``StreamingBinner``.

Relation to tonic 1.7.0 (checked on the real recordings by the tests):

* ``downsample(events, factor)`` is ``x // fx, y // fy``: the same events as
  ``tonic.transforms.Downsample(spatial_factor=1/factor)``, except that tonic
  multiplies by the float 1/factor and truncates, which puts some pixels in
  the wrong cell (factor 49: x = 49 lands in 0). Output size is ``ceil(W / fx)``
  x ``ceil(H / fy)``.
* ``crop(events, size, origin=None, sensor_size=...)`` keeps the events in the
  box ``origin <= (x, y) < origin + size`` and shifts them to start at 0. With
  origin None the box is centred as ``tonic.transforms.CenterCrop`` centres it
  (``origin = ((W - w) // 2, (H - h) // 2)``, size as (width, height), which is
  how CenterCrop's code reads it, whatever its docstring says), including
  CenterCrop's padding when the size exceeds the sensor.
* ``merge_polarities(events)`` sets p = 0, as ``tonic.transforms.MergePolarities``;
  unlike tonic, the output sensor size says so (one polarity).
* ``denoise(events, filter_time)`` keeps exactly the events
  ``tonic.transforms.Denoise(filter_time)`` keeps: an event survives when one of
  its four neighbours (not its own pixel) had an event less than filter_time
  earlier, at the same time included. Two tonic details matter and are
  reproduced: the per-pixel memory starts at filter_time, so every event with
  t < filter_time (absolute time) survives if it has any neighbour inside the
  bounds; and the bounds are the largest x and y in the events, not the
  sensor. A stream cannot know its largest x ahead, so ``Denoise`` (streaming)
  uses the sensor's bounds; ``denoise(..., sensor_size=S)`` does the same, and
  equals the streaming filter. Since the bounds only decide whether a
  neighbour exists, the two rules disagree only when every event is on pixel
  (0, 0) (tonic's box is then 1 x 1), for the events with t < filter_time.

All of them read any event layout in place (fields x, y, t, p in any order
and integer width, as ``to_frame`` does), validate it (sorted t, p in
[0, polarities) -- {0, 1} without a sensor --, coordinates inside the sensor
when it is known) and raise EventValidationError naming the event and
field; none modifies its input. They return EVENT_DTYPE arrays (a float t
is truncated to whole microseconds).
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

# Validation is binning's kernel, called from Python rather than inlined: a
# Numba cache entry only notices changes to its own module's source.
from .binning import first_invalid_event, raise_event_error
from .errors import ConfigError
from .events import EVENT_DTYPE, EventFields, SensorSize, event_fields

__all__ = [
    "downsample", "crop", "merge_polarities", "denoise",
    "Downsample", "Crop", "MergePolarities", "Denoise", "Chain",
]

# Coordinates are int16: without a sensor, only negative values are out of range.
_NO_LIMIT = 1 << 15


# --------------------------------------------------------------------------
# validation shared by every operation
# --------------------------------------------------------------------------

def _validated(events, sensor: SensorSize | None, previous_t=None, what="event") -> EventFields:
    fields = event_fields(events)
    width, height, polarities = sensor if sensor is not None else (_NO_LIMIT, _NO_LIMIT, 2)
    # A one-polarity sensor still takes p = 1 events here: merging them is the binner's business.
    bad = first_invalid_event(fields.t, fields.x, fields.y, fields.p, width, height, max(polarities, 2),
                              -np.inf if previous_t is None else previous_t)
    if bad >= 0:
        raise_event_error(fields.events, bad, sensor, previous_t=previous_t, what=what)
    return fields


def _sensor_or_none(sensor_size):
    return None if sensor_size is None else SensorSize.coerce(sensor_size)


def _factors(factor) -> tuple[int, int]:
    pair = (factor, factor) if np.isscalar(factor) else tuple(factor)
    if len(pair) != 2 or any(isinstance(f, (bool, np.bool_)) or not isinstance(f, (int, np.integer)) or f < 1
                             for f in pair):
        raise ConfigError(f"downsampling factor must be a positive integer or a pair (fx, fy) of them, got {factor!r}")
    return int(pair[0]), int(pair[1])


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------

# Kernels read the input's field views and write EVENT_DTYPE as its two
# int64 words per event (t, then x | y << 16 | p << 32): one store each.

@nb.njit(cache=True, nogil=True, inline="always")
def _word(x, y, p):
    return x | (y << 16) | (p << 32)


@nb.njit(cache=True, nogil=True)
def _downsample_kernel(t, x, y, p, out, fx, fy):
    for i in range(np.uint64(t.shape[0])):
        out[i + i] = np.int64(t[i])
        out[i + i + np.uint64(1)] = _word(np.int64(x[i]) // fx, np.int64(y[i]) // fy, np.int64(p[i]))


@nb.njit(cache=True, nogil=True)
def _crop_kernel(t, x, y, p, out, x0, y0, width, height):
    """Copy the events inside the box, shifted to its origin; return how many."""
    kept = 0
    for i in range(np.uint64(t.shape[0])):
        xi = np.int64(x[i]) - x0
        yi = np.int64(y[i]) - y0
        if (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height):
            out[2 * kept] = np.int64(t[i])
            out[2 * kept + 1] = _word(xi, yi, np.int64(p[i]))
            kept += 1
    return kept


@nb.njit(cache=True, nogil=True)
def _merge_kernel(t, x, y, out):
    for i in range(np.uint64(t.shape[0])):
        out[i + i] = np.int64(t[i])
        out[i + i + np.uint64(1)] = _word(np.int64(x[i]), np.int64(y[i]), 0)


@nb.njit(cache=True, nogil=True)
def _denoise_kernel(t, x, y, p, out, memory, filter_time):
    """tonic's denoise_numpy loop: memory[y, x] holds t + filter_time of the pixel's last event.

    memory is float64, as tonic's, so that a float filter_time rounds the same.
    """
    height, width = memory.shape
    kept = 0
    for i in range(np.uint64(t.shape[0])):
        ti = t[i]
        xi = np.int64(x[i])
        yi = np.int64(y[i])
        memory[yi, xi] = ti + filter_time
        if ((xi > 0 and memory[yi, xi - 1] > ti) or (xi < width - 1 and memory[yi, xi + 1] > ti)
                or (yi > 0 and memory[yi - 1, xi] > ti) or (yi < height - 1 and memory[yi + 1, xi] > ti)):
            out[2 * kept] = np.int64(ti)
            out[2 * kept + 1] = _word(xi, yi, np.int64(p[i]))
            kept += 1
    return kept


def _empty_like(n):
    out = np.zeros(n, EVENT_DTYPE)
    return out, out.view(np.int64)


# --------------------------------------------------------------------------
# whole-array functions
# --------------------------------------------------------------------------

def downsample(events, factor, sensor_size=None) -> np.ndarray:
    """Divide x by fx and y by fy (integer division): factor is an int or (fx, fy)."""
    fx, fy = _factors(factor)
    f = _validated(events, _sensor_or_none(sensor_size))
    out, out_packed = _empty_like(len(f.t))
    _downsample_kernel(f.t, f.x, f.y, f.p, out_packed, fx, fy)
    return out


def _crop_box(size, origin, sensor: SensorSize | None):
    try:
        width, height = (int(v) for v in ((size, size) if np.isscalar(size) else size))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"crop size must be an int or (width, height), got {size!r}") from exc
    if not (0 < width < 1 << 15 and 0 < height < 1 << 15):
        raise ConfigError(f"crop size must be positive and fit int16 coordinates, got {size!r}")
    if origin is None:
        if sensor is None:
            raise ConfigError("a centred crop (origin=None) needs the sensor_size")
        origin = ((sensor.width - width) // 2, (sensor.height - height) // 2)
    try:
        x0, y0 = (int(v) for v in origin)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"crop origin must be (x, y), got {origin!r}") from exc
    return x0, y0, width, height


def crop(events, size, origin=None, sensor_size=None) -> np.ndarray:
    """Keep the events inside the box of ``size`` (w, h) at ``origin`` (x, y; None: centred), shifted to 0."""
    sensor = _sensor_or_none(sensor_size)
    x0, y0, width, height = _crop_box(size, origin, sensor)
    f = _validated(events, sensor)
    out, out_packed = _empty_like(len(f.t))
    kept = _crop_kernel(f.t, f.x, f.y, f.p, out_packed, x0, y0, width, height)
    return out[:kept].copy() if kept < len(out) else out


def merge_polarities(events) -> np.ndarray:
    """All events with p = 0 (one polarity channel)."""
    f = _validated(events, None)
    out, out_packed = _empty_like(len(f.t))
    _merge_kernel(f.t, f.x, f.y, out_packed)
    return out


def _check_filter_time(filter_time):
    if isinstance(filter_time, (bool, np.bool_)) or not isinstance(filter_time, (int, float, np.integer, np.floating)) \
            or not filter_time > 0 or not math.isfinite(filter_time):
        raise ConfigError(f"filter_time must be a positive number of microseconds, got {filter_time!r}")
    return float(filter_time)


def denoise(events, filter_time, sensor_size=None) -> np.ndarray:
    """tonic's Denoise: keep an event if a 4-neighbour fired less than filter_time µs before it.

    sensor_size None bounds the neighbourhood by the largest x and y in the
    events, exactly as tonic does; with a sensor size it uses the sensor's
    bounds, as the streaming Denoise must (see the module docstring).
    """
    filter_time = _check_filter_time(filter_time)
    sensor = _sensor_or_none(sensor_size)
    f = _validated(events, sensor)
    if len(f.t) == 0:
        return _empty_like(0)[0]
    if sensor is None:
        width, height = int(f.x.max()) + 1, int(f.y.max()) + 1
    else:
        width, height = sensor.width, sensor.height
    memory = np.full((height, width), filter_time)
    out, out_packed = _empty_like(len(f.t))
    kept = _denoise_kernel(f.t, f.x, f.y, f.p, out_packed, memory, filter_time)
    return out[:kept].copy()


# --------------------------------------------------------------------------
# streaming objects
# --------------------------------------------------------------------------

class _Stage:
    """push(events) -> events for one chunk; output_sensor_size; reset for a new stream."""

    def push(self, events) -> np.ndarray:
        raise NotImplementedError

    def output_sensor_size(self, sensor_size) -> SensorSize:
        raise NotImplementedError

    def reset(self) -> None:
        """Stateless stages have nothing to forget."""

    def __call__(self, events) -> np.ndarray:
        return self.push(events)


class Downsample(_Stage):
    """Streaming ``downsample``: stateless, so any chunking gives the whole-array result."""

    def __init__(self, factor, sensor_size=None):
        self.factor = _factors(factor)
        self.sensor_size = _sensor_or_none(sensor_size)

    def push(self, events) -> np.ndarray:
        return downsample(events, self.factor, self.sensor_size)

    def output_sensor_size(self, sensor_size) -> SensorSize:
        sensor = SensorSize.coerce(sensor_size)
        fx, fy = self.factor
        return SensorSize(-(-sensor.width // fx), -(-sensor.height // fy), sensor.polarities)

    def __repr__(self) -> str:
        return f"Downsample(factor={self.factor})"


class Crop(_Stage):
    """Streaming ``crop``; the box is fixed at construction (origin None: centred on sensor_size)."""

    def __init__(self, size, origin=None, sensor_size=None):
        self.sensor_size = _sensor_or_none(sensor_size)
        self.x0, self.y0, self.width, self.height = _crop_box(size, origin, self.sensor_size)

    def push(self, events) -> np.ndarray:
        return crop(events, (self.width, self.height), (self.x0, self.y0), self.sensor_size)

    def output_sensor_size(self, sensor_size) -> SensorSize:
        return SensorSize(self.width, self.height, SensorSize.coerce(sensor_size).polarities)

    def __repr__(self) -> str:
        return f"Crop(size=({self.width}, {self.height}), origin=({self.x0}, {self.y0}))"


class MergePolarities(_Stage):
    """Streaming ``merge_polarities``; the output sensor has one polarity."""

    def push(self, events) -> np.ndarray:
        return merge_polarities(events)

    def output_sensor_size(self, sensor_size) -> SensorSize:
        sensor = SensorSize.coerce(sensor_size)
        return SensorSize(sensor.width, sensor.height, 1)

    def __repr__(self) -> str:
        return "MergePolarities()"


class Denoise(_Stage):
    """Streaming ``denoise``: the per-pixel memory carries over from chunk to chunk.

    Equals ``denoise(whole, filter_time, sensor_size)`` for any chunking;
    ``reset()`` starts a new stream (a new sample) with a fresh memory.
    """

    def __init__(self, filter_time, sensor_size):
        self.filter_time = _check_filter_time(filter_time)
        self.sensor_size = SensorSize.coerce(sensor_size)
        self.reset()

    def reset(self) -> None:
        self._memory = np.full((self.sensor_size.height, self.sensor_size.width), self.filter_time)
        self._last_t = None

    def push(self, events) -> np.ndarray:
        f = _validated(events, self.sensor_size, previous_t=self._last_t, what="chunk event")
        if len(f.t) == 0:
            return _empty_like(0)[0]
        out, out_packed = _empty_like(len(f.t))
        kept = _denoise_kernel(f.t, f.x, f.y, f.p, out_packed, self._memory, self.filter_time)
        self._last_t = f.t[-1].item()
        return out[:kept].copy() if kept < len(out) else out

    def output_sensor_size(self, sensor_size) -> SensorSize:
        return SensorSize.coerce(sensor_size)

    def __repr__(self) -> str:
        return f"Denoise(filter_time={self.filter_time:g}, sensor_size={tuple(self.sensor_size)})"


class Chain(_Stage):
    """Stages applied in order; push, output_sensor_size and reset go through all of them."""

    def __init__(self, *stages):
        self.stages = list(stages[0]) if len(stages) == 1 and isinstance(stages[0], (list, tuple)) else list(stages)

    def push(self, events) -> np.ndarray:
        for stage in self.stages:
            events = stage.push(events)
        return events

    def output_sensor_size(self, sensor_size) -> SensorSize:
        sensor = SensorSize.coerce(sensor_size)
        for stage in self.stages:
            sensor = stage.output_sensor_size(sensor)
        return sensor

    def reset(self) -> None:
        for stage in self.stages:
            stage.reset()

    def __repr__(self) -> str:
        return f"Chain({', '.join(repr(s) for s in self.stages)})"
