"""Vosk-compatible streaming at `ws://HOST:PORT/vosk`: existing vosk-server websocket clients work unchanged.

Point a Vosk client (vosk-server's `websocket/test.py`, `test_microphone.py`, or anything written
for vosk-server's websocket protocol) at `ws://HOST:PORT/vosk` instead of `ws://HOST:2700`
(`wss://` with `[tls]`; `auth.token` applies as on `/v1/stream`). The task is always English ASR.

Client -> server:

- optionally, before the audio, `{"config": {...}}` text messages (later ones update earlier
  ones). Honoured: `sample_rate` (8000-48000 Hz, a whole number; default 8000, as vosk-server's
  default `VOSK_SAMPLE_RATE`; any rate is resampled server-side), `max_alternatives` (> 0
  switches results to the n-best shape below, with one alternative) and `words` (default true, as
  vosk-server's `VOSK_SHOW_WORDS`: results carry word times, see below). Accepted and ignored:
  `phrase_list` (no grammar) and any other key. A config message after the first audio frame
  changes nothing (as in vosk-server).
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

Word times: with a second pass of hearing (the default model's Whisper decoder) and `words` on, a
result with text carries vosk's `"result": [{"conf", "end", "start", "word"}, ...]` list: times in
seconds from the start of the stream, `conf` the mean probability of the word's tokens (with
alternatives, each alternative's `result` has start, end and word, as vosk's n-best results do). A
model without it gives text only: results then look like vosk's with `words` off. Text is tympan's
transcript as the model writes it (casing and punctuation included), not vosk's lower-case words.

Errors: vosk-server has no error message, so errors close the connection with a reason: invalid
JSON, a text message that is neither config nor eof, a bad `sample_rate` or `max_alternatives`
(1008); a binary frame with an odd number of bytes (1003); a frame over
`limits.max_frame_bytes` (1009); at capacity (1013); no first message within
`limits.start_timeout_s`, idle for `limits.idle_timeout_s` or past `limits.max_session_s` (1008);
finals the model has not decoded for `limits.idle_timeout_s` while the client waits to send more
(1011). Other sessions are not affected.

This module is the protocol's codec (codec.py) over tympan's protocol-neutral session (session.py).
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

from tympan.daemon.codec import DONE, Closing, Codec
from tympan.daemon.events import Audio, Command, Done, End, Endpoint, Error, Event, Final, Lost, Open, Partial, Shutdown
from tympan.daemon.protocol import MAX_RATE, MIN_RATE, ProtocolError, Request, decode_audio

log = logging.getLogger("tympan.vosk")

VOSK_PATH = "/vosk"
DEFAULT_RATE = 8000  # vosk-server's default sample rate (VOSK_SAMPLE_RATE)
FINAL_WAIT_S = 5.0  # at most this long an answer waits for the final of an utterance that has ended
# The one task of a Vosk client; word times are asked for always (vosk-server shows words by default) and left
# out of the results when the client's config turns `words` off.
ASR = Request(task="asr", target_lang="en", word_times=True)


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
    words: bool = True

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
        if "words" in changes:
            words = changes["words"]
            if not isinstance(words, bool | int) or words not in (0, 1):
                raise ValueError(f"'words' must be true or false, got {str(words)[:20]!r}")
            self.words = bool(words)


class VoskCodec(Codec):
    """vosk-server's request/response rhythm: finals are held for the answer to the next audio frame."""

    name = "vosk"
    final_wait_s = FINAL_WAIT_S
    answers_frames = True

    def __init__(self) -> None:
        self.vosk = VoskConfig()
        self.session_id = ""  # chosen here, with the first frame: vosk clients name no session
        self.streaming = False  # the first audio frame fixes the configuration
        self.results: list[Final] = []  # finals not yet delivered
        self.hypotheses: dict[int, str] = {}  # newest partial text of each utterance going on
        self.owed: set[int] = set()  # utterances that have ended and whose final has not come yet
        self.settled = asyncio.Event()  # set when a final comes, or an owed utterance is lost

    # -- the client's frames ------------------------------------------------------------------------

    def parse(self, frame: str | bytes) -> list[Command]:
        """The first frame, whatever it is (a config, audio or eof: vosk clients get no greeting), opens the session."""
        opening = not self.session_id
        if opening:
            self.session_id = f"vosk-{uuid.uuid4().hex[:12]}"
        commands = self._audio(frame) if isinstance(frame, bytes) else self._text(frame)
        return [Open(ASR, self.session_id), *commands] if opening else commands

    def _audio(self, frame: bytes) -> list[Command]:
        try:
            samples = decode_audio(frame, "pcm_s16le")
        except ProtocolError as e:
            raise Closing(1003, _reason(f"invalid audio: {e}")) from None
        self.streaming = True
        return [Audio(samples, self.vosk.sample_rate)]

    def _text(self, frame: str) -> list[Command]:
        """A config (applied before the audio) or eof; anything else ends the session."""
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
                log.info("session %s: config after the audio started ignored (as vosk-server does)", self.session_id)
                return []
            try:
                self.vosk.update(changes)
            except ValueError as e:
                raise Closing(1008, _reason(f"bad config: {e}")) from None
            return []
        if message.get("eof"):
            return [End()]
        raise Closing(1008, 'unknown text message: send {"config": {...}} or {"eof": 1}')

    # -- the session's events: held for the next answer -------------------------------------------------

    def render(self, event: Event) -> list[str]:
        if isinstance(event, Partial):
            self.hypotheses[event.segment_id] = event.text
        elif isinstance(event, Endpoint):
            self.owed.add(event.segment_id)
        elif isinstance(event, Final):
            self.results.append(event)
            self._settle(event.segment_id)
        elif isinstance(event, Lost):
            self._settle(event.segment_id)
        elif isinstance(event, Error):
            log.warning("session %s: not sent to the Vosk client: %s", self.session_id, event.message)
        elif isinstance(event, Done):
            # After eof: every final left (the wait for them is over), or vosk's empty result.
            finals: list[Final | None] = [*self._all_results()]
            return [self._result(final) for final in finals or [None]]
        elif isinstance(event, Shutdown):
            # Finals decoded since the last answer still reach the client before the close.
            return [self._result(final) for final in self._all_results()]
        return []

    def _settle(self, segment_id: int) -> None:
        self.owed.discard(segment_id)
        self.hypotheses.pop(segment_id, None)
        self.settled.set()

    async def answer(self) -> list[str]:
        """The oldest final not yet delivered (waiting for one that is owed, bounded), else the hypothesis."""
        await self._await_final()
        final = self._next_result()
        if final is not None:
            return [self._result(final)]
        hypothesis = self.hypotheses[min(self.hypotheses)] if self.hypotheses else ""
        return [json.dumps({"partial": hypothesis}, ensure_ascii=False)]

    async def _await_final(self) -> None:
        deadline = time.monotonic() + FINAL_WAIT_S
        while self.owed and not self.results:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("session %s: finals still decoding after %.1f s; answering without them",
                            self.session_id, FINAL_WAIT_S)
                return
            self.settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.settled.wait(), left)

    def _next_result(self) -> Final | None:
        """The oldest undelivered final, unless an older utterance that has ended is still being decoded."""
        if not self.results:
            return None
        first = min(self.results, key=lambda f: f.segment_id)
        if any(segment_id < first.segment_id for segment_id in self.owed):
            return None
        self.results.remove(first)
        return first

    def _all_results(self) -> list[Final]:
        finals = sorted(self.results, key=lambda f: f.segment_id)
        self.results.clear()
        return finals

    def _result(self, final: Final | None) -> str:
        """A final as vosk's result (None: vosk's empty result)."""
        text = final.text if final is not None else ""
        words = final.words if final is not None and final.text and self.vosk.words else ()
        if self.vosk.max_alternatives > 0:
            alternative: dict[str, Any] = {"text": text, "confidence": 1.0}
            if words:
                alternative["result"] = [{"start": w.start, "end": w.end, "word": w.word} for w in words]
            return json.dumps({"alternatives": [alternative]}, ensure_ascii=False)
        body: dict[str, Any] = {"text": text}
        if words:
            body = {"result": [{"conf": w.probability, "end": w.end, "start": w.start, "word": w.word}
                               for w in words], **body}
        return json.dumps(body, ensure_ascii=False)

    def farewell(self, closing: Closing) -> tuple[list[str], str]:
        """vosk-server has no error message: the close reason says what was wrong."""
        if closing.reason == DONE:
            return [], "eof"
        e = closing.error
        if e is None or e.code == "internal":
            return [], closing.reason
        # A request the model or the server refuses (unsupported, overloaded) names its code.
        return [], _reason(str(e) if e.code == "bad_request" else f"{e.code}: {e}")
