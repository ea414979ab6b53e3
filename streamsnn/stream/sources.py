"""Event sources for the streaming job: what they yield, pacing by event time, file and folder replay,
live DV network streams and iniVation cameras (dv-processing).

A source yields, in order, items of four kinds:

* :class:`WindowStart` — a new inference window begins (a sample of a
  dataset folder, or the start of a continuous stream); carries the binning
  origin ``start_us`` and, when known, the true class ``target``.
* :class:`Chunk` — events (EVENT_DTYPE, sorted by t) with the source's clock:
  every event with ``t < clock_us`` has been delivered, so frames ending at or
  before ``clock_us`` are complete. ``available_ns`` (``time.time_ns()``) is
  when the chunk was handed to the pipeline.
* :class:`WindowEnd` — the window of a sample is over (no more events); its
  frames are those of ``to_frame(sample, time_window=W, include_incomplete=True)``.
* the iterator simply ends at the end of the source; a failure raises
  :class:`~streamsnn.errors.SourceError`.

Replay is paced by event time: at ``speed`` S, the chunk holding events up to
event time t is handed over at ``wall_start + (t - t_start) / S``; speed 0 is
as fast as possible. The pacer schedules every chunk against the absolute
start (no accumulated error) and records how late each hand-over was, so the
pacing drift over a run is measured, not assumed.

Live sources (``dv://HOST:PORT`` and ``camera[:SERIAL]``) are clocked by the
sensor (absolute microseconds); they cannot be slowed down, so the job's
default queue policy for them is "drop" (counted). A DV network stream is
read with plain sockets (its bytes are those of an AEDAT 4 file), every wait
bounded and every length checked; a camera through dv-processing, whose
reader is non-blocking: ``getNextEventBatch()`` returns None when nothing has
arrived, so the source polls with a short sleep and checks ``isRunning()`` to
tell a quiet camera from a lost one. dv-processing's event layout (timestamp
int64, x int16, y int16, polarity int8, 16 bytes) is byte for byte
EVENT_DTYPE, so batches are reinterpreted, not converted. A DV stream carries
no "end of recording": when the sender goes away the source raises
SourceError ("stream dropped"), which the job reports on the status topic and
turns into a non-zero exit code.
"""
from __future__ import annotations

import math
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ConfigError, SourceError, StreamsnnError
from ..events import EVENT_DTYPE, SensorSize
from .stats import LatencyHistogram


@dataclass
class Chunk:
    events: np.ndarray
    clock_us: int
    available_ns: int = 0


@dataclass
class WindowStart:
    start_us: int
    target: int | None = None
    sample: str | None = None


@dataclass
class WindowEnd:
    end_us: int             # last event + 1
    last_us: int            # the sample's last event
    available_ns: int = 0
    skipped_events: int = 0  # read but not handed over: the window had been decided (see Source.window_done)


class Pacer:
    """Hands chunks over at their event time divided by speed; measures its own lateness.

    ``wait_until(t_us)`` sleeps until the wall time of event time ``t_us``.
    ``rebase(t_us)`` maps event time ``t_us`` onto the end of the schedule so
    far (the next sample of a folder, the next pass of a loop).
    """

    def __init__(self, speed: float, stop: threading.Event | None = None, cooperative: bool = False):
        self.speed = float(speed)
        # cooperative: wait_until does not sleep but sets ``due``; the caller (a ReplayDriver, which
        # paces many streams on one thread) hands the next item over at that time and reports
        # ``delivered(lag)``
        self.cooperative = bool(cooperative)
        self.due: float | None = None
        if not (math.isfinite(self.speed) and self.speed >= 0):  # NaN would pace nothing and report NaN
            raise ConfigError(f"replay speed must be a finite number >= 0, got {speed!r}")
        self.stop = stop or threading.Event()
        self.wall_origin: float | None = None   # perf_counter seconds
        self.t_origin = 0                       # event time at wall_origin
        self._last_target: float | None = None
        # how late each hand-over was, in ms, over the whole run: a histogram (the status thread reads it
        # every second; a list of the latest 100,000 lags cost it milliseconds per stream to convert)
        self.lags = LatencyHistogram()
        self.max_lag = 0.0
        self.last_lag = 0.0
        self.first_wall: float | None = None

    def rebase(self, t_us: int) -> None:
        if self.wall_origin is None:
            return
        self.wall_origin = self._last_target if self._last_target is not None else time.perf_counter()
        self.t_origin = int(t_us)

    def wait_until(self, t_us: int) -> bool:
        """False when stopped while waiting."""
        if self.speed <= 0:
            return not self.stop.is_set()
        now = time.perf_counter()
        if self.wall_origin is None:
            self.wall_origin = self.first_wall = now
            self.t_origin = int(t_us)
        target = self.wall_origin + (int(t_us) - self.t_origin) / 1e6 / self.speed
        self._last_target = target
        if self.cooperative:
            self.due = target
            return not self.stop.is_set()
        delay = target - now
        if delay > 0.005:                 # long waits: interruptible by stop
            if self.stop.wait(delay - 0.002):
                return False
        remaining = target - time.perf_counter()
        if remaining > 0:                 # the rest: one sleep (nanosleep, ~0.1 ms late at most, no spinning)
            time.sleep(remaining)
        self.delivered(time.perf_counter() - target)
        return not self.stop.is_set()

    def delivered(self, lag: float) -> None:
        self.lags.add(lag * 1000.0)
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)

    def stats(self) -> dict:
        if self.speed <= 0 or not self.lags.count or self.first_wall is None or self._last_target is None:
            return {"speed": self.speed}
        lag_p50, lag_p99 = self.lags.percentiles()
        elapsed = (self._last_target + self.last_lag) - self.first_wall
        ideal = self._last_target - self.first_wall
        return {
            "speed": self.speed,
            "pacing_lag_p50_ms": float(lag_p50),
            "pacing_lag_p99_ms": float(lag_p99),
            "pacing_lag_max_ms": float(self.max_lag * 1000.0),
            "pacing_elapsed_s": float(elapsed),
            "pacing_ideal_s": float(ideal),
            "pacing_drift_pct": float(100.0 * (elapsed - ideal) / ideal) if ideal > 0 else 0.0,
        }


class Source:
    """Base of every source. Subclasses set ``sensor_size`` in ``open()`` and implement ``items()``."""

    kind = "source"
    live = False           # a live source cannot be slowed down: the default queue policy is "drop"

    def __init__(self, uri: str, stream: str):
        self.uri = uri
        self.stream = stream
        self.sensor_size: SensorSize | None = None
        self.events_read = 0
        self.pacer: Pacer | None = None
        # window_done(k) is True once the consumer has decided the source's k-th window (1-based, in
        # WindowStart order): a sample source then skips the rest of that sample (its time still passes)
        self.window_done = None
        # event time from a window's start within which events can reach a frame that is stepped (the
        # job's max_timesteps frames); a sample source counts the events after it without handing them on
        self.window_span_us: int | None = None
        # paced by a ReplayDriver (Pacer in cooperative mode) instead of sleeping in its own thread
        self.cooperative = False

    def open(self, default_sensor_size=None) -> None:
        """Connect / check the source and set ``sensor_size``. ``default_sensor_size`` is used for
        recordings that do not say theirs (ATIS .bin, headerless DAT) when none was given."""

    def items(self, stop: threading.Event, slice_us: float) -> Iterator:
        raise NotImplementedError

    def warm_up(self, slice_us: float) -> None:
        """Read a little the way ``items`` will, before the clock starts. The readers' Numba kernels
        are loaded from their cache on first use, holding the GIL for milliseconds; at the start of a
        job with many streams that stalled every other thread (a decision waited 15 ms, measured)."""

    def close(self) -> None:
        pass

    def stats(self) -> dict:
        out = {"source": self.kind, "events_read": self.events_read}
        if self.pacer is not None:
            out.update(self.pacer.stats())
        return out


def _now_ns() -> int:
    return time.time_ns()


class FileReplaySource(Source):
    """A recording of any readable format, paced by event time, optionally looped.

    One continuous stream: one WindowStart at the first event, then chunks of
    ``slice_us`` event time (aligned on the first event, so they align with
    frames of a multiple of that length). With ``loop``, every pass is shifted
    to follow the previous one in event time, so the stream's clock keeps
    increasing.
    """

    kind = "file"

    def __init__(self, path, stream: str, *, speed: float = 1.0, loop: bool = False, sensor_size=None):
        super().__init__(str(path), stream)
        self.path = Path(path)
        self.speed = float(speed)
        self.loop = bool(loop)
        self._sensor_size_arg = sensor_size
        self.passes = 0

    def open(self, default_sensor_size=None) -> None:
        from ..io.detect import check_readable_file

        try:
            check_readable_file(self.path)  # a device such as /dev/zero exists, but is no recording
        except StreamsnnError as exc:
            raise SourceError(str(exc)) from None
        self.format, self.sensor_size = _format_and_geometry(self.path, self._sensor_size_arg,
                                                             default_sensor_size)

    def warm_up(self, slice_us: float) -> None:
        from ..io import open_recording

        try:
            with open_recording(self.path, sensor_size=self.sensor_size) as recording:
                next(iter(recording.chunks(time_window=slice_us)), None)
        except (StreamsnnError, OSError):
            pass      # reported where it belongs: by items(), on the stream's status, with what was read

    def items(self, stop: threading.Event, slice_us: float) -> Iterator:
        from ..io import open_recording

        self.pacer = pacer = Pacer(self.speed, stop, self.cooperative)
        offset = 0            # added to every timestamp of the current pass
        started = False
        while not stop.is_set():
            t_first = None
            clock = None
            try:
                with open_recording(self.path, sensor_size=self.sensor_size) as recording:
                    # chunk k holds t_first + k*W <= t < t_first + (k+1)*W (empty windows included)
                    for k, events in enumerate(recording.chunks(time_window=slice_us)):
                        if t_first is None:
                            t_first = int(events["t"][0])
                            if not started:
                                yield WindowStart(start_us=t_first + offset)
                                started = True
                            else:
                                pacer.rebase(t_first + offset)
                        if offset:
                            events = events.copy()
                            events["t"] += offset
                        clock = int(t_first + offset + (k + 1) * slice_us)
                        if not pacer.wait_until(clock):
                            return
                        self.events_read += events.size
                        yield Chunk(events, clock, _now_ns())
            except StreamsnnError as exc:
                raise SourceError(f"{self.path}: reading failed mid-stream after {self.events_read} events: "
                                  f"{exc}") from exc
            except OSError as exc:
                raise SourceError(f"{self.path}: reading failed mid-stream: {exc}") from exc
            self.passes += 1
            if not self.loop or clock is None:
                return
            # the next pass starts where this one's last slice ended, on the same slice grid
            offset = clock - t_first


class FolderSource(Source):
    """A dataset folder in the N-MNIST archive layout: one inference window per sample.

    Samples are replayed one after the other (class, then file name, as
    :class:`~streamsnn.io.folder.SampleFolder` orders them), each paced by its
    own event time and following the previous one without a gap; each gives
    WindowStart(target=label), its chunks, WindowEnd.
    """

    kind = "folder"

    def __init__(self, root, stream: str, *, split: str = "Test", speed: float = 0.0, loop: bool = False,
                 sensor_size=None, limit: int | None = None):
        super().__init__(str(root), stream)
        self.root = Path(root)
        self.split = split
        self.speed = float(speed)
        self.loop = bool(loop)
        self.limit = limit
        self._sensor_size_arg = sensor_size
        self.samples_done = 0
        self._read_ahead = None   # (path, events or its SourceError): a sample read before it is due
        self._formats: dict[str, str] = {}

    def open(self, default_sensor_size=None) -> None:
        from ..io.folder import SampleFolder

        root, split = self.root, self.split
        if not (root / split).is_dir() and root.name in ("Train", "Test") and root.parent.is_dir():
            root, split = root.parent, root.name   # the split folder itself was given
        try:
            self.folder = SampleFolder(root, split)
        except StreamsnnError as exc:
            raise SourceError(str(exc)) from exc
        self.classes = self.folder.classes
        self.samples = list(self.folder.samples)
        if self.limit is not None:
            self.samples = self.samples[: self.limit]
        if not self.samples:
            raise SourceError(f"{self.root}: no samples to replay")
        self.format, self.sensor_size = _format_and_geometry(self.samples[0].path, self._sensor_size_arg,
                                                             default_sensor_size)

    def warm_up(self, slice_us: float) -> None:
        # kept for items(): the first samples of many streams are then not all read at the moment
        # their clocks start
        self._read_ahead = (self.samples[0].path, self._read_sample(self.samples[0].path))

    def _read_sample(self, path: Path):
        """A sample's events, or the SourceError that reading it gave (raised by items() when that sample
        is due, so that an error read ahead surfaces where it belongs: on the stream, in order)."""
        try:
            with self._open_sample(path) as recording:
                return recording.read()
        except (StreamsnnError, OSError) as exc:
            # a reader's EventFormatError names the file already
            named = getattr(exc, "path", None) is not None
            error = SourceError(str(exc) if named else f"{path}: {exc}")
            error.__cause__ = exc
            return error

    def _open_sample(self, path: Path):
        """A sample's reader. The format is detected once per file suffix: detecting it again for each
        sample (a stat, a header read) was a quarter of the replay thread's work at speed 0 (measured); a
        sample that is not in its suffix's format fails in that format's reader, which names the file."""
        from ..io import detect_format, recording_class

        fmt = self._formats.get(path.suffix)
        if fmt is None:
            fmt = self._formats[path.suffix] = detect_format(path)
        return recording_class(fmt)(path, sensor_size=self.sensor_size)

    def items(self, stop: threading.Event, slice_us: float) -> Iterator:
        self.pacer = pacer = Pacer(self.speed, stop, self.cooperative)
        windows = 0
        while not stop.is_set():
            for index, sample in enumerate(self.samples):
                if stop.is_set():
                    return
                ahead, self._read_ahead = self._read_ahead, None
                events = ahead[1] if ahead is not None and ahead[0] == sample.path else self._read_sample(sample.path)
                if isinstance(events, SourceError):
                    raise events
                name = f"{sample.class_name}/{sample.path.name}"
                if events.size == 0:
                    continue
                t0 = int(events["t"][0])
                pacer.rebase(t0)
                windows += 1
                yield WindowStart(start_us=t0, target=sample.label, sample=name)
                t = events["t"]
                n_slices = int((int(t[-1]) - t0) // slice_us) + 1
                bounds = np.searchsorted(t, t0 + np.arange(1, n_slices + 1) * slice_us, side="left")
                span = self.window_span_us
                # past the frames that are stepped (N-MNIST: the 11th frame of a 306 ms sample), no event
                # changes a decision: at speed 0 a sample is then one chunk, not two
                usable = int(np.searchsorted(t, t0 + span, side="left")) if span is not None else events.size
                start = 0
                skipped = 0
                for k, end in enumerate(bounds):
                    if start >= usable or (self.window_done is not None and self.window_done(windows)):
                        # decided, or past the frames stepped: the rest is not needed, but the sample's
                        # time still passes
                        skipped = int(events.size - start)
                        self.events_read += skipped
                        if self.speed > 0:
                            # read the next sample now, while this one's time passes, not at the
                            # boundary, where every stream replaying a folder in step reads its
                            # next file at once (16 streams: 1-2 ms of the replay thread there)
                            following = self._following(index)
                            if following is not None:
                                self._read_ahead = (following.path, self._read_sample(following.path))
                        if not pacer.wait_until(int(t[-1]) + 1):
                            return
                        break
                    # capped at the last event + 1: the sample's frames end where to_frame's do
                    clock = min(int(t0 + (k + 1) * slice_us), int(t[-1]) + 1)
                    if not pacer.wait_until(clock):
                        return
                    part = events[start:end]
                    start = end
                    self.events_read += part.size
                    yield Chunk(part, clock, _now_ns())
                yield WindowEnd(end_us=int(t[-1]) + 1, last_us=int(t[-1]), available_ns=_now_ns(),
                                skipped_events=skipped)
                self.samples_done += 1
            if not self.loop:
                return

    def _following(self, index: int):
        """The sample replayed after samples[index] (None after the last one, unless looping)."""
        if index + 1 < len(self.samples):
            return self.samples[index + 1]
        return self.samples[0] if self.loop else None


# --------------------------------------------------------------------------- live: DV network streams, cameras

POLL_S = 0.0005


def parse_dv_uri(uri: str) -> tuple[str, int]:
    rest = uri[len("dv://"):] if uri.startswith("dv://") else uri
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"source {uri!r}: expected dv://HOST:PORT (for example dv://127.0.0.1:7777)")
    return host.strip("[]"), int(port)


def _dv():
    try:
        import dv_processing
    except ImportError as exc:   # pragma: no cover - the test extra installs it
        raise SourceError("live sources need dv-processing: pip install 'streamsnn[live]'") from exc
    return dv_processing


def event_store_to_array(store) -> np.ndarray:
    """A dv.EventStore as an EVENT_DTYPE array (same 16-byte layout; one copy out of the store)."""
    array = store.numpy()
    if array.dtype.itemsize != EVENT_DTYPE.itemsize:
        out = np.empty(array.shape[0], dtype=EVENT_DTYPE)
        out["t"], out["x"], out["y"], out["p"] = (array["timestamp"], array["x"], array["y"],
                                                  array["polarity"])
        return out
    return np.ascontiguousarray(array).view(EVENT_DTYPE)


def array_to_event_store(events: np.ndarray):
    """EVENT_DTYPE array -> dv.EventStore (for senders and tests; a Python loop, ~0.4 us per event)."""
    dv = _dv()
    store = dv.EventStore()
    push = store.push_back
    for t, x, y, p in zip(events["t"].tolist(), events["x"].tolist(), events["y"].tolist(),
                          events["p"].tolist()):
        push(t, x, y, bool(p))
    return store


def _live_items(source: Source, batches: Iterator[np.ndarray]) -> Iterator:
    """The items of a live source from its non-empty event batches, each a Chunk as it arrives."""
    started = False
    last_t = None
    for events in batches:
        available = time.time_ns()
        if last_t is not None and events["t"][0] < last_t:
            # a restarted sender: keep the contract (t sorted) by starting a new window
            started = False
        if not started:
            yield WindowStart(start_us=int(events["t"][0]))
            started = True
        last_t = int(events["t"][-1])
        source.events_read += events.size
        yield Chunk(events, last_t, available)


# --------------------------------------------------------------------------- DV network streams

# A DV network stream is an AEDAT 4.0 file without its first line: a uint32 header length, the
# IOHeader, then packets (int32 stream id, int32 length, a compressed FlatBuffer). Read here with
# plain sockets, not dv-processing's NetworkReader, which holds the GIL while it waits for a peer
# (a peer that never answers froze the whole job) and allocates whatever a length field says.
DV_MAX_HEADER_BYTES = 1 << 20      # DV's headers are a few kB of XML
DV_MAX_PACKET_BYTES = 64 << 20     # DV sends packets of a few thousand events (16 bytes each)
DV_RECV_POLL_S = 0.1               # how often a wait for bytes looks at the stop event
DV_STALL_S = 2.0                   # a live stream without a byte for this long is reported stalled


class DvNetworkSource(Source):
    """``dv://HOST:PORT``: iniVation DV software or any dv-processing NetworkWriter (TCP).

    ``open()`` connects and reads the stream's header within ``connect_timeout_s``
    (retrying the connection until then: the sender may start after the job),
    so a peer that does not speak DV is an error, not a hang. While streaming,
    the seconds since the last byte are in ``stats()`` (``source_idle_s``;
    ``source_stalled`` after ``stall_s``), so a stalled sender is visible on the
    status topic; a closed connection ends the source with SourceError.
    """

    kind = "dv"
    live = True

    def __init__(self, host: str, port: int, stream: str, *, connect_timeout_s: float = 5.0,
                 stall_s: float = DV_STALL_S):
        super().__init__(f"dv://{host}:{port}", stream)
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.stall_s = stall_s
        self._socket = None
        self._header = None
        self._last_bytes = None  # time.monotonic() of the last bytes received
        self._offset = 0         # bytes received so far (for errors)

    def open(self, default_sensor_size=None) -> None:
        import socket

        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                self._socket = socket.create_connection(
                    (self.host, self.port), timeout=max(0.05, deadline - time.monotonic()))
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise SourceError(f"{self.uri}: cannot connect to a DV event stream ({exc})") from None
                time.sleep(0.1)
        self._socket.settimeout(DV_RECV_POLL_S)
        try:
            self._read_header(deadline)
        except BaseException:
            self.close()
            raise

    def _read_header(self, deadline: float) -> None:
        from ..io.aedat import Aedat4Header

        (size,) = struct.unpack("<I", self._receive(4, deadline=deadline))
        if not 8 < size <= DV_MAX_HEADER_BYTES:
            raise SourceError(f"{self.uri}: not a DV event stream: its first bytes give a header of {size} "
                              f"bytes (a DV header has 9 to {DV_MAX_HEADER_BYTES})")
        try:
            self._header = header = Aedat4Header(self._receive(size, deadline=deadline), self.uri, 4)
        except StreamsnnError as exc:
            raise SourceError(f"not a DV event stream: {exc}") from None
        if header.event_stream is None:
            kinds = sorted({s.get("typeIdentifier", "?") for s in header.streams.values()})
            raise SourceError(f"{self.uri}: the DV stream carries no events (only {', '.join(kinds) or 'nothing'})")
        if header.sensor_size is None:
            raise SourceError(f"{self.uri}: the DV stream does not say its event resolution")
        self.sensor_size = SensorSize(header.sensor_size.width, header.sensor_size.height, 2)
        self.camera_name = header.streams[header.event_stream].get("source", "")

    def _receive(self, n: int, *, deadline: float | None = None, stop: threading.Event | None = None):
        """n bytes (None when stopped first). The buffer grows with the bytes that arrive, so a
        length field alone never allocates."""
        import socket

        data = bytearray()
        while len(data) < n:
            if stop is not None and stop.is_set():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                raise SourceError(f"{self.uri}: no DV event stream header within {self.connect_timeout_s} s "
                                  f"({self._offset + len(data)} bytes received): the peer does not speak DV")
            try:
                got = self._socket.recv(min(n - len(data), 1 << 20))
            except socket.timeout:
                continue
            except OSError as exc:
                raise SourceError(f"{self.uri}: the event stream failed after {self.events_read} events: "
                                  f"{exc}") from None
            if not got:
                raise SourceError(f"{self.uri}: the event stream dropped after {self.events_read} events "
                                  "(sender closed or connection lost)")
            data += got
            self._last_bytes = time.monotonic()
        self._offset += n
        return bytes(data)

    def items(self, stop: threading.Event, slice_us: float) -> Iterator:
        return _live_items(self, self._batches(stop))

    def _batches(self, stop: threading.Event) -> Iterator[np.ndarray]:
        from ..io.aedat import COMPRESSION_NAMES, decode_event_packet
        from ..io.base import check_coordinates

        header = self._header
        while not stop.is_set():
            at = self._offset
            head = self._receive(8, stop=stop)
            if head is None:
                return
            stream_id, size = struct.unpack("<ii", head)
            if not 0 <= size <= DV_MAX_PACKET_BYTES or stream_id not in header.streams:
                raise SourceError(f"{self.uri} (byte {at}): packet header says stream {stream_id}, {size} bytes; "
                                  f"the stream declares streams {sorted(header.streams)} and packets of at most "
                                  f"{DV_MAX_PACKET_BYTES} bytes: not a DV stream, or corrupt")
            body = self._receive(size, stop=stop)
            if body is None:
                return
            if stream_id != header.event_stream:
                continue
            try:
                buffer = header.decompress(body)
                events = decode_event_packet(buffer, self.uri, at + 8)
                check_coordinates(events, self.sensor_size, self.uri, what="streamed event", offset=at + 8)
            except StreamsnnError as exc:
                raise SourceError(str(exc)) from None
            except Exception as exc:  # lz4 and zstd raise their own types for bad data
                raise SourceError(f"{self.uri} (byte {at + 8}): packet does not decompress "
                                  f"({COMPRESSION_NAMES.get(header.compression)}): {exc}") from None
            if events.size:
                yield events

    def stats(self) -> dict:
        out = super().stats()
        if self._last_bytes is not None:
            idle = time.monotonic() - self._last_bytes
            out["source_idle_s"] = round(idle, 3)
            out["source_stalled"] = idle >= self.stall_s
        return out

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class _DvInputSource(Source):
    """A source reading dv-processing's non-blocking reader (a camera): ``getNextEventBatch()``
    returns None when nothing has arrived, ``isRunning()`` tells a quiet device from a lost one."""

    live = True

    def items(self, stop: threading.Event, slice_us: float) -> Iterator:
        return _live_items(self, self._batches(stop))

    def _batches(self, stop: threading.Event) -> Iterator[np.ndarray]:
        reader = self.reader
        while not stop.is_set():
            try:
                batch = reader.getNextEventBatch()
            except Exception as exc:   # dv-processing raises plain RuntimeErrors
                raise SourceError(f"{self.uri}: reading failed after {self.events_read} events: {exc}") from exc
            if batch is None or batch.size() == 0:
                if not reader.isRunning():
                    raise SourceError(f"{self.uri}: the event stream dropped after {self.events_read} events "
                                      "(sender closed or connection lost)")
                time.sleep(POLL_S)
                continue
            yield event_store_to_array(batch)

    def close(self) -> None:
        self.reader = None


class CameraSource(_DvInputSource):
    """``camera`` or ``camera:SERIAL``: a live iniVation camera (DVS128, DAVIS, DVXplorer) through dv-processing."""

    kind = "camera"

    def __init__(self, serial: str | None, stream: str):
        super().__init__("camera" + (f":{serial}" if serial else ""), stream)
        self.serial = serial
        self.reader = None

    def open(self, default_sensor_size=None) -> None:
        dv = _dv()
        found = dv.io.camera.discover()
        if not found:
            raise SourceError("no iniVation camera found: dv-processing discovers no DVS128, DAVIS or DVXplorer "
                              "on USB (is it plugged in, and may this user access it? see the udev rules "
                              "of dv-processing). Without a camera, use --source FILE, a dataset folder or "
                              "dv://HOST:PORT")
        try:
            self.reader = dv.io.camera.open(self.serial) if self.serial else dv.io.camera.open()
        except Exception as exc:
            serials = ", ".join(str(getattr(d, "serialNumber", d)) for d in found)
            raise SourceError(f"{self.uri}: cannot open the camera ({exc}); cameras found: {serials}") from exc
        resolution = self.reader.getEventResolution()
        if resolution is None:
            raise SourceError(f"{self.uri}: the camera has no event output")
        self.sensor_size = SensorSize(int(resolution[0]), int(resolution[1]), 2)
        self.camera_name = self.reader.getCameraName()


def pacing_slice_us(time_window: int, speed: float, kind: str = "file") -> int:
    """How much event time a replay hands over at once (a divisor of the frame length, so that frames
    close on time).

    * A recording file: about 5 ms, so a dense recording (a Gen3 sensor gives ~10 M events/s, 50,000
      events in 5 ms) is binned as it arrives rather than a whole frame at once when the frame closes,
      while the cost per hand-over (a few hundred microseconds of Python across the source and frame
      threads) stays small at any event rate.
    * A folder of samples: one frame. Samples are small (N-MNIST: ~700 events a 30 ms frame) and a
      frame is only complete at its end, so handing its events over then costs no latency, and it
      takes 30 times fewer thread wake-ups -- what lets dozens of streams share 2 cores.
    * As fast as possible (speed 0): one frame, ten for folders (fewer thread hand-overs, ~12 % more
      throughput); files keep one frame a chunk, so chunks stay small at any event rate.
    """
    time_window = int(time_window)
    if speed <= 0:
        return time_window * (10 if kind == "folder" else 1)
    if kind == "folder":
        return time_window
    k0 = max(1, math.ceil(time_window / 5000))
    for k in range(k0, 4 * k0 + 1):
        if time_window % k == 0:
            return time_window // k
    return time_window


def make_source(uri: str, stream: str | None = None, *, speed: float = 1.0, loop: bool = False,
                sensor_size=None, split: str = "Test", limit: int | None = None) -> Source:
    """A source from its text: ``dv://HOST:PORT``, ``camera[:SERIAL]``, a folder of samples or a file."""
    from ..io.folder import is_sample_folder

    text = str(uri)
    if text.startswith("dv://"):
        host, port = parse_dv_uri(text)
        return DvNetworkSource(host, port, stream or f"dv-{port}")
    if text == "camera" or text.startswith("camera:"):
        serial = text.split(":", 1)[1] if ":" in text else None
        return CameraSource(serial, stream or (f"camera-{serial}" if serial else "camera"))
    path = Path(os.path.expanduser(text))
    name = stream or _stream_name(path)
    if path.is_dir():
        if is_sample_folder(path) or (path.name in ("Train", "Test") and is_sample_folder(path.parent)):
            return FolderSource(path, name, split=split, speed=speed, loop=loop, sensor_size=sensor_size,
                                limit=limit)
        raise SourceError(f"{path}: a folder, but not a dataset in the N-MNIST archive layout "
                          "(ROOT/Test/<class>/<sample>); give a recording file, a dataset folder, "
                          "dv://HOST:PORT or camera[:SERIAL]")
    if not path.exists():
        raise SourceError(f"source {text!r}: no such file or folder (sources are a recording file, a dataset "
                          "folder, dv://HOST:PORT or camera[:SERIAL])")
    return FileReplaySource(path, name, speed=speed, loop=loop, sensor_size=sensor_size)


def _stream_name(path: Path) -> str:
    name = path.stem if path.is_file() else path.name
    if name in ("Test", "Train") and path.parent.name:
        name = path.parent.name
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "stream"


def _format_and_geometry(path, sensor_size_arg, default_sensor_size):
    """The file's format and sensor size; headerless files (ATIS .bin) take the model's geometry."""
    from ..io import open_recording

    with open_recording(path, sensor_size=sensor_size_arg) as recording:
        if recording.sensor_size is None and default_sensor_size is not None:
            return recording.format, SensorSize.coerce(default_sensor_size)
        return recording.format, recording.require_sensor_size()
