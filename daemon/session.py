"""One client's stream, in no protocol's words: commands in, audio segmented, decodes queued, results out.

Its codec (codec.py) turns the client's frames into commands and the session's events into
frames; its host (host.py: the daemon) admits it, runs its decodes and lends it the daemon's
sinks. Each utterance (utterance.py) keeps the request that was current when it started; a
Configure applies to the utterances after it. Partials and finals go to the session's sinks: its
client first, then the daemon's (sinks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import replace

from websockets.exceptions import ConnectionClosed

from tympan.daemon.audio_in import AudioIn
from tympan.daemon.codec import BAD_START, DONE, INTERNAL, OVERLOADED, STALLED, TOO_LONG, Closing, Codec
from tympan.daemon.engine import Job
from tympan.daemon.events import (
    Audio,
    Command,
    Configure,
    Configured,
    Done,
    EndOfTurn,
    Endpoint,
    Error,
    Final,
    Lost,
    Onset,
    Open,
    Partial,
    Ready,
    Shutdown,
    Translation,
    TurnEvent,
)
from tympan.daemon.host import SessionHost
from tympan.daemon.outbox import Connection, Outbox
from tympan.daemon.protocol import ProtocolError, Request
from tympan.daemon.sinks import ClientSink, Sink
from tympan.daemon.turn import PRESETS, Turn
from tympan.daemon.utterance import OPEN, Utterance
from tympan.daemon.vad import Event as VadEvent
from tympan.daemon.vad import SpeechPaused, SpeechResumed, UtteranceDropped, UtteranceEnded, UtteranceStarted

log = logging.getLogger("tympan.session")


class Session:
    def __init__(self, host: SessionHost, connection: Connection, codec: Codec) -> None:
        self.host = host
        self.cfg = host.cfg
        self.connection = connection
        self.codec = codec
        self.outbox = Outbox(connection, self.cfg.limits.send_queue, host.spawn)
        self.client = ClientSink(codec, self.outbox)
        self.sinks: list[Sink] = [self.client, *host.sinks]
        self.id = ""
        self.key = uuid.uuid4().hex  # the engine's key: client-chosen session ids may repeat
        self.request = Request()
        self.audio: AudioIn | None = None  # from the first audio on
        self.ended = False  # the stream is over: later audio is ignored
        self.drained = False  # the shutdown ended the stream before the client did
        self.utterances: dict[int, Utterance] = {}  # open, or waiting for their final
        self.idle = asyncio.Event()  # set when no final is being decoded
        self.idle.set()
        self.room = asyncio.Event()  # set while fewer than limits.session_backlog finals are pending
        self.room.set()
        self.caught_up = asyncio.Event()  # set while no received audio waits to be segmented
        self.caught_up.set()
        self.unheld = asyncio.Event()  # set while the audio held is under audio_in.HOLD_MAX_S
        self.unheld.set()
        self.started_at = time.monotonic()
        self.admitted = False

    @property
    def protocol(self) -> str:
        return self.codec.name

    @property
    def pending(self) -> int:
        return sum(u.decoding for u in self.utterances.values())

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        closing: Closing | None = None
        try:
            await self._serve()
        except Closing as c:
            # Kept past the except block: without its traceback, whose frames hold this session, so a
            # finished session is freed at once rather than at the garbage collector's next full pass.
            closing = c.with_traceback(None)
        except ConnectionClosed:
            self.outbox.connected = False
        except Exception:
            log.exception("session %s failed", self.id or "?")
            closing = Closing(1011, INTERNAL, ProtocolError("internal", "internal error; the session ends"))
        finally:
            code, reason = 1000, DONE
            if closing is not None:
                frames, reason = self.codec.farewell(closing)
                code = closing.code
                self.outbox.put(frames)
            # A client that vanished mid-utterance still gets its final decoded and published.
            self._end_of_stream()
            self.host.engine.cancel_session(self.key)
            await self.outbox.finish(code, reason)
            if self.admitted:
                self.host.release(self)

    async def _serve(self) -> None:
        for command in self.codec.greeting():
            await self._do(command)
        frame = await self._recv(self.cfg.limits.start_timeout_s)
        while True:
            for command in self._parse(frame):
                await self._do(command)
            limit = self.cfg.limits.max_session_s
            if time.monotonic() - self.started_at > limit:
                raise Closing(1008, TOO_LONG,
                              ProtocolError("bad_request", f"session longer than {limit:g} s; start a new one"))
            # Backpressure: a client sending faster than its finals are decoded waits here, so
            # one session cannot fill the engine's queue.
            try:
                await asyncio.wait_for(self.room.wait(), self.cfg.limits.idle_timeout_s)
            except TimeoutError:
                raise Closing(1011, STALLED) from None
            # A client far ahead of its readings (a file sent at once) waits too, so its turns are a microphone's.
            if self.audio is not None and self.audio.holding_too_long:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.unheld.wait(), self.cfg.limits.idle_timeout_s)
            frame = await self._recv(self.cfg.limits.idle_timeout_s)

    async def _recv(self, timeout: float) -> str | bytes:
        try:
            return await asyncio.wait_for(self.connection.recv(), timeout)
        except TimeoutError:
            raise Closing(1008, f"idle for {timeout:g} s") from None

    def _parse(self, frame: str | bytes) -> list[Command]:
        try:
            return self.codec.parse(frame)
        except ProtocolError as e:
            self.client.tell(Error(e.code, str(e)))  # the session goes on as before
            return []

    async def _do(self, command: Command) -> None:
        if not self.admitted and not isinstance(command, Open):
            raise RuntimeError(f"{self.codec.name} codec: {type(command).__name__} before Open")
        if isinstance(command, Open):
            self._open(command)
        elif isinstance(command, Configure):
            try:
                request = self._turn_set(command.update(self.request))
                self.host.check_request(request)
            except ProtocolError as e:
                self.client.tell(Error(e.code, str(e)))  # the session goes on with its request
                return
            self.request = request
            self.client.tell(Configured(request))
        elif isinstance(command, Audio):
            self._audio(command)
            if self.codec.answers_frames:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.caught_up.wait(), self.codec.final_wait_s)
            self.outbox.put(await self.codec.answer())
        else:  # End
            await self._end()

    def _open(self, command: Open) -> None:
        try:
            self.host.check_request(command.request)
        except ProtocolError as e:
            raise Closing(1008, BAD_START, e) from None
        if not self.host.admit(self):
            raise Closing(1013, OVERLOADED, ProtocolError("overloaded", "the server is at capacity; try again later"))
        self.admitted = True
        self.id = self.outbox.name = command.session_id or uuid.uuid4().hex[:16]
        self.request = self._turn_set(command.request)
        self.client.tell(Ready(self.id, self.request, self.host.model_info, self.host.limits_info))
        log.info("session %s started (%s, %s)", self.id, self.codec.name, self.request.task)

    def _turn_set(self, request: Request) -> Request:
        """The request with the daemon's turn settings where the client chose none, so that what the client is told
        (ready, configured) is what its turns get."""
        turns = self.cfg.turn
        return replace(request, turn=request.turn or turns.default_turn,
                       eager_turn=turns.eager if request.eager_turn is None else request.eager_turn)

    async def _end(self) -> None:
        timeout = max(self.cfg.limits.idle_timeout_s, self.codec.final_wait_s)
        # The audio held for readings first, so that its turns end as they would have in real time.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.caught_up.wait(), timeout)
        self._end_of_stream()
        gave_up = False
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            log.error("session %s: finals still pending %g s after the end of the stream", self.id, timeout)
            gave_up = True
        self.client.tell(Done(self.id, drained=self.drained, gave_up=gave_up))
        raise Closing(1000, DONE)

    def _end_of_stream(self) -> None:
        self.ended = True
        if self.audio is not None:
            self._flow(wait=False)
            self._segmented(self.audio.finish())

    def drain(self) -> None:
        """Shutdown: end the open utterance now; its final still goes out."""
        self.drained = self.drained or not self.ended
        self._end_of_stream()

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued (finals included), then close the connection."""
        self.client.tell(Shutdown())
        await self.outbox.close(code, reason)

    # -- audio and segmentation ---------------------------------------------------------------

    def _audio(self, command: Audio) -> None:
        if self.ended:
            return
        if self.audio is None:
            # The turns end where turn.py says (end_turn); the segmenter's own silence endpoint is only the last resort.
            cap = max(self.cfg.vad.silence_ms, *(p.max_silence_ms for p in PRESETS.values()))
            self.audio = AudioIn(self.cfg.vad, command.sample_rate, self.host.sample_rate, turn_silence_ms=cap)
            log.info("session %s: audio at %d Hz", self.id, command.sample_rate)
        self.audio.receive(command.samples)
        self._flow()  # also when nothing flows: it says whether the client must wait (unheld)
        self._maybe_partial(self.audio)

    def _flow(self, wait: bool = True) -> None:
        """Segment the audio received, chunk by chunk, each chunk a tick of the end of turn; with `wait`, stop while
        a pause waits for its reading (audio_in.py), unless it has held too much."""
        audio = self.audio
        if audio is None:
            return
        while not (wait and self._awaiting_reading() and not audio.holding_too_long):
            events = audio.segment()
            if events is None:
                break
            self._segmented(events)
            for u in [u for u in self.utterances.values() if u.state in OPEN]:
                u.tick()
        if not audio.held:
            self.caught_up.set()
        else:
            self.caught_up.clear()
        if audio.holding_too_long:
            self.unheld.clear()
        else:
            self.unheld.set()

    def _awaiting_reading(self) -> bool:
        return any(u.awaiting_reading for u in self.utterances.values())

    def _maybe_partial(self, audio: AudioIn) -> None:
        current = audio.current() if self.cfg.decode.partials and self.codec.partials else None
        if current is None:
            return
        segment_id, samples = current
        u = self.utterances.get(segment_id)
        if u is not None:
            u.maybe_partial(samples, audio.segmented_seconds, self.cfg.decode.partial_interval_ms * audio.rate // 1000)

    def _segmented(self, events: list[VadEvent]) -> None:
        for ev in events:
            if isinstance(ev, UtteranceStarted):
                r = self.request  # its turn settings filled in at Open and Configure (_turn_set)
                turn = Turn(r.turn or self.cfg.turn.default_turn, bool(r.eager_turn), self.host.turn_model,
                            self.cfg.vad.silence_ms)
                self.utterances[ev.segment_id] = Utterance(
                    self.key, ev.segment_id, self.request, ev.start, self, turn,
                    stable_from_hearing=self.host.model_info.get("hearing") == "whisper")
                self.host.count_utterance()
                self.client.tell(Onset(ev.segment_id, ev.start))
                continue
            u = self.utterances.get(ev.segment_id)
            if u is None:
                continue  # its decode failed: the rest of it is ignored
            if isinstance(ev, SpeechPaused):
                u.pause(ev.audio, ev.speech_end, ev.prosody)
            elif isinstance(ev, SpeechResumed):
                u.resume()
            elif isinstance(ev, UtteranceDropped):
                u.drop()
                self._forget(u.segment_id)
            elif isinstance(ev, UtteranceEnded):
                # Every end but a max-length cut of speech going on ends the turn (and resolves an eager end of turn).
                if ev.reason != "max_length" or (u.turn is not None and u.turn.speech_end is not None):
                    self.turn(EndOfTurn(u.segment_id, u.turn.probability if u.turn is not None else None))
                self.client.tell(Endpoint(u.segment_id, ev.speech_end))  # before its final, which may be ready at once
                u.endpoint(ev.audio, ev.speech_end)
        self._count_pending()

    # -- the utterances' results (utterance.Owner) ------------------------------------------------

    def submit(self, job: Job) -> None:
        self.host.engine.submit(job)

    def latency_ms(self, speech_end: float) -> int | None:
        return self.audio.latency_ms(speech_end) if self.audio is not None else None

    def partial(self, partial: Partial) -> None:
        for sink in self.sinks:
            sink.partial(self.id, partial)

    def translation(self, translation: Translation) -> None:
        for sink in self.sinks:
            sink.translation(self.id, translation)

    def final(self, final: Final) -> None:
        for sink in self.sinks:
            sink.final(self.id, final)
        self.utterances.pop(final.segment_id, None)
        self._count_pending()

    def now(self) -> float:
        return self.audio.segmented_seconds if self.audio is not None else 0.0

    def reading_in(self) -> None:
        # Not from inside the utterance's callback: the audio let through may end or resume that very utterance.
        asyncio.get_running_loop().call_soon(self._flow)

    def turn(self, event: TurnEvent) -> None:
        for sink in self.sinks:
            sink.turn(self.id, event)

    def end_turn(self, segment_id: int) -> None:
        current = self.audio.current() if self.audio is not None else None
        if self.audio is not None and current is not None and current[0] == segment_id:
            self._segmented(self.audio.end_turn())

    def failed(self, segment_id: int) -> None:
        self.client.tell(Error("internal", f"decoding segment {segment_id} failed"))
        self._forget(segment_id, failed=True)
        self.reading_in()  # a pause may have been waiting for that decode

    def _forget(self, segment_id: int, failed: bool = False) -> None:
        self.utterances.pop(segment_id, None)
        self.client.tell(Lost(segment_id, failed))
        self._count_pending()

    def _count_pending(self) -> None:
        pending = self.pending
        if pending < self.cfg.limits.session_backlog:
            self.room.set()
        else:
            self.room.clear()
        if pending:
            self.idle.clear()
        else:
            self.idle.set()
