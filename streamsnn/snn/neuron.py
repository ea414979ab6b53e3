"""The LIF neuron and its surrogate gradient, as plain functions over tensors.

Dynamics (the authors' toolkit, Wu et al. 2024): decay 0.5, threshold 1.0,
hard reset to 0, membrane starting at 0::

    u[t]      = decay * u_post[t-1] + I[t]       membrane before the spike
    s[t]      = H(u[t] - threshold)              spike (H(0) = 1)
    u_post[t] = u[t] * (1 - s[t])                membrane after the hard reset

``I[t]`` (the input current, this timestep's *spatial* part) and
``decay * u_post[t-1]`` (the *temporal* part carried from earlier timesteps)
are the two halves of the Spatial-Temporal Factor the STR regulariser reads.

Surrogate gradient: triangle, ds/du = max(0, 1 - |u - threshold|).
"""
from __future__ import annotations

import torch

DECAY = 0.5
THRESHOLD = 1.0


class TriangleSpike(torch.autograd.Function):
    """Heaviside forward, triangle surrogate ``max(0, 1 - |x|)`` backward; ``x = u - threshold``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * (1.0 - x.abs()).clamp_min(0.0)


def spike(u: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """s = H(u - threshold) with the triangle surrogate gradient."""
    return TriangleSpike.apply(u - threshold)


def lif_step(current: torch.Tensor, u_post_prev: torch.Tensor | None, decay: float = DECAY,
             threshold: float = THRESHOLD):
    """One LIF timestep. Returns ``(s, u, u_post)``; ``u_post_prev=None`` means a membrane at 0."""
    u = current if u_post_prev is None else decay * u_post_prev + current
    s = spike(u, threshold)
    u_post = u * (1.0 - s)
    return s, u, u_post
