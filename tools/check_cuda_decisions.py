#!/usr/bin/env python
"""Do CUDA and CPU give the same decisions? Evaluates a checkpoint (default: the bundled N-MNIST one)
on a split with both devices and compares, sample by sample, the prediction at every fixed t and the
decision of the stored cutoff (label and timesteps).

    python tools/check_cuda_decisions.py --data ../shared/data/nmnist_small

Exit status 0 when every decision agrees, 1 when some differ (listed), 2 without a CUDA device.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamsnn.cutoff import policy_from_meta  # noqa: E402
from streamsnn.snn.checkpoint import load_checkpoint  # noqa: E402
from streamsnn.training.evaluate import evaluate_checkpoint  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "streamsnn" / "checkpoints" / "nmnist_str.pt"


def decisions(logits, cutoff_meta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction at every t (T, N), cutoff label (N,), cutoff timesteps (N,)) from logits (T, N, K)."""
    per_t = np.cumsum(logits, axis=0).argmax(-1)
    labels, exit_t, _ = policy_from_meta(cutoff_meta).decide(logits)
    return per_t, labels, exit_t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(BUNDLED))
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="Test")
    p.add_argument("--cache", default=None)
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare", file=sys.stderr)
        return 2
    meta = load_checkpoint(args.checkpoint)[1]
    runs = {}
    for device in ("cpu", "cuda"):
        _, logits, labels = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.cache, device,
                                                progress=False)
        runs[device] = decisions(logits, meta["cutoff"]) + (logits,)
    (cpu_t, cpu_label, cpu_exit, cpu_logits), (gpu_t, gpu_label, gpu_exit, gpu_logits) = runs["cpu"], runs["cuda"]
    differ = np.flatnonzero((cpu_label != gpu_label) | (cpu_exit != gpu_exit))
    per_t_differ = int((cpu_t != gpu_t).sum())
    print(f"{len(labels)} samples, T = {cpu_logits.shape[0]}: max |logit difference| "
          f"{float(np.abs(cpu_logits - gpu_logits).max()):.3g}; predictions differing at some fixed t: "
          f"{per_t_differ}; cutoff decisions differing: {differ.size}")
    for i in differ[:20]:
        print(f"  sample {i}: cpu label {cpu_label[i]} at t = {cpu_exit[i]}, cuda label {gpu_label[i]} at t = {gpu_exit[i]}")
    return 0 if differ.size == 0 and per_t_differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
