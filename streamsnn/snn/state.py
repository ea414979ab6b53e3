"""Explicit network state: one named membrane tensor per spiking layer, for one batch of streams.

The state is a value the caller holds (norse style), not a hidden buffer in
the model: ``model.init_state(batch_size)`` makes one, ``model.step(frame,
state)`` advances it **in place** (and returns the logits), ``state.reset()``
puts every membrane back to 0 (a new inference window), ``state.detach()`` cuts
the autograd history (truncated backpropagation through time). Row ``i`` of
every membrane belongs to stream ``i``; ``reset(rows)`` resets some streams
only. A frame whose batch size differs from the state's raises
StateShapeError: the state is never re-initialised silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import StreamsnnError


class StateShapeError(StreamsnnError, ValueError):
    """A frame does not fit the state it is stepped with (batch size, layer shapes)."""


@dataclass
class LIFTrace:
    """What one spiking layer did over a whole sequence (multi-step mode), each (T, N, ...).

    ``current`` is the spatial part I[t], ``u`` the membrane before the spike,
    ``s`` the spikes and ``u_post`` the membrane after the reset; the temporal
    part of u[t] is ``decay * u_post[t-1]`` (0 at t = 0).
    """

    name: str
    current: torch.Tensor
    u: torch.Tensor
    s: torch.Tensor
    u_post: torch.Tensor
    decay: float
    threshold: float

    @property
    def temporal(self) -> torch.Tensor:
        """decay * u_post[t-1], zero at t = 0: the part of u[t] carried from earlier timesteps."""
        zero = torch.zeros_like(self.u_post[:1])
        return self.decay * torch.cat([zero, self.u_post[:-1]], dim=0)


@dataclass
class NetworkState:
    """Membrane potentials (after reset, u_post) of every spiking layer, keyed by layer name."""

    membranes: dict[str, torch.Tensor]
    batch_size: int
    timestep: int = 0  # frames stepped since the last full reset
    layer_shapes: dict[str, tuple] = field(default_factory=dict)

    @classmethod
    def zeros(cls, layer_shapes: dict[str, tuple], batch_size: int, device=None,
              dtype=torch.float32) -> "NetworkState":
        if int(batch_size) < 1:
            raise StateShapeError(f"batch size must be >= 1, got {batch_size}")
        membranes = {name: torch.zeros((int(batch_size), *shape), device=device, dtype=dtype)
                     for name, shape in layer_shapes.items()}
        return cls(membranes, int(batch_size), 0, dict(layer_shapes))

    @property
    def device(self) -> torch.device:
        return next(iter(self.membranes.values())).device

    def reset(self, rows=None) -> "NetworkState":
        """Membranes back to 0 (in place): all streams, or only the given rows (indices or bool mask)."""
        for u in self.membranes.values():
            if rows is None:
                u.detach_().zero_()
            else:
                with torch.no_grad():
                    u[rows] = 0.0
        if rows is None:
            self.timestep = 0
        return self

    def detach(self) -> "NetworkState":
        """Cut the autograd history of every membrane (in place); values are kept."""
        for name, u in self.membranes.items():
            self.membranes[name] = u.detach()
        return self

    def to(self, device) -> "NetworkState":
        for name, u in self.membranes.items():
            self.membranes[name] = u.to(device)
        return self

    def clone(self) -> "NetworkState":
        return NetworkState({k: v.clone() for k, v in self.membranes.items()}, self.batch_size,
                            self.timestep, dict(self.layer_shapes))

    def check_batch(self, n: int) -> None:
        if int(n) != self.batch_size:
            raise StateShapeError(
                f"frame batch size {n} does not match the network state's batch size {self.batch_size}; "
                f"make a new state with model.init_state({n}) (states are never re-initialised silently)")
