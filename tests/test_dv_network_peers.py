"""``dv://`` peers that do not behave: silent, not speaking DV, lying about lengths, stalling. Each is a clean
SourceError within the connect timeout, or visible in the source's stats; nothing hangs or allocates what a
length field claims. The peers are plain sockets on loopback serving the bytes of a real AEDAT 4 stream
(dv-processing writes it) or garbage."""
from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from generate import write_aedat4

from streamsnn.errors import SourceError
from streamsnn.events import make_events
from streamsnn.io.aedat import AEDAT4_MAGIC, Aedat4Header
from streamsnn.stream.bus import Subscriber
from streamsnn.stream.sources import Chunk, DvNetworkSource, WindowStart


def _dv_stream_bytes(tmp_path, compression="NONE", n=3000, sensor=(64, 48)):
    """What a DV sender writes on a connection: the bytes of an AEDAT 4 file after its first line, up to the
    data table (header length, IOHeader, packets). Event i: t = 1000 + 7 i, x = i % width, y = 7 i % height."""
    i = np.arange(n)
    events = make_events(i % sensor[0], (i * 7) % sensor[1], 1_000 + 7 * i, (i % 3) != 0)
    path = write_aedat4(tmp_path / f"{compression}.aedat4", events, sensor, compression=compression)
    data = path.read_bytes()[len(AEDAT4_MAGIC):]
    (size,) = struct.unpack_from("<I", data)
    end = Aedat4Header(data[4:4 + size], path, 0).data_table_position - len(AEDAT4_MAGIC)
    return data[:4 + size], data[4 + size:end]


class Peer:
    """A TCP server on loopback that runs ``serve(connection, done)`` for its first client, then hangs up."""

    def __init__(self, serve):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.done = threading.Event()

        def run():
            connection, _ = self.listener.accept()
            try:
                serve(connection, self.done)  # returns when the peer hangs up
            except OSError:
                pass
            finally:
                connection.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self):
        self.done.set()
        self.listener.close()


def _source(peer, **kwargs):
    return DvNetworkSource("127.0.0.1", peer.port, "dv", **kwargs)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\n\r\n", b"\x00\x00\x00\x80", b"\x10\x00\x00\x00IOHE"])
def test_a_peer_that_does_not_speak_dv_is_an_error_within_the_timeout(sent):
    """Silent, HTTP, a 2 GiB header length, a header cut short: dv-processing's reader blocked forever
    (holding the GIL) on the first and allocated 2 GiB on the third."""
    def serve(connection, done):
        connection.sendall(sent)
        done.wait(30)  # and then nothing, connection open

    peer = Peer(serve)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(SourceError, match=rf"dv://127.0.0.1:{peer.port}.*(not a DV event stream|the peer does not "
                                              "speak DV)"):
            _source(peer, connect_timeout_s=0.5).open()
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        peer.close()
    assert elapsed < 3.0
    assert peak < 8 << 20


def _serve_then(header, packets, then):
    def serve(connection, done):
        connection.sendall(header + packets)
        then(connection, done)
    return serve


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compression", ["NONE", "LZ4", "ZSTD"])
def test_a_real_dv_stream_is_read_whole(tmp_path, compression):
    header, packets = _dv_stream_bytes(tmp_path, compression)
    peer = Peer(_serve_then(header, packets, lambda connection, done: None))  # then the sender closes
    source = _source(peer)
    try:
        source.open()
        assert tuple(source.sensor_size) == (64, 48, 2)
        items = []
        with pytest.raises(SourceError, match="stream dropped after 3000 events"):
            for item in source.items(threading.Event(), 1000):
                items.append(item)
    finally:
        source.close()
        peer.close()
    assert isinstance(items[0], WindowStart) and items[0].start_us == 1_000
    events = np.concatenate([i.events for i in items if isinstance(i, Chunk)])
    np.testing.assert_array_equal(events["t"], 1_000 + 7 * np.arange(3000))
    np.testing.assert_array_equal(events["x"], np.arange(3000) % 64)


@pytest.mark.timeout(30)
def test_a_bogus_packet_length_is_refused_and_never_allocated(tmp_path):
    header, packets = _dv_stream_bytes(tmp_path)
    bogus = struct.pack("<ii", 0, 2**31 - 1)  # a 2 GiB packet announced, a few bytes sent
    peer = Peer(_serve_then(header, bogus + b"\x00" * 100, lambda connection, done: done.wait(30)))
    source = _source(peer)
    tracemalloc.start()
    try:
        source.open()
        with pytest.raises(SourceError, match="packet header says stream 0, 2147483647 bytes"):
            for _ in source.items(threading.Event(), 1000):
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        source.close()
        peer.close()
    assert peak < 8 << 20


@pytest.mark.timeout(30)
def test_a_stalled_sender_shows_in_the_stats_and_stop_still_works(tmp_path):
    header, packets = _dv_stream_bytes(tmp_path)
    # the first packet whole, then half of a large one announced within the limit, then silence
    peer = Peer(_serve_then(header, packets + struct.pack("<ii", 0, 40 << 20) + b"\x00" * 1000,
                            lambda connection, done: done.wait(30)))
    source = _source(peer, stall_s=0.3)
    stop = threading.Event()
    items = []
    tracemalloc.start()
    try:
        source.open()
        reader = threading.Thread(target=lambda: items.extend(source.items(stop, 1000)), daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while not any(isinstance(i, Chunk) for i in items) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert source.stats()["source_stalled"] is False or source.stats()["source_idle_s"] >= 0.3
        time.sleep(0.6)
        stats = source.stats()
        assert stats["source_stalled"] is True and stats["source_idle_s"] >= 0.3
        _, peak = tracemalloc.get_traced_memory()
        stop.set()
        reader.join(2.0)
        assert not reader.is_alive()  # the wait for bytes looks at the stop event
    finally:
        tracemalloc.stop()
        source.close()
        peer.close()
    assert peak < 8 << 20  # 40 MiB announced, 1 kB arrived: the buffer holds what arrived


@pytest.mark.timeout(120)
def test_a_stalled_sender_shows_as_stalled_on_the_job_status_topic(tmp_path):
    """The job end to end: a DV sender that goes quiet without closing leaves the job running, and its
    status says so (state "stalled", source_idle_s), instead of looking like a healthy quiet stream."""
    header, packets = _dv_stream_bytes(tmp_path, sensor=(34, 34))  # the bundled N-MNIST model's geometry
    peer = Peer(_serve_then(header, packets, lambda connection, done: done.wait(60)))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    definition = tmp_path / "dv.toml"
    definition.write_text(f'[[source]]\nuri = "dv://127.0.0.1:{peer.port}"\nstream = "cam"\n'
                          f'[publish]\nendpoint = "{endpoint}"\nstatus_interval_s = 0.2\n')
    checkpoint = Path(__file__).resolve().parents[1] / "streamsnn" / "checkpoints" / "nmnist_str.pt"
    subscriber = Subscriber(endpoint, topic="status")
    job = subprocess.Popen([sys.executable, "-m", "streamsnn.cli", "run", str(definition), "--checkpoint",
                            str(checkpoint)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        states = []
        deadline = time.monotonic() + 60
        while "stalled" not in states and time.monotonic() < deadline and job.poll() is None:
            item = subscriber.recv(timeout_s=0.5)
            if item is not None:
                states.append(item[1]["state"])
                last = item[1]
        assert "stalled" in states, (states, job.poll())
        assert last["source_stalled"] is True and last["source_idle_s"] >= 2.0 and last["events_in"] == 3000
    finally:
        job.send_signal(signal.SIGINT)
        job.communicate(timeout=30)
        subscriber.close()
        peer.close()


@pytest.mark.timeout(60)
def test_a_dv_source_refused_for_its_geometry_is_disconnected(tmp_path):
    """A job that refuses a stream (sensor 64x48, the model takes 34x34) hangs up on its sender at once."""
    from streamsnn.errors import ConfigError
    from streamsnn.stream.config import PipelineConfig, SourceConfig
    from streamsnn.snn.checkpoint import bundled_checkpoint
    from streamsnn.stream.job import Pipeline

    header, packets = _dv_stream_bytes(tmp_path, sensor=(64, 48))
    hung_up = threading.Event()

    def serve(connection, done):
        connection.sendall(header + packets)
        connection.settimeout(20)
        try:
            if connection.recv(1) == b"":
                hung_up.set()
        except ConnectionResetError:   # closed with our bytes unread: a reset, not an end of stream
            hung_up.set()

    peer = Peer(serve)
    config = PipelineConfig(sources=[SourceConfig(uri=f"dv://127.0.0.1:{peer.port}", stream="cam")],
                            checkpoint=str(bundled_checkpoint()), endpoint="tcp://127.0.0.1:*", settle_s=0.0)
    pipeline = Pipeline(config)
    try:
        # the error's traceback (kept, as a caller's would be) holds the source: only close() hangs up
        with pytest.raises(ConfigError, match="64x48x2") as refused:
            pipeline.open()
        assert hung_up.wait(5)
        assert refused.tb is not None
    finally:
        peer.close()


@pytest.mark.timeout(60)
def test_a_sender_of_a_header_and_no_events_shows_as_stalled(tmp_path):
    from streamsnn.stream.config import PipelineConfig, SourceConfig
    from streamsnn.snn.checkpoint import bundled_checkpoint
    from streamsnn.stream.job import Pipeline

    header, _ = _dv_stream_bytes(tmp_path, sensor=(34, 34))
    peer = Peer(_serve_then(header, b"", lambda connection, done: done.wait(60)))
    config = PipelineConfig(sources=[SourceConfig(uri=f"dv://127.0.0.1:{peer.port}", stream="cam")],
                            checkpoint=str(bundled_checkpoint()), endpoint="tcp://127.0.0.1:*", settle_s=0.0,
                            status_interval_s=0.2)
    pipeline = Pipeline(config).open()
    subscriber = Subscriber(pipeline.endpoint, topic="status")
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    try:
        states = []
        deadline = time.monotonic() + 20
        while "stalled" not in states and time.monotonic() < deadline:
            item = subscriber.recv(timeout_s=0.5)
            if item is not None:
                states.append(item[1]["state"])
        assert "stalled" in states, states
    finally:
        pipeline.stop()
        runner.join(10)
        subscriber.close()
        peer.close()
