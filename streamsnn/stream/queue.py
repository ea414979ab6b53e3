"""The bounded queue between a source thread and the job: block or drop-oldest, every drop counted."""
from __future__ import annotations

import collections
import threading

from ..errors import ConfigError
from .sources import Chunk


class SourceEnd:
    """The source thread is done: the source ended (what is open is finished) or, with ``stopped``,
    the stream was asked to stop."""

    def __init__(self, stopped: bool = False):
        self.stopped = stopped


class SourceFailure:
    """The source failed; the error is reported on the stream's status topic."""

    def __init__(self, error: BaseException):
        self.error = error


class EventQueue:
    """Bounded queue of source items between a source thread and the frame stage.

    Capacity: ``max_events`` events and ``max_chunks`` chunks (markers do not
    count and are never dropped). ``put`` with policy "block" waits for room;
    with "drop" it discards the oldest queued chunks until the new one fits,
    counting ``dropped_events`` / ``dropped_chunks``. A single chunk larger than
    max_events is still accepted when the queue holds no events, so the queue
    never holds more than max(max_events, one chunk) events.
    """

    def __init__(self, policy: str = "block", max_events: int = 1_000_000, max_chunks: int = 256,
                 on_put=None):
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
        self._on_put = on_put          # called after every put (wakes the consumer thread)

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
        if self._on_put is not None:
            self._on_put()
        return True

    def would_block(self, item) -> bool:
        """Whether ``put(item)`` would wait for room now (the "block" policy, queue full)."""
        with self._cond:
            return self.policy == "block" and isinstance(item, Chunk) and self._full(int(item.events.size))

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

    def get_nowait(self):
        """The oldest item, or None when the queue is empty."""
        if not self._items:             # a racy peek is fine: a put right now wakes the consumer again
            return None
        return self.get(0)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()
            self.events = self.chunks = 0
            self._cond.notify_all()
