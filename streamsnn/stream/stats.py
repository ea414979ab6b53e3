"""Run-long statistics of the streaming job at a cost that does not grow with the run."""
from __future__ import annotations

import math

import numpy as np


def percentiles(values) -> tuple[float | None, float | None]:
    """p50 and p99 as numpy's default (linear) percentile, in plain Python: for the few dozen values of
    one status interval this costs microseconds, where two np.percentile calls cost ~50 us, which the
    status thread paid for every stream once a second, holding the GIL during the streams' bursts."""
    if len(values) == 0:
        return None, None
    ordered = sorted(values)
    last = len(ordered) - 1
    out = []
    for q in (0.50, 0.99):
        position = q * last
        low = int(position)
        high = min(low + 1, last)
        out.append(float(ordered[low] + (ordered[high] - ordered[low]) * (position - low)))
    return out[0], out[1]


class LatencyHistogram:
    """Latencies of a whole run in log-spaced bins (each 1 % wider than the one before, 1 us to 100 s).

    The status thread reports run-long percentiles once a second for every stream. Keeping the
    latencies themselves made that cost grow with the run (a 200,000-entry copy and sort, 8.6 ms per
    stream once full) and still forgot the start of a long run; the bins cost the same at any length
    (a cumulative sum over about 1,850 counts) and keep every decision, at most 0.5 % off each value.
    """

    LOW_MS, HIGH_MS, RATIO = 1e-3, 1e5, 1.01

    def __init__(self):
        self._log_ratio = math.log(self.RATIO)
        self.bins = int(math.ceil(math.log(self.HIGH_MS / self.LOW_MS) / self._log_ratio)) + 1
        self.counts = np.zeros(self.bins, np.int64)
        self.count = 0

    def add(self, latency_ms: float) -> None:
        if latency_ms > self.LOW_MS:
            index = min(self.bins - 1, int(math.log(latency_ms / self.LOW_MS) / self._log_ratio) + 1)
        else:
            index = 0          # at or under 1 us (the bin reports 1 us)
        self.counts[index] += 1
        self.count += 1

    def percentiles(self) -> tuple[float | None, float | None]:
        """p50 and p99 (ranks as numpy's default), each the geometric middle of its bin."""
        if self.count == 0:
            return None, None
        cumulative = np.cumsum(self.counts)
        out = []
        for q in (0.50, 0.99):
            index = int(np.searchsorted(cumulative, q * (self.count - 1), side="right"))
            out.append(self.LOW_MS if index == 0 else self.LOW_MS * self.RATIO ** (index - 0.5))
        return out[0], out[1]
