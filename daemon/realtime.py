"""OpenAI's Realtime transcription websocket, `/v1/realtime?intent=transcription`, as a codec.

Both dialects of the API are spoken: the beta one (header `OpenAI-Beta: realtime=v1`, or the subprotocol
`openai-beta.realtime-v1`: `transcription_session.update` / `.created` / `.updated`) and the GA one
(`session.update` with `session.type = "transcription"`, `session.created` / `.updated`). The server speaks
first: the session opens on connect (English ASR) and says `...created`.

Client -> server: the session update (`language`: en transcribes, de/it/zh translate, tympan's extension;
`prompt`: names and terms to expect; `input_audio_format` pcm16 only; `turn_detection`: `server_vad`, the
silence endpoint (its timings are the daemon's `[vad]`), or `semantic_vad` with `eagerness` high, medium (or
auto) or low: tympan's end-of-turn presets aggressive, balanced and conservative; none: the daemon's
`[turn]`), `input_audio_buffer.append` (base64 PCM16,
mono, 24 kHz). `input_audio_buffer.commit` and `.clear` are refused with an error event: turns are ended by
the server VAD. Server -> client: `input_audio_buffer.speech_started`, `.speech_stopped`, `.committed`, then
`conversation.item.input_audio_transcription.delta` and `.completed` per turn (`.failed` if its decode
failed; a translation's deltas come as the text LLM writes it), and `error` events
(`{"type": "error", "error": {"type", "code", "message", "event_id"}}`).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

import numpy as np

from tympan.daemon.codec import Closing, Codec
from tympan.daemon.events import (
    Audio,
    Command,
    Configure,
    Configured,
    Endpoint,
    Error,
    Event,
    Final,
    Lost,
    Onset,
    Open,
    Ready,
    Translation,
)
from tympan.daemon.protocol import LANGS, MAX_TEXT, ProtocolError, Request

EAGERNESS = {"high": "aggressive", "medium": "balanced", "auto": "balanced", "low": "conservative"}

REALTIME_PATH = "/v1/realtime"
RATE = 24000  # pcm16 in the realtime API is 24 kHz mono
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


def is_beta(headers: Any) -> bool:
    """Whether the client speaks the beta dialect (its header or subprotocol says so)."""
    return "realtime=v1" in (headers.get("OpenAI-Beta") or "") or \
        BETA_SUBPROTOCOL in (headers.get("Sec-WebSocket-Protocol") or "")


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("bad_request", f"'{name}' must be an object")
    return value


def _transcription_settings(session: dict[str, Any], beta: bool) -> tuple[dict[str, Any], str | None]:
    """(the transcription settings, the audio format asked for) from a session update, in either dialect."""
    if beta:
        fmt = session.get("input_audio_format")
        return _object(session.get("input_audio_transcription"), "input_audio_transcription"), fmt
    audio_in = _object(_object(session.get("audio"), "audio").get("input"), "audio.input")
    fmt_obj = _object(audio_in.get("format"), "audio.input.format")
    fmt = None
    if fmt_obj:
        fmt = "pcm16" if fmt_obj.get("type") == "audio/pcm" and fmt_obj.get("rate", RATE) == RATE else \
            str(fmt_obj.get("type"))
    return _object(audio_in.get("transcription"), "audio.input.transcription"), fmt


def _turn(session: dict[str, Any], beta: bool, current: str | None) -> tuple[str | None, str | None]:
    """The turn setting a session update asks for (protocol.TURNS; `current` where it names none), and the
    semantic_vad eagerness word it used (echoed back as the client wrote it)."""
    holder = session if beta else _object(_object(session.get("audio"), "audio").get("input"), "audio.input")
    if "turn_detection" not in holder:
        return current, None
    detection = holder["turn_detection"]
    if detection is None:
        raise ProtocolError("unsupported", "turn_detection null (turns committed by the client) is not supported: "
                                           "tympan ends each turn itself (server_vad or semantic_vad)")
    detection = _object(detection, "turn_detection")
    kind = detection.get("type")
    if kind == "server_vad":
        return "silence", None
    if kind == "semantic_vad":
        eagerness = detection.get("eagerness", "auto")
        if not isinstance(eagerness, str) or eagerness not in EAGERNESS:
            raise ProtocolError("bad_request", f"turn_detection.eagerness must be one of {', '.join(EAGERNESS)}, "
                                               f"got {str(eagerness)[:20]!r}")
        return EAGERNESS[eagerness], eagerness
    raise ProtocolError("bad_request",
                        f"turn_detection.type must be server_vad or semantic_vad, got {str(kind)[:30]!r}")


def _lang(language: str) -> str:
    """"de", "DE", "de-DE", "de_DE" -> "de"."""
    return language.replace("_", "-").split("-")[0].lower()


class RealtimeCodec(Codec):
    name = "realtime"
    partials = False  # its text streams from finals only
    translation_deltas = True  # a dropped delta would leave the client's text without its words

    def __init__(self, beta: bool) -> None:
        self.beta = beta
        self.settings: dict[str, Any] = {"model": "tympan", "language": "en", "prompt": ""}
        # An update the session has not taken yet: its request, transcription settings and eagerness word.
        self.proposed: tuple[Request, dict[str, Any], str | None] | None = None
        self.turn: str | None = None  # the session's turn setting (protocol.TURNS), once it is open
        self.eagerness: str | None = None  # the semantic_vad eagerness the client chose, as it wrote it
        self.items: dict[int, str] = {}  # segment id -> item id
        self.committed: set[int] = set()
        self.sent: dict[int, str] = {}  # segment id -> the text its deltas have carried so far
        self.previous: str | None = None
        self.events = 0
        self.id = f"sess_{uuid.uuid4().hex[:20]}"

    # -- the client's events --------------------------------------------------------------------------------

    def greeting(self) -> list[Command]:
        return [Open(Request("asr", "en", eager_turn=False), self.id)]

    def parse(self, frame: str | bytes) -> list[Command]:
        if isinstance(frame, bytes):
            raise ProtocolError("bad_request", "binary frames are not part of the realtime API: send "
                                               "input_audio_buffer.append with base64 audio")
        try:
            message = json.loads(frame)
        except (ValueError, RecursionError):
            raise ProtocolError("bad_request", "the event is not valid JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError("bad_request", "an event must be a JSON object with a 'type'")
        kind = message["type"]
        if kind in ("transcription_session.update", "session.update"):
            return [self._update(_object(message.get("session"), "session"))]
        if kind == "input_audio_buffer.append":
            return [self._append(message.get("audio"))]
        if kind in ("input_audio_buffer.commit", "input_audio_buffer.clear"):
            raise ProtocolError("unsupported", f"{kind} is not supported: tympan's server VAD ends each turn")
        raise ProtocolError("bad_request", f"unknown or unsupported event type {kind[:60]!r}")

    def _update(self, session: dict[str, Any]) -> Command:
        transcription, fmt = _transcription_settings(session, self.beta)
        if fmt not in (None, "pcm16"):
            raise ProtocolError("unsupported", f"input audio format {str(fmt)[:30]!r} is not supported (pcm16, 24 kHz)")
        language, prompt = transcription.get("language"), transcription.get("prompt")
        if language is not None and (not isinstance(language, str) or _lang(language) not in LANGS):
            raise ProtocolError("unsupported", f"language {str(language)[:20]!r}: tympan hears English and writes "
                                               f"{', '.join(LANGS)}")
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_TEXT):
            raise ProtocolError("bad_request", f"prompt must be a string of at most {MAX_TEXT} characters")
        lang = _lang(language) if language else self.settings["language"]
        context = prompt if prompt is not None else self.settings["prompt"]
        turn, eagerness = _turn(session, self.beta, self.turn)
        # No eager end of turn: the API has no event for it.
        request = Request("asr", "en", context=context or None, turn=turn, eager_turn=False) if lang == "en" else \
            Request("st", lang, context=context or None, turn=turn, eager_turn=False)
        # Kept only once the session takes the request (Configured): a refused one leaves the settings as they were.
        self.proposed = (request, {"model": str(transcription.get("model") or self.settings["model"])[:60],
                                   "language": lang, "prompt": context}, eagerness)
        return Configure(lambda _: request)

    def _append(self, audio: Any) -> Audio:
        if not isinstance(audio, str):
            raise ProtocolError("bad_request", "'audio' must be base64-encoded PCM16")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("bad_request", "'audio' is not valid base64") from None
        if len(pcm) % 2:
            raise ProtocolError("bad_request", f"'audio' decodes to {len(pcm)} bytes: not whole 16-bit samples")
        return Audio(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, RATE)

    # -- the session's events -------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> str:
        self.events += 1
        return json.dumps({"type": kind, "event_id": f"event_{self.events}", **fields}, ensure_ascii=False)

    def _session(self) -> dict[str, Any]:
        turns: dict[str, Any] = {"type": "server_vad"}
        if self.turn in EAGERNESS.values():
            word = self.eagerness if self.eagerness is not None and EAGERNESS[self.eagerness] == self.turn else \
                next(k for k, v in EAGERNESS.items() if v == self.turn)
            turns = {"type": "semantic_vad", "eagerness": word}
        if self.beta:
            return {"id": self.id, "object": "realtime.transcription_session", "input_audio_format": "pcm16",
                    "input_audio_transcription": self.settings, "turn_detection": turns, "modalities": ["text"]}
        return {"type": "transcription", "id": self.id, "object": "realtime.transcription_session",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE}, "transcription": self.settings,
                                    "turn_detection": turns}}}

    def _item(self, segment_id: int) -> str:
        return self.items.setdefault(segment_id, f"item_{uuid.uuid4().hex[:20]}")

    def render(self, ev: Event) -> list[str]:
        prefix = "transcription_session" if self.beta else "session"
        if isinstance(ev, Ready):
            self.turn = ev.request.turn
            return [self._event(f"{prefix}.created", session=self._session())]
        if isinstance(ev, Configured):
            if self.proposed is not None and self.proposed[0] == ev.request:
                self.settings, self.turn = self.proposed[1], ev.request.turn
                self.eagerness = self.proposed[2] or self.eagerness
            self.proposed = None
            return [self._event(f"{prefix}.updated", session=self._session())]
        if isinstance(ev, Onset):
            return [self._event("input_audio_buffer.speech_started", audio_start_ms=round(ev.start * 1000),
                                item_id=self._item(ev.segment_id))]
        if isinstance(ev, Endpoint):
            item = self._item(ev.segment_id)
            self.committed.add(ev.segment_id)
            previous, self.previous = self.previous, item
            return [self._event("input_audio_buffer.speech_stopped", audio_end_ms=round(ev.end * 1000), item_id=item),
                    self._event("input_audio_buffer.committed", previous_item_id=previous, item_id=item)]
        if isinstance(ev, Translation):
            sent = self.sent.get(ev.segment_id, "")
            if len(ev.text) <= len(sent) or not ev.text.startswith(sent):
                return []  # deltas only append: a rewritten beginning waits for `.completed`
            self.sent[ev.segment_id] = ev.text
            return [self._event("conversation.item.input_audio_transcription.delta", item_id=self._item(ev.segment_id),
                                content_index=0, delta=ev.text[len(sent):])]
        if isinstance(ev, Final):
            item = self._item(ev.segment_id)
            sent = self.sent.get(ev.segment_id, "")
            self._forget(ev.segment_id)
            usage = {"type": "duration", "seconds": round(ev.end - ev.start, 3)}
            rest = ev.text[len(sent):] if ev.text.startswith(sent) else ""
            return [*([self._event("conversation.item.input_audio_transcription.delta", item_id=item,
                                   content_index=0, delta=rest)] if rest or not sent else []),
                    self._event("conversation.item.input_audio_transcription.completed", item_id=item,
                                content_index=0, transcript=ev.text, usage=usage)]
        if isinstance(ev, Lost):
            item, committed = self._item(ev.segment_id), ev.segment_id in self.committed
            self._forget(ev.segment_id)
            if committed:
                return [self._event("conversation.item.input_audio_transcription.failed", item_id=item,
                                    content_index=0, error={"type": "server_error", "code": "decode_failed",
                                                            "message": "the turn could not be transcribed"})]
            return []  # never committed: a blip the segmenter dropped
        if isinstance(ev, Error):
            return [self._error(ev.code, ev.message)]
        return []

    def _forget(self, segment_id: int) -> None:
        self.items.pop(segment_id, None)
        self.sent.pop(segment_id, None)
        self.committed.discard(segment_id)

    def _error(self, code: str, message: str) -> str:
        kind = "server_error" if code in ("internal", "overloaded") else "invalid_request_error"
        return self._event("error", error={"type": kind, "code": code, "message": message[:300], "param": None,
                                           "event_id": None})

    def farewell(self, closing: Closing) -> tuple[list[str], str]:
        e = closing.error
        return ([self._error(e.code, str(e))] if e is not None else []), closing.reason
