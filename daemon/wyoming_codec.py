"""Wyoming speech-to-text as a codec: `transcribe`, `audio-start`, `audio-chunk`, `audio-stop` in, `transcript`
(with the streaming `transcript-start` / `transcript-chunk` / `transcript-stop` around it) out.

One session is one transcription: `audio-stop` ends it with its transcript, and the Wyoming server
(wyoming_server.py) starts the next session on the same connection. `describe` and `ping` are answered by
the connection itself (no session needed); other event types are ignored, as Wyoming peers do.

Languages: tympan hears English. `transcribe`'s `language` is taken as the language of the text wanted:
`en` (or none) transcribes, `de`, `it` or `zh` translates (region suffixes like `de-DE` are dropped). Its
`transcript_names` and `transcript_terms` become the request's context (names and terms to expect).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tympan.daemon.codec import BAD_START, Closing, Codec
from tympan.daemon.events import Audio, Command, Configure, Done, End, Error, Event, Final, Onset, Open
from tympan.daemon.protocol import LANGS, MAX_RATE, MAX_TEXT, MIN_RATE, ProtocolError, Request
from tympan.daemon.transcript import Transcript
from tympan.daemon.wyoming_frames import FramingError, WyomingEvent, decode, encode

log = logging.getLogger("tympan.wyoming")
WIDTHS = {2: "<i2", 4: "<i4"}  # bytes per sample -> numpy type (Wyoming sends 16-bit PCM; 32-bit accepted)


def request_for(data: dict[str, Any]) -> Request:
    """A `transcribe` event's data as tympan's request; ProtocolError naming a bad field."""
    language = data.get("language")
    if language is not None and not isinstance(language, str):
        raise ProtocolError("bad_request", "'language' must be a string")
    lang = (language or "en").replace("_", "-").split("-")[0].lower()
    if lang not in LANGS:
        raise ProtocolError("unsupported", f"language {language!r} is not one tympan can write: tympan hears English "
                                           f"and writes {', '.join(LANGS)} (en transcribes, the others translate)")
    terms: list[str] = []
    for key in ("transcript_names", "transcript_terms"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProtocolError("bad_request", f"'{key}' must be a list of strings")
        terms += [v.strip() for v in value if v.strip()]
    context = ", ".join(terms)[:MAX_TEXT] or None
    return Request("asr", "en", context=context) if lang == "en" else Request("st", lang, context=context)


def _positive_int(data: dict[str, Any], key: str, default: int | None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ProtocolError("bad_request", f"audio '{key}' must be a whole number > 0, got {str(value)[:20]!r}")
    return value


class AudioFormat:
    """rate, width, channels: from audio-start, overridden by each chunk's own fields (Wyoming chunks carry them)."""

    def __init__(self) -> None:
        self.rate, self.width, self.channels = 16000, 2, 1

    def update(self, data: dict[str, Any]) -> None:
        rate = _positive_int(data, "rate", self.rate)
        width = _positive_int(data, "width", self.width)
        channels = _positive_int(data, "channels", self.channels)
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ProtocolError("unsupported", f"audio rate {rate} is outside {MIN_RATE}-{MAX_RATE} Hz")
        if width not in WIDTHS:
            raise ProtocolError("unsupported", f"audio width {width} is not supported (2: 16-bit PCM, or 4)")
        if channels > 8:
            raise ProtocolError("unsupported", f"audio with {channels} channels is not supported (at most 8)")
        self.rate, self.width, self.channels = rate, width, channels

    def samples(self, payload: bytes) -> np.ndarray:
        frame = self.width * self.channels
        if len(payload) % frame:
            raise ProtocolError("bad_request", f"an audio chunk of {len(payload)} bytes is not a whole number of "
                                               f"{frame}-byte frames ({self.channels} x {self.width}-byte samples)")
        pcm = np.frombuffer(payload, dtype=WIDTHS[self.width]).astype(np.float32) / float(1 << (8 * self.width - 1))
        return pcm.reshape(-1, self.channels).mean(axis=1) if self.channels > 1 else pcm


class WyomingCodec(Codec):
    name = "wyoming"
    partials = False  # its text streams from finals only

    def __init__(self) -> None:
        self.opened = False
        self.request = Request()
        self.format = AudioFormat()
        self.transcript = Transcript()
        self.started = False  # transcript-start sent

    # -- the client's events --------------------------------------------------------------------------

    def parse(self, frame: str | bytes) -> list[Command]:
        try:
            event = decode(frame.encode() if isinstance(frame, str) else frame)
        except FramingError as e:
            raise ProtocolError("bad_request", str(e)) from None
        if event.type == "transcribe":
            return self._transcribe(event)
        if event.type in ("audio-start", "audio-chunk"):
            opening = self._open(self.request)
            try:
                self.format.update(event.data)
                commands: list[Command] = [] if event.type == "audio-start" else [self._audio(event)]
            except ProtocolError as e:
                raise Closing(1003, "invalid audio", e) from None
            return opening + commands
        if event.type == "audio-stop":
            return [*self._open(self.request), End()]
        log.debug("ignored a Wyoming %r event", event.type[:40])
        return []

    def _transcribe(self, event: WyomingEvent) -> list[Command]:
        try:
            request = request_for(event.data)
        except ProtocolError as e:
            if not self.opened:
                raise Closing(1008, BAD_START, e) from None
            raise
        if not self.opened:
            return self._open(request)
        self.request = request
        return [Configure(lambda _: request)]

    def _open(self, request: Request) -> list[Command]:
        if self.opened:
            return []
        self.opened, self.request = True, request
        return [Open(request)]

    def _audio(self, event: WyomingEvent) -> Audio:
        return Audio(self.format.samples(event.payload), self.format.rate)

    # -- the session's events -------------------------------------------------------------------------

    def _start(self) -> list[str]:
        if self.started:
            return []
        self.started = True
        return [encode("transcript-start", {"language": self.request.target_lang})]

    def render(self, ev: Event) -> list[str]:
        if isinstance(ev, Onset):
            return self._start()
        if isinstance(ev, Final):
            added = self.transcript.add(ev)
            return [*self._start(), encode("transcript-chunk", {"text": added})] if added else []
        if isinstance(ev, Error):
            return [encode("error", {"text": ev.message, "code": ev.code})]
        if isinstance(ev, Done):
            # Wyoming's order: the stream, the plain transcript (for clients that know no streaming), its end.
            return [*self._start(),
                    encode("transcript", {"text": self.transcript.text, "language": self.request.target_lang}),
                    encode("transcript-stop")]
        return []

    def farewell(self, closing: Closing) -> tuple[list[str], str]:
        e = closing.error
        return ([encode("error", {"text": str(e), "code": e.code})] if e is not None else []), closing.reason
