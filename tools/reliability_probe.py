"""Measure what the README's "Reliability" section claims, from a checkout, through the command line.

    python tools/reliability_probe.py [--runs 6] [--data DIR] [--checkpoint CKPT]

Each probe starts ``streamsnn run`` as a user would (a subprocess replaying a
dataset folder at full speed, with a decision log), and:

* stop:   sends SIGINT after a few seconds; measures how long the job takes to
          exit and whether the log holds every decision a subscriber received.
* kill:   sends SIGKILL at a random moment; checks the log is readable and
          counts the decisions received on the bus that the log lacks, and how
          much wall-clock time they span (the log flushes every 0.5 s).
* rogue:  a publisher of random multipart messages (wrong frame counts, bytes
          that are not UTF-8 or JSON, JSON that is not an object, oversized)
          at ``streamsnn subscribe``: it must survive, count them, and still
          print the valid decisions sent between them.
* damage: stores left by a killed writer, with one random bit flipped, and
          recordings cut at random bytes, through ``streamsnn info``: every
          case must end (no hang) with its result or a one-line error.

Figures are printed as one JSON object. Loopback only.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def streamsnn(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamsnn.cli", *map(str, args)], env=ENV, **kwargs)


class Collector(threading.Thread):
    """A subscriber in this process: (wall ns received, message) for every decision."""

    def __init__(self, endpoint: str):
        super().__init__(daemon=True)
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"decision.")
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.decisions: list[tuple[int, dict]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.socket.poll(50):
                topic, body = self.socket.recv_multipart()
                self.decisions.append((time.time_ns(), json.loads(body)))
        self.socket.close(0)


def _job(tmp: Path, args, k: int):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    log = tmp / f"log{k}.h5"
    collector = Collector(endpoint)
    collector.start()
    job = streamsnn("run", "--source", args.data, "--speed", "0", "--loop", "--checkpoint", args.checkpoint,
                    "--publish", endpoint, "--log", log, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(collector.decisions) < 20 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    if len(collector.decisions) < 20:
        job.kill()
        raise SystemExit(f"the job did not start deciding: {job.stderr.read().decode()[-2000:]}")
    return job, collector, log


def probe_stop(tmp: Path, args) -> dict:
    from streamsnn.stream.log import read_decision_log

    seconds, complete = [], 0
    for k in range(args.runs):
        job, collector, log = _job(tmp, args, k)
        time.sleep(random.uniform(0.5, 2.0))
        sent = time.monotonic()
        job.send_signal(signal.SIGINT)
        job.wait(60)
        seconds.append(time.monotonic() - sent)
        time.sleep(0.3)
        collector.stop.set()
        collector.join()
        logged = {(r["stream"], r["seq"]) for r in read_decision_log(log)}
        received = {(m["stream"], m["seq"]) for _, m in collector.decisions}
        complete += received <= logged
    return {"runs": args.runs, "exit_s_max": round(max(seconds), 3), "logs_complete": complete}


def probe_kill(tmp: Path, args) -> dict:
    from streamsnn.stream.log import read_decision_log

    readable, lost_rows, lost_ms = 0, [], []
    for k in range(args.runs):
        job, collector, log = _job(tmp, args, 100 + k)
        time.sleep(random.uniform(0.5, 3.0))
        job.kill()
        job.wait(60)
        time.sleep(0.2)
        collector.stop.set()
        collector.join()
        try:
            rows = read_decision_log(log)
        except Exception as exc:  # counted: what the probe is for
            print(f"kill run {k}: log unreadable: {exc}", file=sys.stderr)
            continue
        readable += 1
        logged = {(r["stream"], r["seq"]) for r in rows}
        missing = [(at, m) for at, m in collector.decisions if (m["stream"], m["seq"]) not in logged]
        lost_rows.append(len(missing))
        if missing:
            lost_ms.append((missing[-1][0] - missing[0][0]) / 1e6)
    return {"runs": args.runs, "logs_readable": readable, "rows_lost_max": max(lost_rows, default=0),
            "lost_span_ms_max": round(max(lost_ms, default=0.0), 1)}


def _rogue_messages(rng: random.Random, valid_every: int, n: int):
    valid = 0
    for i in range(n):
        if i % valid_every == 0:
            message = {"schema": 1, "stream": "s", "seq": valid, "label": 1, "confidence": 0.5, "timesteps": 1,
                       "max_timesteps": 10, "window_start_us": 0, "window_end_us": 1, "published_ns": 1,
                       "latency_ms": 0.1}
            valid += 1
            yield [b"decision.s", json.dumps(message).encode()]
            continue
        kind = rng.randrange(8)
        if kind == 0:
            yield [b"decision.s"]
        elif kind == 1:
            yield [b"decision.s", b"{}", b"extra"]
        elif kind == 2:
            yield [b"decision.s", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))]
        elif kind == 3:
            yield [b"decision.\xff\xfe", b"{}"]
        elif kind == 4:
            yield [b"decision.s", b"[1, 2, 3]"]
        elif kind == 5:
            yield [b"decision.s", b"[" * 100_000 + b"]" * 100_000]
        elif kind == 6:
            yield [b"decision.s", b""]
        else:
            yield [b"decision.s", b"x" * (2 << 20)]  # beyond --max-bytes


def probe_rogue(tmp: Path, args) -> dict:
    port = free_port()
    publisher = zmq.Context.instance().socket(zmq.PUB)
    publisher.setsockopt(zmq.SNDHWM, 0)
    publisher.bind(f"tcp://127.0.0.1:{port}")
    out = tmp / "subscribe.out"
    with open(out, "wb") as stdout:
        sub = streamsnn("subscribe", f"tcp://127.0.0.1:{port}", "--topic", "decision", stdout=stdout,
                        stderr=subprocess.PIPE)
        time.sleep(3.0)  # the subscriber's import and connection
        rng = random.Random(0)
        sent_valid = 0
        for frames in _rogue_messages(rng, 5, args.rogue_messages):
            publisher.send_multipart(frames)
            sent_valid += frames[0] == b"decision.s" and len(frames) == 2 and frames[1].startswith(b'{"schema"')
            time.sleep(0.002)
        time.sleep(2.0)
        alive = sub.poll() is None
        sub.send_signal(signal.SIGINT)
        sub.wait(30)
    publisher.close(0)
    printed = [json.loads(line) for line in out.read_bytes().splitlines()]
    stderr = sub.stderr.read().decode(errors="replace").splitlines()
    return {"messages": args.rogue_messages, "valid_sent": sent_valid, "valid_printed": len(printed),
            "alive": alive, "stderr_lines": len(stderr), "last_stderr": stderr[-1] if stderr else None}


def probe_damage(tmp: Path, args) -> dict:
    from streamsnn.events import make_events
    from streamsnn.io.prophesee import write_raw

    killed = tmp / "killed.h5"
    writer = (
        "import os, signal, sys, numpy as np\n"
        "from streamsnn.events import make_events\n"
        "from streamsnn.io.store import EventStoreWriter\n"
        "w = EventStoreWriter(sys.argv[1], (1280, 720))\n"
        "for k in range(5):\n"
        "    t = np.arange(60_000 * k, 60_000 * (k + 1))\n"
        "    w.append(make_events(t % 1280, t % 720, t, t % 2)); w.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", writer, str(killed)], env=ENV)
    t = np.arange(200_000)
    raw = tmp / "r.raw"
    write_raw(raw, make_events(t % 640, t % 480, t * 3, t % 2), (640, 480))
    rng = random.Random(1)
    cases = []
    for k in range(args.damage_cases):
        source = killed if k % 2 == 0 else raw
        data = bytearray(source.read_bytes())
        if k % 4 == 3:
            data = data[:rng.randrange(len(data))]
        else:
            at = rng.randrange(min(len(data), 16384) if k % 4 == 0 else len(data))
            data[at] ^= 1 << rng.randrange(8)
        path = tmp / f"damaged{k}{source.suffix}"
        path.write_bytes(bytes(data))
        cases.append(path)
    results = {"cases": len(cases), "read": 0, "one_line_error": 0, "other": 0, "hung": 0}
    slowest = 0.0
    for path in cases:
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, "-m", "streamsnn.cli", "info", str(path)], env=ENV,
                                  capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            results["hung"] += 1
            continue
        slowest = max(slowest, time.monotonic() - started)
        error_lines = [line for line in done.stderr.splitlines() if line.strip()]
        if done.returncode == 0:
            results["read"] += 1
        elif done.returncode == 2 and len(error_lines) == 1:
            results["one_line_error"] += 1
        else:
            results["other"] += 1
            print(f"{path}: exit {done.returncode}: {done.stderr[-500:]}", file=sys.stderr)
        path.unlink()
    results["slowest_s"] = round(slowest, 2)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="runs of the stop and kill probes")
    parser.add_argument("--data", default=None, help="dataset folder to replay (default: the bundled N-MNIST split)")
    parser.add_argument("--checkpoint", default=str(REPO / "streamsnn" / "checkpoints" / "nmnist_str.pt"))
    parser.add_argument("--rogue-messages", type=int, default=2000)
    parser.add_argument("--damage-cases", type=int, default=40)
    parser.add_argument("--only", choices=["stop", "kill", "rogue", "damage"], action="append")
    args = parser.parse_args()
    if args.data is None:
        from streamsnn.datasets import bundled_nmnist_root

        args.data = str(bundled_nmnist_root())
    random.seed(0)
    probes = {"stop": probe_stop, "kill": probe_kill, "rogue": probe_rogue, "damage": probe_damage}
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, probe in probes.items():
            if args.only and name not in args.only:
                continue
            started = time.monotonic()
            figures[name] = probe(Path(tmp), args)
            figures[name]["probe_s"] = round(time.monotonic() - started, 1)
            print(name, figures[name], file=sys.stderr)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
