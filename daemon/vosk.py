"""Vosk-compatible streaming at `ws://HOST:PORT/vosk`: existing vosk-server websocket clients work unchanged.

Point a Vosk client (vosk-server's `websocket/test.py`, `test_microphone.py`, or anything written
for vosk-server's websocket protocol) at `ws://HOST:PORT/vosk` instead of `ws://HOST:2700`
(`wss://` with `[tls]`; `auth.token` applies as on `/v1/stream`). The task is always English ASR.

Client -> server:

- optionally, before the audio, `{"config": {...}}` text messages (later ones update earlier
  ones). Honoured: `sample_rate` (8000-48000 Hz, a whole number; default 8000, as vosk-server's
  default `VOSK_SAMPLE_RATE`; any rate is resampled server-side) and `max_alternatives` (> 0
  switches results to the n-best shape below, with one alternative). Accepted and ignored:
  `words` (tympan's model gives no word times, see below), `phrase_list` (no grammar) and any
  other key. A config message after the first audio frame changes nothing (as in vosk-server).
- binary frames: mono PCM16 little-endian at that rate, any length up to `limits.max_frame_bytes`.
- `{"eof" : 1}`: end of the audio.

Server -> client: exactly one JSON text message per audio frame:

- `{"partial": "..."}` while the current utterance goes on: the newest hypothesis of the
  utterance not yet delivered ("" when there is none, e.g. in silence);
- `{"text": "..."}` for the frame in which tympan's segmenter ended an utterance (after
  `vad.silence_ms` of silence, or at `vad.max_utterance_s`): its final, which may be "" (an
  utterance was heard, nothing recognised). The answer waits for the final's decode (usually
  done already: it starts speculatively at the pause), at most 5 s; a final that takes longer
  answers a later frame. Finals come in order and none is skipped;
- with `max_alternatives` > 0 a result is `{"alternatives": [{"text": "...", "confidence": 1.0}]}`
  (one alternative; tympan has no n-best list or score, so the confidence is always 1.0).

After `{"eof" : 1}` the open utterance is ended and decoded, and its result is the answer
(`{"text": ""}` when nothing was left), then the server closes (1000). Should more than one
final still be pending (only after a slow decode), each comes as its own message before the close.

Word times: tympan's model produces text only, no word timings or confidences, so results never
carry vosk's `"result": [{"word", "start", "end", "conf"}, ...]` list, whatever `words` says:
they look like vosk's results with `words` off (and like vosk's results for an utterance without
words). Clients that build subtitles from word times get none; the utterance's text is there.
Text is tympan's transcript as the model writes it (casing and punctuation included), not
vosk's lower-case words.

Errors: vosk-server has no error message, so errors close the connection with a reason: invalid
JSON, a text message that is neither config nor eof, a bad `sample_rate` or `max_alternatives`
(1008); a binary frame with an odd number of bytes (1003); a frame over
`limits.max_frame_bytes` (1009); at capacity (1013); no first message within
`limits.start_timeout_s`, idle for `limits.idle_timeout_s` or past `limits.max_session_s` (1008).
Other sessions are not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tympan.daemon.protocol import MAX_RATE, MIN_RATE, ProtocolError, Request, decode_audio
from tympan.daemon.session import Closing, StreamSession

log = logging.getLogger("tympan.vosk")

VOSK_PATH = "/vosk"
DEFAULT_RATE = 8000  # vosk-server's default sample rate (VOSK_SAMPLE_RATE)
FINAL_WAIT_S = 5.0  # at most this long an answer waits for the final of an utterance that has ended


def _reason(text: str) -> str:
    """A close reason fits 123 bytes of UTF-8."""
    return text.encode("utf-8")[:120].decode("utf-8", errors="ignore")


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"'{key}' must be a number, got {value!r}")
    if isinstance(value, str):  # vosk-server converts with float()/int(): "16000" works there too
        try:
            return float(value.strip())
        except ValueError:
            raise ValueError(f"'{key}' must be a number, got {value[:20]!r}") from None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # a 400-digit integer
            return math.inf
    raise ValueError(f"'{key}' must be a number, got {type(value).__name__}")


@dataclass
class VoskConfig:
    sample_rate: int = DEFAULT_RATE
    max_alternatives: int = 0

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a `config` object; raises ValueError naming the bad key."""
        if "sample_rate" in changes:
            rate = _number(changes["sample_rate"], "sample_rate")
            if not math.isfinite(rate) or rate != int(rate):
                raise ValueError("'sample_rate' must be a whole number of Hz")
            if not MIN_RATE <= rate <= MAX_RATE:
                raise ValueError(f"'sample_rate' {int(rate)} is outside {MIN_RATE}-{MAX_RATE} Hz")
            self.sample_rate = int(rate)
        if "max_alternatives" in changes:
            n = _number(changes["max_alternatives"], "max_alternatives")
            if not math.isfinite(n) or n != int(n) or n < 0:
                raise ValueError("'max_alternatives' must be a whole number >= 0")
            self.max_alternatives = int(n)


class VoskSession(StreamSession):
    """vosk-server's request/response rhythm over tympan's segmentation, engine and finals."""

    def __init__(self, daemon: Any, websocket: Any) -> None:
        super().__init__(daemon, websocket)
        self.vosk = VoskConfig()
        self.streaming = False  # the first audio frame fixes the configuration
        self.results: list[tuple[int, str]] = []  # finals not yet delivered: (segment_id, text)
        self.hypotheses: dict[int, str] = {}  # newest partial text of each live segment
        self.result_ready = asyncio.Event()
        self.first: tuple[str | bytes, str] | None = None  # the frame read by _start, handled by _loop

    # -- tympan's results, held for the next answer ------------------------------------------------

    def partial_message(self, fields: dict[str, Any]) -> None:
        self.hypotheses[fields["segment_id"]] = fields["text"]
        return None  # nothing is pushed: partials go out as answers to audio frames

    def final_message(self, fields: dict[str, Any]) -> None:
        self.results.append((fields["segment_id"], fields["text"]))
        self.hypotheses.pop(fields["segment_id"], None)
        self.result_ready.set()
        return None

    def send(self, message: str | None, droppable: bool = False) -> None:
        """tympan's own events (ready, error, done) have no place in this protocol: only answers go out."""
        if message is not None:
            log.warning("session %s: not sent to the Vosk client: %s", self.id, message)

    def _answer(self, obj: dict[str, Any]) -> None:
        StreamSession.send(self, json.dumps(obj, ensure_ascii=False))

    def _result(self, text: str) -> dict[str, Any]:
        if self.vosk.max_alternatives > 0:
            return {"alternatives": [{"text": text, "confidence": 1.0}]}
        return {"text": text}

    def _waiting_for_final(self) -> bool:
        """An utterance has ended (the endpoint decided) and its final is not out yet."""
        return any(u.confirmed for u in self.utterances.values())

    def _next_result(self, force: bool = False) -> str | None:
        """The oldest undelivered final, unless an older ended utterance is still being decoded."""
        if not self.results:
            return None
        first = min(self.results)
        if not force and any(u.confirmed and u.segment_id < first[0] for u in self.utterances.values()):
            return None
        self.results.remove(first)
        return first[1]

    def _hypothesis(self) -> str:
        for seg in sorted(self.hypotheses):
            if seg in self.utterances:
                return self.hypotheses[seg]
            del self.hypotheses[seg]  # finished or dropped
        return ""

    async def _await_finals(self, timeout: float, all_of_them: bool) -> None:
        """Wait (bounded) for a final, or with `all_of_them` until no ended utterance is left undecoded."""
        deadline = time.monotonic() + timeout
        while self._waiting_for_final() and (all_of_them or not self.results):
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("session %s: finals still decoding after %.1f s; answering without them", self.id,
                            timeout)
                return
            self.result_ready.clear()
            # Also wakes up now and then: a failed decode forgets its utterance without a final.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.result_ready.wait(), min(left, 0.05))

    # -- the protocol --------------------------------------------------------------------------------

    async def _start(self) -> None:
        """The first frame (a config, audio or eof; vosk clients get no greeting), then admission."""
        self.request = Request(task="asr", target_lang="en")
        try:
            self.daemon.check_request(self.request)
        except ProtocolError as e:
            raise Closing(1008, _reason(f"unsupported: {e}")) from None
        frame = await self._recv(self.cfg.limits.start_timeout_s)
        kind = "audio" if isinstance(frame, bytes) else self._text_message(frame)  # a bad one is refused here
        if not self.daemon.admit(self):
            raise Closing(1013, "overloaded: the server is at capacity; try again later")
        self.admitted = True
        self.id = f"vosk-{uuid.uuid4().hex[:12]}"
        self.first = (frame, kind)

    def _begin_audio(self) -> None:
        from tympan.daemon.vad import Segmenter

        self.streaming = True
        rate, model_rate = self.vosk.sample_rate, self.daemon.model.sample_rate
        if rate != model_rate:
            import soxr

            self.resampler = soxr.ResampleStream(rate, model_rate, 1, dtype="float32")
        self.segmenter = Segmenter(self.cfg.vad, model_rate)
        log.info("session %s started (vosk, %d Hz pcm_s16le)", self.id, rate)

    async def _loop(self) -> None:
        limit = self.cfg.limits.max_session_s
        while True:
            if self.first is not None:
                (frame, kind), self.first = self.first, None
            else:
                if time.monotonic() - self.started_at > limit:
                    raise Closing(1008, f"session longer than {limit:g} s; start a new one")
                await self.room.wait()  # backpressure, as on /v1/stream: finals pending beyond limits.session_backlog
                frame = await self._recv(self.cfg.limits.idle_timeout_s)
                kind = "audio" if isinstance(frame, bytes) else self._text_message(frame)
            if isinstance(frame, bytes):
                try:
                    audio = decode_audio(frame, "pcm_s16le")
                except ProtocolError as e:
                    raise Closing(1003, _reason(f"invalid audio: {e}")) from None
                if not self.streaming:
                    self._begin_audio()
                self._audio(audio)
                await self._await_finals(FINAL_WAIT_S, all_of_them=False)
                text = self._next_result()
                self._answer(self._result(text) if text is not None else {"partial": self._hypothesis()})
            elif kind == "eof":
                await self._end_of_stream()
                await self._await_finals(max(self.cfg.limits.idle_timeout_s, FINAL_WAIT_S), all_of_them=True)
                texts = []
                while (text := self._next_result(force=True)) is not None:
                    texts.append(text)
                for text in texts or [""]:
                    self._answer(self._result(text))
                raise Closing(1000, "eof")

    def _text_message(self, frame: str) -> str:
        """A config (applied before the audio) or "eof"; anything else ends the session."""
        try:
            message = json.loads(frame)
        except json.JSONDecodeError as e:
            raise Closing(1008, _reason(f"text frame is not valid JSON: {e.msg} at column {e.colno}")) from None
        except (ValueError, RecursionError):  # absurd nesting or numbers
            raise Closing(1008, "text frame is not valid JSON (nested too deeply or too large)") from None
        if not isinstance(message, dict):
            raise Closing(1008, 'a text frame must be {"config": {...}} or {"eof": 1}')
        if "config" in message:
            changes = message["config"]
            if not isinstance(changes, dict):
                raise Closing(1008, "'config' must be a JSON object")
            if self.streaming:
                log.info("session %s: config after the audio started ignored (as vosk-server does)", self.id)
                return "config"
            try:
                self.vosk.update(changes)
            except ValueError as e:
                raise Closing(1008, _reason(f"bad config: {e}")) from None
            return "config"
        if message.get("eof"):
            return "eof"
        raise Closing(1008, 'unknown text message: send {"config": {...}} or {"eof": 1}')

    async def close(self, code: int, reason: str) -> None:
        """Shutdown: finals decoded since the last answer still reach the client before the close."""
        while (text := self._next_result(force=True)) is not None:
            self._answer(self._result(text))
        await super().close(code, reason)
