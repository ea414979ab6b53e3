"""The one transformation between the binner's frames and the network's input.

The binner (``streamsnn.binning.to_frame`` / ``StreamingBinner``) gives event
counts per (polarity, y, x) and frame, int16, shaped (T, P, H, W) for one
sample. The network takes float32 counts, unscaled and unclipped (the first
batch-norm layer does the scaling): ``frames_to_input`` is exactly
``torch.as_tensor(frames).float()``, plus a check of the value range. Training,
``streamsnn eval`` and the streaming job all call this function, so they feed
the network the same numbers.
"""
from __future__ import annotations

import numpy as np
import torch


def frames_to_input(frames, device=None) -> torch.Tensor:
    """int counts, any leading shape ending in (P, H, W) -> float32 tensor of the same shape.

    A single sample (T, P, H, W) stays (T, P, H, W); add the batch axis with
    ``.unsqueeze(1)`` for ``model(x)`` (which takes (T, N, P, H, W)) or feed
    ``x[t].unsqueeze(0)`` to ``model.step``.
    """
    if isinstance(frames, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(frames))
    else:
        tensor = torch.as_tensor(frames)
    if tensor.dtype.is_floating_point:
        out = tensor.to(dtype=torch.float32, device=device)
    else:
        out = tensor.to(device=device).to(torch.float32)
    return out
