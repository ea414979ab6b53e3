"""Pipeline definitions: TOML files (``pipelines/*.toml``) and command-line options, validated on load.

A definition has these tables (every key optional unless marked)::

    [pipeline]   name = "nmnist-replay"
    [[source]]   uri = "..." (required: file, dataset folder, dv://HOST:PORT, camera[:SERIAL])
                 stream = "name"            # default: from the uri
                 speed = 1.0                # replay: 1 real time, 0 as fast as possible
                 loop = false
                 split = "Test"             # dataset folders
                 limit = 100                # dataset folders: at most this many samples
                 sensor_size = [w, h, p]    # for files that do not say theirs
                 queue_policy = "block" | "drop"   # default: block for replay, drop for live
    [model]      checkpoint = "path.pt" (required), device = "cpu", torch_threads = 1
    [binning]    time_window = 30000        # us; default: the checkpoint's
                 crop = [x0, y0, width, height]
                 downsample = 4 | [fx, fy]  # integer factors, after the crop
                 merge_polarity = false
                 denoise_us = 0             # drop events with no neighbour within this time (0: off)
    [cutoff]     epsilon = 0.1              # default: the checkpoint's
                 max_timesteps = 10         # default: the checkpoint's timesteps
    [queue]      policy = "block" | "drop", max_events = 1000000, max_chunks = 256
    [publish]    endpoint = "tcp://127.0.0.1:5556", curve_keys = "DIR", sndhwm = 10000,
                 settle_s = 0.3, wait_subscribers = 0, wait_timeout_s = 5.0, status_interval_s = 1.0
    [log]        path = "decisions.h5"

Relative input paths in a file (sources, checkpoint, keys) are relative to
the file's folder, the log path to the working directory; ``${VAR}`` and
``~`` are expanded. Errors name the file, the key and the expected type.
"""
from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError


@dataclass
class SourceConfig:
    uri: str
    stream: str | None = None
    speed: float = 1.0
    loop: bool = False
    split: str = "Test"
    limit: int | None = None
    sensor_size: tuple | None = None
    queue_policy: str | None = None


@dataclass
class PipelineConfig:
    name: str = "pipeline"
    sources: list[SourceConfig] = field(default_factory=list)
    checkpoint: str | None = None
    device: str = "cpu"
    torch_threads: int = 1
    time_window: int | None = None
    crop: tuple | None = None
    downsample: tuple | None = None
    merge_polarity: bool = False
    denoise_us: int = 0
    cutoff_epsilon: float | None = None
    max_timesteps: int | None = None
    queue_policy: str | None = None
    queue_max_events: int = 1_000_000
    queue_max_chunks: int = 256
    endpoint: str = "tcp://127.0.0.1:5556"
    curve_keys: str | None = None
    sndhwm: int = 10_000
    settle_s: float = 0.3
    wait_subscribers: int = 0
    wait_timeout_s: float = 5.0
    status_interval_s: float = 1.0
    log: str | None = None
    origin: str = "<command line>"


# key -> (type name for messages, checker/converter)
def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        raise TypeError from None
    if not math.isfinite(value):  # TOML has nan and inf literals
        raise TypeError
    return value


def _integer(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return int(value)


def _boolean(value):
    if not isinstance(value, bool):
        raise TypeError
    return value


def _string(value):
    if not isinstance(value, str):
        raise TypeError
    return value


def _int_list(n):
    def check(value):
        if not isinstance(value, list) or len(value) not in n or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise TypeError
        return tuple(value)
    return check


def _factor(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return _int_list((2,))(value)


def _policy(value):
    if value not in ("block", "drop"):
        raise TypeError
    return value


_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "pipeline": {"name": ("a string", _string)},
    "source": {
        "uri": ("a string (file, dataset folder, dv://HOST:PORT or camera[:SERIAL])", _string),
        "stream": ("a string", _string),
        "speed": ("a number >= 0", _number),
        "loop": ("true or false", _boolean),
        "split": ("a string (Train or Test)", _string),
        "limit": ("an integer", _integer),
        "sensor_size": ("a list [width, height] or [width, height, polarities] of integers", _int_list((2, 3))),
        "queue_policy": ('"block" or "drop"', _policy),
    },
    "model": {
        "checkpoint": ("a string (path to a .pt checkpoint)", _string),
        "device": ("a string (cpu or cuda)", _string),
        "torch_threads": ("an integer", _integer),
    },
    "binning": {
        "time_window": ("an integer number of microseconds", _integer),
        "crop": ("a list [x0, y0, width, height] of integers", _int_list((4,))),
        "downsample": ("an integer factor or a list [fx, fy] of integers", _factor),
        "merge_polarity": ("true or false", _boolean),
        "denoise_us": ("an integer number of microseconds", _integer),
    },
    "cutoff": {
        "epsilon": ("a number in [0, 1]", _number),
        "max_timesteps": ("an integer", _integer),
    },
    "queue": {
        "policy": ('"block" or "drop"', _policy),
        "max_events": ("an integer", _integer),
        "max_chunks": ("an integer", _integer),
    },
    "publish": {
        "endpoint": ("a string (tcp://HOST:PORT)", _string),
        "curve_keys": ("a string (folder written by `streamsnn keys`)", _string),
        "sndhwm": ("an integer", _integer),
        "settle_s": ("a number of seconds", _number),
        "wait_subscribers": ("an integer", _integer),
        "wait_timeout_s": ("a number of seconds", _number),
        "status_interval_s": ("a number of seconds", _number),
    },
    "log": {"path": ("a string (HDF5 file)", _string)},
}

# table.key -> PipelineConfig attribute
_ATTR = {
    ("pipeline", "name"): "name",
    ("model", "checkpoint"): "checkpoint", ("model", "device"): "device",
    ("model", "torch_threads"): "torch_threads",
    ("binning", "time_window"): "time_window", ("binning", "crop"): "crop",
    ("binning", "downsample"): "downsample", ("binning", "merge_polarity"): "merge_polarity",
    ("binning", "denoise_us"): "denoise_us",
    ("cutoff", "epsilon"): "cutoff_epsilon", ("cutoff", "max_timesteps"): "max_timesteps",
    ("queue", "policy"): "queue_policy", ("queue", "max_events"): "queue_max_events",
    ("queue", "max_chunks"): "queue_max_chunks",
    ("publish", "endpoint"): "endpoint", ("publish", "curve_keys"): "curve_keys",
    ("publish", "sndhwm"): "sndhwm", ("publish", "settle_s"): "settle_s",
    ("publish", "wait_subscribers"): "wait_subscribers", ("publish", "wait_timeout_s"): "wait_timeout_s",
    ("publish", "status_interval_s"): "status_interval_s",
    ("log", "path"): "log",
}
_PATH_KEYS = {("model", "checkpoint"), ("publish", "curve_keys"), ("log", "path")}


def _describe(value) -> str:
    kind = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
            dict: "table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) < 60 else text[:57] + '...'}"


def _expand(text: str, base: Path | None, where: str) -> str:
    # A path that starts with an environment variable is the user's, typed in their shell:
    # relative to the working directory, not to the definition file.
    if text.startswith("$"):
        base = Path.cwd()
    expanded = os.path.expanduser(os.path.expandvars(text))
    if "$" in expanded:
        raise ConfigError(f"{where}: {text!r} names an environment variable that is not set")
    if base is not None and "://" not in expanded and not expanded.startswith("camera") \
            and not os.path.isabs(expanded):
        expanded = str((base / expanded).resolve())
    return expanded


def _check(table: str, key: str, value, origin: str, where: str):
    spec = _SCHEMA[table].get(key)
    if spec is None:
        raise ConfigError(f"{origin}: unknown key {where}; {table!r} takes "
                          f"{', '.join(sorted(_SCHEMA[table]))}")
    expected, convert = spec
    try:
        return convert(value)
    except TypeError:
        raise ConfigError(f"{origin}: {where} must be {expected}, got {_describe(value)}") from None


def parse_config(data: dict, origin: str = "<pipeline>", base: Path | None = None) -> PipelineConfig:
    """A PipelineConfig from a parsed TOML document (dict), every key and type checked."""
    config = PipelineConfig(origin=origin)
    for table, body in data.items():
        if table not in _SCHEMA:
            raise ConfigError(f"{origin}: unknown table [{table}]; a pipeline definition has "
                              f"{', '.join('[' + t + ']' for t in _SCHEMA)}")
        if table == "source":
            entries = body if isinstance(body, list) else [body]
            for i, entry in enumerate(entries):
                where = f"[[source]] #{i + 1}" if isinstance(body, list) else "[source]"
                if not isinstance(entry, dict):
                    raise ConfigError(f"{origin}: {where} must be a table, got {_describe(entry)}")
                values = {k: _check("source", k, v, origin, f"{where}.{k}") for k, v in entry.items()}
                if "uri" not in values:
                    raise ConfigError(f"{origin}: {where}.uri is missing (a string: file, dataset folder, "
                                      "dv://HOST:PORT or camera[:SERIAL])")
                values["uri"] = _expand(values["uri"], base, f"{origin}: {where}.uri")
                config.sources.append(SourceConfig(**values))
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: [{table}] must be a table, got {_describe(body)}")
        for key, value in body.items():
            value = _check(table, key, value, origin, f"[{table}].{key}")
            if (table, key) in _PATH_KEYS:   # inputs relative to the file, the log to the working directory
                value = _expand(value, None if table == "log" else base, f"{origin}: [{table}].{key}")
            setattr(config, _ATTR[(table, key)], value)
    validate(config)
    return config


def load_config(path: str | os.PathLike) -> PipelineConfig:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a pipeline definition (a TOML file)")
    if path.exists() and not path.is_file():  # reading a FIFO or a device would wait or never end
        raise ConfigError(f"{path}: is not a regular file (a device, pipe or socket), not a pipeline definition")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline definition not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline definition ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a pipeline definition: TOML is UTF-8 text, and byte {exc.start} "
                          "is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(data, origin=str(path), base=path.resolve().parent)


_INT32_MAX = 2**31 - 1   # ZeroMQ's socket options and the log's int32 columns
_INT64_MAX = 2**63 - 1
_COORDINATE_MAX = 2**15 - 1   # x and y are int16
_HOUR_US = 3_600_000_000
# torch creates this many threads at once: 100,000 crashed it (SIGSEGV); more than cores never helps
TORCH_THREADS_MAX = 1024
STATUS_INTERVAL_MIN_S = 0.01


def _in_range(value, low, high) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (not isinstance(value, float) or math.isfinite(value)) and low <= value <= high)


def validate(config: PipelineConfig) -> PipelineConfig:
    """Range checks shared by TOML files and command-line options: every number finite, within what the
    option means and what its C type holds; file options of the right kind."""
    o = config.origin

    def fail(where, expected, value):
        raise ConfigError(f"{o}: {where} must be {expected}, got {value!r}")

    def check(where, value, low, high, what="an integer"):
        if value is not None and not _in_range(value, low, high):
            fail(where, f"{what} from {low:,} to {high:,}", value)

    for i, source in enumerate(config.sources):
        where = f"source #{i + 1}"
        check(f"{where} speed", source.speed, 0, 10**9, "a finite number")
        check(f"{where} limit", source.limit, 1, _INT64_MAX)
        if source.sensor_size is not None:
            size = tuple(source.sensor_size)
            if len(size) not in (2, 3) or not all(_in_range(v, 1, _COORDINATE_MAX + 1) for v in size[:2]):
                fail(f"{where} sensor_size", f"[width, height(, polarities)], each from 1 to {_COORDINATE_MAX + 1:,}",
                     list(size))
    streams = [s.stream for s in config.sources if s.stream]
    if len(set(streams)) != len(streams):
        raise ConfigError(f"{o}: two sources have the same stream name; give each a distinct `stream`")
    check("[binning].time_window", config.time_window, 1, _HOUR_US, "an integer number of microseconds")
    if config.crop is not None and not (len(config.crop) == 4
                                        and all(_in_range(v, 0, _COORDINATE_MAX) for v in config.crop[:2])
                                        and all(_in_range(v, 1, _COORDINATE_MAX + 1) for v in config.crop[2:])):
        fail("[binning].crop", f"[x0 >= 0, y0 >= 0, width > 0, height > 0] within {_COORDINATE_MAX + 1:,}",
             list(config.crop))
    if config.downsample is not None and not all(_in_range(v, 1, _COORDINATE_MAX) for v in config.downsample):
        fail("[binning].downsample", f"factors from 1 to {_COORDINATE_MAX}", list(config.downsample))
    check("[binning].denoise_us", config.denoise_us, 0, _HOUR_US, "an integer number of microseconds")
    if config.cutoff_epsilon is not None and not _in_range(config.cutoff_epsilon, 0, 1):
        fail("[cutoff].epsilon", "a number in [0, 1]", config.cutoff_epsilon)
    check("[cutoff].max_timesteps", config.max_timesteps, 1, _INT32_MAX)
    check("[queue].max_events", config.queue_max_events, 1, _INT64_MAX)
    check("[queue].max_chunks", config.queue_max_chunks, 1, _INT32_MAX)
    check("[publish].sndhwm", config.sndhwm, 1, _INT32_MAX)
    check("[publish].settle_s", config.settle_s, 0, 3600, "a number of seconds")
    check("[publish].wait_subscribers", config.wait_subscribers, 0, _INT32_MAX)
    check("[publish].wait_timeout_s", config.wait_timeout_s, 0, 86400, "a number of seconds")
    check("[publish].status_interval_s", config.status_interval_s, STATUS_INTERVAL_MIN_S, 3600, "a number of seconds")
    check("[model].torch_threads", config.torch_threads, 1, TORCH_THREADS_MAX)
    # the spelling here, before the model loads (whether CUDA is there is asked when the job opens)
    if config.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", str(config.device)):
        fail("[model].device", "cpu or cuda[:N]", config.device)
    from .bus import normalize_endpoint

    try:
        normalize_endpoint(config.endpoint)
    except ConfigError as exc:
        raise ConfigError(f"{o}: [publish].endpoint: {exc}") from None
    _check_files(config, fail)
    return config


def _check_files(config: PipelineConfig, fail) -> None:
    if config.checkpoint and os.path.exists(config.checkpoint) and not os.path.isfile(config.checkpoint):
        fail("[model].checkpoint", "a checkpoint file", config.checkpoint)
    if config.curve_keys:
        # checked now, with the other files: not only once the model and every source have warmed up
        if not os.path.isdir(config.curve_keys):
            fail("[publish].curve_keys", "a folder written by `streamsnn keys`", config.curve_keys)
        from .bus import load_server_keys

        load_server_keys(Path(config.curve_keys), f"{config.origin}: [publish].curve_keys")
    if config.log:
        if os.path.isdir(config.log):
            fail("[log].path", "a decision log file, not a folder", config.log)
        if os.path.exists(config.log) and not os.path.isfile(config.log):
            fail("[log].path", "a decision log file, not a device, pipe or socket", config.log)
        for i, source in enumerate(config.sources):
            # a log written into a recording being replayed would change it under its reader
            if os.path.exists(config.log) and os.path.exists(source.uri) and os.path.samefile(config.log, source.uri):
                raise ConfigError(f"{config.origin}: [log].path {config.log} is the file of source #{i + 1}; "
                                  "the decision log needs a file of its own")
