"""The decision bus over real ZeroMQ sockets: slow joiners, high-water marks, CurveZMQ, the subscribe CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from conftest import decision_message

from streamsnn.stream.bus import Publisher, Subscriber, generate_keys, is_loopback, normalize_endpoint
from streamsnn.stream.messages import STATUS_FIELDS, decision_topic, status_topic
from streamsnn.errors import ConfigError

PY = sys.executable


def test_endpoints_default_to_loopback():
    assert normalize_endpoint(None) == "tcp://127.0.0.1:5556"
    assert normalize_endpoint("6000") == "tcp://127.0.0.1:6000"
    assert normalize_endpoint("tcp://:6000") == "tcp://127.0.0.1:6000"
    assert normalize_endpoint("tcp://0.0.0.0:6000") == "tcp://0.0.0.0:6000"   # asked for explicitly
    assert is_loopback("tcp://127.0.0.1:1") and not is_loopback("tcp://0.0.0.0:1")
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        normalize_endpoint("localhost")


@pytest.mark.timeout(30)
def test_publisher_binds_loopback_and_warns_beyond():
    with Publisher("tcp://127.0.0.1:*") as pub:
        assert pub.endpoint.startswith("tcp://127.0.0.1:")
    with pytest.warns(UserWarning, match="beyond loopback"):
        Publisher("tcp://0.0.0.0:*").close()


@pytest.mark.timeout(30)
def test_bind_conflict_is_a_clear_error():
    with Publisher("tcp://127.0.0.1:*") as pub:
        with pytest.raises(ConfigError, match="cannot bind"):
            Publisher(pub.endpoint)


@pytest.mark.timeout(30)
def test_subscriber_connected_before_start_receives_every_message():
    """The slow-joiner gap: wait_for_subscribers holds the first message until the subscription arrives."""
    with Publisher("tcp://127.0.0.1:*") as pub:
        sub = Subscriber(pub.endpoint, topic="decision")
        assert pub.wait_for_subscribers(1, timeout_s=5, settle_s=0) == 1
        for i in range(500):
            pub.send(decision_topic("s"), decision_message(i))
        got = []
        while len(got) < 500:
            item = sub.recv(timeout_s=5)
            assert item is not None, f"only {len(got)} of 500 messages arrived"
            got.append(item)
        sub.close()
    assert [m["seq"] for _, m in got] == list(range(500))
    assert got[0][0] == "decision.s"


@pytest.mark.timeout(30)
def test_stream_filter_is_exact():
    with Publisher("tcp://127.0.0.1:*") as pub:
        sub = Subscriber(pub.endpoint, streams=["cam"])
        assert pub.wait_for_subscribers(1, timeout_s=5, settle_s=0) == 1   # counts decision subscriptions
        time.sleep(0.05)                                                   # the status one arrives alongside
        pub.send(decision_topic("cam2"), decision_message(0, "cam2"))
        status = {name: kind() for name, kind in STATUS_FIELDS.items()}   # a subscriber takes only whole ones
        pub.send(status_topic("cam"), {**status, "stream": "cam", "state": "running"})
        pub.send(decision_topic("cam"), decision_message(1, "cam"))
        topics = [sub.recv(timeout_s=5)[0] for _ in range(2)]
        assert sub.recv(timeout_s=0.2) is None
        sub.close()
    assert topics == ["status.cam", "decision.cam"]


@pytest.mark.timeout(30)
def test_a_subscriber_that_never_reads_does_not_block_the_publisher():
    ctx = zmq.Context.instance()
    with Publisher("tcp://127.0.0.1:*", sndhwm=100) as pub:
        lazy = ctx.socket(zmq.SUB)
        lazy.setsockopt(zmq.RCVHWM, 100)
        # A fixed kernel receive buffer: left to autotuning it may grow to tcp_rmem's maximum (32 MiB on
        # the project's machines, over 3,000 of these messages), which would hide whether anything bounds
        # the queue.
        lazy.setsockopt(zmq.RCVBUF, LAZY_RCVBUF)
        lazy.setsockopt(zmq.SUBSCRIBE, b"")
        lazy.connect(pub.endpoint)
        pub.wait_for_subscribers(1, timeout_s=5, settle_s=0)
        payload = "x" * 10_000
        start = time.monotonic()
        for i in range(20_000):                     # 200 MB offered to a reader that reads nothing
            message = decision_message(i)
            message["pad"] = payload
            pub.send(decision_topic("s"), message)
        elapsed = time.monotonic() - start
        # What finally reaches the lazy reader is bounded by the high-water marks and socket buffers:
        # the rest was dropped at the publisher, not queued without bound.
        time.sleep(0.5)
        queued = 0
        while lazy.poll(200):
            lazy.recv_multipart()
            queued += 1
        lazy.close(0)
    assert elapsed < 10
    assert 0 < queued <= _most_a_lazy_reader_can_hold(len(payload), hwm=100), queued


LAZY_RCVBUF = 256 * 1024


def _most_a_lazy_reader_can_hold(message_bytes: int, *, hwm: int) -> int:
    """Messages that may sit between a publisher and a reader that never reads: both high-water marks,
    the publisher's kernel send buffer (autotuned up to tcp_wmem's maximum) and the reader's fixed
    receive buffer (Linux doubles SO_RCVBUF for its bookkeeping), with 10 % to spare."""
    try:
        send_buffer = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        send_buffer = 4 * 1024 * 1024
    in_kernel = (send_buffer + 2 * LAZY_RCVBUF) // message_bytes
    return int(1.1 * (2 * hwm + in_kernel)) + 10


@pytest.mark.timeout(60)
def test_curve_refuses_unknown_clients_and_accepts_allowed_ones(tmp_path):
    keys = tmp_path / "keys"
    written = generate_keys(keys, ["alice"])
    stranger = generate_keys(tmp_path / "other", ["mallory"])     # a key pair the publisher does not know
    assert (keys / "authorized" / "alice.key").is_file()
    with Publisher("tcp://127.0.0.1:*", curve_keys=keys) as pub:
        alice = Subscriber(pub.endpoint, topic="decision", curve_keys=written["clients"]["alice"])
        # mallory has a valid client pair, and even the right server key, but is not authorised
        import shutil

        shutil.copy(keys / "server.key", tmp_path / "other" / "clients" / "mallory" / "server.key")
        mallory = Subscriber(pub.endpoint, topic="decision", curve_keys=stranger["clients"]["mallory"])
        plain = Subscriber(pub.endpoint, topic="decision")                     # no CURVE at all
        assert pub.wait_for_subscribers(1, timeout_s=10, settle_s=0.5) == 1   # only alice got through
        for i in range(50):
            pub.send(decision_topic("s"), decision_message(i))
        got = [alice.recv(timeout_s=5) for _ in range(50)]
        assert all(item is not None for item in got)
        assert mallory.recv(timeout_s=1.0) is None
        assert plain.recv(timeout_s=0.2) is None
        for s in (alice, mallory, plain):
            s.close()


def test_keys_layout_and_errors(tmp_path):
    written = generate_keys(tmp_path, ["a", "b"])
    assert sorted(p.name for p in (tmp_path / "authorized").iterdir()) == ["a.key", "b.key"]
    assert oct(os.stat(tmp_path / "server.key_secret").st_mode & 0o777) == "0o600"
    assert (tmp_path / "clients" / "a" / "server.key").is_file()
    with pytest.raises(ConfigError, match="exists already"):
        generate_keys(tmp_path, ["a"])
    with pytest.raises(ConfigError, match="several client key pairs"):
        Subscriber("tcp://127.0.0.1:1", curve_keys=tmp_path)
    with pytest.raises(ConfigError, match="no server.key_secret"):
        Publisher("tcp://127.0.0.1:*", curve_keys=tmp_path / "clients")
    assert set(written["clients"]) == {"a", "b"}


@pytest.mark.timeout(60)
def test_keys_and_subscribe_commands(tmp_path):
    keys = tmp_path / "k"
    out = subprocess.run([PY, "-m", "streamsnn.cli", "keys", str(keys), "--name", "viewer"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    with Publisher("tcp://127.0.0.1:*", curve_keys=keys) as pub:
        proc = subprocess.Popen([PY, "-m", "streamsnn.cli", "subscribe", pub.endpoint, "--stream", "a",
                                 "--count", "3", "--curve-keys", str(keys / "clients" / "viewer")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert pub.wait_for_subscribers(1, timeout_s=20, settle_s=0) == 1
            pub.send(decision_topic("b"), decision_message(0, "b"))
            for i in range(3):
                pub.send(decision_topic("a"), decision_message(i, "a"))
            stdout, stderr = proc.communicate(timeout=20)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [(m["topic"], m["seq"]) for m in lines] == [("decision.a", 0), ("decision.a", 1), ("decision.a", 2)]
