"""The one transformation between the binner's frames and the network's input.

The binner (``streamsnn.binning.to_frame`` / ``StreamingBinner``) gives event
counts per (polarity, y, x) and frame, int16, shaped (T, P, H, W) for one
sample. The network takes float32 counts, unscaled and unclipped (the first
batch-norm layer does the scaling): ``frames_to_input`` is exactly
``torch.as_tensor(frames).float()``, plus a check of the value range. Training,
``streamsnn eval`` and the streaming job all call this function, so they feed
the network the same numbers. A model whose input is smaller than the sensor (the CIFAR10-DVS VGG takes 48x48
of a 128x128 sensor) gets the float frames resized by ``resize_input`` (bilinear, antialiased: the
resize of the authors' torchvision pipeline).
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


def resize_input(x: torch.Tensor, size) -> torch.Tensor:
    """float frames (..., P, H, W) -> (..., P, size[0], size[1]); unchanged when already that size."""
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    out = torch.nn.functional.interpolate(flat, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*lead, h, w)
