"""Publishing transcription results to an MQTT broker (off unless `mqtt.url` is set).

Topics (`{site}` from `mqtt.site`):

* `tympan/{site}/session/{session_id}/final`: QoS 1, one JSON object per final: the final event's keys plus
  `site`, `session_id`, `message_id` (a UUID, unique per final) and `time` (ISO 8601 UTC, when it was
  spooled). Our four keys win over event keys of the same name.
* `tympan/{site}/session/{session_id}/partial`: QoS 0, only with `mqtt.partials = true`; best effort,
  dropped while disconnected. Same extra keys except `message_id`.
* `tympan/{site}/session/{session_id}/turn`: QoS 0, always on; `end_of_turn` (`probability`, `eager`) and
  `turn_resumed` events as the client gets them, best effort like partials (an end of turn is news only when it is
  fresh; the final that follows is durable).
* `tympan/{site}/status`: retained `online` after each connect, `offline` on a clean stop; `offline` is
  also the connection's last will, so a crash or a lost connection shows `offline` too.

Delivery of finals is at-least-once and in order. Each final is first written to a bounded on-disk spool
(sqlite, WAL, synchronous=FULL: one row per final), then a background task publishes rows in spool order
and deletes a row only after the broker's PUBACK. Rows survive a broker outage, a daemon crash or SIGKILL:
the next Publisher on the same spool file sends them. A row that was sent but not acknowledged when the
connection dropped is sent again after reconnecting, so subscribers may see a final twice and must
deduplicate by `message_id` (order of first arrival is spool order). Once the broker has acknowledged a
final it is the broker's: subscribers that must not miss finals while they are away need a persistent
session (clean_session=False, QoS 1) on a broker with persistence. When the spool is full the oldest rows
are dropped (one WARNING per burst, naming the bound and the count). Only one process may use a spool file
at a time (an flock guards it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import logging
import os
import random
import secrets
import socket
import sqlite3
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from tympan.config import ConfigError, check, check_fields, tympan_home
from tympan.errors import TympanError

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
# Finals in flight at once (QoS 1): enough to hide a WAN round trip when draining a backlog.
WINDOW = 16
# Partials waiting to be written to the socket; past it new partials are dropped (they are best effort).
MAX_PENDING_PARTIALS = 64
# During sustained overflow, at most one spool-full warning per this many seconds.
DROP_LOG_INTERVAL_S = 60.0
# Extra time stop() allows after its flush timeout to publish `offline` and disconnect.
STOP_GRACE_S = 2.0
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"


# --- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerAddress:
    tls: bool
    host: str
    port: int


def parse_url(url: str) -> BrokerAddress:
    """`mqtt://host[:port]` or `mqtts://host[:port]` (default ports 1883 / 8883); ValueError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("put credentials in mqtt.username / mqtt.password, not in the url")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"unexpected path or query in {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    if port == 0:
        raise ValueError(f"bad port in {url!r}")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(tls=tls, host=parts.hostname, port=port or (8883 if tls else 1883))


def _check_url(value: str) -> str | None:
    if not value:
        return None
    try:
        parse_url(value)
    except ValueError as e:
        return str(e)
    return None


def topic_level_problem(value: str) -> str | None:
    """Why `value` cannot be one level of an MQTT topic, or None."""
    if not value:
        return "must not be empty"
    bad = [c for c in ("/", "+", "#", "\0") if c in value]
    if bad:
        return f"must be a single MQTT topic level (no '/', '+', '#'), got {value!r}"
    if len(value.encode()) > 1024:
        return "is too long (over 1024 bytes)"
    return None


def _check_keepalive(value: int) -> str | None:
    return None if 0 < value <= 65535 else f"must be 1-65535 seconds, got {value}"


def _check_spool_max(value: int) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def _check_client_id(value: str) -> str | None:
    if value and any(c in value for c in "/+#\0"):
        return f"must not contain '/', '+', '#', got {value!r}"
    return None


@dataclass(frozen=True)
class MqttConfig:
    # "" = off; "mqtt://host:port" or "mqtts://host:port" (TLS).
    url: str = field(default="", metadata=check(_check_url))
    # This daemon's name in topics: tympan/{site}/...
    site: str = field(default="default", metadata=check(topic_level_problem))
    username: str = ""
    password: str = field(default="", repr=False)  # kept out of logged reprs
    # TLS (mqtts:// only): CA bundle to verify the broker ("" = system CAs), client certificate and key.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Skip verifying the broker's certificate and host name: for tests, never in production.
    tls_insecure: bool = False
    # Also publish partial results (QoS 0, best effort).
    partials: bool = False
    # sqlite file holding finals until the broker acknowledges them; "" = $TYMPAN_HOME/spool.sqlite.
    spool: str = ""
    # Most finals kept in the spool; past it the oldest are dropped (with a warning).
    spool_max: int = field(default=10000, metadata=check(_check_spool_max))
    # Seconds between pings; a broker that sees none for 1.5x this publishes our `offline` will.
    keepalive: int = field(default=30, metadata=check(_check_keepalive))
    # "" = tympan-{site}-{random}, fixed for the life of a Publisher.
    client_id: str = field(default="", metadata=check(_check_client_id))
    # Also publish each final as Rhasspy's Hermes `hermes/asr/textCaptured` (siteId = site).
    hermes: bool = False

    def __post_init__(self) -> None:
        # from_dict already checked each key (naming the file); a directly built MqttConfig is checked
        # the same way. Cross-key rules can only live here.
        check_fields(self, "mqtt")
        tls = self.url.startswith("mqtts:")
        for name in ("tls_ca", "tls_cert", "tls_key", "tls_insecure"):
            if getattr(self, name) and not tls:
                raise ConfigError(f"mqtt.{name}: TLS options need an mqtts:// url (mqtt.url is {self.url!r})")
        if self.tls_key and not self.tls_cert:
            raise ConfigError("mqtt.tls_key: set mqtt.tls_cert too (the client certificate)")
        if self.password and not self.username:
            raise ConfigError("mqtt.password: set mqtt.username too")

    @property
    def enabled(self) -> bool:
        return bool(self.url)


# --- the spool ---------------------------------------------------------------------------------------


class SpoolLockedError(TympanError, RuntimeError):
    """Another live process is using the same spool file."""


class _Spool:
    """Finals waiting for a PUBACK, oldest first. Thread-safe: publish_final may run off the event loop."""

    def __init__(self, path: Path, max_rows: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Two senders on one spool would both send every row; the kernel drops the lock when we die.
        self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLockedError(f"spool {path} is in use by another process (set mqtt.spool)") from None
        self.path = path
        self.max_rows = max_rows
        self._mutex = threading.Lock()
        # Autocommit mode: each statement or explicit BEGIN..COMMIT is one durable transaction.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is fsync'd, so an acknowledged publish_final survives power loss too.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # AUTOINCREMENT: ids never repeat, even after the table empties, so "id > last sent" stays correct.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS finals (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " payload BLOB NOT NULL)"
        )
        (self.depth,) = self._db.execute("SELECT COUNT(*) FROM finals").fetchone()

    def push(self, topic: str, payload: bytes) -> int:
        """Append one row, dropping the oldest past the bound, in one transaction; returns how many dropped."""
        with self._mutex:
            excess = self.depth + 1 - self.max_rows
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped = 0
                if excess > 0:
                    dropped = self._db.execute(
                        "DELETE FROM finals WHERE id IN (SELECT id FROM finals ORDER BY id LIMIT ?)", (excess,)
                    ).rowcount
                self._db.execute("INSERT INTO finals (topic, payload) VALUES (?, ?)", (topic, payload))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.depth += 1 - dropped
            return dropped

    def trim(self) -> int:
        """Enforce the bound on rows left by an earlier run (the bound may have shrunk); returns rows dropped."""
        with self._mutex:
            excess = self.depth - self.max_rows
            if excess <= 0:
                return 0
            dropped = self._db.execute(
                "DELETE FROM finals WHERE id IN (SELECT id FROM finals ORDER BY id LIMIT ?)", (excess,)
            ).rowcount
            self.depth -= dropped
            return dropped

    def after(self, last_id: int, limit: int) -> list[tuple[int, str, bytes]]:
        with self._mutex:
            return self._db.execute(
                "SELECT id, topic, payload FROM finals WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)
            ).fetchall()

    def delete_through(self, row_id: int) -> None:
        """Forget rows up to `row_id`: they were acknowledged in order (or dropped meanwhile)."""
        with self._mutex:
            self.depth -= self._db.execute("DELETE FROM finals WHERE id <= ?", (row_id,)).rowcount

    def close(self) -> None:
        with self._mutex:
            self._db.close()
        os.close(self._lock_fd)


# --- the publisher -----------------------------------------------------------------------------------


class _ConnectionLost(Exception):
    pass


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reap(task: asyncio.Future[Any]) -> None:
    """Cancel a helper task and mark its outcome retrieved (no 'exception was never retrieved' noise)."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


class Publisher:
    """Publishes finals (durably, in order, at least once) and partials (best effort) for one daemon.

    `publish_final`, `publish_durably` (any other topic, e.g. Hermes', delivered as finals are) and
    `publish_partial` may be called from any thread once `start()` has returned.
    With `mqtt.url` empty every method is a no-op and no spool is created.
    """

    def __init__(self, cfg: MqttConfig) -> None:
        self.cfg = cfg
        self._address = parse_url(cfg.url) if cfg.url else None
        self._prefix = f"tympan/{cfg.site}"
        self._status_topic = f"{self._prefix}/status"
        self.client_id = cfg.client_id or f"tympan-{cfg.site}-{secrets.token_hex(4)}"
        self.spool_path = Path(cfg.spool).expanduser() if cfg.spool else tympan_home() / "spool.sqlite"
        self.delivered = 0  # finals acknowledged by the broker (by this Publisher)
        self.dropped = 0  # finals dropped because the spool was full (by this Publisher)
        self._spool: _Spool | None = None
        self._tls: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._connected = False
        self._session_connected = False  # the current/last connection attempt got a CONNACK
        self._stopped = False
        self._wake_fut: asyncio.Future[None] | None = None
        self._stop_fut: asyncio.Future[None] | None = None
        self._deadline: float | None = None  # loop time by which stop() wants the flush done
        self._partials: set[asyncio.Task[None]] = set()
        self._drops_pending = 0
        self._drop_report_scheduled = False
        self._last_drop_report = -DROP_LOG_INTERVAL_S

    # -- public API --

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def spool_depth(self) -> int:
        return self._spool.depth if self._spool is not None else 0

    async def start(self) -> None:
        """Open the spool and start the background sender; returns at once, even if the broker is down."""
        if not self.enabled or self._task is not None:
            return
        self._tls = self._tls_context() if self._address and self._address.tls else None
        self._spool = _Spool(self.spool_path, self.cfg.spool_max)
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop_fut = self._loop.create_future()
        if self._spool.depth:
            log.info("mqtt: %d final(s) left in spool %s from an earlier run", self._spool.depth, self.spool_path)
        self._note_dropped(self._spool.trim())
        self._task = self._loop.create_task(self._run(), name="tympan-mqtt")
        self._task.add_done_callback(self._sender_done)

    async def stop(self, timeout: float = 5.0) -> None:
        """Try to flush the spool for up to `timeout` s, publish retained `offline`, disconnect.

        Rows not acknowledged by then stay in the spool for the next start.
        """
        if self._task is None or self._stopped:
            return
        assert self._loop is not None and self._stop_fut is not None and self._spool is not None
        self._stopped = True
        self._deadline = self._loop.time() + timeout
        if not self._stop_fut.done():
            self._stop_fut.set_result(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout + STOP_GRACE_S)
        except TimeoutError:
            log.warning("mqtt: sender did not stop within %.1f s; cancelling it", timeout + STOP_GRACE_S)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except Exception:  # already logged by _sender_done; the spool must still be closed
            pass
        for task in list(self._partials):
            _reap(task)
        self._report_drops()
        if self._spool.depth:
            log.warning("mqtt: %d final(s) not delivered stay in spool %s for the next start",
                        self._spool.depth, self.spool_path)
        self._spool.close()

    def publish_final(self, session_id: str, event: dict[str, Any]) -> str:
        """Spool one final durably and wake the sender; returns its message_id.

        Never waits for the network; costs one sqlite commit with fsync (about 3 ms on a plain disk).
        Raises TypeError if `event` is not JSON-serialisable, ValueError for a session_id that is not a topic level.
        """
        message_id = str(uuid.uuid4())
        if not self.enabled:
            return message_id
        topic = self._session_topic(session_id, "final")
        body = {**event, "site": self.cfg.site, "session_id": session_id, "message_id": message_id,
                "time": _now_iso()}
        # Serialise before touching the spool: a bad event fails here, in the caller, not in the sender.
        self.publish_durably(topic, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
        return message_id

    def publish_durably(self, topic: str, payload: bytes) -> None:
        """Spool one message (QoS 1, at least once, in spool order, as finals are) and wake the sender."""
        if not self.enabled:
            return
        if self._spool is None or self._stopped:
            raise RuntimeError("Publisher: publishing before start() or after stop()")
        dropped = self._spool.push(topic, payload)
        self._call_in_loop(self._wake)
        if dropped:
            self._note_dropped(dropped)

    def publish_partial(self, session_id: str, event: dict[str, Any]) -> None:
        """Publish a partial at QoS 0 if partials are on and we are connected; otherwise drop it."""
        if self.cfg.partials:
            self._publish_live(session_id, "partial", event)

    def publish_turn(self, session_id: str, event: dict[str, Any]) -> None:
        """Publish an end-of-turn event at QoS 0 if we are connected; otherwise drop it."""
        self._publish_live(session_id, "turn", event)

    def _publish_live(self, session_id: str, kind: str, event: dict[str, Any]) -> None:
        if not (self.enabled and self._connected):
            return
        topic = self._session_topic(session_id, kind)
        body = {**event, "site": self.cfg.site, "session_id": session_id, "time": _now_iso()}
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        self._call_in_loop(lambda: self._send_partial(topic, payload))

    # -- helpers for the public API --

    def _session_topic(self, session_id: str, kind: str) -> str:
        problem = topic_level_problem(session_id)
        if problem:
            raise ValueError(f"session_id {problem}")
        return f"{self._prefix}/session/{session_id}/{kind}"

    def _call_in_loop(self, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn)

    @staticmethod
    def _sender_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("mqtt: sender task failed; finals stay in the spool until restart", exc_info=task.exception())

    def _wake(self) -> None:
        if self._wake_fut is not None and not self._wake_fut.done():
            self._wake_fut.set_result(None)

    def _send_partial(self, topic: str, payload: bytes) -> None:
        client = self._client
        if client is None or not self._connected or len(self._partials) >= MAX_PENDING_PARTIALS:
            return
        assert self._loop is not None
        task = self._loop.create_task(client.publish(topic, payload, qos=0, timeout=self.cfg.keepalive))
        self._partials.add(task)
        task.add_done_callback(self._partial_done)

    def _partial_done(self, task: asyncio.Task[None]) -> None:
        self._partials.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("mqtt: partial dropped: %s", task.exception())

    def _note_dropped(self, n: int) -> None:
        """Count dropped rows; report them in one WARNING per burst (at most one per DROP_LOG_INTERVAL_S)."""
        if n > 0:
            self._call_in_loop(lambda: self._count_drops(n))

    def _count_drops(self, n: int) -> None:
        assert self._loop is not None
        self.dropped += n
        self._drops_pending += n
        if not self._drop_report_scheduled:
            self._drop_report_scheduled = True
            delay = max(0.0, self._last_drop_report + DROP_LOG_INTERVAL_S - time.monotonic())
            # Deferred (even with delay 0) so that a synchronous burst of publish_final calls yields one line.
            self._loop.call_later(delay, self._report_drops)

    def _report_drops(self) -> None:
        self._drop_report_scheduled = False
        n, self._drops_pending = self._drops_pending, 0
        if n:
            self._last_drop_report = time.monotonic()
            log.warning("mqtt: spool full (mqtt.spool_max = %d): dropped the %d oldest undelivered final(s) "
                        "(%d in total); is the broker reachable?", self.cfg.spool_max, n, self.dropped)

    def _tls_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.cfg.tls_ca or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"mqtt.tls_ca: cannot load {self.cfg.tls_ca!r}: {e}") from None
        if self.cfg.tls_cert:
            try:
                ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key or None)
            except (OSError, ssl.SSLError) as e:
                what = f"{self.cfg.tls_cert!r} / {self.cfg.tls_key!r}"
                raise ConfigError(f"mqtt.tls_cert: cannot load {what}: {e}") from None
        if self.cfg.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # -- the sender task --

    def _stop_due(self) -> bool:
        """Stop requested and either nothing is left to send or the flush deadline has passed."""
        assert self._loop is not None and self._spool is not None
        return self._deadline is not None and (self._spool.depth == 0 or self._loop.time() >= self._deadline)

    async def _run(self) -> None:
        """Connect, send, and reconnect with capped exponential backoff until stop(); never raises."""
        assert self._address is not None
        delay = BACKOFF_MIN_S
        quiet = False  # after the first failed attempt, further ones are logged at DEBUG
        while not self._stop_due():
            self._session_connected = False
            try:
                await self._session()
                if self._deadline is not None:
                    return  # a session ends without an error only when stop() asked for it
            except asyncio.CancelledError:
                raise
            except Exception as e:  # broker trouble of any kind must never take the daemon down
                what = "lost connection to" if self._session_connected else "cannot connect to"
                level = logging.DEBUG if quiet and not self._session_connected else logging.WARNING
                why = str(e) if isinstance(e, _ConnectionLost) else f"{type(e).__name__}: {e}"
                log.log(level, "mqtt: %s %s:%s (%s); retrying with backoff up to %.0f s", what,
                        self._address.host, self._address.port, why, BACKOFF_MAX_S)
                quiet = True
            if self._session_connected:
                delay = BACKOFF_MIN_S
            if self._stop_due():
                return
            await self._sleep(delay * random.uniform(0.8, 1.2))  # jitter: daemons should not retry in lockstep
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _sleep(self, seconds: float) -> None:
        """Back off for `seconds`; stop() cuts it short (one more try to flush) and caps it at its deadline."""
        assert self._loop is not None and self._stop_fut is not None
        if self._deadline is None:
            await asyncio.wait([self._stop_fut], timeout=seconds)
        else:
            await asyncio.sleep(max(0.0, min(seconds, self._deadline - self._loop.time())))

    async def _session(self) -> None:
        """One connection: announce `online`, send the spool until stop() (returns) or an error (raises)."""
        assert self._address is not None
        client = aiomqtt.Client(
            self._address.host, self._address.port,
            username=self.cfg.username or None, password=self.cfg.password or None,
            identifier=self.client_id, keepalive=self.cfg.keepalive, tls_context=self._tls,
            will=aiomqtt.Will(self._status_topic, STATUS_OFFLINE, qos=1, retain=True),
            max_inflight_messages=WINDOW, timeout=10.0,
        )
        # aiomqtt warns about "pending calls" past 10; a full window of finals plus partials is normal here.
        client.pending_calls_threshold = WINDOW + MAX_PENDING_PARTIALS + 8
        # Not `async with client`: its exit sends a clean DISCONNECT even when we fail or are cancelled (say
        # by asyncio.run() tearing down a crashed daemon), and a clean DISCONNECT makes the broker discard
        # our `offline` will. Only a clean stop() disconnects cleanly; everything else aborts the socket.
        try:
            await client.__aenter__()
        except BaseException:
            # aiomqtt leaves the socket open when the CONNACK is late or refused; don't leak it.
            self._shutdown_socket(client)
            raise
        self._session_connected = True
        # aiomqtt's publish() does not notice a dropped connection (it waits for its timeout), but its
        # message iterator ends when the connection does: that is our "connection lost" signal.
        lost = asyncio.create_task(self._watch(client))
        clean = False
        try:
            await self._until(client.publish(self._status_topic, STATUS_ONLINE, qos=1, retain=True), lost)
            self._client, self._connected = client, True
            log.info("mqtt: connected to %s:%s as %s", self._address.host, self._address.port, self.client_id)
            await self._drain(client, lost)
            self._connected = False
            # Clean stop: the will is not sent on a clean disconnect, so say `offline` ourselves (if that
            # fails, aborting below lets the will say it).
            with contextlib.suppress(Exception):
                clean = await self._until(client.publish(self._status_topic, STATUS_OFFLINE, qos=1, retain=True,
                                                         timeout=1.0), lost, honour_deadline=False)
        finally:
            self._client, self._connected = None, False
            if clean:
                _reap(lost)
                await client.__aexit__(None, None, None)
            else:
                await self._abort(client, lost)

    @staticmethod
    def _shutdown_socket(client: aiomqtt.Client) -> bool:
        """Shut the TCP connection down without an MQTT DISCONNECT; False if there was none."""
        # aiomqtt keeps its paho client private and has no abort; paho's socket() itself is public.
        sock = client._client.socket()
        if not isinstance(sock, socket.socket):  # none, or a websocket transport tympan does not use
            return False
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        return True

    @staticmethod
    async def _abort(client: aiomqtt.Client, lost: asyncio.Task[None]) -> None:
        """Drop the connection without an MQTT DISCONNECT, so that the broker publishes our will."""
        if Publisher._shutdown_socket(client):
            # paho then reads EOF, closes the socket and aiomqtt marks itself disconnected; wait for that
            # so that nothing is left half-open (and no future's exception goes unretrieved). asyncio.run()
            # tearing down may have cancelled our watcher already: then a fresh one does the waiting.
            watcher = asyncio.create_task(Publisher._watch(client)) if lost.cancelled() else lost
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([watcher], timeout=1.0)
            _reap(watcher)
        _reap(lost)

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        async for _ in client.messages:
            pass  # we subscribe to nothing; this only ends (MqttError) when the connection does

    async def _until(self, aw: Awaitable[Any], lost: asyncio.Task[None], *, honour_deadline: bool = True) -> bool:
        """Await `aw` unless the connection is lost (raises _ConnectionLost) or stop() intervenes.

        Returns True when `aw` finished (its exception, if any, is raised), False when stop() was just
        requested or its deadline passed (`aw` is then cancelled); callers re-check and call again.
        """
        assert self._loop is not None and self._stop_fut is not None
        fut = asyncio.ensure_future(aw)
        try:
            waits: set[asyncio.Future[Any]] = {fut, lost}
            timeout = None
            if self._deadline is None:
                waits.add(self._stop_fut)
            elif honour_deadline:
                timeout = max(0.0, self._deadline - self._loop.time())
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if fut in done:
                fut.result()
                return True
            if lost in done:
                cause = None if lost.cancelled() else lost.exception()
                root = (cause.__cause__ or cause) if cause is not None else None  # paho's reason, if known
                raise _ConnectionLost(str(root) if root else "connection lost") from cause
            return False
        finally:
            if not fut.done():
                _reap(fut)

    async def _drain(self, client: aiomqtt.Client, lost: asyncio.Task[None]) -> None:
        """Publish spool rows in id order, up to WINDOW unacknowledged; delete each acknowledged prefix."""
        assert self._loop is not None and self._spool is not None
        inflight: collections.deque[tuple[int, asyncio.Task[None]]] = collections.deque()
        last_id = 0  # highest row id handed to this connection
        try:
            while True:
                stopping = self._deadline is not None
                if stopping and self._loop.time() >= self._deadline:  # type: ignore[operator]
                    return
                if len(inflight) < WINDOW:
                    for row_id, topic, payload in self._spool.after(last_id, WINDOW - len(inflight)):
                        task = self._loop.create_task(
                            client.publish(topic, payload, qos=1, timeout=max(10.0, 2.0 * self.cfg.keepalive)))
                        inflight.append((row_id, task))
                        last_id = row_id
                if not inflight:
                    if stopping:
                        return
                    self._wake_fut = self._loop.create_future()
                    if self._spool.after(last_id, 1):
                        continue  # a row arrived between the query above and arming the wake-up
                    await self._until(self._wake_fut, lost)
                    continue
                if not await self._until(asyncio.shield(inflight[0][1]), lost):
                    continue
                acked = 0
                try:
                    while inflight and inflight[0][1].done():
                        row_id, task = inflight[0]
                        task.result()  # a failed publish (e.g. timeout) ends this connection; the row is re-sent
                        inflight.popleft()
                        acked = row_id
                        self.delivered += 1
                finally:
                    if acked:
                        self._spool.delete_through(acked)
        finally:
            for _, task in inflight:
                _reap(task)
