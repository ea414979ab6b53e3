"""Decision messages on ZeroMQ: the publisher, the subscriber, the broker, CurveZMQ keys.

The messages themselves (two frames: topic and JSON object; their fields)
are defined in :mod:`streamsnn.stream.messages`.

Design choices, on purpose:

* The publisher is an XPUB socket. ZeroMQ drops everything a PUB sends before
  a subscriber's subscription has arrived (the "slow joiner" gap); with XPUB
  the publisher sees subscriptions arrive, and :meth:`Publisher.wait_for_subscribers`
  holds the first message until ``wait_subscribers`` subscriptions have
  arrived (or a timeout), after a ``settle_s`` pause in every case so that
  subscribers already retrying their connection (every 100 ms by default)
  join before the job starts. A subscriber connected before the job starts
  therefore receives every decision.
* The send high-water mark is set deliberately (``sndhwm``, default 10,000
  messages per subscriber) and every send is non-blocking: a slow or vanished
  subscriber loses messages beyond its queue, it never blocks the pipeline.
* Binding defaults to 127.0.0.1. Any other interface must be asked for in
  the endpoint; binding beyond loopback without CurveZMQ prints a warning.
* With ``curve_keys=DIR`` the publisher is a CurveZMQ server and accepts only
  clients whose public keys are in ``DIR/authorized/`` (``streamsnn keys``
  writes that layout); other clients never complete the handshake and
  receive nothing.
* Beyond one machine: several jobs publish, one :class:`Broker` (XSUB/XPUB
  proxy) gives subscribers one endpoint; a :class:`Subscriber` may also
  connect to several endpoints itself.
"""
from __future__ import annotations

import ipaddress
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Iterable

import zmq

from ..errors import ConfigError
from .messages import MAX_MESSAGE_BYTES, RECEIVE_QUEUE_MESSAGES, decode, encode

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
_INT32_MAX = 2**31 - 1  # ZeroMQ's integer socket options are C ints
# names of loopback in an endpoint; "lo" (Linux) and "lo0" (macOS, BSD) are the interface itself
_LOOPBACK = ("localhost", "lo", "lo0")


# --------------------------------------------------------------------------- endpoints

def normalize_endpoint(endpoint: str | int | None, what: str = "publish endpoint") -> str:
    """``None`` -> the default; ``5556`` or ``"5556"`` -> ``tcp://127.0.0.1:5556``;
    ``tcp://:5556`` -> loopback too. Anything else is used as given (the user asked for it).
    ``what`` names the endpoint in errors (a broker's upstream is not a publish endpoint of its own)."""
    if endpoint is None or endpoint == "":
        return DEFAULT_ENDPOINT
    text = str(endpoint).strip()
    if text.isdigit():
        text = f"tcp://127.0.0.1:{text}"
    if "://" not in text:
        raise ConfigError(f"{what} {text!r}: expected tcp://HOST:PORT, ipc://PATH or a port number")
    scheme, rest = text.split("://", 1)
    if scheme == "tcp":
        port = rest.rsplit(":", 1)[1] if ":" in rest else ""
        # ZeroMQ takes a port number modulo 65536: 99999 would silently be 34463
        if not (port in ("*", "!") or (port.isdigit() and 0 <= int(port) <= 65535)):
            raise ConfigError(f"{what} {text!r}: the port must be 0 to 65535 (0 or * for any free one)")
        if rest.startswith(":"):
            return f"tcp://127.0.0.1{rest}"
    return text


def is_loopback(endpoint: str) -> bool:
    scheme, rest = endpoint.split("://", 1)
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host in _LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback   # all of 127.0.0.0/8
    except ValueError:
        return False


# --------------------------------------------------------------------------- CurveZMQ keys

SERVER_KEY_NAME = "server"
AUTHORIZED_DIR = "authorized"
CLIENTS_DIR = "clients"


def generate_keys(directory: str | os.PathLike, client_names: Iterable[str] = ("client",)) -> dict:
    """Write a CurveZMQ key layout under DIRECTORY and return the paths written.

    ``DIR/server.key`` + ``DIR/server.key_secret``: the publisher's pair (give
    ``--curve-keys DIR`` to ``streamsnn run``); ``DIR/authorized/NAME.key``: the
    public keys the publisher accepts; ``DIR/clients/NAME/``: one folder to
    hand to each subscriber (its own secret key and the server's public key;
    ``streamsnn subscribe --curve-keys DIR/clients/NAME``). Existing server keys
    are kept, so clients can be added later; an existing client is refused.
    """
    root = Path(directory)
    try:
        return _write_keys(root, client_names)
    except OSError as exc:   # a folder that cannot be made or written (read-only, /proc, a file in the way)
        raise ConfigError(f"keys {root}: cannot write the key files ({exc.strerror or exc})") from exc


def _write_keys(root: Path, client_names: Iterable[str]) -> dict:
    import shutil

    import zmq.auth

    root.mkdir(parents=True, exist_ok=True)
    server_public = root / f"{SERVER_KEY_NAME}.key"
    server_secret = root / f"{SERVER_KEY_NAME}.key_secret"
    if not server_secret.exists():
        zmq.auth.create_certificates(root, SERVER_KEY_NAME)
    authorized = root / AUTHORIZED_DIR
    authorized.mkdir(exist_ok=True)
    written = {"server_public": str(server_public), "server_secret": str(server_secret), "clients": {}}
    for name in client_names:
        # a folder name of its own under DIR/clients: no path separators, "." or "..", no hidden names
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name or "") or name == SERVER_KEY_NAME:
            raise ConfigError(f"client key name {name!r} is not allowed: letters, digits, '_', '-' and '.', "
                              f"starting with a letter or digit, at most 64, not {SERVER_KEY_NAME!r}")
        folder = root / CLIENTS_DIR / name
        if folder.exists():
            raise ConfigError(f"{folder}: a client key pair named {name!r} exists already")
        folder.mkdir(parents=True)
        public, secret = zmq.auth.create_certificates(folder, name)
        shutil.copy(public, authorized / f"{name}.key")
        shutil.copy(server_public, folder / f"{SERVER_KEY_NAME}.key")
        os.chmod(secret, 0o600)
        written["clients"][name] = str(folder)
    os.chmod(server_secret, 0o600)
    return written


def load_server_keys(directory: Path, option: str = "--curve-keys") -> tuple[bytes, bytes]:
    import zmq.auth

    secret = directory / f"{SERVER_KEY_NAME}.key_secret"
    if not secret.is_file():
        raise ConfigError(f"{option} {directory}: no {secret.name} (run `streamsnn keys {directory}` first)")
    public, private = zmq.auth.load_certificate(secret)
    if private is None:
        raise ConfigError(f"{secret}: holds no secret key")
    if not (directory / AUTHORIZED_DIR).is_dir():
        raise ConfigError(f"{option} {directory}: no {AUTHORIZED_DIR}/ folder of allowed client keys")
    return public, private


def _load_client_keys(directory: Path, option: str = "--curve-keys") -> tuple[bytes, bytes, bytes]:
    """Client pair + server public key from a folder written by generate_keys (DIR/clients/NAME,
    or the root DIR itself when it holds exactly one client)."""
    import zmq.auth

    directory = Path(directory)
    candidates = [directory]
    clients = directory / CLIENTS_DIR
    if clients.is_dir():
        candidates += sorted(p for p in clients.iterdir() if p.is_dir())
    found = []
    for folder in candidates:
        secrets = [p for p in folder.glob("*.key_secret") if p.stem != SERVER_KEY_NAME]
        if secrets and (folder / f"{SERVER_KEY_NAME}.key").is_file():
            found.append((folder, secrets[0]))
    if not found:
        raise ConfigError(f"{option} {directory}: no client key pair (NAME.key_secret) with "
                          f"{SERVER_KEY_NAME}.key beside it; run `streamsnn keys DIR --name NAME` and "
                          f"use DIR/{CLIENTS_DIR}/NAME")
    if len(found) > 1 and found[0][0] != directory:
        names = ", ".join(str(f) for f, _ in found)
        raise ConfigError(f"{option} {directory}: several client key pairs ({names}); name one folder")
    folder, secret = found[0]
    public, private = zmq.auth.load_certificate(secret)
    server_public, _ = zmq.auth.load_certificate(folder / f"{SERVER_KEY_NAME}.key")
    return public, private, server_public


# --------------------------------------------------------------------------- socket set-up

def _serve(socket, endpoint: str, curve_keys, context, what: str):
    """Bind a sending socket to ``endpoint``, as a CurveZMQ server when ``curve_keys`` is given (clients
    must be in ``curve_keys/authorized/``). Returns the authenticator to stop at the end (or None).

    On any failure (keys that do not load, a bind refused) the socket is closed and the authenticator
    stopped before the error is raised: an open socket would make ``context.term()`` wait forever."""
    authenticator = None
    try:
        if curve_keys is not None:
            from zmq.auth.thread import ThreadAuthenticator

            keys = Path(curve_keys)
            public, secret = load_server_keys(keys)
            authenticator = ThreadAuthenticator(context)
            authenticator.start()
            authenticator.configure_curve(domain="*", location=str(keys / AUTHORIZED_DIR))
            socket.curve_secretkey = secret
            socket.curve_publickey = public
            socket.curve_server = True
        elif not is_loopback(endpoint):
            warnings.warn(f"{what} on {endpoint} beyond loopback without --curve-keys: "
                          "anyone who can reach this port receives the decisions", stacklevel=3)
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot bind the {what} to {endpoint}: {exc}") from exc
    except BaseException:
        socket.close(0)
        if authenticator is not None:
            authenticator.stop()
        raise
    return authenticator


def _receiver(context, kind: int, hwm: int, curve_keys, option: str = "--curve-keys"):
    """A receiving socket (SUB, XSUB) that reconnects quickly, optionally a CurveZMQ client with the key
    pair in ``curve_keys`` (a client folder written by generate_keys)."""
    socket = context.socket(kind)
    socket.setsockopt(zmq.RCVHWM, int(hwm))
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RECONNECT_IVL, 50)
    if curve_keys is not None:
        try:
            public, secret, server_public = _load_client_keys(Path(curve_keys), option)
        except ConfigError:
            socket.close(0)
            raise
        socket.curve_publickey = public
        socket.curve_secretkey = secret
        socket.curve_serverkey = server_public
    return socket


def _connect(socket, endpoints: Iterable[str], what: str) -> None:
    """Connect to every endpoint; an address ZeroMQ refuses (unknown scheme, unresolvable host) is a
    ConfigError naming it. The caller closes the socket on failure."""
    for endpoint in endpoints:
        try:
            socket.connect(endpoint)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot connect to the {what} {endpoint}: {exc}") from exc


# --------------------------------------------------------------------------- publisher

class Publisher:
    """XPUB publisher: non-blocking sends, deliberate high-water mark, optional CurveZMQ.

    Not thread-safe: one thread (the pipeline's publish stage) owns it.
    """

    def __init__(self, endpoint: str | None = None, *, curve_keys: str | os.PathLike | None = None,
                 sndhwm: int = 10_000, linger_ms: int = 500, context: zmq.Context | None = None):
        self.endpoint = normalize_endpoint(endpoint)
        self.context = context or zmq.Context.instance()
        self.authenticator = None
        self.subscriptions: dict[bytes, int] = {}
        self.sent = 0
        self.send_failures = 0
        socket = self.context.socket(zmq.XPUB)
        socket.setsockopt(zmq.SNDHWM, int(sndhwm))
        socket.setsockopt(zmq.LINGER, int(linger_ms))
        # every subscription and every unsubscription, also repeated ones: with XPUB_VERBOSE alone,
        # ZeroMQ passes an unsubscription only when the last subscriber of a topic leaves, so
        # subscribers that left went on being counted
        socket.setsockopt(zmq.XPUB_VERBOSER, 1)
        self.authenticator = _serve(socket, self.endpoint, curve_keys, self.context, "publisher")
        self.socket = socket
        self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)   # resolves tcp://127.0.0.1:*

    # subscriptions -----------------------------------------------------------------
    def poll_subscriptions(self, timeout_ms: int = 0) -> int:
        """Read pending (un)subscription messages; return the number of live subscriptions."""
        while self.socket.poll(timeout_ms, zmq.POLLIN):
            timeout_ms = 0
            message = self.socket.recv()
            if not message:
                continue
            topic = message[1:]
            if message[0] == 1:
                self.subscriptions[topic] = self.subscriptions.get(topic, 0) + 1
            elif message[0] == 0 and topic in self.subscriptions:
                self.subscriptions[topic] -= 1
                if self.subscriptions[topic] <= 0:
                    del self.subscriptions[topic]
        return sum(self.subscriptions.values())

    @property
    def decision_subscriptions(self) -> int:
        """Live subscriptions that receive decisions (prefix "", "decision." or "decision.<stream>")."""
        self.poll_subscriptions(0)
        return sum(n for topic, n in self.subscriptions.items()
                   if b"decision.".startswith(topic) or topic.startswith(b"decision."))

    def wait_for_subscribers(self, count: int = 0, timeout_s: float = 5.0, settle_s: float = 0.3,
                             stop: threading.Event | None = None) -> int:
        """Close the slow-joiner gap before the first message.

        Waits ``settle_s`` in any case (subscribers already retrying a connection
        join in that time), then until ``count`` subscriptions that receive
        decisions (one per subscriber for ``streamsnn subscribe``) have arrived
        or ``timeout_s`` has passed. Returns early, within about 20 ms, once
        ``stop`` is set (Ctrl-C during the wait). Returns the number of such subscriptions.
        """
        start = time.monotonic()
        settle_end = start + max(0.0, settle_s)
        deadline = start + max(settle_s, timeout_s)
        while True:
            now = time.monotonic()
            seen = self.decision_subscriptions
            if stop is not None and stop.is_set():
                return seen
            if now >= settle_end and (seen >= count or now >= deadline):
                return seen
            self.poll_subscriptions(20)

    # sending --------------------------------------------------------------------------
    def send(self, topic: str, message: dict) -> bool:
        """Send without blocking; False when ZeroMQ refused (never raises for a full queue)."""
        try:
            self.socket.send_multipart(encode(topic, message), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.send_failures += 1
            return False
        self.sent += 1
        return True

    def close(self, linger_ms: int | None = None) -> None:
        if self.socket is not None and not self.socket.closed:
            self.socket.close(linger=linger_ms)
        self._stop_auth()

    def _stop_auth(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- subscriber

class Subscriber:
    """SUB socket for decisions and status messages from one or more endpoints (several jobs, or a
    broker), optionally a CurveZMQ client (one key set for every endpoint).

    Robust to any peer: a message that is not one of ours (``messages.decode``
    refuses it) is skipped and counted in ``malformed`` (``last_malformed``
    says why), never raised; frames over ``max_bytes`` make ZeroMQ drop the
    sender's connection (it reconnects); at most ``rcvhwm`` messages queue.
    """

    def __init__(self, endpoint: str | Iterable[str], *, streams: Iterable[str] | None = None, topic: str = "all",
                 curve_keys: str | os.PathLike | None = None, rcvhwm: int = RECEIVE_QUEUE_MESSAGES,
                 max_bytes: int = MAX_MESSAGE_BYTES, context: zmq.Context | None = None):
        endpoints = [endpoint] if isinstance(endpoint, (str, int)) else list(endpoint)
        if not endpoints:
            raise ConfigError("subscribe: no endpoint given")
        self.endpoints = [normalize_endpoint(e) for e in endpoints]
        self.endpoint = self.endpoints[0]
        for name, value in (("rcvhwm", rcvhwm), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _INT32_MAX:
                raise ConfigError(f"subscriber {name} must be an integer from 1 to {_INT32_MAX}, got {value!r}")
        self.malformed = 0
        self.last_malformed: str | None = None
        self.context = context or zmq.Context.instance()
        socket = _receiver(self.context, zmq.SUB, rcvhwm, curve_keys)
        socket.setsockopt(zmq.MAXMSGSIZE, int(max_bytes))
        kinds = ("decision", "status") if topic in (None, "all") else (topic,)
        streams = list(streams) if streams else [None]
        for kind in kinds:
            for stream in streams:
                # "decision.S" also prefixes "decision.S2": the exact stream is checked in recv().
                socket.setsockopt_string(zmq.SUBSCRIBE, f"{kind}." + (stream or ""))
        self._streams = None if streams == [None] else set(streams)
        # ZeroMQ never reconnects after it dropped a peer for a protocol error (a frame over
        # MAXMSGSIZE): watch for disconnections and connect again ourselves
        self.disconnects = 0
        self._reconnect_pending: set[str] = set()
        self._monitor = socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._poller = zmq.Poller()
        self._poller.register(socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        try:
            _connect(socket, self.endpoints, "publisher")
        except ConfigError:
            socket.disable_monitor()
            self._monitor.close(0)
            socket.close(0)
            raise
        self.socket = socket

    def recv(self, timeout_s: float | None = None) -> tuple[str, dict] | None:
        """The next message (topic, object), or None when timeout_s passes first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            timeout_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(timeout_ms))
            if self._monitor in ready:
                self._note_disconnects()
            if self.socket not in ready:
                if self._reconnect_pending:  # only with nothing queued: a disconnect drops the queue
                    self._reconnect()
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            try:
                topic, message = decode(self.socket.recv_multipart())
            except ValueError as exc:
                self.malformed += 1
                self.last_malformed = str(exc)
                continue
            if self._streams is not None and topic.split(".", 1)[1] not in self._streams:
                continue
            return topic, message

    def _note_disconnects(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.disconnects += 1
                peer = event["endpoint"].decode(errors="replace")
                # the monitor names the address ZeroMQ resolved; reconnect every endpoint if it is not ours
                self._reconnect_pending.update([peer] if peer in self.endpoints else self.endpoints)

    def _reconnect(self) -> None:
        pending, self._reconnect_pending = self._reconnect_pending, set()
        for endpoint in pending:
            self.socket.disconnect(endpoint)
            self.socket.connect(endpoint)

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.disable_monitor()
            self._monitor.close(0)
            self.socket.close(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- broker

DEFAULT_BROKER_ENDPOINT = "tcp://127.0.0.1:5570"


class Broker:
    """One place to subscribe to many jobs: a ZeroMQ XSUB/XPUB proxy.

    ::

        streamsnn run (machine A) ─XPUB─┐
        streamsnn run (machine B) ─XPUB─┼──▶ XSUB │ broker │ XPUB ◀── subscribers
        streamsnn run (machine C) ─XPUB─┘

    The XSUB side connects to every job's publisher (``upstream``), the XPUB
    side binds ``endpoint`` for subscribers. Messages go down unchanged (topic
    ``decision.<stream>``: stream names must differ between jobs); subscriptions
    go up, so a job with ``wait_subscribers`` waits for the subscribers behind
    the broker, and ZeroMQ re-sends them to a job that (re)connects later.
    CurveZMQ on both sides, each optional: ``curve_keys`` makes the XPUB side a
    server (subscribers' keys in ``curve_keys/authorized/``), ``upstream_curve_keys``
    makes the XSUB side a client of the jobs (a client folder written by
    ``streamsnn keys`` for the jobs' server key). The forwarding itself is
    ZeroMQ's own proxy (C, no Python per message), in a thread until :meth:`stop`.
    """

    def __init__(self, upstream: Iterable[str], endpoint: str | None = None, *,
                 curve_keys: str | os.PathLike | None = None,
                 upstream_curve_keys: str | os.PathLike | None = None, hwm: int = 100_000):
        upstream = [normalize_endpoint(e, "upstream endpoint") for e in upstream]
        if not upstream:
            raise ConfigError("broker: no upstream endpoint (give the publish endpoint of every job)")
        endpoint = normalize_endpoint(endpoint or DEFAULT_BROKER_ENDPOINT, "broker endpoint")
        self.upstream = upstream
        # its own context: a CurveZMQ server needs the context's one authentication handler
        self.context = zmq.Context()
        self.authenticator = None
        self._xsub = self._xpub = self._control = None
        try:
            self._xsub = _receiver(self.context, zmq.XSUB, hwm, upstream_curve_keys, "--upstream-curve-keys")
            _connect(self._xsub, upstream, "upstream publisher")
            xpub = self._xpub = self.context.socket(zmq.XPUB)
            xpub.setsockopt(zmq.SNDHWM, int(hwm))
            xpub.setsockopt(zmq.LINGER, 0)
            # every subscription and unsubscription goes up (as for the Publisher: with XPUB_VERBOSE
            # alone the departure of a subscriber is passed on only when a topic's last one leaves),
            # so jobs count the subscribers behind the broker. libzmq's XSUB still forwards an
            # unsubscription only when its own count for the topic reaches zero (changing that needs
            # the draft option XSUB_VERBOSE_UNSUBSCRIBE), so a job may count a departed one.
            xpub.setsockopt(zmq.XPUB_VERBOSER, 1)
            self.authenticator = _serve(xpub, endpoint, curve_keys, self.context, "broker")
            self.endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
            self._control_address = f"inproc://broker-control-{id(self)}"
            self._control = self.context.socket(zmq.PAIR)
            self._control.bind(self._control_address)
        except BaseException:
            self._close_all()
            raise
        self._thread: threading.Thread | None = None

    def start(self) -> "Broker":
        self._thread = threading.Thread(target=self._proxy, name="broker", daemon=True)
        self._thread.start()
        return self

    def _proxy(self) -> None:
        control = self.context.socket(zmq.PAIR)
        control.connect(self._control_address)
        try:
            zmq.proxy_steerable(self._xpub, self._xsub, None, control)
        except zmq.ZMQError:
            pass
        finally:
            control.close(0)

    def stop(self) -> None:
        if self._thread is not None:
            self._control.send(b"TERMINATE")
            self._thread.join(2.0)
            self._thread = None
        self._close_all()

    def _close_all(self) -> None:
        """Every socket closed and the authenticator stopped before term(), which waits for open sockets."""
        for socket in (self._control, self._xsub, self._xpub):
            if socket is not None and not socket.closed:
                socket.close(0)
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None
        if not self.context.closed:
            self.context.term()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
