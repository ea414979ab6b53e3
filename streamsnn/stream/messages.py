"""The one message schema of the streaming job: decisions and status, as the bus, the log and tests see them.

A message on the bus is two ZeroMQ frames: a UTF-8 topic ``decision.<stream>``
or ``status.<stream>`` and a UTF-8 JSON object. The fields below are the
contract (DESIGN.md); the publisher (``stream/bus.py``), the HDF5 log
(``stream/log.py``), the job and the tests all take them from here.

Decisions carry every field of :data:`DECISION_FIELDS`; ``latency_ms`` runs
from the moment the last event of the deciding frame was available to the
pipeline (``frame_available_ns``, wall clock) until the message was sent
(``published_ns``), so a subscriber on the same machine can measure the
end-to-end latency itself. The optional fields appear when they are known.
"""
from __future__ import annotations

import json

SCHEMA_VERSION = 1

# name -> Python type of the JSON value; every decision has all of them
DECISION_FIELDS: dict[str, type] = {
    "schema": int,
    "stream": str,
    "seq": int,                  # per stream, from 0, no gaps
    "label": int,                # class index, argmax of the accumulated logits
    "confidence": float,         # max softmax of the accumulated logits at the decision
    "timesteps": int,            # frames used, 1..max_timesteps
    "max_timesteps": int,
    "window_start_us": int,      # event time of the first frame of the window
    "window_end_us": int,        # event time of the end of the deciding frame
    "published_ns": int,         # time.time_ns() at the send
    "latency_ms": float,         # frame_available_ns -> published_ns
}
# present when known: the true class (sample folders), the class's name, the sample's file,
# whether the cutoff never fired (the decision was taken at max_timesteps or at the end of a stream)
DECISION_OPTIONAL_FIELDS: dict[str, type] = {
    "target": int,
    "frame_available_ns": int,
    "forced": bool,
    "class_name": str,
    "sample": str,
}

# status.<stream>, once per status interval and once at the end (final = true)
STATUS_FIELDS: dict[str, type] = {
    "schema": int,
    "stream": str,
    "state": str,                # starting, running, stalled (a live source sends nothing), finished, stopped, error
    "source": str,
    "queue_policy": str,
    "events_in": int,            # events the source has read
    # events the frame stage took from the queue, plus those the source read but never queued: the
    # rest of a sample already decided (skipped, see Source.window_done)
    "events_processed": int,
    "dropped_events": int,
    "dropped_chunks": int,
    "frames": int,
    "decisions": int,
    "event_time_s": float,       # recording time covered so far
    "published_ns": int,
}

DECISION, STATUS = "decision", "status"

# A decision is a few hundred bytes and a status message about a kilobyte: a frame of more is not
# from a streamsnn job, and a subscriber's ZeroMQ drops the connection of the peer that sent it.
MAX_MESSAGE_BYTES = 64 * 1024
# Messages a subscriber queues before it reads them (beyond, ZeroMQ drops them): with
# MAX_MESSAGE_BYTES this bounds the queue to 64 MiB, whatever a peer sends.
RECEIVE_QUEUE_MESSAGES = 1000


def decision_topic(stream: str) -> str:
    return f"{DECISION}.{stream}"


def status_topic(stream: str) -> str:
    return f"{STATUS}.{stream}"


# json.dumps with non-default separators builds an encoder on every call: one, made once, for every message
_JSON = json.JSONEncoder(separators=(",", ":"))


def encode(topic: str, message: dict) -> list[bytes]:
    return [topic.encode("utf-8"), _JSON.encode(message).encode("utf-8")]


def decode(frames: list[bytes]) -> tuple[str, dict]:
    """(topic, message) of a message as it came off the wire, its fields checked against the schema of
    its kind; anything else (from a peer that is not a streamsnn job) is ValueError saying what."""
    if len(frames) != 2:
        raise ValueError(f"expected a two-frame message (topic, JSON), got {len(frames)} frame(s)")
    try:
        topic = frames[0].decode("utf-8")
        text = frames[1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    kind = topic.split(".", 1)[0]
    if kind not in (DECISION, STATUS) or "." not in topic:
        raise ValueError(f"topic {topic[:80]!r} is neither decision.<stream> nor status.<stream>")
    try:
        message = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ValueError(f"JSON {type(message).__name__}, not an object")
    (check_decision if kind == DECISION else check_status)(message)
    return topic, message


def check_message(message: dict, fields: dict[str, type], optional: dict[str, type] | None = None) -> dict:
    """The message itself when every field of ``fields`` is there with its type (and every optional
    field present has its type); otherwise ValueError naming the field."""
    def check(name, kind):
        value = message[name]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ValueError(f"message field {name!r} must be {kind.__name__}, got {value!r}")

    for name, kind in fields.items():
        if name not in message:
            raise ValueError(f"message lacks the field {name!r}")
        check(name, kind)
    for name, kind in (optional or {}).items():
        if name in message and message[name] is not None:
            check(name, kind)
    return message


def check_decision(message: dict) -> dict:
    return check_message(message, DECISION_FIELDS, DECISION_OPTIONAL_FIELDS)


def check_status(message: dict) -> dict:
    return check_message(message, STATUS_FIELDS)


def decision_message(stream: str, seq: int, decision, *, max_timesteps: int, window_start_us: int,
                     window_end_us: int, frame_available_ns: int, target: int | None = None,
                     class_name: str | None = None, sample: str | None = None) -> dict:
    """A decision message from a cutoff Decision; ``published_ns`` and ``latency_ms`` are stamped at the send
    (:func:`stamp_sent`)."""
    message = {
        "schema": SCHEMA_VERSION, "stream": stream, "seq": int(seq),
        "label": int(decision.label), "confidence": float(decision.confidence),
        "timesteps": int(decision.timesteps), "max_timesteps": int(max_timesteps),
        "window_start_us": int(window_start_us), "window_end_us": int(window_end_us),
        "published_ns": 0, "latency_ms": 0.0, "frame_available_ns": int(frame_available_ns),
        "forced": bool(decision.forced),
    }
    if class_name is not None:
        message["class_name"] = class_name
    if target is not None:
        message["target"] = int(target)
    if sample is not None:
        message["sample"] = sample
    return message


def stamp_sent(message: dict, now_ns: int) -> float:
    """Set ``published_ns`` and ``latency_ms`` for a message sent at ``now_ns``; returns the latency."""
    message["published_ns"] = int(now_ns)
    latency = (now_ns - message["frame_available_ns"]) / 1e6
    message["latency_ms"] = latency
    return latency
