"""The daemon: websocket streaming at /v1/stream (and /vosk), /healthz and /metrics on the same port,
MQTT publishing, systemd notification, and a draining shutdown on SIGTERM.

Each websocket gets a Session (session.py) with the codec of its path; the daemon is the
sessions' host (host.py): admission, the engine, and the sinks every final goes to (sinks.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

from tympan.config import ConfigError
from tympan.daemon import systemd
from tympan.daemon.auth import authorized, origin_allowed, presented_token
from tympan.daemon.codec import Codec
from tympan.daemon.codec_v1 import V1Codec
from tympan.daemon.engine import Engine
from tympan.daemon.front import door_factory
from tympan.daemon.host import AdmittedSession
from tympan.daemon.http11 import MAX_HEAD
from tympan.daemon.metrics import Counter, CounterReading, Gauge, Histogram, LabeledCounter, Registry
from tympan.daemon.mqtt import Publisher
from tympan.daemon.openai_api import OpenAiApi
from tympan.daemon.protocol import LANGS, ProtocolError, Request, error_event
from tympan.daemon.realtime import REALTIME_PATH, RealtimeCodec, is_beta
from tympan.daemon.session import Session
from tympan.daemon.settings import DaemonConfig
from tympan.daemon.sinks import FinalsMetrics, HermesSink, MqttSink, Sink
from tympan.daemon.vosk import VOSK_PATH, VoskCodec
from tympan.daemon.wyoming_server import WyomingServer, info_data
from tympan.runtime.bundle import load_bundle
from tympan.runtime.speech_model import SpeechModel
from tympan.runtime.turn import TurnModel

log = logging.getLogger("tympan.daemon")
STREAM_PATH = "/v1/stream"
# websocket path -> its protocol's codec, made from the handshake's headers
CODECS: dict[str, Callable[[Any], Codec]] = {STREAM_PATH: lambda _: V1Codec(), VOSK_PATH: lambda _: VoskCodec(),
                                             REALTIME_PATH: lambda headers: RealtimeCodec(is_beta(headers))}
STATIC = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def _subprotocol(connection: Any, offered: Any) -> Any:
    """Realtime clients in browsers offer `realtime` (with their key and dialect as more subprotocols): accept it;
    other clients offer none."""
    return "realtime" if "realtime" in offered else None


@dataclass
class Stats:
    registry: Registry
    sessions_total: Counter
    sessions_by_protocol: LabeledCounter
    utterances: Counter
    finals: Counter
    latency: Histogram
    compute: Histogram


class Daemon:
    def __init__(self, cfg: DaemonConfig, bundle_path: Path) -> None:
        self.cfg = cfg
        self.bundle_path = bundle_path
        self.sessions: set[AdmittedSession] = set()
        self._lingering: set[AdmittedSession] = set()
        self.connections = 0  # open client connections of every entry point, started or not (take_connection)
        self._tasks: set[asyncio.Future[None]] = set()
        self.draining = False
        self.publisher: Publisher | None = None
        self.sinks: list[Sink] = []  # after each session's own client
        self.server: Any = None
        self.wyoming: WyomingServer | None = None
        self._stop = asyncio.Event()
        self.started = time.monotonic()

    # -- start-up ------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        bundle = load_bundle(self.bundle_path)
        self.model = await asyncio.to_thread(SpeechModel, bundle, self.cfg.server.threads)
        self.turn_model = TurnModel.load(Path(self.cfg.turn.model) if self.cfg.turn.model else None)
        longest = self.cfg.vad.max_utterance_s + self.cfg.vad.pre_roll_ms / 1000
        encoder_max = self.model.encoder.max_samples / self.model.sample_rate
        if longest > encoder_max:
            raise ConfigError(f"vad.max_utterance_s = {self.cfg.vad.max_utterance_s:g} (+ pre-roll) exceeds the "
                              f"bundle's encoder limit of {encoder_max:g} s")
        m = bundle.manifest
        self.model_info = {"bundle": str(self.bundle_path), "tympan_version": m.tympan_version,
                           "encoder": m.encoder.kind, "llm_runtime": m.llm.runtime,
                           "tasks": m.tasks, "sample_rate": self.model.sample_rate,
                           # Who writes the finals' words, and whether they come with times.
                           "hearing": m.hearing.kind if m.hearing is not None else "ctc",
                           "word_times": self.model.hearing is not None and self.model.hearing.has_alignment_heads,
                           # Who answers from the heard text (translation, questions), if not the speech LLM.
                           "text_llm": m.text_llm.source if m.text_llm is not None else None}
        limits = self.cfg.limits
        self.limits_info = {"max_frame_bytes": limits.max_frame_bytes, "max_session_s": limits.max_session_s,
                            "idle_timeout_s": limits.idle_timeout_s, "max_utterance_s": self.cfg.vad.max_utterance_s}
        self.engine = Engine(self.model, self.cfg.decode, loop)
        self._metrics()
        self.engine.on_stats = self._on_stats
        self.engine.start()
        self.sinks.append(FinalsMetrics(self.stats.finals, self.stats.latency))
        if self.cfg.mqtt.url:
            self.publisher = Publisher(self.cfg.mqtt)
            await self.publisher.start()
            self.sinks.append(MqttSink(self.publisher))
            if self.cfg.mqtt.hermes:
                self.sinks.append(HermesSink(self.publisher, self.cfg.mqtt.site))
        self.openai = OpenAiApi(self, self.bundle_path.name)
        self.server = await serve(
            self._connection,
            self.cfg.server.host,
            self.cfg.server.port,
            process_request=self._http,
            max_size=limits.max_frame_bytes,
            ssl=self._ssl(),
            server_header=None,
            select_subprotocol=_subprotocol,
            # Uploads (POST) go to the HTTP API; the hook expects a connection class, a factory does as well.
            create_connection=cast(Any, door_factory(self.openai.handle, MAX_HEAD, limits.start_timeout_s)),
        )
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("serving %s on %s:%d", self.bundle_path, self.cfg.server.host, self.port)
        if self.cfg.wyoming.uri:
            self.wyoming = WyomingServer(self, self.cfg.wyoming.uri, info_data(self.model_info, self.languages()))
            await self.wyoming.start()
        systemd.notify("READY=1")
        interval = systemd.watchdog_interval()
        if interval:
            self.spawn(self._watchdog(interval))

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.cfg.tls.cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cfg.tls.cert, self.cfg.tls.key)
        return ctx

    def _metrics(self) -> None:
        r = Registry()
        by_protocol = LabeledCounter("tympan_protocol_sessions_total", "Sessions accepted, by protocol (entry point)",
                                     "protocol")
        r.add(by_protocol)
        self.stats = Stats(
            registry=r,
            sessions_total=r.add(Counter("tympan_sessions_total", "Streaming sessions accepted")),  # type: ignore[arg-type]
            sessions_by_protocol=by_protocol,
            utterances=r.add(Counter("tympan_utterances_total", "Utterances detected")),  # type: ignore[arg-type]
            finals=r.add(Counter("tympan_finals_total", "Finals sent")),  # type: ignore[arg-type]
            latency=r.add(Histogram("tympan_final_latency_seconds", "End of speech to final sent",  # type: ignore[arg-type]
                                    [0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1, 1.5, 2, 3, 5, 10])),
            compute=r.add(Histogram("tympan_decode_compute_seconds", "Model time per decode",  # type: ignore[arg-type]
                                    [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4])),
        )
        r.add(Gauge("tympan_sessions_active", "Open streaming sessions", lambda: len(self.sessions)))
        r.add(Gauge("tympan_sessions_lingering", "Closed sessions whose finals are still being decoded",
                    lambda: len(self._lingering)))
        r.add(Gauge("tympan_queue_depth", "Finals waiting for the model", lambda: self.engine.pending_finals))
        r.add(Gauge("tympan_real_time_factor",
                    "Model compute seconds (partials included) per second of finalised audio, since start",
                    lambda: self.engine.busy_seconds / self.engine.audio_seconds if self.engine.audio_seconds else 0))
        r.add(CounterReading("tympan_model_compute_seconds_total", "Model compute, partials included",
                             lambda: self.engine.busy_seconds))
        r.add(CounterReading("tympan_final_audio_seconds_total", "Audio of the utterances finalised",
                             lambda: self.engine.audio_seconds))
        r.add(CounterReading("tympan_asr_answers_replaced_total", "Final ASR decodes (speculative ones included) "
                             "whose answer departed from the words the CTC bridge heard and was replaced by them",
                             lambda: self.engine.answers_replaced))
        r.add(CounterReading("tympan_finals_refused_total", "Final decodes (speculative ones included) the second pass "
                             "of hearing refused (silence, noise, a loop) or whose first pass heard nothing",
                             lambda: self.engine.finals_refused))
        r.add(Gauge("tympan_mqtt_connected", "1 when connected to the MQTT broker",
                    lambda: int(bool(self.publisher and self.publisher.connected))))
        r.add(Gauge("tympan_spool_depth", "Finals waiting in the MQTT spool",
                    lambda: self.publisher.spool_depth if self.publisher else 0))

    def _on_stats(self, stats: dict[str, Any]) -> None:
        self.stats.compute.observe(stats["compute_s"])

    async def _watchdog(self, interval: float) -> None:
        while not self._stop.is_set():
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- HTTP and admission ------------------------------------------------------------------------

    def _http(self, connection: Any, request: Any) -> Any:
        url = urlsplit(request.path)
        if url.path == "/healthz":
            import json

            body = {"ready": not self.draining, "bundle_loaded": True, "sessions": len(self.sessions),
                    "mqtt": None if self.publisher is None else {"connected": self.publisher.connected,
                                                                 "spool_depth": self.publisher.spool_depth}}
            response = connection.respond(HTTPStatus.OK if not self.draining else HTTPStatus.SERVICE_UNAVAILABLE,
                                          json.dumps(body) + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        if url.path == "/metrics":
            response = connection.respond(HTTPStatus.OK, self.stats.registry.render())
            response.headers["Content-Type"] = "text/plain; version=0.0.4"
            return response
        if request.headers.get("Upgrade", "").lower() != "websocket":
            page = self._static(connection, url.path)
            if page is not None:
                return page
        if url.path not in CODECS:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such path {url.path}; streaming is at {STREAM_PATH}\n")
        if url.path == REALTIME_PATH and parse_qs(url.query).get("intent", ["transcription"])[0] != "transcription":
            return connection.respond(HTTPStatus.BAD_REQUEST, "only realtime transcription sessions are served "
                                                              "(?intent=transcription)\n")
        if self.draining:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        if self.connections >= 2 * self.cfg.limits.max_sessions + 4:
            # Connections that have not sent `start` yet are bounded too (limits.start_timeout_s).
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        try:
            return self._check_client(connection, request, url)
        except LookupError:  # a header given twice (websockets' MultipleValuesError)
            return connection.respond(HTTPStatus.BAD_REQUEST, "duplicate Authorization or Origin header\n")

    def _check_client(self, connection: Any, request: Any, url: Any) -> Any:
        auth = self.cfg.auth
        given = presented_token(request.headers.get("Authorization"), url.query,
                                request.headers.get("Sec-WebSocket-Protocol"))
        if not authorized(auth.token, given):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        origin = request.headers.get("Origin")
        if not origin_allowed(auth.allowed_origins, origin, request.headers.get("Host")):
            return connection.respond(HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n")
        return None

    def _static(self, connection: Any, path: str) -> Any:
        """The browser page: `/` and the files it loads, from daemon/static (no build step, no CDN)."""
        name = "index.html" if path == "/" else path.removeprefix("/static/") if path.startswith("/static/") else None
        if name is None or "/" in name or name.startswith("."):
            return None
        file = STATIC / name
        if not file.is_file() or file.suffix not in STATIC_TYPES:
            return None
        response = connection.respond(HTTPStatus.OK, file.read_text(encoding="utf-8"))
        response.headers["Content-Type"] = STATIC_TYPES[file.suffix]
        response.headers["Cache-Control"] = "no-cache"
        return response

    def check_request(self, request: Request) -> None:
        """Refuse tasks and languages the bundle cannot do (a free instruction is the client's choice)."""
        if request.instruction:
            return
        langs = self.model.prompts.templates.get(request.task, {})
        if request.target_lang not in langs:
            raise ProtocolError("unsupported", f"this model has no {request.task} into {request.target_lang!r}")
        trained = self.model.bundle.tasks.get(request.task)
        if trained is not None and request.target_lang not in trained:
            raise ProtocolError("unsupported", f"this model was not trained for {request.task} into "
                                               f"{request.target_lang!r} (trained: {', '.join(trained)})")

    def languages(self) -> list[str]:
        """The languages this bundle writes from English speech: en (transcripts), then its translation targets."""
        out = []
        for request in (Request("asr", "en"), *(Request("st", lang) for lang in LANGS if lang != "en")):
            try:
                self.check_request(request)
            except ProtocolError:
                continue
            out.append(request.target_lang)
        return out

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def admit(self, session: AdmittedSession) -> bool:
        """Take a session that has sent a valid `start`, unless at capacity or shutting down."""
        limits = self.cfg.limits
        if (self.draining or len(self.sessions) >= limits.max_sessions
                or self.engine.pending_finals >= limits.queue_size):
            return False
        self.sessions.add(session)
        self.stats.sessions_total.inc()
        self.stats.sessions_by_protocol.inc(session.protocol)
        return True

    def take_connection(self) -> bool:
        """One budget for every entry point's connections (websockets, uploads, Wyoming), started or not:
        2 x limits.max_sessions + 4."""
        if self.draining or self.connections >= 2 * self.cfg.limits.max_sessions + 4:
            return False
        self.connections += 1
        return True

    def give_connection(self) -> None:
        self.connections -= 1

    def release(self, session: AdmittedSession) -> None:
        self.sessions.discard(session)
        if session.pending:
            # Its finals still decode, then go to MQTT; shutdown waits for them too.
            self._lingering.add(session)
            self.spawn(self._forget_when_idle(session))

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # a reference, or the task may be collected mid-flight
        task.add_done_callback(self._tasks.discard)

    def count_utterance(self) -> None:
        self.stats.utterances.inc()

    async def _forget_when_idle(self, session: AdmittedSession) -> None:
        await session.idle.wait()
        self._lingering.discard(session)

    async def _connection(self, websocket: ServerConnection) -> None:
        if self.draining:
            await websocket.send(error_event("overloaded", "the server is shutting down"))
            await websocket.close(1001, "shutting down")
            return
        assert websocket.request is not None  # the handshake is done
        codec = CODECS[urlsplit(websocket.request.path).path](websocket.request.headers)
        session = Session(self, websocket, codec)
        self.connections += 1
        try:
            await session.run()
        finally:
            self.connections -= 1
            self.sessions.discard(session)

    # -- shutdown ----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Stop accepting, end open utterances, wait for their finals (drain timeout), then close."""
        systemd.notify("STOPPING=1")
        self.draining = True
        if self.server is not None:
            self.server.close(close_connections=False)
        if self.wyoming is not None:
            self.wyoming.accepting = False
        self.openai.draining = True
        for session in list(self.sessions):
            session.drain()
        deadline = time.monotonic() + self.cfg.server.drain_timeout_s
        waiting = [s for s in list(self.sessions) + list(self._lingering) if s.pending]
        for s in waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(s.idle.wait(), left)
            except TimeoutError:
                log.warning("drain timeout: session %s still had %d utterances", s.id, s.pending)
        for session in list(self.sessions):
            with contextlib.suppress(Exception):  # already gone, or not reading
                await asyncio.wait_for(session.close(1001, "server shutting down"), 5)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.wyoming is not None:
            await self.wyoming.close()
        await asyncio.to_thread(self.engine.stop)
        if self.publisher is not None:
            await self.publisher.stop(timeout=max(1.0, deadline - time.monotonic()))


async def run_daemon(cfg: DaemonConfig, bundle_path: Path) -> int:
    daemon = Daemon(cfg, bundle_path)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    await daemon.start()
    await daemon.wait_stopped()
    log.info("stopping: draining open sessions")
    await daemon.shutdown()
    log.info("stopped")
    return 0
