"""``streamsnn info``: what a recording holds, read in chunks so any size works."""
from __future__ import annotations

import os

from .detect import FORMAT_DESCRIPTIONS

# ATIS .bin files do not say their geometry, but the datasets stored that way
# use a few well-known ones. When all coordinates fit one, `info` names it,
# marked as inferred; the smallest that fits wins. Other headerless files
# (.npy, DAT crops) are reported as unknown with the coordinate range.
WELL_KNOWN_SENSORS = (
    (34, 34, "N-MNIST"),
    (128, 128, "DVS128"),
    (240, 180, "ATIS as in N-Caltech101"),
)


def infer_sensor_size(x_max: int, y_max: int):
    for width, height, name in WELL_KNOWN_SENSORS:
        if x_max < width and y_max < height:
            return (width, height, 2), name
    return None, None


def recording_info(path, sensor_size=None) -> dict:
    from . import open_recording

    with open_recording(path, sensor_size=sensor_size) as rec:
        count = 0
        t_first = t_last = t_min = t_max = None
        x_max = y_max = -1
        on = 0
        for chunk in rec.chunks(n_events=1 << 22):
            if chunk.size == 0:
                continue
            t = chunk["t"]
            if t_first is None:
                t_first, t_min, t_max = int(t[0]), int(t.min()), int(t.max())
            t_last = int(t[-1])
            t_min, t_max = min(t_min, int(t.min())), max(t_max, int(t.max()))
            x_max = max(x_max, int(chunk["x"].max()))
            y_max = max(y_max, int(chunk["y"].max()))
            on += int(chunk["p"].sum())
            count += chunk.size
        fmt = rec.format
        size, source = rec.sensor_size, rec.sensor_size_source
    if size is not None:
        where = {"header": "from the header", "plugin": "from the RAW plugin name", "argument": "given"}
        sensor_text = f"{size.width}x{size.height} ({where.get(source, source)})"
        sensor_value = list(size)
    elif count and fmt == "atis_bin":
        inferred, name = infer_sensor_size(x_max, y_max)
        if inferred is not None:
            sensor_text = (f"{inferred[0]}x{inferred[1]} (inferred: all coordinates fit the {name} sensor; "
                           "the file does not say)")
        else:
            sensor_text = f"unknown (the file does not say; coordinates reach x={x_max}, y={y_max})"
        sensor_value = list(inferred) if inferred is not None else None
    elif count:
        sensor_text = f"unknown (the file does not say; coordinates reach x={x_max}, y={y_max})"
        sensor_value = None
    else:
        sensor_text, sensor_value = "unknown (the file does not say)", None
    duration_us = (t_max - t_min) if count else 0
    info = {
        "file": os.fspath(path),
        "format": fmt,
        "format_name": FORMAT_DESCRIPTIONS.get(fmt, fmt),
        "sensor_size": sensor_text,
        "sensor_size_wh": sensor_value,
        "sensor_size_inferred": size is None and sensor_value is not None,
        "events": count,
        "on_events": on,
        "off_events": count - on,
        "t_first_us": t_first,
        "t_last_us": t_last,
        "duration_s": duration_us / 1e6,
        "event_rate_per_s": round(count / (duration_us / 1e6), 1) if duration_us > 0 else None,
    }
    if count:
        info["x_max"], info["y_max"] = x_max, y_max
    return info
