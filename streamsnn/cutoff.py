"""Cutoff policies: stop a sample's inference as soon as the accumulated output is confident.

With o(t) the network's logits at timestep t (1-based) and Y(t) = o(1) + ... + o(t)
their running sum:

- :class:`ConfidenceCutoff` (Wu et al. 2024): exit at the first t with
  max softmax(Y(t)) > 1 - epsilon.
- :class:`TopKCutoff` (Wu et al. 2023): exit at the first t with
  top1(Y(t)) - top2(Y(t)) > beta_t, beta_t calibrated per timestep on training outputs.

A sample that never triggers runs to T (its decision is *forced*). The same
policy object decides offline over a whole (T, N, K) output (``decide``) and
online one frame at a time for one stream (``online()`` -> ``update`` /
``finish`` / ``reset``); both accumulate Y in float64 in the same order and
evaluate the same test, so their decisions are identical (tested).

Also here: the anytime measures of a (T, N, K) output (accuracy at each fixed
t, the oracle's mean timesteps) and the calibration helpers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Decision:
    label: int          # class index, argmax Y(t)
    timesteps: int      # frames used, 1..T
    confidence: float   # max softmax(Y(t)) at the decision
    forced: bool        # True when the policy never fired and the decision was taken at the end

    def as_dict(self) -> dict:
        return asdict(self)


def _as_logits(logits) -> np.ndarray:
    try:
        import torch
        if isinstance(logits, torch.Tensor):
            logits = logits.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(logits, dtype=np.float64)


def max_softmax(Y: np.ndarray) -> np.ndarray:
    """max over the last axis of softmax(Y) = 1 / sum(exp(Y - max Y))."""
    m = Y.max(axis=-1, keepdims=True)
    return 1.0 / np.exp(Y - m).sum(axis=-1)


def top_margin(Y: np.ndarray) -> np.ndarray:
    """top-1 minus top-2 over the last axis."""
    part = np.partition(Y, Y.shape[-1] - 2, axis=-1)
    return part[..., -1] - part[..., -2]


class CutoffPolicy:
    """Base class: subclasses define ``fires(Y, t) -> bool array`` for Y (..., K) at timestep t (1-based)."""

    name = "none"

    def fires(self, Y: np.ndarray, t: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fires_rows(self, Y: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """``fires`` for rows of Y (n, K), row i at its own timestep ts[i]: the same values, each row's
        test run on the rows of its timestep stacked (policies whose test needs no t run it once)."""
        fired = np.zeros(Y.shape[0], dtype=bool)
        for t in np.unique(ts).tolist():
            rows = ts == t
            fired[rows] = self.fires(Y[rows], t)
        return fired

    def describe(self) -> dict:
        return {"policy": self.name}

    def decide(self, logits):
        """Offline: logits (T, N, K) -> (labels (N,) int64, timesteps (N,) int64, confidences (N,) float64)."""
        o = _as_logits(logits)
        if o.ndim != 3:
            raise ConfigError(f"cutoff expects logits shaped (T, N, K), got {o.shape}")
        T, N, _ = o.shape
        labels = np.zeros(N, dtype=np.int64)
        steps = np.full(N, T, dtype=np.int64)
        conf = np.zeros(N, dtype=np.float64)
        pending = np.ones(N, dtype=bool)
        Y = np.zeros(o.shape[1:], dtype=np.float64)
        for t in range(1, T + 1):
            Y = Y + o[t - 1]
            hit = pending & (self.fires(Y, t) | (t == T))
            if hit.any():
                labels[hit] = Y[hit].argmax(-1)
                conf[hit] = max_softmax(Y[hit])
                steps[hit] = t
                pending &= ~hit
        return labels, steps, conf

    def online(self, max_timesteps: int | None = None) -> "OnlineCutoff":
        """A per-stream decider fed one frame's logits (K,) at a time."""
        return OnlineCutoff(self, max_timesteps)


class ConfidenceCutoff(CutoffPolicy):
    """Exit when max softmax(Y(t)) > 1 - epsilon."""

    name = "confidence"

    def __init__(self, epsilon: float):
        epsilon = float(epsilon)
        if not 0.0 <= epsilon <= 1.0:
            raise ConfigError(f"cutoff epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def fires(self, Y, t):
        return max_softmax(Y) > 1.0 - self.epsilon

    def fires_rows(self, Y, ts):
        return self.fires(Y, None)  # the same test at every timestep

    def describe(self) -> dict:
        return {"policy": self.name, "epsilon": self.epsilon}

    def __repr__(self) -> str:
        return f"ConfidenceCutoff(epsilon={self.epsilon:g})"

    @classmethod
    def calibrate(cls, logits, labels, max_drop: float = 0.0, epsilons=None) -> "ConfidenceCutoff":
        """The largest epsilon (earliest exits) whose accuracy on (logits, labels) is at most ``max_drop``
        (a fraction) below the full-T accuracy."""
        labels = np.asarray(labels)
        full = float((_as_logits(logits).sum(0).argmax(-1) == labels).mean())
        best = None
        for eps in sorted(EPSILON_SWEEP if epsilons is None else epsilons):
            pred, _, _ = cls(eps).decide(logits)
            if float((pred == labels).mean()) >= full - max_drop - 1e-12:
                best = eps
        return cls(best if best is not None else 0.0)


class TopKCutoff(CutoffPolicy):
    """Exit when top1(Y(t)) - top2(Y(t)) > beta_t (betas per timestep; the last one repeats beyond)."""

    name = "topk"

    def __init__(self, betas):
        betas = np.atleast_1d(np.asarray(betas, dtype=np.float64))
        if betas.ndim != 1 or betas.size == 0 or not np.all(np.isfinite(betas)):
            raise ConfigError(f"Top-K cutoff betas must be a non-empty list of finite numbers, got {betas}")
        self.betas = betas

    def beta(self, t: int) -> float:
        return float(self._betas_at(t))

    def _betas_at(self, ts):
        """beta_t for a timestep or an array of them (the last beta beyond the list)."""
        return self.betas[np.minimum(ts, self.betas.size) - 1]

    def fires(self, Y, t):
        return top_margin(Y) > self.beta(t)

    def fires_rows(self, Y, ts):
        return top_margin(Y) > self._betas_at(ts)

    def describe(self) -> dict:
        b = self.betas.tolist()
        return {"policy": self.name, "beta": b[0] if len(b) == 1 else b}

    def __repr__(self) -> str:
        return f"TopKCutoff(betas={self.betas.tolist()})"

    @classmethod
    def calibrate(cls, logits, labels, quantile: float = 1.0, scale: float = 1.0) -> "TopKCutoff":
        """beta_t = scale * the ``quantile`` of the margins top1 - top2 of Y(t) over the samples that
        Y(t) classifies wrongly (0 where none is wrong): with quantile 1, no calibration sample that
        is wrong at t would exit at t."""
        o = _as_logits(logits)
        labels = np.asarray(labels)
        Y = np.cumsum(o, axis=0)
        betas = []
        for t in range(o.shape[0]):
            wrong = Y[t].argmax(-1) != labels
            margins = top_margin(Y[t][wrong])
            betas.append(scale * float(np.quantile(margins, quantile)) if margins.size else 0.0)
        return cls(betas)


class OnlineCutoff:
    """One stream's running decision. ``update(logits_t)`` adds one frame's logits and returns a
    Decision when the policy fires (or, with ``max_timesteps``, when that many frames have been seen),
    None otherwise; after a decision it returns None until ``reset()``. ``finish()`` returns the
    decision, forcing one from the frames seen so far if the policy has not fired."""

    def __init__(self, policy: CutoffPolicy, max_timesteps: int | None = None):
        self.policy = policy
        self.max_timesteps = None if max_timesteps is None else int(max_timesteps)
        self.reset()

    def reset(self) -> None:
        self.Y = None
        self.t = 0
        self.decision: Decision | None = None

    @property
    def decided(self) -> bool:
        return self.decision is not None

    def _decide(self, forced: bool) -> Decision:
        self.decision = Decision(int(self.Y.argmax()), self.t, float(max_softmax(self.Y)), forced)
        return self.decision

    def update(self, logits_t) -> Decision | None:
        return update_rows([self], _as_logits(logits_t).reshape(1, -1))[0]

    def finish(self) -> Decision:
        if self.decision is not None:
            return self.decision
        if self.Y is None:
            raise ConfigError("cutoff: finish() before any frame was seen")
        return self._decide(True)


def update_rows(cutoffs: list[OnlineCutoff], logits) -> list[Decision | None]:
    """``cutoffs[i].update(logits[i])`` for every row of logits (n, K), the policy's test run once per
    policy on the rows stacked (``fires_rows``: each row at its own timestep) instead of once a row:
    the same row-wise numpy operations on a taller array, as offline ``decide`` runs them, hence the
    same values (Y starts at zeros and adds each frame's logits, as there). The streaming job's
    batches of 16 streams' frames cost one sum and one test instead of 16 (each a dozen small numpy
    calls), also at speed 0, where the streams are at different timesteps."""
    o = _as_logits(logits)
    decisions: list[Decision | None] = [None] * len(cutoffs)
    live = [i for i, cutoff in enumerate(cutoffs) if cutoff.decision is None]
    if not live:
        return decisions
    previous = np.zeros((len(live), o.shape[1]), dtype=np.float64)
    for j, i in enumerate(live):
        if cutoffs[i].Y is not None:
            previous[j] = cutoffs[i].Y
    Y = previous + o[live]
    groups: dict[int, list[int]] = {}
    for j, i in enumerate(live):
        cutoff = cutoffs[i]
        cutoff.Y = Y[j]
        cutoff.t += 1
        groups.setdefault(id(cutoff.policy), []).append(j)
    for rows in groups.values():
        Y_rows = Y if len(rows) == len(live) else Y[rows]
        first = cutoffs[live[rows[0]]]
        fired = first.policy.fires_rows(Y_rows, np.array([cutoffs[live[j]].t for j in rows]))
        labels = confidences = None
        for k, (j, hit) in enumerate(zip(rows, fired.tolist())):
            cutoff = cutoffs[live[j]]
            if hit or (cutoff.max_timesteps is not None and cutoff.t >= cutoff.max_timesteps):
                if labels is None:      # label and confidence of the rows that decide, from the stack too
                    labels, confidences = Y_rows.argmax(-1).tolist(), max_softmax(Y_rows).tolist()
                cutoff.decision = Decision(labels[k], cutoff.t, confidences[k], not hit)
                decisions[live[j]] = cutoff.decision
    return decisions


# --------------------------------------------------------------------------- anytime measures

EPSILON_SWEEP = (0.0, 1e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def per_timestep_accuracy(logits, labels) -> list[float]:
    """Accuracy when every sample stops at a fixed t = 1..T (prediction argmax Y(t))."""
    Y = np.cumsum(_as_logits(logits), axis=0)
    return [float(v) for v in (Y.argmax(-1) == np.asarray(labels)[None, :]).mean(1)]


def oracle_timesteps(logits, labels) -> np.ndarray:
    """Per sample, the first t at which argmax Y(t) is right (T for samples never right)."""
    Y = np.cumsum(_as_logits(logits), axis=0)
    right = Y.argmax(-1) == np.asarray(labels)[None, :]
    T = Y.shape[0]
    first = np.where(right.any(0), right.argmax(0) + 1, T)
    return first


def evaluate_policy(policy: CutoffPolicy, logits, labels) -> dict:
    pred, steps, _ = policy.decide(logits)
    out = policy.describe()
    out.update(accuracy=float((pred == np.asarray(labels)).mean()), mean_timesteps=float(steps.mean()))
    return out


def policy_from_meta(cutoff: dict) -> CutoffPolicy:
    """The policy a checkpoint's ``meta["cutoff"]`` describes."""
    kind = cutoff.get("policy", "confidence")
    if kind == "confidence":
        return ConfidenceCutoff(cutoff["epsilon"])
    if kind == "topk":
        return TopKCutoff(cutoff["beta"])
    raise ConfigError(f"unknown cutoff policy {kind!r} (known: confidence, topk)")
