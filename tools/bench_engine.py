#!/usr/bin/env python
"""Network step throughput on the CPU: the event engine against the model's torch modules, in one run.

    python tools/bench_engine.py            # bundled checkpoint and N-MNIST Test split, ~1 minute

The frames are the bundled Test split's (100 samples, 30 ms frames, the
first 10 of each), stepped with their membranes carried from frame to frame
as the streaming job steps them. Each engine steps the same frames in
batches of 1, 8, 16 and 64 rows (the job's batches with as many streams);
the figure is microseconds per row (one stream's step), the best of
``--repeat`` passes, taking turns so both engines see the same background
load. "event, 2 threads" splits each batch over two threads, as the job does
for batches longer than 16 rows.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamsnn import to_frame  # noqa: E402
from streamsnn.datasets.bundled import bundled_nmnist_root  # noqa: E402
from streamsnn.io import read_events  # noqa: E402
from streamsnn.snn.batched import BlockStepper  # noqa: E402
from streamsnn.snn.checkpoint import load_checkpoint  # noqa: E402

BUNDLED = REPO / "streamsnn" / "checkpoints" / "nmnist_str.pt"


def sample_frames(root: Path, time_window: int, timesteps: int) -> np.ndarray:
    """(N, T, P, H, W) int16 frames of every sample under root/Test, padded with zero frames to T."""
    frames = []
    for path in sorted((root / "Test").glob("*/*.bin")):
        binned = to_frame(read_events(path, sensor_size=(34, 34)), (34, 34, 2), time_window=time_window)[:timesteps]
        padded = np.zeros((timesteps, *binned.shape[1:]), binned.dtype)
        padded[:len(binned)] = binned
        frames.append(padded)
    return np.stack(frames)


def pass_time(stepper: BlockStepper, frames: np.ndarray, rows: int, split: bool) -> float:
    """Seconds to step every sample through every frame, ``rows`` samples a call."""
    n, timesteps = frames.shape[:2]
    state = stepper.init_state(n)
    slots = [state.acquire() for _ in range(n)]
    start = time.perf_counter()
    for t in range(timesteps):
        for first in range(0, n, rows):
            stepper.step(state, slots[first:first + rows], frames[first:first + rows, t], split=split)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)

    import torch

    model, meta = load_checkpoint(args.checkpoint)
    time_window = int(meta["binning"]["time_window"])
    timesteps = int(meta["max_timesteps"])
    frames = sample_frames(bundled_nmnist_root(), time_window, timesteps)
    n = frames.shape[0]
    event = BlockStepper(model, engine="event")
    modules = BlockStepper(model, engine="torch")
    print(f"{n} samples x {timesteps} frames of {time_window} us, {args.checkpoint.name}; torch threads "
          f"{torch.get_num_threads()}; microseconds per row, best of {args.repeat}")
    print()
    print("| rows a call | event engine | event, 2 threads | torch modules | event vs torch |")
    print("|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for rows in (1, 8, 16, 64):
            runs = [(event, False), (event, True), (modules, False)]
            for stepper, split in runs:        # compile, warm the caches
                pass_time(stepper, frames[:rows], rows, split)
            best = [float("inf")] * len(runs)
            for _ in range(args.repeat):
                for k, (stepper, split) in enumerate(runs):
                    best[k] = min(best[k], pass_time(stepper, frames, rows, split))
            per_row = [b / (n * timesteps) * 1e6 for b in best]
            print(f"| {rows} | {per_row[0]:.0f} | {per_row[1]:.0f} | {per_row[2]:.0f} | "
                  f"{per_row[2] / per_row[0]:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
