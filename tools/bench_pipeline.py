#!/usr/bin/env python
"""Benchmark of the streaming job: throughput at --speed 0, latency and pacing at --speed 1.

The job runs as its own process (``streamsnn run`` on a generated pipeline
definition); this script is the subscriber, in a separate process, on the
same machine, so wall clocks are shared.

* speed 0 (as fast as possible): real-time factor = recording time processed
  (sum of the samples' spans) / wall time of the job from its first event to
  its end, and decisions per second.
* speed 1 (real time): latency from the arrival of a deciding frame's last
  event in the pipeline (``frame_available_ns``) to the message's receipt by
  this subscriber, p50 / p99 / max; the job's own figure (to the send,
  ``latency_ms``) beside it; and the pacing drift: how far the hand-over of
  the last chunk is from its event time, over the run, in % of the run, plus
  the lateness of individual hand-overs.

Usage (from a checkout)::

    python tools/bench_pipeline.py                       # N-MNIST Test from ../shared/data, bundled checkpoint
    python tools/bench_pipeline.py --data DIR --checkpoint CKPT --limit 100 --json bench.json

Goals (2 CPU cores, N-MNIST model): p99 latency < 5 ms, pacing drift < 1 %,
real-time factor > 100.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamsnn.stream.bus import Subscriber  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_data() -> Path:
    base = Path(os.environ.get("STREAMSNN_TEST_DATA", REPO.parent / "shared" / "data"))
    return base / "nmnist_small"


def run_once(data: Path, checkpoint: Path, speed: float, limit: int | None, epsilon: float | None,
             loops: int = 1, torch_threads: int = 1) -> dict:
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        definition = Path(tmp) / "bench.toml"
        lines = ["[[source]]", f'uri = "{data / "Test"}"', 'stream = "bench"', f"speed = {float(speed)}"]
        if limit:
            lines.append(f"limit = {int(limit)}")
        lines += ["[model]", f'checkpoint = "{checkpoint}"', f"torch_threads = {torch_threads}"]
        if epsilon is not None:
            lines += ["[cutoff]", f"epsilon = {epsilon}"]
        lines += ["[publish]", f'endpoint = "{endpoint}"', "wait_subscribers = 1", "wait_timeout_s = 60.0"]
        definition.write_text("\n".join(lines) + "\n")
        subscriber = Subscriber(endpoint)
        job = subprocess.Popen([sys.executable, "-m", "streamsnn.cli", "run", str(definition)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        decisions, receipts, final = [], [], None
        try:
            while final is None:
                item = subscriber.recv(timeout_s=120)
                received = time.time_ns()
                if item is None:
                    raise RuntimeError("no message for 120 s: " + (job.stderr.read() if job.poll() is not None else ""))
                topic, message = item
                if topic.startswith("decision."):
                    decisions.append(message)
                    receipts.append(received)
                elif message.get("final"):
                    final = message
            job.wait(timeout=60)
        finally:
            job.kill()
            subscriber.close()
        if job.returncode != 0:
            raise RuntimeError(f"streamsnn run exited with {job.returncode}: {job.stderr.read()}")
    e2e = np.array([(r - m["frame_available_ns"]) / 1e6 for m, r in zip(decisions, receipts)])
    to_send = np.array([m["latency_ms"] for m in decisions])
    steps = np.array([m["timesteps"] for m in decisions])
    correct = [m["label"] == m["target"] for m in decisions if "target" in m]
    # wall time of the processing itself: from the first decision's window to the end (the job's own clock)
    out = {
        "speed": speed,
        "samples": len(decisions),
        "accuracy": float(np.mean(correct)) if correct else None,
        "mean_timesteps": float(steps.mean()),
        "max_timesteps": decisions[0]["max_timesteps"],
        "recording_s": final["event_time_s"],
        "wall_s": final["wall_s"],
        "real_time_factor": final["event_time_s"] / final["wall_s"],
        "cpu_s": final.get("cpu_s"),
        "real_time_factor_per_cpu_s": final["event_time_s"] / final["cpu_s"] if final.get("cpu_s") else None,
        "load_average_1min": os.getloadavg()[0],
        "decisions_per_s": len(decisions) / final["wall_s"],
        "latency_e2e_p50_ms": float(np.percentile(e2e, 50)),
        "latency_e2e_p99_ms": float(np.percentile(e2e, 99)),
        "latency_e2e_max_ms": float(e2e.max()),
        "latency_to_send_p50_ms": float(np.percentile(to_send, 50)),
        "latency_to_send_p99_ms": float(np.percentile(to_send, 99)),
        "dropped_events": final["dropped_events"],
    }
    for key in ("pacing_drift_pct", "pacing_lag_p50_ms", "pacing_lag_p99_ms", "pacing_lag_max_ms",
                "pacing_elapsed_s", "pacing_ideal_s"):
        if key in final:
            out[key] = final[key]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=_default_data(), help="N-MNIST root holding Test/")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "streamsnn" / "checkpoints" / "nmnist_str.pt")
    parser.add_argument("--cutoff-epsilon", type=float, default=None, help="default: the checkpoint's")
    parser.add_argument("--limit", type=int, default=None, help="samples for the speed-1 run (default: all)")
    parser.add_argument("--speeds", default="0,1", help="comma-separated replay speeds to measure")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.data / "Test").is_dir():
        parser.error(f"{args.data}: no Test/ folder (N-MNIST archive layout); give --data")
    if not args.checkpoint.is_file():
        parser.error(f"{args.checkpoint}: checkpoint not found; give --checkpoint")
    results = {"machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                           "processor": platform.processor() or platform.machine(),
                           "python": platform.python_version()},
               "checkpoint": str(args.checkpoint), "data": str(args.data), "runs": []}
    print(f"load average before: {os.getloadavg()[0]:.2f} on {len(os.sched_getaffinity(0))} cores")
    for speed in (float(s) for s in args.speeds.split(",")):
        limit = args.limit if speed > 0 else None
        result = run_once(args.data, args.checkpoint, speed, limit, args.cutoff_epsilon)
        results["runs"].append(result)
        if speed == 0:
            print(f"speed 0: {result['samples']} samples, {result['recording_s']:.2f} s of recording in "
                  f"{result['wall_s']:.3f} s -> real-time factor {result['real_time_factor']:.1f} "
                  f"({result['real_time_factor_per_cpu_s']:.1f} per CPU-second of the job), "
                  f"{result['decisions_per_s']:.1f} decisions/s (accuracy {result['accuracy']:.4f}, "
                  f"mean timesteps {result['mean_timesteps']:.2f} of {result['max_timesteps']})")
        else:
            print(f"speed {speed:g}: {result['samples']} samples over {result['wall_s']:.2f} s; latency frame -> "
                  f"subscriber p50 {result['latency_e2e_p50_ms']:.3f} ms, p99 {result['latency_e2e_p99_ms']:.3f} ms, "
                  f"max {result['latency_e2e_max_ms']:.3f} ms (to the send: p50 "
                  f"{result['latency_to_send_p50_ms']:.3f} ms, p99 {result['latency_to_send_p99_ms']:.3f} ms); "
                  f"pacing drift {result.get('pacing_drift_pct', float('nan')):+.4f} % over "
                  f"{result.get('pacing_ideal_s', float('nan')):.2f} s, hand-over lateness p99 "
                  f"{result.get('pacing_lag_p99_ms', float('nan')):.3f} ms")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
