"""The decision log: readable from its first moment, never written into a file that is not a decision log,
stream names stored whole characters only."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import decision_message

from streamsnn.errors import ConfigError
from streamsnn.events import make_events
from streamsnn.io.store import write_store
from streamsnn.stream.log import STREAM_BYTES, DecisionLog, read_decision_log

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



_KILLED_BEFORE_FIRST_FLUSH = r"""
import os, signal, sys, time
from streamsnn.stream.log import DecisionLog
log = DecisionLog(sys.argv[1], flush_every=10**6, flush_interval_s=3600)
log.append({"schema": 1, "stream": "s", "seq": 0, "label": 1, "confidence": 0.9, "timesteps": 3,
            "max_timesteps": 10, "window_start_us": 0, "window_end_us": 1000, "published_ns": 1, "latency_ms": 0.1})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_log_killed_before_its_first_flush_is_readable(tmp_path):
    path = tmp_path / "d.h5"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_FIRST_FLUSH, str(path)], env=env, timeout=60)
    assert result.returncode != 0
    assert read_decision_log(path) == []  # the row was never flushed; the file is a valid, empty log
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]  # no temporary file left beside it


def test_appends_to_an_existing_log(tmp_path):
    path = tmp_path / "d.h5"
    with DecisionLog(path) as log:
        log.append(decision_message(0))
    with DecisionLog(path) as log:
        assert log.rows == 1
        log.append(decision_message(1))
    assert [r["seq"] for r in read_decision_log(path)] == [0, 1]


def test_refuses_files_that_are_not_decision_logs(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a log")
    store = tmp_path / "events.h5"
    write_store(store, make_events([1], [1], [10], [1]), (4, 4))
    before = {p: p.read_bytes() for p in (text, store)}
    with pytest.raises(ConfigError, match="notes.txt: exists and is not an HDF5 file"):
        DecisionLog(text)
    with pytest.raises(ConfigError, match="events.h5: is an HDF5 file but not a decision log"):
        DecisionLog(store)
    with pytest.raises(ConfigError, match="is a folder"):
        DecisionLog(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ConfigError, match="fifo: is not a regular file"):
        DecisionLog(tmp_path / "fifo")
    assert {p: p.read_bytes() for p in (text, store)} == before  # untouched


def test_long_stream_names_are_cut_at_a_character_boundary(tmp_path):
    path = tmp_path / "d.h5"
    with DecisionLog(path) as log:
        log.append(decision_message(0, stream="€" * 30))     # 90 bytes of UTF-8
        log.append(decision_message(1, stream="a" * 100))
    rows = read_decision_log(path)
    assert rows[0]["stream"] == "€" * (STREAM_BYTES // 3)
    assert rows[1]["stream"] == "a" * STREAM_BYTES


def test_a_row_that_is_not_a_decision_is_refused_before_it_reaches_the_file(tmp_path):
    with DecisionLog(tmp_path / "d.h5") as log:
        with pytest.raises(ValueError, match="seq"):
            log.append({**decision_message(0), "seq": "zero"})
        log.append(decision_message(1))
    assert [r["seq"] for r in read_decision_log(tmp_path / "d.h5")] == [1]
