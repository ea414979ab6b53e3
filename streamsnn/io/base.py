"""The Recording interface every reader implements, and the chunking shared by all of them.

A reader only has to decode its file front to back in blocks of bounded size
(``_blocks``); cutting those blocks into chunks of N events or of W
microseconds is done here once, so every format chunks the same way and the
concatenated chunks always equal the whole read.
"""
from __future__ import annotations

import os
import secrets
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ConfigError, EventFormatError, SensorSizeError
from ..events import EVENT_DTYPE, SensorSize, empty_events

# Decoders work in blocks of about this many bytes: large enough that Python
# overhead per block is negligible, small enough that a chunked read of a
# multi-gigabyte file stays within a few tens of megabytes.
BLOCK_BYTES = 16 * 1024 * 1024


class TruncatedRecordingWarning(UserWarning):
    """A recording ends inside a record; the events before it are returned."""


def warn_truncated(path, offset: int, what: str) -> None:
    warnings.warn(f"{os.fspath(path)} (byte offset {offset}): {what}; "
                  "returning the events up to the last complete record",
                  TruncatedRecordingWarning, stacklevel=3)


def read_exactly(f, size: int, path, offset: int) -> bytes:
    """``size`` bytes from the open file ``f`` (positioned at byte ``offset``).

    Readers plan their reads from the file size they measured when they
    opened the file; fewer bytes mean it shrank since (truncated or replaced
    while being read): an error, never a silent early end of the events.
    """
    raw = f.read(size)
    if len(raw) < size:
        raise EventFormatError(path, f"the file ends at byte {offset + len(raw)} although it reached at least "
                                     f"byte {offset + size} when opened: it shrank while being read",
                               offset=offset + len(raw))
    return raw


def read_array(path, dtype, offset: int, count: int) -> np.ndarray:
    """``count`` items of ``dtype`` from byte ``offset`` on, read (not memory-mapped: a mapped file that
    shrinks kills the reader with SIGBUS); fewer items than the size measured at open promised is an error."""
    dtype = np.dtype(dtype)
    with open(path, "rb") as f:
        f.seek(offset)
        array = np.empty(count, dtype=dtype)
        got = f.readinto(array.view(np.uint8))
    if got < count * dtype.itemsize:
        raise EventFormatError(path, f"the file ends at byte {offset + got} although it reached at least "
                                     f"byte {offset + count * dtype.itemsize} when opened: it shrank while "
                                     "being read", offset=offset + got)
    return array


def new_sibling_file(target, suffix: str = ".partial") -> Path:
    """A new empty file with a name of our own next to ``target``, to be renamed onto it once complete.

    Created with O_EXCL | O_NOFOLLOW, so it is never someone else's file or a
    link planted under a guessable name; the mode follows the umask, as the
    file written straight at ``target`` would.
    """
    target = Path(target)
    for _ in range(100):
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(6)}{suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
        except FileExistsError:
            continue
        except OSError as exc:
            raise EventFormatError(target, f"cannot create a file next to it: {exc.strerror}") from None
        return candidate
    raise EventFormatError(target, "cannot find an unused name next to it")


def publish_file(temporary, target, overwrite: bool) -> None:
    """Rename the finished ``temporary`` onto ``target``; without ``overwrite``, never replace what is there."""
    if overwrite:
        os.replace(temporary, target)
        return
    try:  # a hard link fails where anything (a file, a link) took the name meanwhile
        os.link(temporary, target, follow_symlinks=False)
    except FileExistsError:
        raise EventFormatError(target, "already exists (use --force to overwrite)") from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(target):
            raise EventFormatError(target, "already exists (use --force to overwrite)") from None
        os.rename(temporary, target)
        return
    os.unlink(temporary)


class Recording:
    """An event file opened for reading.

    Attributes:
        path: the file.
        format: short name of the format ("evt2", "evt3", "dat", "aedat4",
            "aedat2", "atis_bin", "npy", "hdf5").
        sensor_size: a SensorSize, or None for headerless formats (ATIS
            ``.bin``, DAT and ``.npy`` files without geometry) when the caller
            gave none; ``require_sensor_size()`` raises a clear error then.
        sensor_size_source: where sensor_size came from ("header", "plugin",
            "argument", or None).

    ``read()`` returns all events; ``chunks()`` iterates without loading the
    whole file. Usable as a context manager (closes any open handle).
    """

    format: str = "unknown"

    def __init__(self, path, sensor_size=None):
        self.path = Path(path)
        self.sensor_size: SensorSize | None = None
        self.sensor_size_source: str | None = None
        if sensor_size is not None:
            self.sensor_size = SensorSize.coerce(sensor_size)
            self.sensor_size_source = "argument"

    # -- what each reader provides ------------------------------------------
    def _blocks(self) -> Iterator[np.ndarray]:
        """Decode the file front to back, yielding EVENT_DTYPE arrays of bounded size."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- public interface -----------------------------------------------------
    def read(self) -> np.ndarray:
        blocks = [b for b in self._blocks() if b.size]
        if not blocks:
            return empty_events(0)
        if len(blocks) == 1:
            return blocks[0]
        return np.concatenate(blocks)

    def chunks(self, n_events: int | None = None, time_window: float | None = None) -> Iterator[np.ndarray]:
        """Iterate over the events in chunks, without loading the whole file.

        Exactly one of:
          n_events: chunks of exactly N events (the last one may be shorter).
          time_window: chunk k holds the events with
            t0 + k*W <= t < t0 + (k+1)*W, t0 being the first event's
            timestamp. Every window from the first to the one holding the last
            event is yielded, empty windows as empty arrays, so the k-th chunk
            is always window k (a consumer that paces or bins by time needs
            that). A file without events yields nothing.

        The concatenation of the chunks equals ``read()``.
        """
        if (n_events is None) == (time_window is None):
            raise ConfigError("chunks() takes exactly one of n_events= or time_window=")
        if n_events is not None:
            n_events = int(n_events)
            if n_events <= 0:
                raise ConfigError(f"n_events must be positive, got {n_events}")
            return _chunks_by_count(self._blocks(), n_events)
        if not time_window > 0:
            raise ConfigError(f"time_window must be positive, got {time_window}")
        return _chunks_by_time(self._blocks(), time_window)

    def require_sensor_size(self) -> SensorSize:
        if self.sensor_size is None:
            raise SensorSizeError(
                f"{self.path}: the {self.format} file does not say its sensor size; "
                "pass sensor_size=(width, height) (command line: --sensor-size WxH)")
        return self.sensor_size

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __iter__(self):
        return iter(self._blocks())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {str(self.path)!r} sensor_size={self.sensor_size}>"


def _chunks_by_count(blocks: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    pending: list[np.ndarray] = []
    pending_count = 0
    for block in blocks:
        start = 0
        # Fill the pending chunk first, then cut whole chunks straight out of the block.
        if pending_count:
            take = min(n - pending_count, block.size)
            pending.append(block[:take])
            pending_count += take
            start = take
            if pending_count == n:
                yield np.concatenate(pending)
                pending, pending_count = [], 0
        while block.size - start >= n:
            yield block[start:start + n]
            start += n
        if start < block.size:
            pending.append(block[start:])
            pending_count += block.size - start
    if pending_count:
        yield np.concatenate(pending)


def _chunks_by_time(blocks: Iterator[np.ndarray], window: float) -> Iterator[np.ndarray]:
    t0 = None
    current = 0  # index of the window being filled
    pending: list[np.ndarray] = []
    for block in blocks:
        if block.size == 0:
            continue
        if t0 is None:
            t0 = int(block["t"][0])
        index = np.floor((block["t"] - t0) / window).astype(np.int64)
        # A timestamp that steps back (real EVT 3.0 files do, by a few µs)
        # stays in the window being filled, so the chunks keep file order and
        # concatenate to exactly the whole read.
        np.maximum.accumulate(index, out=index)
        np.maximum(index, current, out=index)
        last = int(index[-1])
        if last == current:
            pending.append(block)
            continue
        bounds = np.searchsorted(index, np.arange(current + 1, last + 1), side="left")
        previous = 0
        for k, bound in zip(range(current, last), bounds):
            piece = block[previous:bound]
            if pending:
                pending.append(piece)
                yield np.concatenate(pending)
                pending = []
            else:
                yield piece
            previous = bound
        pending = [block[previous:]]
        current = last
    if pending:
        yield np.concatenate(pending)


def concat_or_empty(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if p.size]
    if not parts:
        return empty_events(0)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def check_coordinates(events: np.ndarray, sensor_size: SensorSize | None, path, what: str = "event",
                      offset: int | None = None, first_index: int = 0) -> None:
    """Reject events outside the sensor: they would index past the end of every frame downstream."""
    if sensor_size is None or events.size == 0:
        return
    for name, limit in (("x", sensor_size.width), ("y", sensor_size.height)):
        column = events[name]
        bad = np.flatnonzero((column < 0) | (column >= limit))
        if bad.size:
            i = int(bad[0])
            raise outside_sensor_error(path, sensor_size, name, int(column[i]), first_index + i, what, offset)


def outside_sensor_error(path, sensor_size: SensorSize, name: str, value: int, index: int, what: str = "event",
                         offset: int | None = None) -> EventFormatError:
    limit = sensor_size.width if name == "x" else sensor_size.height
    return EventFormatError(
        path, f"{what} {index}: {name} = {value} is outside the sensor "
        f"{sensor_size.width}x{sensor_size.height} (0 <= {name} < {limit}); "
        "the file is corrupt or the sensor size is wrong", offset=offset)


# The Numba decoders write each event as two int64 words over an EVENT_DTYPE buffer.
assert EVENT_DTYPE.itemsize == 16 and EVENT_DTYPE.fields["x"][1] == 8 and EVENT_DTYPE.fields["p"][1] == 12
