"""Files that change under a reader, stores left by a killed writer, and paths that are not files:
each gets a clean error naming the file. Never SIGBUS, a hang, or a silent early end."""
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from generate import scene_events, write_aedat2, write_atis_bin, write_dat

from streamsnn.errors import EventFormatError, SourceError
from streamsnn.io import open_recording, read_events
from streamsnn.io.arrays import write_npy
from streamsnn.io.prophesee import write_raw
from streamsnn.io.store import convert_to_store, write_store
from streamsnn.stream.sources import make_source

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_python(code, *args, timeout=120):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


# In a child process: before the fix, the store was memory-mapped and this died of SIGBUS.
_TRUNCATE_DURING_REPLAY = r"""
import os, sys, threading
from streamsnn.errors import SourceError
from streamsnn.io import store
from streamsnn.stream import sources as replay
store.READ_BLOCK_EVENTS = 1 << 16   # several reads over this small store, as over a big one
source = replay.make_source(sys.argv[1], speed=0)
source.open()
items = source.items(threading.Event(), slice_us=1000)
try:
    for k, item in enumerate(items):
        if k == 5:
            os.truncate(sys.argv[1], os.path.getsize(sys.argv[1]) // 2)
    print("ENDED WITHOUT ERROR")
except SourceError as exc:
    print("SOURCE ERROR", exc)
"""


def test_store_truncated_during_replay_is_a_source_error_not_sigbus(tmp_path):
    path = tmp_path / "big.h5"
    write_store(path, scene_events(600_000, (128, 128)), (128, 128))
    result = _run_python(_TRUNCATE_DURING_REPLAY, path)
    assert result.returncode == 0, f"child died (signal {-result.returncode}): {result.stderr[-2000:]}"
    assert "SOURCE ERROR" in result.stdout and "shrank" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("gather_slack", [1 << 20, -(1 << 40)])  # chunks read together / one by one
def test_store_truncated_between_reads_is_a_clean_error(tmp_path, monkeypatch, gather_slack):
    from streamsnn.io import store

    monkeypatch.setattr(store, "_GATHER_SLACK_BYTES", gather_slack)
    events = scene_events(400_000, (128, 128))
    path = tmp_path / "s.h5"
    write_store(path, events, (128, 128))
    with store.StoreRecording(path) as rec:
        np.testing.assert_array_equal(rec.read_range(0, 200_000), events[:200_000])
        os.truncate(path, os.path.getsize(path) // 2)
        with pytest.raises(EventFormatError, match=re.escape(str(path)) + ".*shrank"):
            rec.read_range(200_000, 400_000)


@pytest.mark.parametrize("fmt", ["evt2", "evt3", "dat", "atis_bin", "aedat2", "npy"])
def test_recording_that_shrinks_while_read_is_an_error_not_a_silent_end(tmp_path, fmt):
    sensor = {"atis_bin": (34, 34), "aedat2": (128, 128)}.get(fmt, (128, 128))
    events = scene_events(200_000, sensor)
    given = None
    if fmt in ("evt2", "evt3"):
        path = tmp_path / "r.raw"
        write_raw(path, events, sensor, encoding=fmt)
    elif fmt == "dat":
        path = write_dat(tmp_path / "r.dat", events, sensor)
    elif fmt == "atis_bin":
        path, given = write_atis_bin(tmp_path / "r.bin", events), sensor
    elif fmt == "aedat2":
        path = write_aedat2(tmp_path / "r.aedat", events)
    else:
        path = tmp_path / "r.npy"
        write_npy(path, events)
    with open_recording(path, sensor_size=given) as rec:
        assert rec.format == fmt
        if fmt == "npy":
            rec.block_events = 1000
        else:
            rec.block_bytes = 4096
        chunks = rec.chunks(n_events=100)
        next(chunks)
        os.truncate(path, os.path.getsize(path) // 2)
        with pytest.raises(EventFormatError, match=re.escape(str(path)) + ".*shrank while being read"):
            for _ in chunks:
                pass


# A writer killed after its flushes; the file stays marked "open for write" (SWMR).
_KILLED_WRITER = r"""
import os, signal, sys
import numpy as np
from streamsnn.events import make_events
from streamsnn.io.store import EventStoreWriter
w = EventStoreWriter(sys.argv[1], (1280, 720))
for k in range(5):
    t = np.arange(60_000 * k, 60_000 * (k + 1))
    w.append(make_events(t % 1280, t % 720, t, t % 2))
    w.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""

_INFO_EACH = r"""
import sys, time
from streamsnn.errors import StreamsnnError
from streamsnn.io import recording_info
for path in sys.argv[1:]:
    started = time.perf_counter()
    try:
        recording_info(path)
        outcome = "read"
    except StreamsnnError as exc:
        outcome = "error " + str(exc).splitlines()[0]
    print(f"{time.perf_counter() - started:.3f} {outcome}")
"""


def test_killed_writer_store_with_a_flipped_bit_fails_fast(tmp_path):
    """HDF5 retries a SWMR file's damaged metadata 100 times, each wait twice the last: hours."""
    path = tmp_path / "k.h5"
    result = _run_python(_KILLED_WRITER, path)
    assert result.returncode != 0 and path.exists()
    data = path.read_bytes()
    # object headers (root group first) and their continuation blocks, all checksummed metadata
    headers = [m.start() for m in re.finditer(rb"OHDR|OCHK", data)][:4]
    assert len(headers) == 4
    damaged = []
    for k, at in enumerate(headers):
        copy = bytearray(data)
        copy[at + 24] ^= 0b10
        damaged.append(tmp_path / f"flip{k}.h5")
        damaged[-1].write_bytes(bytes(copy))
    result = _run_python(_INFO_EACH, path, *damaged, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].endswith("read")  # the undamaged file: everything flushed is there
    for line, damaged_path in zip(lines[1:], damaged):
        seconds, outcome = line.split(" ", 1)
        assert float(seconds) < 5.0, line
        assert outcome.startswith(f"error {damaged_path}"), line


def test_convert_never_writes_through_a_planted_partial_name(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "o.h5"
    os.symlink(victim, tmp_path / "o.h5.partial")
    (tmp_path / ".o.h5.partial").write_text("someone else's")
    source = tmp_path / "e.npy"
    write_npy(source, scene_events(1000, (128, 128)))
    convert_to_store(source, out)
    assert victim.read_text() == "keep me"
    assert (tmp_path / ".o.h5.partial").read_text() == "someone else's"
    assert out.is_file() and not out.is_symlink()
    np.testing.assert_array_equal(read_events(out), scene_events(1000, (128, 128)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.h5.partial", "e.npy", "o.h5", "o.h5.partial",
                                                          "victim.txt"]


def test_convert_replaces_an_existing_output_only_when_forced(tmp_path):
    source = tmp_path / "e.npy"
    write_npy(source, scene_events(1000, (128, 128)))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "o.h5"
    os.symlink(victim, out)  # a link, even one to a file that is no event store, is an existing output
    with pytest.raises(EventFormatError, match="already exists"):
        convert_to_store(source, out)
    assert out.is_symlink() and victim.read_text() == "keep me"
    convert_to_store(source, out, overwrite=True)
    assert not out.is_symlink() and victim.read_text() == "keep me"  # the link replaced, not followed
    assert read_events(out).size == 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "o.h5", "victim.txt"]


def test_convert_output_appearing_meanwhile_is_not_replaced(tmp_path, monkeypatch):
    from streamsnn.io import base

    source = tmp_path / "e.npy"
    write_npy(source, scene_events(1000, (128, 128)))
    out = tmp_path / "o.h5"
    real_link = os.link

    def someone_writes_first(src, dst, **kwargs):
        out.write_text("theirs")
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(base.os, "link", someone_writes_first)
    with pytest.raises(EventFormatError, match="already exists"):
        convert_to_store(source, out)
    assert out.read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "o.h5"]


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_source_that_is_not_a_regular_file_says_so(tmp_path, kind):
    if kind == "device":
        path = "/dev/zero"
    else:
        path = tmp_path / "pipe"
        os.mkfifo(path)
    source = make_source(str(path))
    done = threading.Event()
    errors = []

    def open_it():  # opening a FIFO for reading would block: never done
        try:
            source.open()
        except SourceError as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=open_it, daemon=True).start()
    assert done.wait(10)
    assert len(errors) == 1
    message = str(errors[0])
    assert "no such file" not in message and "not a regular file" in message and str(path) in message


def test_checkpoint_writes_never_follow_a_planted_temporary_name(tmp_path):
    from streamsnn.snn.checkpoint import write_atomically

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "model.pt"
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the old name was OUT.tmp<pid>
        os.symlink(victim, tmp_path / f"model.pt.tmp{pid}")
    write_atomically(out, lambda tmp: tmp.write_bytes(b"weights"))
    assert out.read_bytes() == b"weights" and victim.read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.pt.")]
