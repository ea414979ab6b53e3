"""The frame stage: each stream's preprocessing and binner, run for every stream by one worker thread.

Between a stream's bounded event queue and the scheduler::

    EventQueue ──source items──▶ FrameStage (per stream: preprocess chain, StreamingBinner)
                                   ──▶ WindowOpen, FrameItem..., WindowClose / StreamClosed ──▶ Scheduler

:class:`FrameWorker` is one thread that serves the frame stages of all
streams: the preprocessing and binning kernels are Numba functions compiled
with ``nogil=True``, so this thread bins while the inference thread is inside
a torch kernel and the source threads decode. A stream's frames wait in its
scheduler lane; when a lane holds ``max_pending_frames`` frames the worker
leaves that stream's event queue alone, so a stream whose inference falls
behind fills its own bounded event queue (block or drop-oldest, counted)
instead of memory.

Windows (the binning semantics of ``streamsnn train`` / ``eval``):

* a sample of a dataset folder is one inference window: frames from its first
  event, the last incomplete frame included, zero frames up to
  ``max_timesteps`` -- the frames ``to_frame(sample, time_window=W,
  include_incomplete=True)`` padded to T, exactly what offline evaluation
  steps through;
* a continuous stream (file, DV stream, camera) is binned from its first
  event; its windows are cut by the cutoff (the scheduler resets the state
  after each decision); at its end the open frame is flushed and the open
  window decided.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..binning import Frame, StreamingBinner
from ..errors import ConfigError
from ..events import SensorSize, make_events
from .queue import SourceEnd, SourceFailure
from .sources import Chunk, WindowEnd, WindowStart


def sample_frame_count(t_first: int, t_last: int, time_window: int) -> int:
    """Frames of one sample by the offline rule, ``to_frame(time_window=W, include_incomplete=True)``
    (tonic's count: ceil((duration - W) / W) + 1, at least 1)."""
    duration = int(t_last) - int(t_first)
    return max(int(np.ceil((duration - time_window) / time_window) + 1), 1)


def build_preprocess(config, sensor_size: SensorSize):
    """The preprocessing chain from [binning] (streamsnn.preprocess): denoise, crop, downsample,
    polarity merge, in that order. Returns (stages, output sensor size)."""
    size = SensorSize.coerce(sensor_size)
    if not (config.denoise_us or config.crop is not None or config.downsample is not None
            or config.merge_polarity):
        return [], size
    from ..preprocess import Crop, Denoise, Downsample, MergePolarities

    stages = []
    if config.denoise_us:
        stages.append(Denoise(config.denoise_us, size))
    if config.crop is not None:
        x0, y0, w, h = config.crop
        if x0 + w > size.width or y0 + h > size.height:
            raise ConfigError(f"{config.origin}: [binning].crop = [{x0}, {y0}, {w}, {h}] goes beyond the "
                              f"source's {size.width}x{size.height} sensor")
        stages.append(Crop((w, h), (x0, y0), sensor_size=size))
    if config.downsample is not None:
        stages.append(Downsample(tuple(config.downsample)))
    if config.merge_polarity:
        stages.append(MergePolarities())
    for stage in stages:
        size = SensorSize.coerce(stage.output_sensor_size(size))
    return stages, size


# --------------------------------------------------------------------------- what the stage hands on

@dataclass
class WindowOpen:
    """A new inference window of the source (a sample, or the start / restart of a continuous stream)."""
    window: int
    start_us: int
    sample_mode: bool
    target: int | None = None
    sample: str | None = None


@dataclass
class FrameItem:
    window: int
    data: np.ndarray          # (P, H, W) counts
    t_start: int
    t_end: int
    available_ns: int         # when the frame's last event reached the pipeline (time.time_ns())


@dataclass
class WindowClose:
    """Every frame of a sample window has been handed on (zero frames up to max_timesteps included)."""
    window: int
    available_ns: int


@dataclass
class StreamClosed:
    """The stream is over: ``state`` is "finished" (end of the source), "stopped" or "error"."""
    state: str
    error: BaseException | None = None
    available_ns: int = field(default_factory=time.time_ns)


class FrameStage:
    """One stream's preprocessing + binner, fed the source's items in order (by the frame worker only)."""

    def __init__(self, stages, sensor_size: SensorSize, time_window: int, max_timesteps: int, *,
                 restamp: bool = False):
        self.stages = stages
        self.sensor_size = SensorSize.coerce(sensor_size)
        self.time_window = int(time_window)
        self.max_timesteps = int(max_timesteps)
        self.binner = StreamingBinner(self.sensor_size, self.time_window)
        self.frame_shape = (self.sensor_size.polarities, self.sensor_size.height, self.sensor_size.width)
        # A replay at speed 0 has no arrival times (the source reads ahead as far as the queue allows):
        # its chunks count as available when this stage takes them, so latency_ms is the processing
        # latency. Paced replays and live sources keep the source's hand-over time.
        self.restamp = restamp
        self.window = 0
        self.sample_mode = False
        self.window_frames = 0
        self.decided_window = -1        # set by the scheduler: the rest of that sample is not binned
        self._origin: int | None = None
        self._recent: collections.deque = collections.deque(maxlen=256)
        # recording time covered: finished windows + the open one's progress (read by the status thread)
        self._time_done_us = 0
        self._time_open_us = 0
        self.events_processed = 0

    @property
    def event_time_us(self) -> int:
        return self._time_done_us + self._time_open_us

    def warm_up(self, source_size: SensorSize) -> None:
        """Run the preprocessing chain and a binner of this geometry once, so that no Numba function
        is compiled (or loaded from its cache) after the source's clock has started."""
        size = SensorSize.coerce(source_size)
        grid = np.arange(64)
        events = make_events(grid * size.width // 64, (grid * 7 % 64) * size.height // 64,
                             grid * (3 * self.time_window // 64), grid % size.polarities)
        # Chunks of 0, 1 and many events: Numba types the field views of an empty or one-event chunk as
        # contiguous and of a longer one as strided, and compiles each kind on its first use (measured: a
        # Gen3 replay met its first empty slice after the clock had started, compiled the crop and
        # downsample kernels for it, and dropped 7 M events meanwhile).
        for part in (events[:0], events[:1], events[1:32], events[32:]):
            for stage in self.stages:
                part = stage.push(part)
            events = part
        for stage in self.stages:
            stage.reset()
        binner = StreamingBinner(self.sensor_size, self.time_window)
        # Chunks in the layout the binner will get (what the stages give; Numba compiles per layout): one
        # that sets the origin, one inside the open window (the binner's fast path), one that closes
        # windows, and a flush -- every kernel a stream's chunks go through.
        chunk = np.zeros(2, dtype=events.dtype)
        chunk["x"], chunk["y"], chunk["p"] = [0, 1], [0, 1], [0, 1 % self.sensor_size.polarities]
        for t in ([0, 1], [2, 3], [4, 2 * self.time_window]):
            chunk = chunk.copy()
            chunk["t"] = t
            binner.push(chunk)
            binner.push(chunk[1:])      # one event (typed contiguous); empty chunks return before any kernel
        binner.flush(4 * self.time_window)

    def process(self, item, out: list) -> None:
        """Turn one source item into what the scheduler takes (appended to ``out``)."""
        if isinstance(item, Chunk):
            self._on_chunk(item, out)
        elif isinstance(item, WindowStart):
            self._on_window_start(item, out)
        elif isinstance(item, WindowEnd):
            self._on_window_end(item, out)
        elif isinstance(item, SourceEnd):
            self._on_end(item, out)
        elif isinstance(item, SourceFailure):
            out.append(StreamClosed("error", item.error))

    def _on_window_start(self, item: WindowStart, out: list) -> None:
        self._time_done_us += self._time_open_us
        self._time_open_us = 0
        self.window += 1
        self.sample_mode = item.target is not None or item.sample is not None
        self.binner.reset(start_time=item.start_us)
        for stage in self.stages:
            stage.reset()
        self._recent.clear()
        self.window_frames = 0
        self._origin = int(item.start_us)
        out.append(WindowOpen(self.window, int(item.start_us), self.sample_mode, item.target, item.sample))

    def _on_chunk(self, chunk: Chunk, out: list) -> None:
        n = int(chunk.events.size)
        self.events_processed += n
        if self._origin is not None:
            self._time_open_us = max(self._time_open_us, int(chunk.clock_us) - self._origin)
        if self.sample_mode and self.decided_window == self.window:
            return                          # the rest of a decided sample: not needed, not binned
        if self.restamp:
            chunk.available_ns = time.time_ns()
        events = chunk.events
        for stage in self.stages:
            events = stage.push(events)
        if events.size:
            self._recent.append((int(events["t"][0]), int(events["t"][-1]), chunk.available_ns))
        frames = self.binner.push(events)
        frames += self.binner.flush(chunk.clock_us)
        self._hand_on(frames, chunk.available_ns, out)

    def _hand_on(self, frames, closing_ns: int, out: list) -> None:
        for frame in frames:
            if self.sample_mode and self.window_frames >= self.max_timesteps:
                return                      # a sample is decided at max_timesteps at the latest
            self.window_frames += 1
            out.append(FrameItem(self.window, frame.data, frame.t_start, frame.t_end,
                                 self._available(frame, closing_ns)))

    def _available(self, frame: Frame, closing_ns: int) -> int:
        """When the frame's last event reached the pipeline (the closing chunk's time for an empty frame)."""
        for first_t, last_t, ns in reversed(self._recent):
            if first_t < frame.t_end:
                return ns if last_t >= frame.t_start else closing_ns
        return closing_ns

    def _on_window_end(self, item: WindowEnd, out: list) -> None:
        self.events_processed += item.skipped_events
        if self._origin is None:
            return
        self._time_open_us = max(self._time_open_us, int(item.end_us) - self._origin)
        if self.decided_window != self.window:
            if self.restamp:
                item.available_ns = time.time_ns()
            n_total = sample_frame_count(self._origin, item.last_us, self.time_window)
            self._hand_on(self.binner.flush(self._origin + n_total * self.time_window), item.available_ns, out)
            # samples shorter than T windows get zero frames, as in training and eval
            t = self._origin + n_total * self.time_window
            zero = np.zeros(self.frame_shape, dtype=self.binner.dtype)
            while self.window_frames < self.max_timesteps:
                self._hand_on([Frame(zero, t, t + self.time_window)], item.available_ns, out)
                t += self.time_window
        out.append(WindowClose(self.window, item.available_ns))

    def _on_end(self, item: SourceEnd, out: list) -> None:
        if item.stopped:
            out.append(StreamClosed("stopped"))
            return
        if not self.sample_mode:
            # a continuous stream ended: the open (incomplete) frame is handed on if it holds events
            window = self.binner.open_window
            if window is not None and self._recent:
                last_t = self._recent[-1][1]
                if last_t >= window[0]:
                    self._hand_on(self.binner.flush(window[1]), time.time_ns(), out)
        out.append(StreamClosed("finished"))


class FrameWorker:
    """One thread running the frame stages of every stream (round robin over the streams with work)."""

    def __init__(self, stop: threading.Event, *, max_pending_frames: int = 32, on_error=None):
        self.stop = stop
        # told of an exception outside any one stream (a bug), after which the thread has ended
        self.on_error = on_error or (lambda exc: None)
        self.error: BaseException | None = None
        self.max_pending_frames = int(max_pending_frames)
        self.wake = threading.Event()
        # set while the worker has nothing left to do: the scheduler waits briefly for it, so that the frames
        # of streams whose chunks arrived together go into one batch instead of several partial ones
        self.idle = threading.Event()
        self.idle.set()
        self.on_idle = lambda: None     # told when the worker runs out of work (the scheduler's gather)
        self._streams: list = []
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, stream) -> None:
        """``stream`` has ``.queue`` (EventQueue), ``.stage`` (FrameStage), ``.lane`` (scheduler lane with
        ``pending_frames`` and ``submit(items)``), ``.stop`` (its source's stop event) and ``.closed``."""
        with self._lock:
            self._streams = self._streams + [stream]
        self.wake.set()

    def remove(self, stream) -> None:
        with self._lock:
            self._streams = [s for s in self._streams if s is not stream]

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="frames", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:     # a bug: reported by the job (as the Scheduler's), never a silent end
            self.error = exc
            self.on_error(exc)

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.idle.set()
            self.on_idle()
            self.wake.wait(0.05)
            self.idle.clear()
            self.wake.clear()
            busy = True
            while busy and not self.stop.is_set():
                busy = False
                for stream in self._streams:
                    if stream.closed or stream.lane.pending_frames >= self.max_pending_frames:
                        continue
                    try:
                        busy = self._serve(stream) or busy
                    except Exception as exc:   # anything else of this stream's (its queue, its lane): it ends in error
                        stream.stop.set()
                        stream.closed = True
                        stream.lane.submit([StreamClosed("error", exc)])
                        busy = True

    def _serve(self, stream) -> bool:
        """A few items of one stream through its stage (so no stream waits behind another's backlog);
        True when something was handed on."""
        out: list = []
        for _ in range(4):
            item = stream.queue.get_nowait()
            if item is None:
                break
            try:
                stream.stage.process(item, out)
            except Exception as exc:      # bad events (a corrupt file): this stream ends in error
                out.append(StreamClosed("error", exc))
                stream.stop.set()
                stream.closed = True
                break
            if isinstance(item, (SourceEnd, SourceFailure)):
                stream.closed = True
                break
        if out:
            stream.lane.submit(out)
            return True
        return False
