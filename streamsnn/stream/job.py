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

import queue as queue_module
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..events import SensorSize
from .bus import Publisher
from .config import PipelineConfig, validate
from .messages import decision_topic, status_topic
from .scheduler import StreamWorker, pacing_slice_us
from .sources import make_source

BUNDLED_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "nmnist_str.pt"
EXIT_OK, EXIT_SOURCE_ERROR, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143


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

        from ..cutoff import ConfidenceCutoff, policy_from_meta
        from ..snn import frames_to_input
        from ..snn.checkpoint import load_checkpoint

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
            from .log import DecisionLog

            self.log = DecisionLog(config.log)
            self._log_thread = threading.Thread(target=self._write_log, name="decision-log", daemon=True)
            self._log_thread.start()
        self._opened = True
        return self

    def _warm_up(self) -> None:
        """Compile the binner's kernels and run the model once, so the first frame is not slow."""
        import torch

        from ..binning import StreamingBinner
        from ..events import make_events

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
        return pacing_slice_us(self.time_window, speed)

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


