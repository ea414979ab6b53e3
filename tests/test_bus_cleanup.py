"""Failures while the bus is set up leave nothing open behind them, and are one-line errors naming what was wrong."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import zmq

from conftest import free_port
from streamsnn.errors import ConfigError
from streamsnn.stream.bus import Broker, Publisher, Subscriber, generate_keys

PY = sys.executable


def _terminates(context: zmq.Context, timeout_s: float = 5.0) -> bool:
    """True when context.term() returns (it waits forever while a socket of the context is open)."""
    thread = threading.Thread(target=context.term, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


@pytest.mark.timeout(30)
def test_publisher_with_missing_keys_closes_its_socket(tmp_path):
    context = zmq.Context()
    with pytest.raises(ConfigError, match="--curve-keys"):
        Publisher("tcp://127.0.0.1:*", curve_keys=tmp_path / "none", context=context)
    assert _terminates(context)


@pytest.mark.timeout(30)
def test_broker_with_missing_keys_returns_instead_of_hanging(tmp_path):
    done = threading.Event()
    errors = []

    def build():
        try:
            Broker([f"tcp://127.0.0.1:{free_port()}"], "tcp://127.0.0.1:*", curve_keys=tmp_path / "none")
        except ConfigError as exc:
            errors.append(str(exc))
        done.set()

    threading.Thread(target=build, daemon=True).start()
    assert done.wait(5.0), "Broker() hung in context.term() after the key error"
    assert errors and "--curve-keys" in errors[0]


@pytest.mark.timeout(60)
def test_broker_command_with_missing_keys_exits_2(tmp_path):
    result = subprocess.run([PY, "-m", "streamsnn.cli", "broker", f"tcp://127.0.0.1:{free_port()}",
                             "--curve-keys", str(tmp_path / "none")], capture_output=True, text=True, timeout=40)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "--curve-keys" in result.stderr


def test_broker_names_upstream_options_and_endpoints(tmp_path):
    with pytest.raises(ConfigError, match="--upstream-curve-keys"):
        Broker([f"tcp://127.0.0.1:{free_port()}"], "tcp://127.0.0.1:*", upstream_curve_keys=tmp_path / "none")
    with pytest.raises(ConfigError, match="upstream endpoint 'bogus'"):
        Broker(["bogus"], "tcp://127.0.0.1:*")
    with pytest.raises(ConfigError, match="udp://x:1"):
        Broker(["udp://x:1"], "tcp://127.0.0.1:*")


@pytest.mark.parametrize("endpoint", ["tcp://exa mple:5556", "udp://x:1"])
def test_subscriber_to_a_bad_address_is_a_config_error(endpoint):
    context = zmq.Context()
    with pytest.raises(ConfigError, match=endpoint):
        Subscriber(endpoint, context=context)
    assert _terminates(context)


def test_keys_in_an_unwritable_place_is_a_config_error():
    with pytest.raises(ConfigError, match="/proc/x"):
        generate_keys("/proc/x")


@pytest.mark.timeout(60)
def test_broker_passes_departures_of_subscribers_up():
    # libzmq's XSUB forwards an unsubscription only when its own count for the topic reaches zero (the
    # option that would change that is a draft API), so the job sees one of the two departures; with
    # XPUB_VERBOSE on the broker's XPUB it saw none and counted both subscribers forever
    with Publisher("tcp://127.0.0.1:*") as job:
        broker = Broker([job.endpoint], "tcp://127.0.0.1:*").start()
        try:
            first = Subscriber(broker.endpoint, topic="decision")
            second = Subscriber(broker.endpoint, topic="decision")
            assert job.wait_for_subscribers(2, 10, 0) == 2
            first.close()
            second.close()
            deadline = time.monotonic() + 5
            while job.decision_subscriptions == 2 and time.monotonic() < deadline:
                job.poll_subscriptions(50)
            assert job.decision_subscriptions < 2
        finally:
            broker.stop()
