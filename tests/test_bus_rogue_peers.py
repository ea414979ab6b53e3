"""Peers that are not a streamsnn job, or that leave: a rogue publisher's messages at a subscriber and at
the subscribe command, oversized frames, and subscriber counts after churn. Loopback only."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import zmq
from conftest import decision_message

from streamsnn.stream.bus import Publisher, Subscriber
from streamsnn.stream.log import DecisionLog, read_decision_log, stream_name_bytes
from streamsnn.stream.messages import MAX_MESSAGE_BYTES, check_decision, decision_topic, encode

PY = sys.executable


# the kinds of malformed messages the probe sent, each of which killed `subscribe`
MALFORMED = {
    "one frame": [b"decision.x"],
    "three frames": [b"decision.x", b"{}", b"{}"],
    "not JSON": [b"decision.x", b"hello"],
    "payload not UTF-8": [b"decision.x", b"\xff\xfe\x00"],
    "topic not UTF-8": [b"decision.\xff", json.dumps(decision_message(0)).encode()],
    "JSON list": [b"decision.x", b"[1, 2]"],
    "JSON number": [b"decision.x", b"42"],
    "JSON string": [b"decision.x", b'"text"'],
    "JSON null": [b"decision.x", b"null"],
    "empty payload": [b"decision.x", b""],
    "empty frames": [b"", b""],
    "deeply nested": [b"decision.x", b"[" * 30_000 + b"]" * 30_000],  # within the size limit
    "object lacking fields": [b"decision.x", b'{"seq": 1}'],
    "field of the wrong type": [b"decision.x", json.dumps({**decision_message(0), "seq": "one"}).encode()],
    "status lacking fields": [b"status.x", b'{"state": "running"}'],
    "unknown topic kind": [b"decisionx", json.dumps(decision_message(0)).encode()],
}


def _rogue_publisher():
    socket = zmq.Context.instance().socket(zmq.PUB)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    return socket, f"tcp://127.0.0.1:{port}"


def _wait_joined(publisher, subscriber, timeout_s=10.0):
    """Send probe decisions until the subscriber gets one (the slow-joiner gap closes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        publisher.send_multipart(encode(decision_topic("probe"), decision_message(0, "probe")))
        if subscriber.recv(timeout_s=0.05) is not None:
            while subscriber.recv(timeout_s=0.05) is not None:
                pass
            return
    raise AssertionError("subscriber never joined")


@pytest.mark.timeout(60)
def test_subscriber_skips_and_counts_every_kind_of_malformed_message():
    publisher, endpoint = _rogue_publisher()
    with Subscriber(endpoint) as subscriber:
        _wait_joined(publisher, subscriber)
        seq = 0
        for frames in MALFORMED.values():
            publisher.send_multipart(frames)
            publisher.send_multipart(encode(decision_topic("s"), decision_message(seq)))
            seq += 1
        got = []
        while len(got) < seq:
            item = subscriber.recv(timeout_s=5)
            assert item is not None, f"only {len(got)} of {seq} valid decisions arrived"
            got.append(item[1]["seq"])
        assert got == list(range(seq))
        # ZeroMQ filters by topic prefix first: "decisionx" and an empty topic never arrive
        delivered = [f for f in MALFORMED.values() if f[0].startswith((b"decision.", b"status."))]
        assert subscriber.malformed == len(delivered) == len(MALFORMED) - 2
        assert subscriber.last_malformed
    publisher.close(0)


@pytest.mark.timeout(60)
def test_subscriber_disconnects_a_peer_sending_oversized_frames():
    publisher, endpoint = _rogue_publisher()
    with Subscriber(endpoint, max_bytes=4096) as subscriber:
        _wait_joined(publisher, subscriber)
        big = {**decision_message(1), "padding": "x" * 10_000}
        publisher.send_multipart(encode(decision_topic("s"), big))
        assert subscriber.recv(timeout_s=0.5) is None  # refused: ZeroMQ dropped the connection instead
        _wait_joined(publisher, subscriber)  # the subscriber reconnects; small messages flow again
        publisher.send_multipart(encode(decision_topic("s"), decision_message(2)))
        assert subscriber.recv(timeout_s=5)[1]["seq"] == 2
    publisher.close(0)


def _random_frames(rng: random.Random) -> list[bytes]:
    def blob():
        kind = rng.randrange(6)
        if kind == 0:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        if kind == 1:
            return json.dumps(decision_message(rng.randrange(10))).encode()[:rng.randrange(1, 250)]
        if kind == 2:
            message = decision_message(rng.randrange(10))
            message[rng.choice(list(message))] = rng.choice([None, "x", -1, 1e308, [], {}, True, 2**70])
            return json.dumps(message).encode()
        if kind == 3:
            return rng.choice([b"decision.s", b"status.s", b"decision.", b"status", b"\xff"])
        if kind == 4:
            return b"[" * rng.randrange(1, 5000)
        # now and then over the size limit (the connection drops until the subscriber reconnects)
        return b"x" * (MAX_MESSAGE_BYTES + 1 if rng.random() < 0.05 else rng.randrange(0, MAX_MESSAGE_BYTES))
    frames = [blob() for _ in range(rng.choice([0, 1, 1, 2, 2, 2, 3, 5]))] or [b""]
    if rng.random() < 0.8:  # mostly a topic the subscriber takes: the rest reaches our checks
        frames[0] = rng.choice([b"decision.s", b"status.s", b"decision.\xe2\x82"])
    return frames


def _log_until_probe(publisher, subscriber, log, timeout_s=10.0) -> None:
    """Log every decision that arrives until a probe sent now comes back: all sent before it has been read
    (ZeroMQ keeps order on one connection), so an oversized frame sent next cannot take any with it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        publisher.send_multipart(encode(decision_topic("probe"), decision_message(0, "probe")))
        while (item := subscriber.recv(timeout_s=0.05)) is not None:
            if item[1]["stream"] == "probe":
                return
            log.append(check_decision(item[1]))
    raise AssertionError("the probe never came back")


@pytest.mark.timeout(120)
def test_fuzz_rogue_publisher_at_a_subscriber_that_logs_decisions(tmp_path):
    """Random multipart messages at a subscriber feeding a decision log: what gets through is a valid
    decision and is logged as sent; nothing raises."""
    rng = random.Random(1234)
    publisher, endpoint = _rogue_publisher()
    log_path = tmp_path / "fuzz.h5"
    sent_valid = []
    oversized_sent = 0
    with Subscriber(endpoint, topic="decision") as subscriber, DecisionLog(log_path) as log:
        _wait_joined(publisher, subscriber)
        started = time.monotonic()
        for i in range(600):
            frames = _random_frames(rng)
            # ZeroMQ filters topics at the publisher and limits each frame, not the message
            oversized = frames[0].startswith(b"decision") and max(map(len, frames)) > MAX_MESSAGE_BYTES
            if oversized:
                # the connection drops on it: what was sent before must be read first, and what comes
                # after must wait for the reconnection, or how much is lost depends on timing
                _log_until_probe(publisher, subscriber, log)
                oversized_sent += 1
            publisher.send_multipart(frames)
            if oversized:
                _wait_joined(publisher, subscriber)
            if i % 10 == 0:
                message = decision_message(len(sent_valid), stream=rng.choice(["a", "€" * 40, "b"]))
                publisher.send_multipart(encode(decision_topic(message["stream"]), message))
                sent_valid.append((message["stream"], message["seq"]))
            while (item := subscriber.recv(timeout_s=0)) is not None:
                log.append(check_decision(item[1]))
        _log_until_probe(publisher, subscriber, log)
        assert time.monotonic() - started < 60
    publisher.close(0)
    rows = read_decision_log(log_path)
    stored = {name: stream_name_bytes(name).decode() for name in ("a", "b", "€" * 40)}
    assert stored["€" * 40] == "€" * 21  # 63 bytes: cut at a character boundary, not inside one
    logged = [(r["stream"], r["seq"]) for r in rows]
    sent = [(stored[name], seq) for name, seq in sent_valid]
    # the rogue's own stream "s" may carry messages valid by the schema (a field changed to another
    # value of its type); of the others, every decision sent, each once and as sent
    assert sorted(row for row in logged if row[0] != "s") == sorted(sent)
    assert oversized_sent >= 1 and subscriber.disconnects == oversized_sent
    # with no losses the count depends on the seed alone (309 for 1234); the margin is for a pyzmq whose
    # topic filtering differs, not for timing
    assert subscriber.malformed >= 250


@pytest.mark.timeout(120)
def test_subscribe_command_survives_a_rogue_publisher():
    """The issue's repro and every other kind: the command keeps printing valid decisions, reports the rest
    on stderr in a few rate-limited lines, and exits 0 on SIGINT."""
    publisher, endpoint = _rogue_publisher()
    proc = subprocess.Popen([PY, "-m", "streamsnn.cli", "subscribe", endpoint, "--topic", "decision"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        printed = []
        deadline = time.monotonic() + 60
        import select
        while not printed and time.monotonic() < deadline:  # until the command is up and subscribed
            publisher.send_multipart(encode(decision_topic("probe"), decision_message(0, "probe")))
            if select.select([proc.stdout], [], [], 0.2)[0]:
                printed.append(proc.stdout.readline())
        assert printed, "subscribe never printed"
        for round_ in range(5):
            for frames in MALFORMED.values():
                publisher.send_multipart(frames)
        publisher.send_multipart(encode(decision_topic("s"), decision_message(77)))
        line = ""
        while '"seq":77' not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        assert '"seq":77' in line
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        publisher.close(0)
    assert proc.returncode == 0
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 3, err  # rate-limited, not one per message
    assert all(line.startswith("streamsnn subscribe: skipped") for line in lines)
    assert f"skipped {5 * (len(MALFORMED) - 3)} malformed" in lines[-1]  # status.x and two unsubscribed topics
    assert "Traceback" not in err


@pytest.mark.timeout(60)
def test_status_counts_only_subscribers_still_connected():
    with Publisher("tcp://127.0.0.1:*") as pub:
        stay = Subscriber(pub.endpoint, topic="decision")
        assert pub.wait_for_subscribers(1, timeout_s=10, settle_s=0) == 1
        for _ in range(5):
            churn = [Subscriber(pub.endpoint, topic="decision") for _ in range(4)]
            assert pub.wait_for_subscribers(5, timeout_s=10, settle_s=0) == 5
            for sub in churn:
                sub.close()
            deadline = time.monotonic() + 10
            while pub.decision_subscriptions != 1 and time.monotonic() < deadline:
                pub.poll_subscriptions(50)
            assert pub.decision_subscriptions == 1
        stay.close()
        deadline = time.monotonic() + 10
        while pub.decision_subscriptions and time.monotonic() < deadline:
            pub.poll_subscriptions(50)
        assert pub.decision_subscriptions == 0
