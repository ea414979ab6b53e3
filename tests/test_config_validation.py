"""Pipeline definitions and options that must be refused with one clear line: files that are not TOML text,
numbers that are not finite or do not fit, ports beyond 65535, a log that is a source; and random TOML
values for every key, none of which may end in anything but a config or a ConfigError."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest

from streamsnn.errors import ConfigError
from streamsnn.stream.bus import generate_keys, is_loopback, normalize_endpoint
from streamsnn.stream.config import _SCHEMA, PipelineConfig, SourceConfig, load_config, parse_config, validate

PY = sys.executable


def _load(tmp_path, text: str, name="p.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_config(path)


def test_pipeline_file_that_is_a_folder_a_fifo_or_not_utf8(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a pipeline definition"):
        load_config(tmp_path)
    os.mkfifo(tmp_path / "fifo.toml")  # opening it would wait for a writer forever
    with pytest.raises(ConfigError, match="fifo.toml: is not a regular file"):
        load_config(tmp_path / "fifo.toml")
    with pytest.raises(ConfigError, match=r"\[log\].path must be a decision log file, not a device"):
        validate(PipelineConfig(log=str(tmp_path / "fifo.toml")))
    path = tmp_path / "latin1.toml"
    path.write_bytes('[pipeline]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not a pipeline definition: TOML is UTF-8 text, and byte 22"):
        load_config(path)


@pytest.mark.parametrize("table,key,value,expected", [
    ("publish", "sndhwm", "3000000000", "from 1 to 2,147,483,647"),              # OverflowError in ZeroMQ before
    ("binning", "time_window", "9223372036854775807", "microseconds from 1 to"),  # OverflowError in numpy before
    ("model", "torch_threads", "100000", "from 1 to 1,024"),                     # SIGSEGV in torch before
    ("publish", "status_interval_s", "nan", "a number of seconds"),              # 9,418 status messages in 6 s
    ("publish", "status_interval_s", "0.000001", "from 0.01"),
    ("publish", "settle_s", "nan", "a number of seconds"),
    ("publish", "settle_s", "inf", "a number of seconds"),
    ("publish", "wait_timeout_s", "-inf", "a number of seconds"),
    ("cutoff", "epsilon", "nan", "a number in"),
    ("cutoff", "max_timesteps", "4294967296", "from 1 to 2,147,483,647"),
    ("queue", "max_chunks", "0", "from 1 to"),
    ("binning", "crop", "[0, 0, 70000, 10]", "within 32,768"),
    ("binning", "downsample", "-3", "factors from 1"),
    ("publish", "endpoint", '"tcp://127.0.0.1:99999"', "port must be 0 to 65535"),
])
def test_numbers_that_do_not_fit_are_refused(tmp_path, table, key, value, expected):
    with pytest.raises(ConfigError, match=rf"p\.toml: \[{table}\]\.{key}.*{expected}"):
        _load(tmp_path, f"[{table}]\n{key} = {value}\n")


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e400", "10" * 200])
def test_source_speed_must_be_finite_and_non_negative(tmp_path, value):
    with pytest.raises(ConfigError, match=r"source\]?\]? #1[. ]speed must be a (finite )?number"):
        _load(tmp_path, f'[[source]]\nuri = "x.raw"\nspeed = {value}\n')


def test_command_line_numbers_are_finite_and_in_range(tmp_path):
    for args, message in ((["run", "--speed", "nan"], "--speed: expected a finite number >= 0, got nan"),
                          (["run", "--cutoff-epsilon", "inf"], "--cutoff-epsilon: expected a finite number"),
                          (["run", "--max-timesteps", "0"], "--max-timesteps: expected an integer from 1"),
                          (["subscribe", "tcp://127.0.0.1:1", "--max-bytes", "-5"], "--max-bytes: expected"),
                          (["subscribe", "tcp://127.0.0.1:1", "--count", "99999999999"], "--count: expected")):
        result = subprocess.run([PY, "-m", "streamsnn.cli", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_ports_beyond_65535_are_refused_not_wrapped():
    with pytest.raises(ConfigError, match="port must be 0 to 65535"):
        normalize_endpoint("tcp://127.0.0.1:99999")
    with pytest.raises(ConfigError, match="port must be 0 to 65535"):
        normalize_endpoint("99999")
    assert normalize_endpoint("tcp://127.0.0.1:*") == "tcp://127.0.0.1:*"
    assert normalize_endpoint("65535") == "tcp://127.0.0.1:65535"


def test_loopback_interface_by_name_or_any_127_address_is_loopback():
    assert is_loopback("tcp://lo:5556") and is_loopback("tcp://127.0.0.2:5556") and is_loopback("tcp://[::1]:5")
    assert not is_loopback("tcp://eth0:5556") and not is_loopback("tcp://0.0.0.0:5556")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", ".hidden", "server", "x" * 65, "a\x00b"])
def test_key_names_that_are_not_plain_folder_names_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="is not allowed"):
        generate_keys(tmp_path / "keys", [name])


def test_keys_command_with_dotdot_is_one_line(tmp_path):
    result = subprocess.run([PY, "-m", "streamsnn.cli", "keys", str(tmp_path / "k"), "--name", ".."],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not allowed" in result.stderr


def test_log_that_is_a_source_of_the_same_job_is_refused(tmp_path):
    store = tmp_path / "s.h5"
    store.write_bytes(b"\x89HDF\r\n\x1a\n")
    config = PipelineConfig(sources=[SourceConfig(uri=str(store))], checkpoint="c.pt", log=str(tmp_path / "s.h5"))
    with pytest.raises(ConfigError, match="s.h5 is the file of source #1; the decision log needs a file of its own"):
        validate(config)
    config.log = str(tmp_path)
    with pytest.raises(ConfigError, match=r"\[log\].path must be a decision log file, not a folder"):
        validate(config)


def test_file_options_of_the_wrong_kind(tmp_path):
    with pytest.raises(ConfigError, match=r"\[model\].checkpoint must be a checkpoint file"):
        validate(PipelineConfig(checkpoint=str(tmp_path)))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"\[publish\].curve_keys must be a folder"):
        validate(PipelineConfig(curve_keys=str(tmp_path / "file")))


# ---------------------------------------------------------------------------- fuzz: random TOML values

def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return value  # a date/time literal, as text


def _random_value(rng: random.Random, depth=0):
    kind = rng.randrange(10 if depth < 2 else 7)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**31 - 1, 2**31, 2**63 - 1, -(2**63), rng.randrange(-10**6, 10**6)])
    if kind == 1:
        return rng.choice([0.0, -0.0, 1e-300, 1e300, float("nan"), float("inf"), float("-inf"), rng.uniform(-1e6, 1e6)])
    if kind == 2:
        return rng.choice([True, False])
    if kind == 3:
        return rng.choice(["", "x", "€" * 50, "../..", "/dev/zero", "${NOPE}", "tcp://127.0.0.1:0", "block",
                           "drop", "dv://127.0.0.1:1", "camera", "~", "a\u0000b", "\ud7ff", "tcp://lo:65536"])
    if kind == 4:
        return "1979-05-27T07:32:00Z"
    if kind == 5:
        return rng.randrange(-2**70, 2**70)
    if kind == 6:
        return rng.uniform(-10, 10)
    if kind == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    if kind == 8:
        return [rng.randrange(-5, 70000) for _ in range(rng.choice([1, 2, 3, 4, 5]))]
    return {"k": _random_value(rng, depth + 1)}


@pytest.mark.parametrize("table", sorted(_SCHEMA))
def test_fuzz_random_toml_values_for_every_key(tmp_path, table, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    rng = random.Random(table)
    keys = sorted(_SCHEMA[table])
    outcomes = {"accepted": 0, "refused": 0}
    for case in range(40 * len(keys)):
        key = keys[case % len(keys)]
        value = _random_value(rng)
        if table == "source":
            body = '[[source]]\nuri = "x.raw"\n' + ("" if key == "uri" else f"{key} = {_toml(value)}\n")
            if key == "uri":
                body = f"[[source]]\nuri = {_toml(value)}\n"
        else:
            body = f"[{table}]\n{key} = {_toml(value)}\n"
        path = tmp_path / f"f{case}.toml"
        path.write_text(body, encoding="utf-8", errors="surrogatepass")
        try:
            config = load_config(path)
        except ConfigError as exc:
            message = str(exc)
            assert message.startswith(str(path)) and "\n" not in message, message
            outcomes["refused"] += 1
            continue
        validate(config)  # whatever was accepted is within range
        numbers = [v for v in vars(config).values() if isinstance(v, float)]
        numbers += [v for source in config.sources for v in vars(source).values() if isinstance(v, float)]
        assert all(math.isfinite(v) for v in numbers), config
        outcomes["accepted"] += 1
    assert outcomes["refused"] > 0 and outcomes["accepted"] >= 0


def test_fuzz_parse_config_never_raises_anything_but_config_errors():
    rng = random.Random(7)
    for case in range(3000):
        table = rng.choice(sorted(_SCHEMA) + ["bogus"])
        keys = sorted(_SCHEMA.get(table, {"k": None}))
        body = {rng.choice(keys + ["zzz"]): _random_value(rng) for _ in range(rng.randrange(1, 4))}
        data = {table: [body] if table == "source" and rng.random() < 0.5 else body}
        if table == "source":
            for entry in (data[table] if isinstance(data[table], list) else [data[table]]):
                entry.setdefault("uri", "x.raw")
        try:
            validate(parse_config(data, origin="fuzz"))
        except ConfigError as exc:
            assert str(exc).startswith("fuzz") and "\n" not in str(exc)


@pytest.mark.parametrize("speed", [float("nan"), float("inf"), -1.0])
def test_replay_pacer_refuses_speeds_that_are_not_finite(speed):
    """The library's own guard: with speed NaN the status carried NaN (not JSON) and pacing did nothing."""
    from streamsnn.stream.sources import Pacer

    with pytest.raises(ConfigError, match="replay speed must be a finite number >= 0"):
        Pacer(speed)


def test_device_and_curve_keys_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"\[model\].device must be cpu or cuda\[:N\], got 'bogus'"):
        validate(PipelineConfig(device="bogus"))
    validate(PipelineConfig(device="cuda:1"))        # spelt right; whether CUDA is there is asked at open()
    with pytest.raises(ConfigError, match=r"curve_keys must be a folder written by"):
        validate(PipelineConfig(curve_keys=str(tmp_path / "nonexistent")))
    with pytest.raises(ConfigError, match=r"\[publish\].curve_keys .*: no server.key_secret"):
        validate(PipelineConfig(curve_keys=str(tmp_path)))
    generate_keys(tmp_path / "keys")
    validate(PipelineConfig(curve_keys=str(tmp_path / "keys")))


def test_run_with_a_bad_device_or_keys_is_one_line_naming_the_option(tmp_path):
    from streamsnn.snn.checkpoint import bundled_checkpoint

    for option, value, expected in (("--device", "bogus", "must be cpu or cuda[:N]"),
                                    ("--curve-keys", str(tmp_path / "none"), "curve_keys must be a folder")):
        out = subprocess.run([PY, "-m", "streamsnn.cli", "run", "--source", str(tmp_path / "x.npy"),
                              "--checkpoint", str(bundled_checkpoint()), option, value],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and expected in out.stderr, out.stderr
