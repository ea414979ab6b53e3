#!/usr/bin/env python
"""Binning throughput: tonic 1.7.0's ToFrame against streamsnn.to_frame and StreamingBinner, in one run.

    python tools/bench_binning.py [--data ../shared/data] [--events 10000000] [--quick] [--synthetic-only]

For each mode (time_window, time_window with overlap, event_count,
n_time_bins, n_event_bins) and each input -- every real recording in
``<data>/recordings`` plus synthetic streams -- it times tonic and streamsnn
on the same events with the same parameters, checks that the frames are
equal, and prints events per second and their ratio. Parameters are scaled so
that every input gives about FRAMES frames. The synthetic 128x128 stream is
also given in tonic's layout (x, y int16, t int64, p bool) and with t first
and unsigned 16-bit coordinates, tonic reading the same array; each
synthetic row is timed on one thread and on the threads to_frame picks by
itself (the threads column). The StreamingBinner rows push the synthetic
streams in chunks of 1,000 and 100,000 events (time_window mode, same
windows) and compare with the whole-array path on one thread and on the
threads it picks. A last row times tonic's Denoise against
streamsnn.preprocess.denoise.

Each timing is the best of three runs after one untimed warm-up (Numba
compiles, page faults), for tonic and streamsnn alike; the contenders of a
row take turns, so that background load on a shared machine hits both. The synthetic streams
are uniformly random pixels and polarities at 10 million events per second:
a worst case for caches, since real scenes hit neighbouring pixels.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tonic  # noqa: E402

from streamsnn.binning import StreamingBinner, _thread_count, to_frame  # noqa: E402
from streamsnn.events import EVENT_DTYPE  # noqa: E402
from streamsnn.io import read_events  # noqa: E402
from streamsnn.preprocess import denoise  # noqa: E402

FRAMES = 20
LAYOUTS = {
    "tonic": np.dtype([("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "?")]),
    "t first, x/y uint16": np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")]),
}
SENSOR_SIZES = {
    "nmnist_sample.bin": (34, 34, 2),
    "atis40_dvs128_clip1.bin": (128, 128, 2), "atis40_dvs128_clip2.bin": (128, 128, 2),
    "atis40_dvs128_clip3.bin": (128, 128, 2), "atis40_dvs128_clip4.bin": (128, 128, 2),
    "atis40_dvs128_clip5.bin": (128, 128, 2),
    "aedat2_dvs128_walking.aedat": (128, 128, 2), "aedat2_dvs128_walking2.aedat": (128, 128, 2),
    "aedat4_dvxplorer_sample.aedat4": (320, 240, 2),
    "evt2_gen3_sample.raw": (640, 480, 2), "evt2_gen3_sparklers.raw": (640, 480, 2),
    "evt3_gen41_sample.raw": (1280, 720, 2), "evt3_gen41_pedestrians.raw": (1280, 720, 2),
    # DAT crops (N-CARS) have no sensor size: tonic and streamsnn both infer it.
    "dat_ncars_car.dat": None, "dat_ncars_sample.dat": None,
}


def best_times(functions, rounds: int, budget_s: float, warm_up: bool = True) -> list[float]:
    """Best time of each function over rounds in which they take turns.

    Taking turns puts the functions under the same background load (the
    machine may be shared), so their ratio is fairer than with separate runs.
    """
    if warm_up:
        for function in functions:
            function()  # Numba compilation, first-touch page faults
    best = [float("inf")] * len(functions)
    spent = 0.0
    for _ in range(rounds):
        for i, function in enumerate(functions):
            start = time.perf_counter()
            function()
            elapsed = time.perf_counter() - start
            best[i] = min(best[i], elapsed)
            spent += elapsed
        if spent > budget_s:
            break
    return best


def synthetic_stream(n_events: int, width: int, height: int, rate_hz: float = 10e6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    events = np.empty(n_events, EVENT_DTYPE)
    events["t"] = np.sort(rng.integers(0, int(n_events / rate_hz * 1e6), n_events))
    events["x"] = rng.integers(0, width, n_events)
    events["y"] = rng.integers(0, height, n_events)
    events["p"] = rng.integers(0, 2, n_events)
    return events


def in_layout(events: np.ndarray, dtype: np.dtype) -> np.ndarray:
    out = np.empty(len(events), dtype)
    for name in dtype.names:
        out[name] = events[name]
    return out


def mode_parameters(events) -> dict[str, dict]:
    span = int(events["t"][-1] - events["t"][0])
    window = max(span // FRAMES, 1)
    return {
        "time_window": dict(time_window=window),
        "time_window+overlap": dict(time_window=window, overlap=window // 2),
        "event_count": dict(event_count=max(len(events) // FRAMES, 1)),
        "n_time_bins": dict(n_time_bins=FRAMES),
        "n_event_bins": dict(n_event_bins=FRAMES),
    }


def rate(n_events: int, seconds: float) -> str:
    return f"{n_events / seconds / 1e6:,.1f} M"


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("STREAMSNN_TEST_DATA", root.parent / "shared" / "data")))
    parser.add_argument("--events", type=int, default=10_000_000, help="events in each synthetic stream")
    parser.add_argument("--quick", action="store_true", help="1 million synthetic events, fewer runs")
    parser.add_argument("--synthetic-only", action="store_true", help="skip the recordings")
    args = parser.parse_args(argv)
    n_synthetic = 1_000_000 if args.quick else args.events
    rounds = 2 if args.quick else 3

    inputs = []
    recordings = args.data / "recordings"
    for name, sensor in SENSOR_SIZES.items():
        path = recordings / name
        if args.synthetic_only:
            continue
        if path.exists():
            inputs.append((name, "streamsnn", read_events(path), sensor))
        else:
            print(f"skipping {path}: not found", file=sys.stderr)
    synthetic = [(f"synthetic {w}x{h}, {n_synthetic / 1e6:g} M events", "streamsnn",
                  synthetic_stream(n_synthetic, w, h), (w, h, 2)) for w, h in ((128, 128), (640, 480))]
    name, _, events, sensor = synthetic[0]
    synthetic[1:1] = [(name, layout, in_layout(events, dtype), sensor) for layout, dtype in LAYOUTS.items()]
    inputs += synthetic

    print(f"# streamsnn binning benchmark: tonic {tonic.__version__}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; about {FRAMES} frames per input")
    header = "| mode | input | layout | events | threads | tonic ev/s | streamsnn ev/s | ratio |"
    print(header)
    print("|---|---|---|---:|---:|---:|---:|---:|")
    totals: dict[str, list[float]] = {}
    for mode in mode_parameters(inputs[0][2]):
        for name, layout, events, sensor in inputs:
            kwargs = mode_parameters(events)[mode]
            budget = 2.0
            chosen = _thread_count(None, len(events))
            thread_counts = [None] if not name.startswith("synthetic") or chosen == 1 else [1, None]

            def run_tonic():
                return tonic.transforms.ToFrame(sensor_size=sensor, **kwargs)(events)

            runs = [run_tonic] + [lambda threads=threads: to_frame(events, sensor, threads=threads, **kwargs)
                                  for threads in thread_counts]
            expected = run_tonic()
            if not all(np.array_equal(expected, run()) for run in runs[1:]):
                raise SystemExit(f"frames differ from tonic: {mode} on {name} ({layout}) with {kwargs}")
            t_tonic, *t_ours = best_times(runs, rounds, budget)
            for threads, t in zip(thread_counts, t_ours):
                print(f"| {mode} | {name} | {layout} | {len(events):,} | {threads or chosen} | "
                      f"{rate(len(events), t_tonic)} | {rate(len(events), t)} | {t_tonic / t:.1f}x |", flush=True)
            if not name.startswith("synthetic"):
                total = totals.setdefault(mode, [0, 0.0, 0.0])
                total[0] += len(events)
                total[1] += t_tonic
                total[2] += t_ours[-1]
    for mode, (n, t_tonic, t_ours) in totals.items():
        print(f"| {mode} | all {len(inputs) - len(synthetic)} recordings together | streamsnn | {n:,} | auto | "
              f"{rate(n, t_tonic)} | {rate(n, t_ours)} | {t_tonic / t_ours:.1f}x |")

    print()
    print("| StreamingBinner (time_window) | input | chunk events | streamsnn ev/s | vs to_frame, 1 thread | "
          "vs to_frame, threads it picks | vs tonic |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, layout, events, sensor in synthetic:
        if layout != "streamsnn":
            continue
        window = mode_parameters(events)["time_window"]["time_window"]
        start, end = int(events["t"][0]), int(events["t"][-1])
        expected = to_frame(events, sensor, time_window=window)
        streams = {}
        for chunk in (1_000, 100_000):
            chunks = [events[i:i + chunk] for i in range(0, len(events), chunk)]

            def run_stream(chunks=chunks):
                binner = StreamingBinner(sensor, window, start_time=start)
                frames = []
                for piece in chunks:
                    frames += binner.push(piece)
                frames += binner.flush(end)
                return frames

            frames = run_stream()
            if not np.array_equal(np.stack([f.data for f in frames]), expected):
                raise SystemExit(f"streamed frames differ from to_frame on {name}, chunks of {chunk}")
            streams[chunk] = run_stream
        t_tonic, t_one, t_auto, t_small, t_large = best_times(
            [lambda: tonic.transforms.ToFrame(sensor_size=sensor, time_window=window)(events),
             lambda: to_frame(events, sensor, time_window=window, threads=1),
             lambda: to_frame(events, sensor, time_window=window), streams[1_000], streams[100_000]],
            rounds, 20.0)
        for chunk, t_stream in ((1_000, t_small), (100_000, t_large)):
            print(f"| chunks of {chunk:,} | {name} | {chunk:,} | {rate(len(events), t_stream)} | "
                  f"{t_one / t_stream:.2f}x | {t_auto / t_stream:.2f}x | {t_tonic / t_stream:.1f}x |", flush=True)

    print()
    print("| preprocessing | input | events | tonic ev/s | streamsnn ev/s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for name, _, events, sensor in inputs:
        if name == "evt2_gen3_sample.raw":
            # tonic's Python loop needs no warm-up and takes seconds: one run.
            t_tonic, = best_times([lambda: tonic.transforms.Denoise(filter_time=10_000)(events)], 1, 0,
                                  warm_up=False)
            t_ours, = best_times([lambda: denoise(events, 10_000)], 5, 1.0)
            print(f"| Denoise(filter_time=10000) | {name} | {len(events):,} | {rate(len(events), t_tonic)} | "
                  f"{rate(len(events), t_ours)} | {t_tonic / t_ours:.0f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
