"""One streaming session per websocket connection: audio in, segmentation, jobs, events out.

Each utterance keeps the request (task, language, question) that was current when it
started; `config` messages apply to the utterances after them. The final of an utterance is
decoded speculatively once speech pauses (vad.pause_ms) and confirmed (or thrown away when speech
resumes) once the endpoint decides, so latency runs from the end of speech.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tympan.daemon.engine import Job
from tympan.daemon.protocol import (
    ProtocolError,
    Reconfigure,
    Request,
    Start,
    Stop,
    apply_config,
    decode_audio,
    error_event,
    event,
    parse_text,
    request_dict,
)
from tympan.daemon.text import LocalAgreement
from tympan.daemon.vad import (
    Segmenter,
    SpeechPaused,
    SpeechResumed,
    UtteranceDropped,
    UtteranceEnded,
    UtteranceStarted,
)

if TYPE_CHECKING:
    from tympan.daemon.server import Daemon

log = logging.getLogger("tympan.session")

# Error messages may quote what the client sent. Quoted whole, an error could be as large as the frame
# that caused it (limits.max_frame_bytes), and limits.send_queue of them wait for a client that does not read.
MAX_ERROR_CHARS = 300


def refusal(e: ProtocolError) -> str:
    """The error event for a refused client message, its text cut short."""
    message = str(e)
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return error_event(e.code, message)


class Closing(Exception):
    """End the session: close the websocket with this code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass
class Utterance:
    segment_id: int
    request: Request
    start: float
    agreement: LocalAgreement
    seq: int = 0
    last_partial_samples: int = 0
    speculative: Job | None = None
    speculative_end: float | None = None
    speculative_text: str | None = None  # result of a finished speculation, waiting for the endpoint
    final: Job | None = None
    confirmed: bool = False
    streamed: str = ""  # newest text of the final decode, held back until confirmed
    end: float = 0.0
    speech_end: float = 0.0


@dataclass
class Timeline:
    """Wall-clock arrival time of the stream's samples, to measure latency from the end of speech."""

    rate: int
    marks: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=8192))
    samples: int = 0

    def add(self, n: int) -> None:
        self.samples += n
        self.marks.append((self.samples, time.monotonic()))

    def arrival(self, seconds: float) -> float | None:
        target = int(seconds * self.rate)
        for end, when in self.marks:
            if end >= target:
                return when
        return None


class StreamSession:
    def __init__(self, daemon: Daemon, websocket: Any) -> None:
        self.daemon = daemon
        self.ws = websocket
        self.cfg = daemon.cfg
        self.id = ""
        self.key = uuid.uuid4().hex  # the engine's key: client-chosen session ids may repeat
        self.request = Request()
        self.encoding = "pcm_s16le"
        self.resampler: Any = None
        self.segmenter: Segmenter | None = None
        self.utterances: dict[int, Utterance] = {}
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue(maxsize=self.cfg.limits.send_queue)
        self.connected = True
        self.pending: set[int] = set()  # segments whose final is still being decoded
        self.idle = asyncio.Event()  # set when no final is being decoded
        self.idle.set()
        self.room = asyncio.Event()  # set while fewer than limits.session_backlog finals are pending
        self.room.set()
        self.timeline = Timeline(daemon.model.sample_rate)
        self.started_at = time.monotonic()
        self.admitted = False

    # -- outgoing ---------------------------------------------------------------------------

    def send(self, message: str | None, droppable: bool = False) -> None:
        """Queue an event for the client; a client that does not read is disconnected, not buffered for.

        None (a result format with nothing to push, see partial_message) sends nothing."""
        if not self.connected or message is None:
            return
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            if droppable:
                return
            self.connected = False
            log.warning("session %s: client is not reading; disconnecting", self.id)
            self.daemon.spawn(self.ws.close(1008, "client does not read its events"))

    async def _sender(self) -> None:
        from websockets.exceptions import ConnectionClosed

        while True:
            message = await self.outbox.get()
            if message is None:
                return
            try:
                await self.ws.send(message)
            except ConnectionClosed:
                self.connected = False
                return

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        sender = self.sender_task = asyncio.create_task(self._sender())
        code, reason = 1000, "done"
        try:
            await self._start()
            await self._loop()
        except Closing as c:
            code, reason = c.code, c.reason
        except ConnectionClosed:
            self.connected = False
        except Exception:
            log.exception("session %s failed", self.id or "?")
            self.send(error_event("internal", "internal error; the session ends"))
            code, reason = 1011, "internal error"
        finally:
            # A client that vanished mid-utterance still gets its final decoded and published.
            await self._end_of_stream()
            self.daemon.engine.cancel_session(self.key)
            self._end_sender()
            try:
                await asyncio.wait_for(sender, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                sender.cancel()
            if self.connected:
                await self.ws.close(code, reason)
            self.connected = False
            if self.admitted:
                self.daemon.release(self)

    async def _recv(self, timeout: float) -> str | bytes:
        try:
            return await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            raise Closing(1008, f"idle for {timeout:g} s") from None

    async def _start(self) -> None:
        frame = await self._recv(self.cfg.limits.start_timeout_s)
        if isinstance(frame, bytes):
            self.send(error_event("bad_request", "audio before 'start': send a start message first"))
            raise Closing(1008, "audio before start")
        try:
            message = parse_text(frame)
            if not isinstance(message, Start):
                raise ProtocolError("bad_request", "the first message must be 'start'")
            self.daemon.check_request(message.request)
        except ProtocolError as e:
            self.send(refusal(e))
            raise Closing(1008, "bad start message") from None
        if not self.daemon.admit(self):
            self.send(error_event("overloaded", "the server is at capacity; try again later"))
            raise Closing(1013, "overloaded")
        self.admitted = True
        self.id = message.session_id or uuid.uuid4().hex[:16]
        self.request = message.request
        self.encoding = message.encoding
        rate = self.daemon.model.sample_rate
        if message.sample_rate != rate:
            import soxr

            self.resampler = soxr.ResampleStream(message.sample_rate, rate, 1, dtype="float32")
        from tympan.daemon.vad import Segmenter

        self.segmenter = Segmenter(self.cfg.vad, rate)
        self.send(event("ready", session_id=self.id, protocol=1, model=self.daemon.model_info,
                        limits=self.daemon.limits_info, request=request_dict(self.request)))
        log.info("session %s started (%s, %d Hz %s)", self.id, self.request.task, message.sample_rate,
                 self.encoding)

    async def _loop(self) -> None:
        limit = self.cfg.limits.max_session_s
        while True:
            if time.monotonic() - self.started_at > limit:
                self.send(error_event("bad_request", f"session longer than {limit:g} s; start a new one"))
                raise Closing(1008, "session too long")
            # Backpressure: a client sending faster than its finals are decoded waits here, so
            # one session cannot fill the engine's queue.
            try:
                await asyncio.wait_for(self.room.wait(), self.cfg.limits.idle_timeout_s)
            except TimeoutError:
                raise Closing(1011, "the model did not keep up with this session") from None
            frame = await self._recv(self.cfg.limits.idle_timeout_s)
            if isinstance(frame, bytes):
                try:
                    audio = decode_audio(frame, self.encoding)
                except ProtocolError as e:
                    self.send(refusal(e))
                    raise Closing(1003, "invalid audio frame") from None
                self._audio(audio)
                continue
            try:
                message = parse_text(frame)
                if isinstance(message, Start):
                    raise ProtocolError("bad_request", "already started; send 'config' to change the request")
                if isinstance(message, Reconfigure):
                    request = apply_config(self.request, message)
                    self.daemon.check_request(request)
                    self.request = request
                    continue
            except ProtocolError as e:
                self.send(refusal(e))  # the session goes on with its previous request
                continue
            assert isinstance(message, Stop)
            await self._end_of_stream()
            try:
                await asyncio.wait_for(self.idle.wait(), self.cfg.limits.idle_timeout_s)
            except TimeoutError:
                log.error("session %s: finals still pending %g s after stop", self.id, self.cfg.limits.idle_timeout_s)
            self.send(event("done", session_id=self.id))
            raise Closing(1000, "done")

    async def _end_of_stream(self) -> None:
        if self.segmenter is not None:
            self._handle(self.segmenter.finish())
            self.segmenter = None

    def _end_sender(self) -> None:
        """Let the sender finish what is queued; if the queue is full (the client is not reading), stop it."""
        try:
            self.outbox.put_nowait(None)
        except asyncio.QueueFull:
            self.sender_task.cancel()

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued (finals included), then close the connection."""
        if self.connected:
            self._end_sender()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.sender_task), timeout=5)
            self.connected = False
        await self.ws.close(code, reason)

    def drain(self) -> None:
        """Shutdown: end the open utterance now; its final still goes out."""
        if self.segmenter is not None:
            self._handle(self.segmenter.finish())
            self.segmenter = None

    # -- audio and segmentation ---------------------------------------------------------------

    def _audio(self, audio: np.ndarray) -> None:
        if self.segmenter is None:
            return
        if self.resampler is not None:
            audio = self.resampler.resample_chunk(audio)
        self.timeline.add(len(audio))
        self._handle(self.segmenter.push(audio))
        self._maybe_partial()

    def _maybe_partial(self) -> None:
        if not self.cfg.decode.partials or self.segmenter is None:
            return
        current = self.segmenter.current()
        if current is None:
            return
        seg, audio = current
        u = self.utterances.get(seg)
        interval = self.cfg.decode.partial_interval_ms * self.daemon.model.sample_rate // 1000
        if u is None or u.final is not None or len(audio) - u.last_partial_samples < interval:
            return
        u.last_partial_samples = len(audio)
        end = self.timeline.samples / self.daemon.model.sample_rate
        self.daemon.engine.submit(Job(self.key, seg, "partial", audio.copy(), u.request,
                                      on_done=lambda text, stats, u=u, end=end: self._partial(u, text, end)))

    def _handle(self, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, UtteranceStarted):
                self.utterances[ev.segment_id] = Utterance(ev.segment_id, self.request, ev.start,
                                                           LocalAgreement(self.request.target_lang))
                self.daemon.stats.utterances.inc()
            elif isinstance(ev, SpeechPaused):
                u = self.utterances.get(ev.segment_id)
                if u is not None:
                    self._speculate(u, ev.audio, ev.speech_end)
            elif isinstance(ev, SpeechResumed):
                u = self.utterances.get(ev.segment_id)
                if u is not None and u.speculative is not None:
                    u.speculative.cancelled = True
                    u.speculative = u.speculative_end = u.speculative_text = None
                    self._unpend(u.segment_id)  # cancelled jobs never report back
            elif isinstance(ev, UtteranceDropped):
                u = self.utterances.get(ev.segment_id)
                if u is not None:
                    if u.speculative is not None:
                        u.speculative.cancelled = True
                    self._forget(u)
            elif isinstance(ev, UtteranceEnded):
                u = self.utterances.get(ev.segment_id)
                if u is None:
                    continue
                u.end, u.speech_end = ev.end, ev.speech_end
                if u.speculative is not None and u.speculative_end == ev.speech_end:
                    self._confirm(u)
                else:
                    if u.speculative is not None:
                        u.speculative.cancelled = True
                    self._speculate(u, ev.audio, ev.speech_end)
                    self._confirm(u)

    def _speculate(self, u: Utterance, audio: np.ndarray, speech_end: float) -> None:
        if u.speculative is not None:
            u.speculative.cancelled = True
        job = Job(self.key, u.segment_id, "final", audio.copy(), u.request,
                  on_done=lambda text, stats: self._final_done(u, job, text, stats),
                  on_text=lambda text: self._final_text(u, job, text))
        u.speculative, u.speculative_end, u.speculative_text = job, speech_end, None
        u.streamed = ""
        self.pending.add(u.segment_id)
        self.idle.clear()
        if len(self.pending) >= self.cfg.limits.session_backlog:
            self.room.clear()
        self.daemon.engine.submit(job)

    def _confirm(self, u: Utterance) -> None:
        u.confirmed = True
        u.final = u.speculative
        if u.streamed:
            self._send_partial(u, u.streamed, u.speech_end)
        if u.speculative_text is not None:
            self._send_final(u, u.speculative_text)

    # -- results (on the event loop) -------------------------------------------------------------

    def _partial(self, u: Utterance, text: str, end: float) -> None:
        if u.final is not None or u.segment_id not in self.utterances or not text:
            return
        self._send_partial(u, text, end)

    def _send_partial(self, u: Utterance, hypothesis: str, end: float) -> None:
        text, stable = u.agreement.update(hypothesis)
        u.seq += 1
        fields = {"segment_id": u.segment_id, "seq": u.seq, "text": text, "stable_len": stable,
                  "start": round(u.start, 3), "end": round(end, 3)}
        self.send(self.partial_message(fields), droppable=True)
        self.daemon.publish_partial(self.id, {"type": "partial", **fields})

    # -- the wire format of results: what another protocol (e.g. Vosk's) overrides -------------------

    def partial_message(self, fields: dict[str, Any]) -> str | None:
        return event("partial", **fields)

    def final_message(self, fields: dict[str, Any]) -> str | None:
        return event("final", **fields)

    def _final_text(self, u: Utterance, job: Job, text: str) -> None:
        if job is not u.speculative or job.cancelled:
            return
        u.streamed = text
        if u.confirmed:
            self._send_partial(u, text, u.speech_end)

    def _final_done(self, u: Utterance, job: Job, text: str, stats: dict[str, Any]) -> None:
        if job is not u.speculative or job.cancelled:
            return
        if stats.get("error"):
            self.send(error_event("internal", f"decoding segment {u.segment_id} failed"))
            self._forget(u)
            return
        if u.confirmed:
            self._send_final(u, text)
        else:
            u.speculative_text = text

    def _send_final(self, u: Utterance, text: str) -> None:
        arrival = self.timeline.arrival(u.speech_end)
        latency_ms = round((time.monotonic() - arrival) * 1000) if arrival is not None else None
        fields = {"segment_id": u.segment_id, "text": text, "task": u.request.task,
                  "target_lang": u.request.target_lang, "start": round(u.start, 3), "end": round(u.speech_end, 3),
                  "latency_ms": latency_ms}
        # Sent even when empty (as Vosk does): an utterance was heard, nothing was recognised.
        self.send(self.final_message(fields))
        self.daemon.publish_final(self.id, {"type": "final", **fields})
        if latency_ms is not None:
            self.daemon.stats.latency.observe(latency_ms / 1000)
        self._forget(u)

    def _forget(self, u: Utterance) -> None:
        self.utterances.pop(u.segment_id, None)
        self._unpend(u.segment_id)

    def _unpend(self, segment_id: int) -> None:
        self.pending.discard(segment_id)
        if len(self.pending) < self.cfg.limits.session_backlog:
            self.room.set()
        if not self.pending:
            self.idle.set()
