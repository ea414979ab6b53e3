"""Per-stream inference: a stream's source thread, its preprocessing and binner, the model steps and its cutoff.

Each stream has two threads: the source thread (reads, paces, puts items on
the stream's bounded :class:`~streamsnn.stream.queue.EventQueue`) and the
inference thread (preprocess, bin, ``model.step`` on the stream's own network
state, online cutoff, decision message). The model's weights are shared
(``step`` only reads them).
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, StreamsnnError
from ..events import SensorSize
from .config import PipelineConfig, SourceConfig
from .messages import SCHEMA_VERSION
from .queue import EventQueue, SourceEnd, SourceFailure
from .sources import Chunk, Source, WindowEnd, WindowStart

if TYPE_CHECKING:
    from .job import Pipeline


def sample_frame_count(t_first: int, t_last: int, time_window: int) -> int:
    """Frames of one sample by the offline rule, ``to_frame(time_window=W, include_incomplete=True)``
    (tonic's count: ceil((duration - W) / W) + 1, at least 1)."""
    duration = int(t_last) - int(t_first)
    return max(int(np.ceil((duration - time_window) / time_window) + 1), 1)


def pacing_slice_us(time_window: int, speed: float) -> int:
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
        from ..binning import StreamingBinner

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
                self.queue.put(SourceEnd())
        except BaseException as exc:  # a SourceError, or a bug: reported, never silent
            self.queue.put(SourceFailure(exc))
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
                    elif isinstance(item, SourceEnd):
                        self._on_end()
                        self.state_name = "stopped" if stop.is_set() else "finished"
                        break
                    elif isinstance(item, SourceFailure):
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
            from ..binning import Frame

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
        source = self.source.stats()
        message.update({k: v for k, v in source.items() if k.startswith(("pacing", "source_")) or k == "speed"})
        if source.get("source_stalled") and message["state"] == "running":
            message["state"] = "stalled"  # a live sender that went quiet without closing the connection
        if self.error is not None:
            message["error"] = self.error
        return message
