"""Batched inference over streams: one thread, one model, one membrane slot per stream, a cutoff per stream.

Each stream has a :class:`Lane` here: the items its frame stage handed on
(window markers and frames, in order), its slot in the shared
:class:`~streamsnn.snn.batched.SlotState`, its online cutoff and counters.
The inference loop takes, from every lane that has one, its oldest frame,
steps all of them as one batch (:class:`~streamsnn.snn.batched.BlockStepper`,
fixed blocks of rows) and gives each stream its own row of logits; the cutoff
decides per stream and a decision is published at once. A stream advances by
at most one frame per batch (its membranes are a sequence), so a lane with a
backlog simply takes part in every batch until it has caught up.

Streams join and leave at any time: a lane takes a slot at its first window
and gives it back when its stream closes; between windows (a decided sample
whose remaining frames are skipped) its slot is idle and not stepped.
Because every batch goes through the same block shape, a stream's logits,
and so its decisions, are those it would get alone, and those ``streamsnn
eval`` computes offline (which steps through the same BlockStepper).
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np

from ..cutoff import update_rows
from ..errors import StreamsnnError
from ..snn.batched import BlockStepper
from .frames import FrameItem, FrameStage, StreamClosed, WindowClose, WindowOpen
from .messages import decision_message
from .stats import LatencyHistogram


class Lane:
    """One stream's side of the scheduler. Items come in through :meth:`submit` (the frame worker);
    everything else runs on the inference thread."""

    def __init__(self, scheduler: "Scheduler", name: str, stage: FrameStage):
        self.scheduler = scheduler
        self.name = name
        self.stage = stage
        self.pending: collections.deque = collections.deque()
        self.pending_frames = 0
        self.slot: int | None = None
        self.cutoff = scheduler.policy.online(scheduler.max_timesteps)
        self.window = 0
        self.sample_mode = False
        self.target: int | None = None
        self.sample: str | None = None
        self.window_frames = 0
        self.window_start_us: int | None = None
        self.window_end_us: int | None = None
        self.decided = False
        self.seq = 0
        self.state_name = "starting"
        self.error: str | None = None
        self.closed = threading.Event()
        # counters (written by the inference thread, read by the status thread)
        self.frames = 0
        self.decisions = 0
        self.correct = 0
        self.with_target = 0
        self.timesteps_sum = 0
        self.latencies = LatencyHistogram()      # the whole run, at a cost that does not grow with it
        self.interval_latencies: list[float] = []

    def submit(self, items: list) -> None:
        frames = sum(1 for item in items if isinstance(item, FrameItem))
        scheduler = self.scheduler
        with scheduler.lock:
            self.pending.extend(items)
            if frames and self.pending_frames == 0:
                scheduler.lanes_without_frames -= 1
            self.pending_frames += frames
            # While the scheduler gathers a burst, a hand-on wakes it only when every lane has a frame
            # (the frame stage going idle wakes it otherwise): woken at each of 16 hand-ons, it took
            # the GIL from the frame thread 16 times while that thread was still binning the burst.
            if scheduler.gathering and scheduler.lanes_without_frames > 0:
                return
        scheduler.wake.set()

    # -- inference thread ------------------------------------------------------------------------
    def _pop(self):
        with self.scheduler.lock:
            if not self.pending:
                return None
            item = self.pending.popleft()
            if isinstance(item, FrameItem):
                self.pending_frames -= 1
                if self.pending_frames == 0:
                    self.scheduler.lanes_without_frames += 1
            return item

    def next_frame(self) -> FrameItem | None:
        """Handle the markers at the head of the lane; return the next frame to step, if any."""
        while True:
            item = self._pop()
            if item is None:
                return None
            if isinstance(item, FrameItem):
                if item.window == self.window and self.slot is not None and not (self.sample_mode and self.decided):
                    return item
                continue                 # the rest of a decided sample, or a frame of a closed window
            if isinstance(item, WindowOpen):
                self._open_window(item)
            elif isinstance(item, WindowClose):
                if item.window == self.window and self.window_frames and not self.decided:
                    self._emit(self.cutoff.finish(), item.available_ns)
            elif isinstance(item, StreamClosed):
                self._close(item)
                return None

    def _open_window(self, item: WindowOpen) -> None:
        # a continuous stream restarted: what is open is decided from the frames it had
        if not self.sample_mode and self.window_frames and not self.decided:
            self._emit(self.cutoff.finish(), time.time_ns())
        state = self.scheduler.state
        if self.slot is None:
            self.slot = state.acquire()
            self.state_name = "running"
        else:
            state.reset(self.slot)
        self.cutoff.reset()
        self.window = item.window
        self.sample_mode = item.sample_mode
        self.target = item.target
        self.sample = item.sample
        self._new_window()

    def _new_window(self) -> None:
        self.window_frames = 0
        self.window_start_us = None
        self.window_end_us = None
        self.decided = False

    def _close(self, item: StreamClosed) -> None:
        if item.state == "finished" and not self.sample_mode and self.window_frames and not self.decided:
            self._emit(self.cutoff.finish(), item.available_ns)
        if self.slot is not None:
            self.scheduler.state.release(self.slot)
            self.slot = None
        self.state_name = item.state
        if item.error is not None:
            exc = item.error
            self.error = str(exc) if isinstance(exc, StreamsnnError) else f"{type(exc).__name__}: {exc}"
        self.scheduler.remove(self)
        self.closed.set()
        self.scheduler.on_closed(self, item)

    def on_stepped(self, frame: FrameItem, decision) -> None:
        """The frame went through the network, and the cutoff (``update_rows``) gave decision or None."""
        self.frames += 1
        if self.window_frames == 0:
            self.window_start_us = frame.t_start
        self.window_frames += 1
        self.window_end_us = frame.t_end
        if decision is not None:
            self._emit(decision, frame.available_ns)

    def _emit(self, decision, available_ns: int) -> None:
        s = self.scheduler
        label = int(decision.label)
        message = decision_message(
            self.name, self.seq, decision, max_timesteps=s.max_timesteps,
            window_start_us=self.window_start_us, window_end_us=self.window_end_us,
            frame_available_ns=available_ns, target=self.target, sample=self.sample,
            class_name=s.class_names[label] if 0 <= label < len(s.class_names) else None)
        if self.target is not None:
            self.with_target += 1
            self.correct += int(label == self.target)
        self.seq += 1
        self.decisions += 1
        self.timesteps_sum += int(decision.timesteps)
        latency = s.publish(self.name, message)
        self.latencies.add(latency)
        self.interval_latencies.append(latency)
        if self.sample_mode:
            self.decided = True
            self.stage.decided_window = self.window      # the frame stage skips the rest of the sample
        else:
            s.state.reset(self.slot)
            self.cutoff.reset()
            self._new_window()


class Scheduler:
    """The inference loop. ``publish(stream, message) -> latency_ms`` sends a decision;
    ``on_closed(lane, StreamClosed)`` is told when a stream is over; ``on_progress()`` after every batch
    (lanes may have room for more frames)."""

    def __init__(self, stepper: BlockStepper, policy, max_timesteps: int, publish, *, stop: threading.Event,
                 class_names=(), on_closed=None, on_progress=None, settled: threading.Event | None = None,
                 gather_s: float = 0.002, capacity: int = 4):
        self.stepper = stepper
        self.policy = policy
        self.max_timesteps = int(max_timesteps)
        self.publish = publish
        self.class_names = list(class_names)
        self.stop = stop
        self.on_closed = on_closed or (lambda lane, item: None)
        self.on_progress = on_progress or (lambda: None)
        self.settled = settled          # set when the frame stage has handed on all it has
        self.gather_s = gather_s
        # sized for the streams known at the start: growing the state (a copy of every membrane) while
        # the first frames of 64 streams waited cost them 3-4 ms each time it doubled (measured)
        self.state = stepper.init_state(max(4, int(capacity)))
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self._lanes: list[Lane] = []
        self.lanes_without_frames = 0   # lanes with no frame pending (under lock)
        self.gathering = False          # the inference thread waits in _gather (under lock)
        self.stepping = False           # run_once is stepping a batch
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # what the batches looked like
        self.batches = 0
        self.batch_rows_max = 0
        self.batch_rows_sum = 0

    def add(self, name: str, stage: FrameStage) -> Lane:
        lane = Lane(self, name, stage)
        with self.lock:
            self._lanes = self._lanes + [lane]
            self.lanes_without_frames += 1
        return lane

    def remove(self, lane: Lane) -> None:
        with self.lock:
            if any(x is lane for x in self._lanes):
                self._lanes = [x for x in self._lanes if x is not lane]
                if lane.pending_frames == 0:
                    self.lanes_without_frames -= 1

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import torch

        try:
            with torch.inference_mode():
                while not self.stop.is_set():
                    self.wake.wait(0.05)
                    self.wake.clear()
                    self._gather()
                    while not self.stop.is_set() and self.run_once():
                        pass
        except BaseException as exc:     # a bug: reported by the job, never silent
            self.error = exc
            self.on_closed(None, StreamClosed("error", exc))

    def _gather(self) -> None:
        """While the frame stage is still handing on a burst, wait (briefly) so that the burst goes
        through as one batch: until every lane has a frame, the frame stage is idle, or ``gather_s``
        has passed. Each hand-on (and the frame stage going idle) wakes this up to look again, so a
        lone stream replayed as fast as possible goes on as soon as its frame is there, instead of
        waiting for a frame stage that never idles (it bins ahead)."""
        if self.settled is None:
            return
        deadline = time.perf_counter() + self.gather_s
        try:
            while True:
                with self.lock:
                    complete = self.lanes_without_frames <= 0
                    self.gathering = not complete
                if complete or self.settled.is_set() or self.stop.is_set():
                    return
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return
                self.wake.wait(remaining)
                self.wake.clear()
        finally:
            with self.lock:
                self.gathering = False

    def run_once(self) -> bool:
        """One batch: the next frame of every lane that has one. False when no lane had a frame."""
        batch = []
        without = []
        for lane in self._lanes:
            frame = lane.next_frame()
            if frame is not None:
                batch.append((lane, frame))
            else:
                without.append(lane)
        if not batch:
            return False
        self.stepping = True
        try:
            self._step_batch(batch, without)
        finally:
            self.stepping = False
        return True

    @property
    def busy(self) -> bool:
        """A batch is being stepped, or frames wait in a lane (read without the lock: a hint for the
        status thread, which waits for a quiet moment)."""
        return self.stepping or self.lanes_without_frames < len(self._lanes)

    def _step_batch(self, batch: list, without: list) -> None:
        # block by block, each block's decisions sent before the next block is stepped
        rows = self.stepper.block_rows
        # A long batch (64 streams: 4 blocks) is mostly stepping: its blocks are split over two threads
        # (64 streams at speed 1, short runs: p50 10 -> 6-8 ms). A short one is not: the hand-over to the
        # pool thread, which must take the GIL to start, cost more than it saved (16 streams: p99 6.9 ->
        # 7.5-9.0 ms), and splitting every batch cut the throughput at speed 0 by a third (measured).
        split = len(batch) > 2 * rows
        start = 0
        while start < len(batch):
            if without and len(batch) - start < rows:
                # frames the frame stage handed on while this batch was collected or stepped join it now,
                # not one batch (a step and its decisions) later
                late = []
                for lane in without:
                    frame = lane.next_frame()
                    if frame is not None:
                        batch.append((lane, frame))
                    elif not lane.closed.is_set():
                        late.append(lane)
                without = late
            block = batch[start:start + rows]
            start += len(block)
            logits = self.stepper.step(self.state, [lane.slot for lane, _ in block],
                                       np.stack([frame.data for _, frame in block]), split=split)
            decisions = update_rows([lane.cutoff for lane, _ in block], logits)
            for (lane, frame), decision in zip(block, decisions):
                lane.on_stepped(frame, decision)
        self.batches += 1
        self.batch_rows_max = max(self.batch_rows_max, len(batch))
        self.batch_rows_sum += len(batch)
        self.on_progress()
