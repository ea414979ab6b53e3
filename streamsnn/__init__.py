"""streamsnn: event-camera streams to early decisions with stateful spiking networks.

The public API is re-exported here lazily, so that ``import streamsnn`` stays
cheap (no torch, numba or zmq import until a function that needs it is used).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "EVENT_DTYPE": "streamsnn.events",
    "SensorSize": "streamsnn.events",
    "make_events": "streamsnn.events",
    "validate_events": "streamsnn.events",
    "StreamsnnError": "streamsnn.errors",
    "EventFormatError": "streamsnn.errors",
    "EventValidationError": "streamsnn.errors",
    "read_events": "streamsnn.io",
    "open_recording": "streamsnn.io",
    "Recording": "streamsnn.io",
    "to_frame": "streamsnn.binning",
    "StreamingBinner": "streamsnn.binning",
    "Frame": "streamsnn.binning",
    "recording_info": "streamsnn.io",
    "convert_to_store": "streamsnn.io",
    # the message schema of the streaming job (decisions and status on the bus and in the log)
    "SCHEMA_VERSION": "streamsnn.stream.messages",
    "DECISION_FIELDS": "streamsnn.stream.messages",
    "DECISION_OPTIONAL_FIELDS": "streamsnn.stream.messages",
    "STATUS_FIELDS": "streamsnn.stream.messages",
    "decision_topic": "streamsnn.stream.messages",
    "status_topic": "streamsnn.stream.messages",
    "Subscriber": "streamsnn.stream.bus",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streamsnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
