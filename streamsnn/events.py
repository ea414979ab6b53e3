"""The event contract shared by every stage.

Events are a numpy structured array with fields ``x``, ``y``, ``t``, ``p``
(t in microseconds, int64; p in {0, 1}, 1 = ON), sorted by t. tonic's
transforms index fields by name, so they take these arrays unchanged.

Field order puts ``t`` first so that the record is naturally aligned in 16
bytes (8 + 2 + 2 + 1 + 3 padding): Numba kernels read aligned int64
timestamps, and memory traffic is a third lower than the 24-byte layout that
x, y, t, p order with alignment would need.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .errors import EventValidationError, SensorSizeError

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "<i1")], align=True)
EVENT_FIELDS = ("x", "y", "t", "p")


class SensorSize(NamedTuple):
    """Sensor geometry as tonic writes it: (width, height, polarities)."""

    width: int
    height: int
    polarities: int = 2

    @classmethod
    def coerce(cls, value) -> "SensorSize":
        """Accept a SensorSize, a 2-tuple (w, h) or a 3-tuple (w, h, p)."""
        if isinstance(value, SensorSize):
            return value
        try:
            items = tuple(int(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise SensorSizeError(f"sensor size must be (width, height[, polarities]), got {value!r}") from exc
        if len(items) == 2:
            items = items + (2,)
        # Any number of polarity channels, as tonic allows: p indexes the channel.
        if len(items) != 3 or items[0] <= 0 or items[1] <= 0 or items[2] <= 0:
            raise SensorSizeError(
                f"sensor size must be (width > 0, height > 0, polarities > 0), got {value!r}")
        return cls(*items)


def empty_events(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=EVENT_DTYPE)


def make_events(x, y, t, p) -> np.ndarray:
    """Build an event array from four equal-length sequences."""
    x = np.asarray(x)
    events = np.empty(len(x), dtype=EVENT_DTYPE)
    events["x"] = x
    events["y"] = y
    events["t"] = t
    events["p"] = p
    return events


def _check_fields(array, source, require_y: bool = True) -> None:
    if not isinstance(array, np.ndarray) or array.dtype.names is None:
        raise EventValidationError("expected a structured numpy array with fields x, y, t, p", source=source)
    missing = [f for f in EVENT_FIELDS if f not in array.dtype.names and (require_y or f != "y")]
    if missing:
        raise EventValidationError(
            f"event array lacks field(s) {', '.join(missing)}; has {', '.join(array.dtype.names)}",
            field=missing[0], source=source)


def as_events(array: np.ndarray, source: str | None = None) -> np.ndarray:
    """Convert any structured array with x, y, t, p fields to EVENT_DTYPE (a copy only if needed)."""
    _check_fields(array, source)
    if array.dtype == EVENT_DTYPE:
        return array
    return _converted(array, source)


def _converted(array: np.ndarray, source: str | None) -> np.ndarray:
    """A copy in EVENT_DTYPE, each field range-checked; a missing y field becomes 0."""
    out = np.zeros(array.shape[0], dtype=EVENT_DTYPE)
    for name in EVENT_FIELDS:
        if name not in array.dtype.names:
            continue
        column = array[name]
        target = EVENT_DTYPE[name]
        if column.dtype.kind == "f" and name != "t" and np.any(column != np.floor(column)):
            raise EventValidationError(f"field {name!r} holds non-integer values", field=name, source=source)
        if name == "p":
            column = column.astype(np.int64) if column.dtype == np.bool_ else column
        info = np.iinfo(target)
        if column.size and (column.min() < info.min or column.max() > info.max):
            bad = int(np.flatnonzero((column < info.min) | (column > info.max))[0])
            raise EventValidationError(
                f"event {bad}: field {name!r} = {column[bad]} does not fit {target}", index=bad,
                field=name, source=source)
        out[name] = column
    return out


class EventFields(NamedTuple):
    """Field views of an event array, for kernels that read any layout in place.

    ``events`` is the array the views look into (for naming a bad event);
    ``y`` reads as zeros, stride 0, when the events have no y field
    (``has_y`` False: a 1-D sensor, tonic's audio layout).
    """

    events: np.ndarray
    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray
    has_y: bool


# The field types the kernels read natively; anything else (float or
# big-endian coordinates, say) is converted to EVENT_DTYPE first.
_NATIVE_KINDS = {"t": ("iu", "f"), "x": ("iu",), "y": ("iu",), "p": ("biu",)}
_ZERO = np.zeros(1, np.int16)


def _native(dtype: np.dtype, name: str) -> bool:
    kinds = _NATIVE_KINDS[name]
    if not dtype.isnative or dtype.shape != () or dtype.itemsize > 8:
        return False
    if dtype.kind in kinds[0]:
        return True
    return len(kinds) > 1 and dtype.kind in kinds[1] and dtype.itemsize in (4, 8)


# dtype -> whether its fields are read in place, for the layouts seen so far:
# a live source pushes thousands of small chunks a second, all alike.
_IN_PLACE: dict = {}


def event_fields(array, source: str | None = None, require_y: bool = True) -> EventFields:
    """Views of the x, y, t, p fields of any structured event array, without copying it.

    Any field order, integer x/y of any width, integer or float t, bool or
    integer p, strided views and record arrays are read in place; other
    field types are copied into EVENT_DTYPE (with the checks of as_events).
    require_y False accepts events without a y field (then y reads as 0).
    """
    in_place = _IN_PLACE.get(array.dtype) if type(array) is np.ndarray else None
    if in_place is None:
        _check_fields(array, source, require_y)
        if type(array) is not np.ndarray:
            array = array.view(np.ndarray)  # a record array reads as a plain one
        fields = array.dtype.fields
        names = EVENT_FIELDS if "y" in fields else ("x", "t", "p")
        in_place = all(_native(fields[name][0], name) for name in names)
        if len(_IN_PLACE) > 64:
            _IN_PLACE.clear()
        _IN_PLACE[array.dtype] = in_place
    elif require_y and "y" not in array.dtype.fields:
        _check_fields(array, source, require_y)
    if array.ndim != 1:
        raise EventValidationError(f"expected a 1-d event array, got shape {array.shape}", source=source)
    has_y = "y" in array.dtype.fields
    if not in_place:
        array = _converted(array, source)  # y, if missing, is zeros there
    y = array["y"] if "y" in array.dtype.fields else as_strided(_ZERO, shape=(array.shape[0],), strides=(0,))
    return EventFields(array, array["t"], array["x"], y, array["p"], has_y)


def validate_events(events: np.ndarray, sensor_size=None, *, source: str | None = None) -> np.ndarray:
    """Check the contract and return the events; raise EventValidationError naming event and field.

    Checks: t non-decreasing, p in {0, 1}, and, when sensor_size is given,
    0 <= x < width and 0 <= y < height.
    """
    events = as_events(events, source=source)
    if events.size == 0:
        return events
    t = events["t"]
    backwards = np.flatnonzero(t[1:] < t[:-1])
    if backwards.size:
        i = int(backwards[0]) + 1
        raise EventValidationError(
            f"timestamps are not sorted: event {i} has t = {int(t[i])} us after t = {int(t[i - 1])} us",
            index=i, field="t", source=source)
    p = events["p"]
    bad_p = np.flatnonzero((p != 0) & (p != 1))
    if bad_p.size:
        i = int(bad_p[0])
        raise EventValidationError(f"event {i}: polarity p = {int(p[i])}, expected 0 or 1",
                                   index=i, field="p", source=source)
    if sensor_size is not None:
        size = SensorSize.coerce(sensor_size)
        for name, limit in (("x", size.width), ("y", size.height)):
            column = events[name]
            bad = np.flatnonzero((column < 0) | (column >= limit))
            if bad.size:
                i = int(bad[0])
                raise EventValidationError(
                    f"event {i}: {name} = {int(column[i])} is outside the sensor "
                    f"(0 <= {name} < {limit} for sensor size {tuple(size)})",
                    index=i, field=name, source=source)
    return events
