"""The streaming job: sources -> binner -> stateful SNN -> cutoff -> ZeroMQ (+ HDF5 log).

Threads and queues (one set per stream, one model shared by all)::

    source thread ──EventQueue (bounded: block or drop-oldest, counted)──▶ inference thread ──▶ send (lock) ──▶ XPUB
      reads/paces/                                                           preprocess, bin,               └──▶ log thread ──▶ HDF5
      receives events                                                        model.step, cutoff
                                                   status thread: status.<stream> once a second

* Each stream has its own binner, network state (``model.init_state(1)``) and
  online cutoff; the model's weights are shared (``step`` only reads them).
* Inference window: the state persists across frames; after each frame the
  cutoff decides; on a decision (or ``max_timesteps`` frames) one message is
  published and the state reset. A dataset folder gives one window per sample,
  binned exactly as ``streamsnn train``/``eval`` bin it (windows from the first
  event, the last incomplete window included, zero frames up to T), so online
  decisions equal offline ones.
* Decisions are sent by the inference thread itself (under a lock shared with
  the status thread), so no queue hop adds to the latency; the HDF5 log is
  written by its own thread, off the hot path.
* The queue between a source and its inference thread is bounded in events
  and in chunks. Policy "block" slows the source down (replay default);
  "drop" discards the oldest queued chunks and counts their events (live
  default). Window markers are never dropped.
* Ctrl-C / SIGTERM: every thread stops within a few hundred milliseconds, the
  decisions made are sent and logged, a final status message goes out, the
  log is closed. A source error is published on ``status.<stream>`` (state
  "error") and ends the job with exit code 1.
"""
from __future__ import annotations

import collections
import math
import os
import queue as queue_module
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .bus import SCHEMA_VERSION, Publisher, Subscriber, decision_topic, status_topic
from .errors import ConfigError, SourceError, StreamsnnError
from .events import SensorSize
from .io.replay import Chunk, Source, WindowEnd, WindowStart, make_source
from .pipeline_config import PipelineConfig, SourceConfig, config_from_args, validate

BUNDLED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "nmnist_str.pt"
EXIT_OK, EXIT_SOURCE_ERROR, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143


# --------------------------------------------------------------------------- bounded queue

class _End:
    pass


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class EventQueue:
    """Bounded queue of source items between a source thread and its inference thread.

    Capacity: ``max_events`` events and ``max_chunks`` chunks (markers do not
    count and are never dropped). ``put`` with policy "block" waits for room;
    with "drop" it discards the oldest queued chunks until the new one fits,
    counting ``dropped_events`` / ``dropped_chunks``. A single chunk larger than
    max_events is still accepted when the queue holds no events, so the queue
    never holds more than max(max_events, one chunk) events.
    """

    def __init__(self, policy: str = "block", max_events: int = 1_000_000, max_chunks: int = 256):
        if policy not in ("block", "drop"):
            raise ConfigError(f"queue policy must be 'block' or 'drop', got {policy!r}")
        self.policy = policy
        self.max_events = int(max_events)
        self.max_chunks = int(max_chunks)
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self.events = 0
        self.chunks = 0
        self.peak_events = 0
        self.dropped_events = 0
        self.dropped_chunks = 0

    def _full(self, n: int) -> bool:
        return self.events > 0 and (self.events + n > self.max_events or self.chunks + 1 > self.max_chunks)

    def put(self, item, stop: threading.Event | None = None) -> bool:
        """False when the stop event was set while blocked."""
        with self._cond:
            if isinstance(item, Chunk):
                n = int(item.events.size)
                if self.policy == "block":
                    while self._full(n):
                        if stop is not None and stop.is_set():
                            return False
                        self._cond.wait(0.05)
                else:
                    while self._full(n):
                        self._drop_oldest()
                self.events += n
                self.chunks += 1
                self.peak_events = max(self.peak_events, self.events)
            self._items.append(item)
            self._cond.notify_all()
            return True

    def _drop_oldest(self) -> None:
        for i, queued in enumerate(self._items):
            if isinstance(queued, Chunk):
                del self._items[i]
                self.events -= queued.events.size
                self.chunks -= 1
                self.dropped_events += int(queued.events.size)
                self.dropped_chunks += 1
                return

    def get(self, timeout: float = 0.1):
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
                if not self._items:
                    return None
            item = self._items.popleft()
            if isinstance(item, Chunk):
                self.events -= item.events.size
                self.chunks -= 1
            self._cond.notify_all()
            return item

    def clear(self) -> None:
        with self._cond:
            self._items.clear()
            self.events = self.chunks = 0
            self._cond.notify_all()


# --------------------------------------------------------------------------- helpers

def sample_frame_count(t_first: int, t_last: int, time_window: int) -> int:
    """Frames of one sample by the offline rule, ``to_frame(time_window=W, include_incomplete=True)``
    (tonic's count: ceil((duration - W) / W) + 1, at least 1)."""
    duration = int(t_last) - int(t_first)
    return max(int(np.ceil((duration - time_window) / time_window) + 1), 1)


def _slice_us(time_window: int, speed: float) -> int:
    """Pacing granularity: about 1 ms of event time, dividing the frame length (frames close on time)."""
    if speed <= 0:
        return int(time_window)
    k0 = max(1, math.ceil(time_window / 1000))
    for k in range(k0, 4 * k0 + 1):
        if time_window % k == 0:
            return time_window // k
    return int(time_window)


def _percentiles(values) -> tuple[float | None, float | None]:
    if len(values) == 0:
        return None, None
    a = np.fromiter(values, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _build_preprocess(config: PipelineConfig, sensor_size: SensorSize):
    """The preprocessing chain from [binning] (streamsnn.preprocess): denoise, crop, downsample,
    polarity merge, in that order. Returns (stages, output sensor size)."""
    size = SensorSize.coerce(sensor_size)
    if not (config.denoise_us or config.crop is not None or config.downsample is not None
            or config.merge_polarity):
        return [], size
    from .preprocess import Crop, Denoise, Downsample, MergePolarities

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


# --------------------------------------------------------------------------- one stream

class StreamWorker:
    def __init__(self, pipeline: "Pipeline", source: Source, source_config: SourceConfig):
        self.pipeline = pipeline
        self.source = source
        self.name = source.stream
        config = pipeline.config
        policy = source_config.queue_policy or config.queue_policy or ("drop" if source.live else "block")
        self.queue = EventQueue(policy, config.queue_max_events, config.queue_max_chunks)
        self.speed = source_config.speed
        # A replay at speed 0 has no arrival times (the source reads ahead as far as the queue allows):
        # its chunks count as available when inference takes them from the queue, so latency_ms is the
        # processing latency. Paced replays and live sources keep the source's hand-over time.
        self.restamp = not source.live and self.speed <= 0
        self.state_name = "starting"
        self.error: str | None = None
        # counters (written by the inference thread, read by the status thread)
        self.events_processed = 0
        self.frames = 0
        self.decisions = 0
        self.correct = 0
        self.with_target = 0
        self.timesteps_sum = 0
        self.event_time_us = 0          # recording time covered so far
        self.latencies: collections.deque = collections.deque(maxlen=200_000)
        self._interval_latencies: list[float] = []
        self._threads: list[threading.Thread] = []
        self.done = threading.Event()

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        p = self.pipeline
        from .binning import StreamingBinner

        self.stages, out_size = _build_preprocess(p.config, self.source.sensor_size)
        model_size = p.model_sensor_size
        if (out_size.width, out_size.height, out_size.polarities) != tuple(model_size):
            what = f"{self.source.sensor_size.width}x{self.source.sensor_size.height}x" \
                   f"{self.source.sensor_size.polarities}"
            after = "" if not self.stages else f" (after [binning] preprocessing: {out_size.width}x" \
                                              f"{out_size.height}x{out_size.polarities})"
            raise ConfigError(
                f"stream {self.name!r}: the source {self.source.uri} gives {what} events{after} but the model "
                f"expects {model_size[0]}x{model_size[1]}x{model_size[2]} (width x height x polarities); set "
                "[binning] crop = [x0, y0, w, h], downsample = factor and/or merge_polarity = true in the "
                "pipeline definition so that they match")
        self.binner = StreamingBinner(out_size, p.time_window)
        self.frame_shape = (out_size.polarities, out_size.height, out_size.width)
        self.state = p.model.init_state(1)
        self.online = p.policy.online(p.max_timesteps)
        self.seq = 0
        self._recent: collections.deque = collections.deque(maxlen=256)
        self._reset_window(None, None)
        self.sample_mode = False

    def start(self) -> None:
        self.state_name = "running"
        self._threads = [threading.Thread(target=self._produce, name=f"source-{self.name}", daemon=True),
                         threading.Thread(target=self._consume, name=f"infer-{self.name}", daemon=True)]
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- source thread ------------------------------------------------------------------------
    def _produce(self) -> None:
        stop = self.pipeline.stop_event
        try:
            slice_us = self.pipeline.slice_for(self.speed)
            if self.speed <= 0 and self.source.kind == "folder":
                # as fast as possible through small samples: ten frames a chunk (fewer thread hand-overs,
                # ~12 % more throughput); files keep one frame a chunk, so chunks stay small at any event rate
                slice_us *= 10
            for item in self.source.items(stop, slice_us):
                if not self.queue.put(item, stop) or stop.is_set():
                    break
            if not stop.is_set():       # the end of the source (not a stop request)
                self.queue.put(_End())
        except BaseException as exc:  # a SourceError, or a bug: reported, never silent
            self.queue.put(_Failure(exc))
        finally:
            try:
                self.source.close()
            except Exception:
                pass

    # -- inference thread ----------------------------------------------------------------------
    def _consume(self) -> None:
        import torch

        stop = self.pipeline.stop_event
        try:
            with torch.inference_mode():
                while True:
                    if stop.is_set():
                        self.state_name = "stopped"
                        break
                    item = self.queue.get(0.05)
                    if item is None:
                        continue
                    if self.restamp and isinstance(item, (Chunk, WindowEnd)):
                        item.available_ns = time.time_ns()
                    if isinstance(item, Chunk):
                        self._on_chunk(item)
                    elif isinstance(item, WindowStart):
                        self._on_window_start(item)
                    elif isinstance(item, WindowEnd):
                        self._on_window_end(item)
                    elif isinstance(item, _End):
                        self._on_end()
                        self.state_name = "stopped" if stop.is_set() else "finished"
                        break
                    elif isinstance(item, _Failure):
                        self._fail(item.error)
                        break
        except BaseException as exc:
            self._fail(exc)
        finally:
            self.done.set()
            self.pipeline._stream_done(self)

    def _fail(self, exc: BaseException) -> None:
        self.state_name = "error"
        self.error = str(exc) if isinstance(exc, StreamsnnError) else f"{type(exc).__name__}: {exc}"
        self.pipeline._stream_failed(self, exc)

    def _reset_window(self, target, sample) -> None:
        self.window_frames = 0
        self.window_start_us = None
        self.window_decided = False
        self.target = target
        self.sample = sample

    def _on_window_start(self, item: WindowStart) -> None:
        # a continuous stream restarted (or the first window): close what is open, start afresh
        if not self.sample_mode and self.window_frames and not self.window_decided:
            self._emit_forced(time.time_ns())
        self.sample_mode = item.target is not None or item.sample is not None
        self.binner.reset(start_time=item.start_us)
        for stage in self.stages:
            stage.reset()
        self._recent.clear()
        self.state.reset()
        self.online.reset()
        self._reset_window(item.target, item.sample)
        self._window_origin = item.start_us

    def _on_chunk(self, chunk: Chunk) -> None:
        if self.window_decided:          # the rest of a decided sample: not needed, not binned
            self.events_processed += int(chunk.events.size)
            return
        events = chunk.events
        for stage in self.stages:
            events = stage.push(events)
        self.events_processed += int(chunk.events.size)
        if events.size:
            self._recent.append((int(events["t"][0]), int(events["t"][-1]), chunk.available_ns))
        frames = self.binner.push(events)
        frames += self.binner.flush(chunk.clock_us)
        for frame in frames:
            self._step(frame, self._available(frame, chunk.available_ns))

    def _available(self, frame, closing_ns: int) -> int:
        """When the frame's last event reached the pipeline (the closing chunk's time for an empty frame)."""
        for first_t, last_t, ns in reversed(self._recent):
            if first_t < frame.t_end:
                return ns if last_t >= frame.t_start else closing_ns
        return closing_ns

    def _on_window_end(self, item: WindowEnd) -> None:
        p = self.pipeline
        self.event_time_us += max(0, item.end_us - self._window_origin)
        if self.window_decided:
            return
        n_total = sample_frame_count(self._window_origin, item.last_us, p.time_window)
        frames = self.binner.flush(self._window_origin + n_total * p.time_window)
        for frame in frames:
            self._step(frame, self._available(frame, item.available_ns))
        if not self.window_decided:
            # samples shorter than T windows get zero frames, as in training and eval
            from .binning import Frame

            zero = np.zeros(self.frame_shape, dtype=self.binner.dtype)
            t = self._window_origin + n_total * p.time_window
            while not self.window_decided and self.window_frames < p.max_timesteps:
                self._step(Frame(zero, t, t + p.time_window), item.available_ns)
                t += p.time_window
            if not self.window_decided:   # max_timesteps > frames: cannot happen, kept for safety
                self._emit_forced(item.available_ns)

    def _on_end(self) -> None:
        if self.sample_mode:
            return
        # a continuous stream ended: the open (incomplete) frame and the open window are decided
        window = self.binner.open_window
        if window is not None and self._recent:
            last_t = self._recent[-1][1]
            if last_t >= window[0]:
                for frame in self.binner.flush(window[1]):
                    self._step(frame, self._available(frame, time.time_ns()))
            self.event_time_us += max(0, last_t - self._window_origin)
        if self.window_frames and not self.window_decided:
            self._emit_forced(time.time_ns())

    def _step(self, frame, available_ns: int) -> None:
        if self.window_decided:          # the rest of a decided sample is not needed
            return
        p = self.pipeline
        x = p.frames_to_input(frame.data).unsqueeze(0)
        if p.device != "cpu":
            x = x.to(p.device)
        logits = p.model.step(x, self.state)
        self.frames += 1
        if self.window_frames == 0:
            self.window_start_us = frame.t_start
        self.window_frames += 1
        self.window_end_us = frame.t_end
        decision = self.online.update(logits[0])
        if decision is not None:
            self._emit(decision, available_ns)

    def _emit_forced(self, available_ns: int) -> None:
        self._emit(self.online.finish(), available_ns)

    def _emit(self, decision, available_ns: int) -> None:
        p = self.pipeline
        message = {
            "schema": SCHEMA_VERSION, "stream": self.name, "seq": self.seq,
            "label": int(decision.label), "confidence": float(decision.confidence),
            "timesteps": int(decision.timesteps), "max_timesteps": int(p.max_timesteps),
            "window_start_us": int(self.window_start_us), "window_end_us": int(self.window_end_us),
            "published_ns": 0, "latency_ms": 0.0, "frame_available_ns": int(available_ns),
            "forced": bool(decision.forced),
        }
        if p.class_names and 0 <= decision.label < len(p.class_names):
            message["class_name"] = p.class_names[decision.label]
        if self.target is not None:
            message["target"] = int(self.target)
            self.with_target += 1
            self.correct += int(decision.label == self.target)
        if self.sample is not None:
            message["sample"] = self.sample
        self.seq += 1
        self.decisions += 1
        self.timesteps_sum += int(decision.timesteps)
        latency = p.publish_decision(self.name, message)
        self.latencies.append(latency)
        self._interval_latencies.append(latency)
        if self.sample_mode:
            self.window_decided = True
        else:
            self.state.reset()
            self.online.reset()
            self._reset_window(self.target, self.sample)

    # -- status --------------------------------------------------------------------------------
    def status(self, interval_s: float, previous: dict | None) -> dict:
        latencies, self._interval_latencies = self._interval_latencies, []
        p50, p99 = _percentiles(latencies)
        all50, all99 = _percentiles(list(self.latencies))
        read = self.source.events_read
        prev = previous or {}
        dt = max(interval_s, 1e-9)
        message = {
            "schema": SCHEMA_VERSION, "stream": self.name, "state": self.state_name,
            "source": self.source.uri, "queue_policy": self.queue.policy,
            "events_per_s": (read - prev.get("events_in", 0)) / dt,
            "frames_per_s": (self.frames - prev.get("frames", 0)) / dt,
            "decisions_per_s": (self.decisions - prev.get("decisions", 0)) / dt,
            "events_in": read, "events_processed": self.events_processed,
            "dropped_events": self.queue.dropped_events, "dropped_chunks": self.queue.dropped_chunks,
            "queue_events": self.queue.events, "queue_peak_events": self.queue.peak_events,
            "queue_max_events": self.queue.max_events,
            "frames": self.frames, "decisions": self.decisions,
            "latency_p50_ms": p50, "latency_p99_ms": p99,
            "latency_p50_ms_total": all50, "latency_p99_ms_total": all99,
            "mean_timesteps": self.timesteps_sum / self.decisions if self.decisions else None,
            "event_time_s": self.event_time_us / 1e6,
            "published_ns": time.time_ns(),
        }
        if self.with_target:
            message["accuracy"] = self.correct / self.with_target
        message.update({k: v for k, v in self.source.stats().items() if k.startswith("pacing") or k == "speed"})
        if self.error is not None:
            message["error"] = self.error
        return message


# --------------------------------------------------------------------------- the job

class Pipeline:
    """Build with a PipelineConfig; ``run()`` blocks until the sources end or ``stop()``; returns an exit code."""

    def __init__(self, config: PipelineConfig, *, publisher: Publisher | None = None):
        self.config = validate(config)
        self.stop_event = threading.Event()
        self.finished = threading.Event()
        self.exit_code = EXIT_OK
        self.stop_reason: str | None = None
        self._send_lock = threading.Lock()
        self._publisher = publisher
        self._log_queue: queue_module.Queue = queue_module.Queue()
        self._log_thread = None
        self.log = None
        self.workers: list[StreamWorker] = []
        self.started_ns = None
        self.wall_s = 0.0
        self._opened = False
        self._closed = False
        self._status_previous: dict[str, dict] = {}

    # -- setup ------------------------------------------------------------------------------
    def open(self) -> "Pipeline":
        import torch

        from .cutoff import ConfidenceCutoff, policy_from_meta
        from .snn import frames_to_input
        from .snn.checkpoint import load_checkpoint

        config = self.config
        torch.set_num_threads(max(1, int(config.torch_threads)))
        self.device = config.device or "cpu"
        self.model, self.meta = load_checkpoint(config.checkpoint, map_location=self.device)
        self.frames_to_input = frames_to_input
        meta = self.meta
        channels, height, width = (int(v) for v in meta["input_size"])
        self.model_sensor_size = (width, height, channels)
        self.class_names = list(meta.get("class_names") or [])
        self.time_window = int(config.time_window or (meta.get("binning") or {}).get("time_window") or 0)
        if self.time_window <= 0:
            raise ConfigError(f"{config.checkpoint}: the checkpoint names no binning time_window; "
                              "set [binning].time_window")
        self.max_timesteps = int(config.max_timesteps or meta.get("timesteps") or 0)
        if self.max_timesteps <= 0:
            raise ConfigError(f"{config.checkpoint}: the checkpoint names no timesteps; "
                              "give --max-timesteps or [cutoff].max_timesteps")
        if config.cutoff_epsilon is not None:
            self.policy = ConfidenceCutoff(config.cutoff_epsilon)
        elif meta.get("cutoff"):
            self.policy = policy_from_meta(meta["cutoff"])
        else:
            self.policy = ConfidenceCutoff(0.0)   # never fires: every window runs to max_timesteps
        # sources
        names = set()
        sources = []
        for sc in config.sources:
            source = make_source(sc.uri, sc.stream, speed=sc.speed, loop=sc.loop, sensor_size=sc.sensor_size,
                                 split=sc.split, limit=sc.limit)
            base, k = source.stream, 2
            while source.stream in names:
                source.stream = f"{base}-{k}"
                k += 1
            names.add(source.stream)
            sources.append((source, sc))
        for source, sc in sources:
            source.open(default_sensor_size=self.model_sensor_size)
            worker = StreamWorker(self, source, sc)
            worker.setup()
            self.workers.append(worker)
        self._warm_up()
        if self._publisher is None:
            self._publisher = Publisher(config.endpoint, curve_keys=config.curve_keys, sndhwm=config.sndhwm)
        self.publisher = self._publisher
        if config.log:
            from .decision_log import DecisionLog

            self.log = DecisionLog(config.log)
            self._log_thread = threading.Thread(target=self._write_log, name="decision-log", daemon=True)
            self._log_thread.start()
        self._opened = True
        return self

    def _warm_up(self) -> None:
        """Compile the binner's kernels and run the model once, so the first frame is not slow."""
        import torch

        from .binning import StreamingBinner
        from .events import make_events

        size = SensorSize(*self.model_sensor_size)
        binner = StreamingBinner(size, self.time_window)
        binner.push(make_events([0, 1], [0, 1], [0, 2 * self.time_window], [0, 1]))
        binner.flush(4 * self.time_window)
        with torch.inference_mode():
            state = self.model.init_state(1)
            x = self.frames_to_input(np.zeros((1, size.polarities, size.height, size.width), np.int16))
            for _ in range(3):
                self.model.step(x.to(self.device), state)
            state.reset()

    def slice_for(self, speed: float) -> int:
        return _slice_us(self.time_window, speed)

    @property
    def endpoint(self) -> str:
        return self.publisher.endpoint

    # -- run ----------------------------------------------------------------------------------
    def start(self) -> None:
        if not self._opened:
            self.open()
        c = self.config
        with self._send_lock:
            self.subscribers_at_start = self.publisher.wait_for_subscribers(c.wait_subscribers, c.wait_timeout_s,
                                                                            c.settle_s)
        self.started_ns = time.time_ns()
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        for worker in self.workers:
            worker.start()
        self._status_thread = threading.Thread(target=self._status_loop, name="status", daemon=True)
        self._status_thread.start()

    def run(self) -> int:
        """Start, wait until every stream ends (or stop()), shut down cleanly; return the exit code."""
        try:
            self.start()
            while not self.finished.wait(0.05):
                if self.stop_event.is_set():
                    break
        finally:
            self.close()
        return self.exit_code

    def stop(self, reason: str = "stopped", exit_code: int | None = None) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            if exit_code is not None and self.exit_code == EXIT_OK:
                self.exit_code = exit_code
        self.stop_event.set()

    def _stream_done(self, worker: StreamWorker) -> None:
        if all(w.done.is_set() for w in self.workers):
            self.finished.set()

    def _stream_failed(self, worker: StreamWorker, exc: BaseException) -> None:
        print(f"streamsnn run: stream {worker.name!r}: {worker.error}", file=sys.stderr)
        self.exit_code = EXIT_SOURCE_ERROR
        self.stop(f"error in stream {worker.name}")

    # -- sending ------------------------------------------------------------------------------
    def publish_decision(self, stream: str, message: dict) -> float:
        """Send one decision now (latency stamped at the send); queue it for the log. Returns latency ms."""
        with self._send_lock:
            now = time.time_ns()
            message["published_ns"] = now
            latency = (now - message["frame_available_ns"]) / 1e6
            message["latency_ms"] = latency
            self.publisher.send(decision_topic(stream), message)
        if self.log is not None:
            self._log_queue.put(message)
        return latency

    def _send_status(self, final: bool = False) -> list[dict]:
        now = time.perf_counter()
        interval = now - getattr(self, "_last_status", self._t0)
        self._last_status = now
        out = []
        for worker in self.workers:
            message = worker.status(interval, self._status_previous.get(worker.name))
            message["wall_s"] = now - self._t0
            message["cpu_s"] = time.process_time() - self._cpu0     # the whole process, every thread
            message["final"] = final
            self._status_previous[worker.name] = message
            with self._send_lock:
                message["subscribers"] = self.publisher.decision_subscriptions
                self.publisher.send(status_topic(worker.name), message)
            out.append(message)
        return out

    def _status_loop(self) -> None:
        interval = self.config.status_interval_s
        while not self.stop_event.wait(interval) and not self.finished.is_set():
            self._send_status()

    def _write_log(self) -> None:
        while True:
            message = self._log_queue.get()
            if message is None:
                break
            self.log.append(message)

    # -- shutdown -----------------------------------------------------------------------------
    def close(self) -> list[dict]:
        """Stop every thread, send the final status, close the log and the socket (idempotent)."""
        if self._closed:
            return []
        self._closed = True
        self.stop_event.set()
        deadline = time.monotonic() + 1.0          # every stream together, not one second each
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self.wall_s = time.perf_counter() - self._t0 if self.started_ns else 0.0
        final = []
        if self._opened and self.started_ns is not None:
            self._status_thread.join(1.0)
            for worker in self.workers:
                if worker.state_name == "running":
                    worker.state_name = "stopped"
            final = self._send_status(final=True)
        self.final_status = final
        if self._log_thread is not None:
            self._log_queue.put(None)
            self._log_thread.join(5.0)
        if self.log is not None:
            self.log.close()
        if self._opened:
            self.publisher.close(linger_ms=500)
        for worker in self.workers:
            try:
                worker.source.close()
            except Exception:
                pass
        return final


# --------------------------------------------------------------------------- command line

def run_main(args) -> int:
    """``streamsnn run``: exit code 0 at the end of the sources, 1 after a source error,
    130 after Ctrl-C, 143 after SIGTERM (both clean: log closed, last messages sent)."""
    config = config_from_args(args)
    pipeline = Pipeline(config)
    pipeline.open()
    names = ", ".join(f"{w.name} ({w.source.uri}, {w.queue.policy})" for w in pipeline.workers)
    print(f"streamsnn run: {names} -> {pipeline.endpoint}"
          + (f", log {config.log}" if config.log else "")
          + f"; T={pipeline.max_timesteps}, window {pipeline.time_window} us, cutoff {pipeline.policy!r}",
          file=sys.stderr, flush=True)

    def on_signal(signum, frame):
        code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        pipeline.stop(signal.Signals(signum).name, code)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = pipeline.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for status in pipeline.final_status:
        p50 = status["latency_p50_ms_total"]
        p99 = status["latency_p99_ms_total"]
        line = (f"streamsnn run: {status['stream']}: {status['state']}, {status['decisions']} decisions, "
                f"{status['frames']} frames, {status['events_processed']} events, "
                f"{status['dropped_events']} dropped")
        if p50 is not None:
            line += f", latency p50 {p50:.3f} ms p99 {p99:.3f} ms"
        if status.get("accuracy") is not None:
            line += f", accuracy {status['accuracy']:.4f}"
        if status.get("error"):
            line += f"; error: {status['error']}"
        print(line, file=sys.stderr, flush=True)
    return code


def _find_data(arg: str | None) -> Path | None:
    for candidate in (arg, os.environ.get("STREAMSNN_DATA")):
        if not candidate:
            continue
        root = Path(candidate).expanduser()
        for folder in (root, root / "NMNIST", root / "nmnist_small"):
            if (folder / "Test").is_dir():
                return folder
        if root.name == "Test" and root.is_dir():
            return root.parent
    return None


def demo_main(args) -> int:
    """``streamsnn demo``: the N-MNIST Test split through the bundled checkpoint, decisions shown live.

    The data is, in this order: what ``--download DIR`` fetched, ``--data DIR`` or ``STREAMSNN_DATA``,
    else the 100-sample split bundled in the package.
    """
    from .datasets import bundled_nmnist_root, download_nmnist

    given = args.data or os.environ.get("STREAMSNN_DATA")
    if args.download:
        root = _find_data(str(download_nmnist(args.download)))
    elif given:
        root = _find_data(given)
        if root is None:
            print(f"streamsnn demo: {given!r} holds no Test/ folder.\n"
                  "  Put N-MNIST in the archive layout, DIR/Test/<digit>/<sample>.bin (the official N-MNIST\n"
                  "  archive extracted, or tonic's NMNIST download), then run\n"
                  "    streamsnn demo --data DIR        or   STREAMSNN_DATA=DIR streamsnn demo\n"
                  "  (with neither, the demo runs on the 100 Test samples bundled in the package)",
                  file=sys.stderr)
            return 2
    else:
        root = bundled_nmnist_root()
    checkpoint = Path(args.checkpoint) if args.checkpoint else BUNDLED_CHECKPOINT
    if not checkpoint.is_file():
        raise ConfigError(f"{checkpoint}: checkpoint not found" + (
            "" if args.checkpoint else " (the bundled N-MNIST checkpoint is missing from this installation; "
                                       "train one with `streamsnn train` and pass --checkpoint)"))
    config = PipelineConfig(
        name="demo", sources=[SourceConfig(uri=str(root / "Test"), stream="nmnist", speed=float(args.speed),
                                           limit=args.limit)],
        checkpoint=str(checkpoint), endpoint=args.publish, origin="streamsnn demo",
        wait_subscribers=1, wait_timeout_s=5.0, settle_s=0.1)
    pipeline = Pipeline(config)
    pipeline.open()
    subscriber = Subscriber(pipeline.endpoint, topic="decision")
    total = len(pipeline.workers[0].source.samples)
    T = pipeline.max_timesteps
    print(f"streamsnn demo: {total} samples from {root / 'Test'} through {checkpoint.name} "
          f"(T = {T}, cutoff {pipeline.policy!r}), publishing on {pipeline.endpoint}", file=sys.stderr)
    received = []

    def on_signal(signum, frame):
        pipeline.stop(signal.Signals(signum).name, EXIT_SIGINT)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    runner = threading.Thread(target=pipeline.run, name="pipeline", daemon=True)
    runner.start()
    tty = sys.stderr.isatty()
    last_print, printed = 0.0, 0
    try:
        while True:
            item = subscriber.recv(timeout_s=0.1)
            if item is not None:
                received.append(item[1])
            elif not runner.is_alive():
                break
            now = time.monotonic()
            # At most five lines a second, each only when a new decision came, and always the last one.
            if len(received) > printed and (now - last_print > 0.2 or len(received) == total):
                last_print, printed = now, len(received)
                line = _demo_line(received, total, T)
                print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
        runner.join()
    finally:
        subscriber.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if tty:
        print(file=sys.stderr)
    if not received:
        print("streamsnn demo: no decisions received", file=sys.stderr)
        return pipeline.exit_code or 1
    lat = np.array([m["latency_ms"] for m in received])
    steps = np.array([m["timesteps"] for m in received])
    acc = np.mean([m["label"] == m["target"] for m in received if "target" in m])
    print(f"samples       {len(received)} / {total}\n"
          f"accuracy      {acc:.4f}\n"
          f"timesteps     {steps.mean():.2f} on average of T = {T} (speed-up {T / steps.mean():.2f}x)\n"
          f"latency       p50 {np.percentile(lat, 50):.3f} ms, p99 {np.percentile(lat, 99):.3f} ms "
          f"(last event of the deciding frame -> message sent)\n"
          f"wall time     {pipeline.wall_s:.2f} s")
    return pipeline.exit_code


def _demo_line(received, total, T) -> str:
    n = len(received)
    with_target = [m for m in received if "target" in m]
    acc = sum(m["label"] == m["target"] for m in with_target) / max(1, len(with_target))
    steps = sum(m["timesteps"] for m in received) / n
    lat = np.percentile([m["latency_ms"] for m in received], 50)
    return (f"samples {n}/{total}  accuracy {acc:.3f}  mean timesteps {steps:.2f}/{T}  "
            f"latency p50 {lat:.2f} ms")
