"""The streaming job: sources -> queues -> frame stage -> batched inference -> cutoff -> ZeroMQ (+ HDF5 log).

Threads (one model for all streams)::

    replay thread (every replay: reads, paces by event time or not at all)  ─┐
    source thread per live stream (receives) ────────────────────────────────┤
                                 EventQueue per stream (bounded: block | drop-oldest, counted)
                                     frame thread (all streams): preprocess + bin (Numba, nogil)
                                                                                    │ frames, per stream
                                     inference thread: the ready frames of all streams as one batch,
                                       one membrane slot per stream, cutoff per stream ──▶ send (lock) ──▶ XPUB
                                                                                               └──▶ log thread ──▶ HDF5
                                     status thread: status.<stream> once a second

* Inference window: the state persists across frames; after each frame the
  cutoff decides; on a decision (or ``max_timesteps`` frames) one message is
  published and the stream's state reset. A dataset folder gives one window
  per sample, binned exactly as ``streamsnn train``/``eval`` bin it, and the
  network is stepped the way ``streamsnn eval`` steps it (same block shape:
  :mod:`streamsnn.snn.batched`, one Numba call per batch on the CPU), so
  online decisions equal offline ones whatever the number of streams.
* Decisions are sent by the inference thread itself (under a lock shared with
  the status thread), so no queue hop adds to the latency; the HDF5 log is
  written by its own thread, off the hot path.
* Warm start: the model (at the block shape), every stream's preprocessing and
  binner kernels run once, and the publisher settles (and waits for
  ``wait_subscribers``), before any source thread starts; a replay's clock
  starts at its first chunk, after all of that.
* Streams join (:meth:`Pipeline.add_stream`) and leave (:meth:`Pipeline.remove_stream`)
  while the job runs.
* Ctrl-C / SIGTERM: every thread stops within a few hundred milliseconds, the
  decisions made are sent and logged, a final status message goes out, the
  log is closed. A source error is published on ``status.<stream>`` (state
  "error") and ends the job with exit code 1.
"""
from __future__ import annotations

import gc
import queue as queue_module
import sys
import threading
import time

import numpy as np

from ..cutoff import update_rows
from ..errors import ConfigError
from .bus import Publisher
from .config import PipelineConfig, SourceConfig, validate
from .frames import FrameStage, FrameWorker, build_preprocess
from .messages import SCHEMA_VERSION, decision_message, decision_topic, encode, stamp_sent, status_topic
from .queue import EventQueue, SourceEnd, SourceFailure
from .scheduler import Lane, Scheduler
from .stats import percentiles
from .replay import ReplayDriver, paced_by_driver
from .sources import Source, make_source, pacing_slice_us

EXIT_OK, EXIT_SOURCE_ERROR, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143


def choose_torch_threads(requested: int | None) -> int:
    """torch's intra-op threads for the job. One, unless asked: the network is stepped in blocks of a
    few rows whose operations take tens of microseconds, where OpenMP's fork/join per operation costs
    about as much as it saves; and on a small machine (the 2-core target) the other core is busy with
    the frame thread, the source threads and the publisher, which a second torch thread would
    preempt. ``[model] torch_threads`` asks for more (a large model, or many idle cores)."""
    if requested is not None:
        return max(1, int(requested))
    return 1


# How long one status round may wait, in all, for the inference thread to be idle (see _wait_for_quiet).
STATUS_YIELD_S = 0.05


class Stream:
    """One stream of the job: its source and source thread, bounded queue, frame stage and scheduler lane."""

    def __init__(self, source: Source, config: SourceConfig, queue: EventQueue, stage: FrameStage,
                 slice_us: int):
        self.source = source
        self.name = source.stream
        self.config = config
        self.queue = queue
        self.stage = stage
        self.slice_us = slice_us
        self.lane: Lane | None = None
        self.stop = threading.Event()
        self.closed = False             # the frame worker has handed on the stream's last item
        self.thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self.lane is not None and self.lane.closed.is_set()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._produce, name=f"source-{self.name}", daemon=True)
        self.thread.start()

    def _produce(self) -> None:
        stop = self.stop
        try:
            for item in self.source.items(stop, self.slice_us):
                if not self.queue.put(item, stop) or stop.is_set():
                    break
            self.queue.put(SourceEnd(stopped=stop.is_set()))
        except BaseException as exc:  # a SourceError, or a bug: reported, never silent
            self.queue.put(SourceFailure(exc))
        finally:
            try:
                self.source.close()
            except Exception:
                pass

    def status(self, interval_s: float, previous: dict | None) -> dict:
        lane = self.lane
        latencies, lane.interval_latencies = lane.interval_latencies, []
        p50, p99 = percentiles(latencies)
        all50, all99 = lane.latencies.percentiles()
        read = self.source.events_read
        prev = previous or {}
        dt = max(interval_s, 1e-9)
        message = {
            "schema": SCHEMA_VERSION, "stream": self.name, "state": lane.state_name,
            "source": self.source.uri, "queue_policy": self.queue.policy,
            "events_per_s": (read - prev.get("events_in", 0)) / dt,
            "frames_per_s": (lane.frames - prev.get("frames", 0)) / dt,
            "decisions_per_s": (lane.decisions - prev.get("decisions", 0)) / dt,
            "events_in": read, "events_processed": self.stage.events_processed,
            "dropped_events": self.queue.dropped_events, "dropped_chunks": self.queue.dropped_chunks,
            "queue_events": self.queue.events, "queue_peak_events": self.queue.peak_events,
            "queue_max_events": self.queue.max_events,
            "frames": lane.frames, "decisions": lane.decisions,
            "latency_p50_ms": p50, "latency_p99_ms": p99,
            "latency_p50_ms_total": all50, "latency_p99_ms_total": all99,
            "mean_timesteps": lane.timesteps_sum / lane.decisions if lane.decisions else None,
            "event_time_s": self.stage.event_time_us / 1e6,
            "published_ns": time.time_ns(),
        }
        if lane.with_target:
            message["accuracy"] = lane.correct / lane.with_target
        source = self.source.stats()
        message.update({k: v for k, v in source.items() if k.startswith(("pacing", "source_")) or k == "speed"})
        if source.get("source_stalled") and message["state"] in ("starting", "running"):
            # a live sender that went quiet without closing the connection, also one that sent its
            # header and never an event (its lane never left "starting")
            message["state"] = "stalled"
        if lane.error is not None:
            message["error"] = lane.error
        return message


class Pipeline:
    """Build with a PipelineConfig; ``run()`` blocks until the sources end or ``stop()``; returns an exit code."""

    def __init__(self, config: PipelineConfig, *, publisher: Publisher | None = None):
        self.config = validate(config)
        self.stop_event = threading.Event()
        self.finished = threading.Event()
        self.exit_code = EXIT_OK
        self.stop_reason: str | None = None
        self._send_lock = threading.Lock()
        self._streams_lock = threading.Lock()
        self._status_lock = threading.Lock()     # one status round (or a removed stream's final one) at a time
        self._publisher = publisher
        self._log_queue: queue_module.Queue = queue_module.Queue()
        self._log_thread = None
        self.log = None
        self.log_error: str | None = None
        self._log_ended = False          # the log's end marker is queued: no decision is sent after it
        self.streams: list[Stream] = []
        self.started_ns = None
        self.sources_started: float | None = None     # perf_counter() when the first source thread started
        self.wall_s = 0.0
        self._opened = False
        self._closed = False
        self._status_previous: dict[str, dict] = {}

    # -- setup ------------------------------------------------------------------------------
    def open(self) -> "Pipeline":
        """Load the model, open and warm every source, bind the publisher, open the log. On any
        failure part-way, whatever was created (sources, a bound port, the log) is closed before the
        error goes on: a caller that never gets a Pipeline cannot close it."""
        try:
            return self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> "Pipeline":
        import torch

        from ..cutoff import ConfidenceCutoff, policy_from_meta
        from ..snn.batched import BlockStepper
        from ..snn.checkpoint import load_checkpoint

        config = self.config
        torch.set_num_threads(choose_torch_threads(config.torch_threads))
        # The inference thread gives the GIL up inside every torch and Numba call and must get it back
        # quickly; with dozens of source threads runnable, the default 5 ms switch interval would add up to
        # 5 ms to a decision for each of them that grabs the GIL first.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        from ..training.trainer import pick_device

        # as `streamsnn eval`: "cuda" without a CUDA device is a clear error, not a failed checkpoint load
        self.device = str(pick_device(config.device)) if config.device else "cpu"
        self.model, self.meta = load_checkpoint(config.checkpoint, map_location=self.device)
        meta = self.meta
        channels, height, width = (int(v) for v in meta["input_size"])
        self.model_sensor_size = (width, height, channels)
        trained_on = meta.get("sensor_size")
        if trained_on is not None and tuple(int(v) for v in trained_on)[2] == channels:
            # a model trained on frames resized to its input: the job bins at the training sensor's size
            # and the stepper resizes, as `streamsnn eval` does
            self.model_sensor_size = tuple(int(v) for v in trained_on)
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
        sensor_w, sensor_h, sensor_p = self.model_sensor_size
        # the event engine may split a block's rows over two threads (where there are two cores); the
        # scheduler asks for that only in long batches (see Scheduler.run_once)
        self.stepper = BlockStepper(self.model, frame_size=(sensor_p, sensor_h, sensor_w))
        self.replay = ReplayDriver(self.stop_event, on_error=lambda exc: self._thread_failed("replay", exc))
        self.frame_worker = FrameWorker(self.stop_event, max_pending_frames=max(32, 2 * self.max_timesteps),
                                        on_error=lambda exc: self._thread_failed("frame", exc))
        self.scheduler = Scheduler(self.stepper, self.policy, self.max_timesteps, self.publish_decision,
                                   stop=self.stop_event, class_names=self.class_names,
                                   on_closed=self._stream_closed, on_progress=self.frame_worker.wake.set,
                                   settled=self.frame_worker.idle, capacity=len(config.sources))
        self.frame_worker.on_idle = self.scheduler.wake.set
        for sc in config.sources:
            self.streams.append(self._make_stream(sc))
        self._warm_up_model()
        # Everything loaded so far (torch, Numba, the model: ~200,000 objects) lives as long as the job.
        # Left to the cyclic garbage collector, each full collection walks all of it while holding the
        # GIL (140 ms measured), stalling every stream's decisions; frozen, collections see only what
        # the job allocates from now on.
        gc.collect()
        gc.freeze()
        if self._publisher is None:
            self._publisher = Publisher(config.endpoint, curve_keys=config.curve_keys, sndhwm=config.sndhwm)
        self.publisher = self._publisher
        if config.log:
            from .log import DecisionLog

            self.log = DecisionLog(config.log)
            self._log_thread = threading.Thread(target=self._write_log, name="decision-log", daemon=True)
            self._log_thread.start()
        self._opened = True
        return self

    def _make_stream(self, sc: SourceConfig) -> Stream:
        """Open a source, check its geometry against the model, build and warm its frame stage."""
        source = make_source(sc.uri, sc.stream, speed=sc.speed, loop=sc.loop, sensor_size=sc.sensor_size,
                             split=sc.split, limit=sc.limit)
        with self._streams_lock:
            names = {s.name for s in self.streams}
        base, k = source.stream, 2
        while source.stream in names:
            source.stream = f"{base}-{k}"
            k += 1
        try:
            return self._build_stream(source, sc)
        except BaseException:   # a connected dv:// socket or an open file must not outlive the error
            source.close()
            raise

    def _build_stream(self, source: Source, sc: SourceConfig) -> Stream:
        source.open(default_sensor_size=self.model_sensor_size)
        stages, out_size = build_preprocess(self.config, source.sensor_size)
        model_size = self.model_sensor_size
        if (out_size.width, out_size.height, out_size.polarities) != tuple(model_size):
            given = source.sensor_size
            after = "" if not stages else f" (after [binning] preprocessing: {out_size.width}x" \
                                          f"{out_size.height}x{out_size.polarities})"
            raise ConfigError(
                f"stream {source.stream!r}: the source {source.uri} gives {given.width}x{given.height}x"
                f"{given.polarities} events{after} but the model expects {model_size[0]}x{model_size[1]}x"
                f"{model_size[2]} (width x height x polarities); set [binning] crop = [x0, y0, w, h], "
                "downsample = factor and/or merge_polarity = true in the pipeline definition so that they match")
        config = self.config
        policy = sc.queue_policy or config.queue_policy or ("drop" if source.live else "block")
        queue = EventQueue(policy, config.queue_max_events, config.queue_max_chunks,
                           on_put=self.frame_worker.wake.set)
        stage = FrameStage(stages, out_size, self.time_window, self.max_timesteps,
                           restamp=not source.live and sc.speed <= 0)
        stage.warm_up(source.sensor_size)
        slice_us = pacing_slice_us(self.time_window, sc.speed, source.kind)
        source.warm_up(slice_us)
        # a sample decided early is not read on: the source skips to its end (fewer hand-overs, same timing)
        source.window_done = lambda k: stage.decided_window == k
        source.window_span_us = self.max_timesteps * self.time_window
        return Stream(source, sc, queue, stage, slice_us)

    def _warm_up_model(self) -> None:
        """Step the network at its block shape a few times, and run the cutoff and a message's encoding on
        its logits (numpy's and json's first calls cost ~1 ms, traced in the first burst), so the first
        frame is not slow."""
        state = self.stepper.init_state(1)
        slot = state.acquire()
        c, h, w = self.stepper.frame_size
        for _ in range(3):
            logits = self.stepper.step(state, [slot], np.zeros((1, c, h, w), np.int16))
        self.stepper.calls = self.stepper.rows = 0
        cutoff = self.policy.online(1)     # decides at its first frame, as a stream's cutoff may
        decision, = update_rows([cutoff], logits)
        encode(decision_topic("warm-up"), decision_message(
            "warm-up", 0, decision, max_timesteps=self.max_timesteps, window_start_us=0, window_end_us=1,
            frame_available_ns=time.time_ns(), target=0, class_name="0", sample="warm-up"))

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
                                                                            c.settle_s, stop=self.stop_event)
        self.started_ns = time.time_ns()
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self.scheduler.start()
        self.frame_worker.start()
        # warm start: model and kernels warmed in open(), the publisher settled above; only now may a
        # replay's clock start (at its first chunk)
        self.sources_started = time.perf_counter()
        for stream in list(self.streams):
            self._attach(stream)
        if not self.streams:
            self.finished.set()
        self._status_thread = threading.Thread(target=self._status_loop, name="status", daemon=True)
        self._status_thread.start()

    def _attach(self, stream: Stream) -> None:
        stream.lane = self.scheduler.add(stream.name, stream.stage)
        self.frame_worker.add(stream)
        if paced_by_driver(stream):
            self.replay.add(stream)
        else:
            stream.start()

    def add_stream(self, source_config: SourceConfig) -> str:
        """Add a stream to a running job (its source opened and warmed first); returns its name."""
        if self.started_ns is None:
            raise ConfigError("add_stream: the job has not started; put the source in the configuration")
        stream = self._make_stream(source_config)
        with self._streams_lock:
            self.streams.append(stream)
        self.finished.clear()
        self._attach(stream)
        return stream.name

    def remove_stream(self, name: str, timeout_s: float = 2.0) -> bool:
        """Stop one stream (its decisions so far stay published); True once it has closed, its final
        status (``final`` true) is sent and the job has forgotten it (no status for it after that)."""
        stream = next((s for s in self.streams if s.name == name), None)
        if stream is None:
            raise ConfigError(f"remove_stream: no stream named {name!r}")
        stream.stop.set()
        if not stream.lane.closed.wait(timeout_s):
            return False
        self.frame_worker.remove(stream)
        if stream.thread is not None:
            stream.thread.join(timeout_s)
        now = time.perf_counter()
        # under the status lock: the status thread cannot send one more (non-final) status after this
        with self._status_lock:
            with self._streams_lock:
                self.streams = [s for s in self.streams if s is not stream]
            if stream.lane.state_name in ("running", "starting"):
                stream.lane.state_name = "stopped"
            if not self._closed:   # after close() the job's final status has covered it
                self._send_one_status(stream, now - getattr(self, "_last_status", self._t0), now, final=True)
            self._status_previous.pop(stream.name, None)
        return True

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
        if exit_code is not None and self.exit_code == EXIT_OK:   # the first cause of a stop keeps its code
            self.exit_code = exit_code
        self.stop_event.set()
        for stream in self.streams:
            stream.stop.set()

    def _stream_closed(self, lane: Lane | None, item) -> None:
        if item.state == "error" and lane is None:
            self._thread_failed("inference", item.error)
        elif item.state == "error":
            print(f"streamsnn run: stream {lane.name!r}: {lane.error}", file=sys.stderr)
            self.stop(f"error in stream {lane.name}", EXIT_SOURCE_ERROR)   # a Ctrl-C's 130/143 stays
        with self._streams_lock:
            if all(s.done for s in self.streams):
                self.finished.set()

    def _thread_failed(self, thread: str, exc: BaseException) -> None:
        """A bug in one of the job's own threads (inference, frames): one line, exit code 1, the job stops."""
        print(f"streamsnn run: the {thread} thread failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        self.stop(f"error in the {thread} thread", EXIT_SOURCE_ERROR)
        self.finished.set()

    # -- sending ------------------------------------------------------------------------------
    def publish_decision(self, stream: str, message: dict) -> float:
        """Send one decision now (latency stamped at the send); queue it for the log. Returns latency ms."""
        with self._send_lock:
            latency = stamp_sent(message, time.time_ns())
            if self._log_ended:   # only an inference thread that outlived close()'s wait: never sent unlogged
                return latency
            self.publisher.send(decision_topic(stream), message)
            if self.log is not None:
                self._log_queue.put(message)
        return latency

    def _send_status(self, final: bool = False) -> list[dict]:
        with self._status_lock:
            now = time.perf_counter()
            interval = now - getattr(self, "_last_status", self._t0)
            self._last_status = now
            with self._send_lock:
                subscribers = self.publisher.decision_subscriptions     # one poll a round, not one a stream
            messages = []
            deadline = now + STATUS_YIELD_S
            for stream in list(self.streams):
                if stream.lane is None:
                    continue
                if not final:
                    self._wait_for_quiet(deadline)
                messages.append(self._send_one_status(stream, interval, now, final, subscribers))
            return messages

    def _wait_for_quiet(self, deadline: float) -> None:
        """Let a burst of frames go through before the next status message (up to ``deadline``): a round
        of 16 streams' status is ~2 ms of Python, and landing in a burst it held the decisions back by
        as much (the 16-stream run's worst latencies, traced). Status is once a second; it can wait."""
        scheduler = getattr(self, "scheduler", None)
        while scheduler is not None and scheduler.busy and time.perf_counter() < deadline:
            time.sleep(0.0005)

    def _send_one_status(self, stream: Stream, interval: float, now: float, final: bool,
                         subscribers: int | None = None) -> dict:
        message = stream.status(interval, self._status_previous.get(stream.name))
        message["wall_s"] = now - self._t0
        message["cpu_s"] = time.process_time() - self._cpu0     # the whole process, every thread
        message["final"] = final
        if self.log_error is not None:
            message["log_error"] = self.log_error
        self._status_previous[stream.name] = message
        with self._send_lock:
            message["subscribers"] = self.publisher.decision_subscriptions if subscribers is None else subscribers
            self.publisher.send(status_topic(stream.name), message)
        return message

    def _status_loop(self) -> None:
        interval = self.config.status_interval_s
        while not self.stop_event.wait(interval) and not self.finished.is_set():
            self._send_status()

    def _write_log(self) -> None:
        """Append queued decisions; flush buffered rows when they are due even if no decision follows.
        A write error (disk full, h5py) stops the job with exit code 1 and a one-line error, on stderr
        and in every status message after it: a job that cannot log must not look healthy."""
        try:
            while True:
                try:
                    message = self._log_queue.get(timeout=self.log.seconds_to_flush())
                except queue_module.Empty:
                    self.log.flush()
                    continue
                if message is None:
                    break
                self.log.append(message)
        except Exception as exc:
            self._log_failed(exc)
            self.stop("decision log error")
            while self._log_queue.get() is not None:   # drain until close() puts the end marker
                pass

    def _log_failed(self, exc: Exception) -> None:
        if self.log_error is None:
            self.log_error = f"decision log {self.log.path}: {type(exc).__name__}: {exc}"
            print(f"streamsnn run: {self.log_error}", file=sys.stderr)
        if self.exit_code == EXIT_OK:
            self.exit_code = EXIT_SOURCE_ERROR

    # -- shutdown -----------------------------------------------------------------------------
    def close(self) -> list[dict]:
        """Stop every thread, send the final status, close the log and the socket (idempotent)."""
        if self._closed:
            return []
        self._closed = True
        self.stop_event.set()
        for stream in self.streams:
            stream.stop.set()
        deadline = time.monotonic() + 1.0          # every thread together, not one second each
        # after a failed open() only part of the job exists: close what does
        scheduler, frame_worker = getattr(self, "scheduler", None), getattr(self, "frame_worker", None)
        replay = getattr(self, "replay", None)
        threads = [s.thread for s in self.streams] + [scheduler.thread if scheduler is not None else None,
                                                      frame_worker.thread if frame_worker is not None else None,
                                                      replay.thread if replay is not None else None]
        for thread in threads:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        self.wall_s = time.perf_counter() - self._t0 if self.started_ns else 0.0
        final = []
        if self._opened and self.started_ns is not None:
            self._status_thread.join(1.0)
            for stream in self.streams:
                if stream.lane is not None and stream.lane.state_name in ("running", "starting"):
                    stream.lane.state_name = "stopped"
            final = self._send_status(final=True)
        self.final_status = final
        if self._log_thread is not None:
            # the inference thread publishes (and queues for the log): it must be done before the log's
            # end marker, or a decision would go out that is never logged
            if scheduler is not None and scheduler.thread is not None:
                scheduler.thread.join(5.0)
            with self._send_lock:
                self._log_ended = True
                self._log_queue.put(None)
            self._log_thread.join(5.0)
        if self.log is not None:
            try:
                self.log.close()
            except Exception as exc:   # the last rows cannot be written: said once, never a traceback
                self._log_failed(exc)
        if self._publisher is not None:
            self._publisher.close(linger_ms=500)
        for stream in self.streams:
            try:
                stream.source.close()
            except Exception:
                pass
        return final
