"""Live sources through dv-processing: a DV network stream (``dv://HOST:PORT``) and an iniVation camera.

Both are clocked by the sensor (absolute microseconds); they cannot be slowed
down, so the pipeline's default queue policy for them is "drop" (counted).
dv-processing's readers are non-blocking: ``getNextEventBatch()`` returns None
when nothing has arrived, so the source polls with a short sleep and checks
``isRunning()`` to tell a quiet stream from a dropped one. dv-processing's
event layout (timestamp int64, x int16, y int16, polarity int8, 16 bytes) is
byte for byte EVENT_DTYPE, so batches are reinterpreted, not converted.

A DV stream carries no "end of recording": when the sender goes away the
source raises SourceError ("stream dropped"), which the pipeline reports on
the status topic and turns into a non-zero exit code.
"""
from __future__ import annotations

import threading
import time
from typing import Iterator

import numpy as np

from ..errors import ConfigError, SourceError
from ..events import EVENT_DTYPE, SensorSize
from .replay import Chunk, Source, WindowStart

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


class _DvInputSource(Source):
    live = True

    def _reader(self):
        raise NotImplementedError

    def items(self, stop: threading.Event, slice_us: float) -> Iterator:
        reader = self.reader
        started = False
        last_t = None
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
            events = event_store_to_array(batch)
            available = time.time_ns()
            if last_t is not None and events["t"][0] < last_t:
                # a restarted sender: keep the contract (t sorted) by starting a new window
                started = False
            if not started:
                yield WindowStart(start_us=int(events["t"][0]))
                started = True
            last_t = int(events["t"][-1])
            self.events_read += events.size
            yield Chunk(events, last_t, available)

    def close(self) -> None:
        self.reader = None


class DvNetworkSource(_DvInputSource):
    """``dv://HOST:PORT``: iniVation DV software or any dv-processing NetworkWriter."""

    kind = "dv"

    def __init__(self, host: str, port: int, stream: str, *, connect_timeout_s: float = 5.0):
        super().__init__(f"dv://{host}:{port}", stream)
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.reader = None

    def open(self, default_sensor_size=None) -> None:
        dv = _dv()
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                self.reader = dv.io.NetworkReader(self.host, int(self.port))
                break
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise SourceError(f"{self.uri}: cannot connect to a DV event stream ({exc})") from exc
                time.sleep(0.1)
        if not self.reader.isEventStreamAvailable():
            raise SourceError(f"{self.uri}: the DV stream carries no events (only "
                              f"{self.reader.getStreamDefinition().mTypeIdentifier!r} data)")
        resolution = self.reader.getEventResolution()
        if resolution is None:
            raise SourceError(f"{self.uri}: the DV stream does not say its event resolution")
        self.sensor_size = SensorSize(int(resolution[0]), int(resolution[1]), 2)
        self.camera_name = self.reader.getCameraName()


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
