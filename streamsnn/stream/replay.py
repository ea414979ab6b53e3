"""One thread that paces every replayed recording and sample folder of a job.

A thread per replayed stream was the first design. With many streams it made
the latency: the streams' frames close at the same moments, every source
thread wakes then, and the inference thread, which takes the GIL back after
each Numba call and each decision, queued behind all of them (Python hands the
GIL over one waiting thread at a time, each for up to the switch interval).
Measured with 64 streams on 2 cores, a decision waited up to 70 ms for the
GIL. Here one thread hands every stream's items over at their due times, so
the inference thread competes with two threads (this one and the frame
thread), whatever the number of streams.

The sources' ``items()`` generators are the same as in a thread of their
own: their :class:`~streamsnn.stream.sources.Pacer` runs in cooperative mode
(``wait_until`` records the due time instead of sleeping), and this thread
holds each stream's next item until then. A stream whose queue is full (the
"block" policy) is retried shortly after, without holding the others up.
Replays at speed 0 go through this thread too (due at once; a full queue is
retried shortly after): with a thread each, 16 of them contended for the GIL
with the frame and inference threads (16 streams at speed 0: real-time factor
261 -> 461-479, CPU per decision 1.4 -> 0.85 ms, measured). Live sources (cameras,
DV network streams) keep a thread each: they block on I/O.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time

from .queue import SourceEnd, SourceFailure
from .sources import Chunk, WindowEnd

RETRY_FULL_S = 0.001        # a stream with a full queue ("block") is offered its item again after this
MAX_WAIT_S = 0.02           # a stream's stop is noticed within this, even between far-apart items


def paced_by_driver(stream) -> bool:
    """Replays of files and sample folders, at any speed."""
    source = stream.source
    return not source.live and source.kind in ("file", "folder")


class _Entry:
    __slots__ = ("stream", "items", "item", "last")

    def __init__(self, stream):
        self.stream = stream
        self.items = None
        self.item = None
        self.last = False          # the item held is the stream's last (SourceEnd / SourceFailure)


class ReplayDriver:
    def __init__(self, stop: threading.Event, on_error=None):
        self.stop = stop
        self.on_error = on_error or (lambda exc: None)
        self._heap: list = []
        self._new: list = []
        self._entries: set[_Entry] = set()     # streams not finished yet
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._order = itertools.count()
        self.thread: threading.Thread | None = None

    def add(self, stream) -> None:
        stream.source.cooperative = True
        with self._lock:
            self._new.append(_Entry(stream))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="replay", daemon=True)
                self.thread.start()
        self._wake.set()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:      # a bug here: reported by the job, never a silent end
            self.on_error(exc)
        finally:
            for entry in list(self._entries):   # stopped or failed: every source still open is closed
                self._finish(entry, SourceEnd(stopped=True))

    def _advance(self, entry: _Entry) -> None:
        """Take the stream's next item and schedule it at its due time."""
        stream = entry.stream
        try:
            if entry.items is None:
                entry.items = iter(stream.source.items(stream.stop, stream.slice_us))
            entry.item = next(entry.items)
        except StopIteration:
            entry.item, entry.last = SourceEnd(stopped=stream.stop.is_set()), True
        except BaseException as exc:      # a SourceError, or a bug: reported on the stream, never silent
            entry.item, entry.last = SourceFailure(exc), True
        pacer = stream.source.pacer
        due = pacer.due if pacer is not None and pacer.due is not None else time.perf_counter()
        heapq.heappush(self._heap, (due, next(self._order), entry))

    def _finish(self, entry: _Entry, item) -> None:
        stream = entry.stream
        if entry in self._entries:
            self._entries.discard(entry)
            stream.queue.put(item)
            if entry.items is not None and hasattr(entry.items, "close"):
                entry.items.close()
            try:
                stream.source.close()
            except Exception:
                pass

    def _loop(self) -> None:
        while not self.stop.is_set():
            with self._lock:
                new, self._new = self._new, []
            for entry in new:
                self._entries.add(entry)
                self._advance(entry)
            for entry in [e for e in self._entries if e.stream.stop.is_set()]:
                self._finish(entry, SourceEnd(stopped=True))
            heap = self._heap
            while heap and heap[0][2] not in self._entries:
                heapq.heappop(heap)
            if not heap:
                self._wake.wait(MAX_WAIT_S)
                self._wake.clear()
                continue
            due = heap[0][0]
            delay = due - time.perf_counter()
            if delay > 0.002:             # long waits: interruptible (a new stream, a stop)
                self._wake.wait(min(delay - 0.001, MAX_WAIT_S))
                self._wake.clear()
                continue
            if delay > 0:                 # the rest: one sleep, ~0.1 ms late at most
                time.sleep(delay)
            # every item due now goes out first, then the streams read ahead: the frames of streams whose
            # items fall due together reach the frame stage together (one batch), not one read apart
            now = time.perf_counter()
            delivered = []
            while heap and heap[0][0] <= now:
                item_due, _, entry = heapq.heappop(heap)
                if entry in self._entries and self._deliver(entry, item_due):
                    delivered.append(entry)
            for entry in delivered:
                self._advance(entry)

    def _deliver(self, entry: _Entry, due: float) -> bool:
        """Hand the item over; True when the stream is to read its next one."""
        stream, item = entry.stream, entry.item
        if entry.last:
            self._finish(entry, item)
            return False
        if isinstance(item, (Chunk, WindowEnd)):
            if stream.queue.would_block(item):     # only this thread puts: room now is room at the put
                heapq.heappush(self._heap, (time.perf_counter() + RETRY_FULL_S, next(self._order), entry))
                return False
            item.available_ns = time.time_ns()    # made when it was read ahead; it arrives now
            if isinstance(item, Chunk):
                stream.source.pacer.delivered(time.perf_counter() - due)
        stream.queue.put(item)
        return True
