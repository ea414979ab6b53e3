"""Training objectives: the TET loss and the two regularisers on top of it (RCS, STR).

All functions take the network's per-timestep logits ``o`` (T, N, K) and, for
the regularisers, the :class:`~streamsnn.snn.state.LIFTrace` of every spiking
layer (``model(x, return_traces=True)``). Formulas and their reasoning are in
docs/anytime.md.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TET_LAMBDA = 1e-3
RCS_ALPHA = 0.002
STR_ALPHA = 0.5
STR_VARIANTS = ("stf", "deferral", "l2")
STR_DEFAULT_VARIANT = "stf"


def tet_loss(logits: torch.Tensor, target: torch.Tensor, lam: float = TET_LAMBDA) -> torch.Tensor:
    """TET: (1 - lam) * mean_t CE(o_t, y) + lam * MSE(o, 1)."""
    T = logits.shape[0]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.repeat(T))  # mean over t and n
    mse = F.mse_loss(logits, torch.ones_like(logits))
    return (1.0 - lam) * ce + lam * mse


def rcs_loss(traces, logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5,
             tail: float = 0.3) -> torch.Tensor:
    """RCS (Wu et al., arXiv 2301.09522), the predecessor regulariser.

    Per spiking layer: r(t) = s(t) + ReLU(u_post(t) / V_th); r_d = stop-grad mean of r over the last
    floor(0.3 T) timesteps (all T if that is 0); per sample RCS = 1 / (mean_t cos(r(t), r_d) + eps),
    cosine over the layer's neurons; the layer's loss is the maximum over the samples predicted
    correctly at each of those last timesteps (0 if none); the result is the mean over layers.
    """
    T = logits.shape[0]
    k = int(math.floor(tail * T)) or T
    correct = (logits[-k:].argmax(-1) == target.unsqueeze(0)).all(0)  # (N,)
    per_layer = []
    for tr in traces:
        r = tr.s + F.relu(tr.u_post / tr.threshold)
        r = r.flatten(2)  # (T, N, D)
        r_d = r[-k:].mean(0).detach()  # (N, D)
        cos = F.cosine_similarity(r, r_d.unsqueeze(0).expand_as(r), dim=-1, eps=1e-8)  # (T, N)
        rcs = 1.0 / (cos.mean(0) + eps)  # (N,)
        if correct.any():
            per_layer.append(rcs[correct].max())
        else:
            per_layer.append(rcs.sum() * 0.0)
    if not per_layer:
        return logits.sum() * 0.0
    return torch.stack(per_layer).mean()


def str_loss(traces, variant: str = STR_DEFAULT_VARIANT, eps: float = 1e-6) -> torch.Tensor:
    """STR, the Spatial-Temporal Regulariser (our formulation; see docs/anytime.md).

    variant "deferral": per layer, sample and timestep, the share of the layer's activity
    that is deferred to later timesteps instead of emitted now,

        D(t) = sum_i ReLU(u_post_i(t)) / V_th / (sum_i s_i(t) + sum_i ReLU(u_post_i(t)) / V_th + eps),

    i.e. 1 minus the ratio of spike strength to (spikes + left-over membrane potential), with
    r(t) = s(t) + ReLU(u_post(t) / V_th) as in RCS; STR = mean over layers, samples and timesteps.

    variant "stf" (default): the temporal share of the membrane potential, from the Spatial-Temporal
    Factor split u(t) = I(t) [spatial] + decay * u_post(t-1) [temporal],

        1 - STF(t) = |decay u_post(t-1)|_1 / (|I(t)|_1 + |decay u_post(t-1)|_1 + eps).

    variant "l2": a second-hand summary's reading, the STF as the ratio of the L2 norms of the membrane
    potential tied to spikes, u(t) * s(t) (what the reset discharges now), and the residual potential
    left over, u_post(t) = u(t) * (1 - s(t)); penalised in its bounded form, the residual share

        |u_post(t)|_2 / (|u(t) s(t)|_2 + |u_post(t)|_2 + eps).
    """
    values = []
    for tr in traces:
        if variant == "deferral":
            left = F.relu(tr.u_post / tr.threshold).flatten(2).sum(-1)  # (T, N)
            fired = tr.s.flatten(2).sum(-1)
            values.append((left / (fired + left + eps)).mean())
        elif variant == "l2":
            tied = (tr.u * tr.s).flatten(2).norm(dim=-1)  # (T, N)
            residual = tr.u_post.flatten(2).norm(dim=-1)
            values.append((residual / (tied + residual + eps)).mean())
        elif variant == "stf":
            temporal = tr.temporal.abs().flatten(2).sum(-1)
            spatial = tr.current.abs().flatten(2).sum(-1)
            values.append((temporal / (spatial + temporal + eps)).mean())
        else:
            raise ValueError(f"unknown STR variant {variant!r}; known: {', '.join(STR_VARIANTS)}")
    if not values:
        raise ValueError("STR needs the traces of at least one spiking layer")
    return torch.stack(values).mean()


def regulariser(name: str, traces, logits, target, variant: str = STR_DEFAULT_VARIANT) -> torch.Tensor:
    if name == "rcs":
        return rcs_loss(traces, logits, target)
    if name == "str":
        return str_loss(traces, variant)
    raise ValueError(f"unknown regulariser {name!r}")


DEFAULT_STRENGTH = {"none": 0.0, "rcs": RCS_ALPHA, "str": STR_ALPHA}
