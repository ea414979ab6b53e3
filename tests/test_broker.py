"""Scale-out on ZeroMQ: a broker (XSUB/XPUB proxy) in front of several jobs, subscribers of several endpoints."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import free_port
from streamsnn.events import make_events
from streamsnn.io import write_npy
from streamsnn.stream.bus import Broker, Publisher, Subscriber, generate_keys
from streamsnn.stream.messages import check_decision, decision_topic

PY = sys.executable


def _message(seq, stream):
    return {"schema": 1, "stream": stream, "seq": seq, "label": 1, "confidence": 0.9, "timesteps": 3,
            "max_timesteps": 10, "window_start_us": 0, "window_end_us": 1000, "published_ns": time.time_ns(),
            "latency_ms": 0.1}


def _drain(sub, timeout_s=0.5):
    got = []
    while (item := sub.recv(timeout_s=timeout_s)) is not None:
        got.append(item)
    return got


@pytest.mark.timeout(30)
def test_subscriber_of_several_endpoints_hears_every_publisher():
    with Publisher("tcp://127.0.0.1:*") as a, Publisher("tcp://127.0.0.1:*") as b:
        sub = Subscriber([a.endpoint, b.endpoint], topic="decision")
        assert a.wait_for_subscribers(1, 5, 0) == 1 and b.wait_for_subscribers(1, 5, 0) == 1
        for i in range(50):
            a.send(decision_topic("a"), _message(i, "a"))
            b.send(decision_topic("b"), _message(i, "b"))
        got = _drain(sub)
        sub.close()
    for stream in ("a", "b"):
        assert [m["seq"] for t, m in got if m["stream"] == stream] == list(range(50))


@pytest.mark.timeout(60)
def test_broker_with_curve_on_both_sides_serves_only_allowed_subscribers(tmp_path):
    jobs_keys, broker_keys = tmp_path / "jobs", tmp_path / "broker"
    generate_keys(jobs_keys, ["broker"])                 # the broker is a client of the jobs
    generate_keys(broker_keys, ["ops"])                  # the subscribers are clients of the broker
    generate_keys(tmp_path / "other", ["intruder"])
    with Publisher("tcp://127.0.0.1:*", curve_keys=jobs_keys) as job:
        broker = Broker([job.endpoint], "tcp://127.0.0.1:*", curve_keys=broker_keys,
                        upstream_curve_keys=jobs_keys / "clients" / "broker").start()
        try:
            allowed = Subscriber(broker.endpoint, topic="decision", curve_keys=broker_keys / "clients" / "ops")
            intruder = Subscriber(broker.endpoint, topic="decision",
                                  curve_keys=tmp_path / "other" / "clients" / "intruder")
            plain = Subscriber(broker.endpoint, topic="decision")
            # the allowed subscriber's subscription travels through the broker up to the job
            assert job.wait_for_subscribers(1, timeout_s=10, settle_s=0.3) >= 1
            for i in range(20):
                job.send(decision_topic("cam"), _message(i, "cam"))
            got = _drain(allowed, 1.0)
            assert [check_decision(m)["seq"] for _, m in got] == list(range(20))
            assert _drain(intruder, 0.3) == [] and _drain(plain, 0.3) == []
            for s in (allowed, intruder, plain):
                s.close()
        finally:
            broker.stop()


def _sample_folder(root, seed, per_class=3):
    rng = np.random.default_rng(seed)
    for label in range(2):
        (root / "Test" / str(label)).mkdir(parents=True)
        for i in range(per_class):
            n = 800
            t = np.sort(rng.integers(0, 120_000, n))
            write_npy(root / "Test" / str(label) / f"{i}.npy",
                      make_events(rng.integers(0, 34, n), rng.integers(0, 34, n), t, rng.integers(0, 2, n)))
    return root / "Test"


@pytest.mark.timeout(180)
def test_three_jobs_one_broker_one_subscriber_every_decision_once(tmp_path):
    import torch

    from streamsnn.snn import build_model
    from streamsnn.snn.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "n34.pt"
    save_checkpoint(ckpt, build_model("nmnist", (2, 34, 34), 2), {
        "class_names": ["0", "1"], "sensor_size": [34, 34, 2], "binning": {"time_window": 30_000},
        "timesteps": 5, "cutoff": {"policy": "confidence", "epsilon": 0.3}})
    ports = [free_port() for _ in range(3)]
    broker_port = free_port()
    definitions = []
    for k, port in enumerate(ports):
        folder = _sample_folder(tmp_path / f"job{k}", seed=k)
        definition = tmp_path / f"job{k}.toml"
        definition.write_text(f'[[source]]\nuri = "{folder}"\nstream = "job{k}"\nspeed = 0.0\n'
                              f'[model]\ncheckpoint = "{ckpt}"\n'
                              f'[publish]\nendpoint = "tcp://127.0.0.1:{port}"\nwait_subscribers = 1\n'
                              f'wait_timeout_s = 60.0\n')
        definitions.append(definition)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    broker = subprocess.Popen([PY, "-m", "streamsnn.cli", "broker", *[f"tcp://127.0.0.1:{p}" for p in ports],
                               "--publish", f"tcp://127.0.0.1:{broker_port}"], stderr=subprocess.PIPE, text=True,
                              env=env)
    subscriber = subprocess.Popen([PY, "-m", "streamsnn.cli", "subscribe", f"tcp://127.0.0.1:{broker_port}",
                                   "--topic", "decision"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)
    jobs = []
    try:
        time.sleep(0.5)
        jobs = [subprocess.Popen([PY, "-m", "streamsnn.cli", "run", str(d)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for d in definitions]
        for job in jobs:
            _, err = job.communicate(timeout=120)
            assert job.returncode == 0, err
        time.sleep(1.0)                                   # let the last messages through the broker
    finally:
        subscriber.send_signal(signal.SIGINT)
        out, err = subscriber.communicate(timeout=10)
        broker.send_signal(signal.SIGINT)
        broker.wait(timeout=10)
        for job in jobs:
            job.kill()
    assert broker.returncode == 0, broker.stderr.read()
    decisions = [json.loads(line) for line in out.splitlines() if line.strip()]
    for k in range(3):
        seqs = [m["seq"] for m in decisions if m["stream"] == f"job{k}"]
        assert seqs == list(range(6)), (k, seqs)          # every decision, once, in order
    assert len(decisions) == 18
