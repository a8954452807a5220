"""Protocol v1 (`/v1/stream`) as a codec: its messages (protocol.py) in, its JSON events out.

The first frame must be `start`; audio frames are in the encoding it announced; `config` changes
the request between utterances; `stop` ends the stream. Every event is pushed as it happens.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial

from tympan.daemon.codec import BAD_START, Closing, Codec
from tympan.daemon.events import (
    Audio,
    Command,
    Configure,
    Done,
    End,
    Error,
    Event,
    Final,
    Open,
    Partial,
    Ready,
    Translation,
    TurnEvent,
    final_dict,
    turn_dict,
)
from tympan.daemon.protocol import (
    VERSION,
    ProtocolError,
    Reconfigure,
    Start,
    apply_config,
    decode_audio,
    error_event,
    event,
    parse_text,
    request_dict,
)

# Error messages may quote what the client sent. Quoted whole, an error could be as large as the frame
# that caused it (limits.max_frame_bytes), and limits.send_queue of them wait for a client that does not read.
MAX_ERROR_CHARS = 300


def error_message(error: Error) -> str:
    """The error event, its text cut short."""
    message = error.message
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return error_event(error.code, message)


class V1Codec(Codec):
    name = "v1"

    def __init__(self) -> None:
        self.started: Start | None = None

    def parse(self, frame: str | bytes) -> list[Command]:
        if self.started is None:
            return [self._start(frame)]
        if isinstance(frame, bytes):
            try:
                samples = decode_audio(frame, self.started.encoding)
            except ProtocolError as e:
                raise Closing(1003, "invalid audio frame", e) from None
            return [Audio(samples, self.started.sample_rate)]
        message = parse_text(frame)
        if isinstance(message, Start):
            raise ProtocolError("bad_request", "already started; send 'config' to change the request")
        if isinstance(message, Reconfigure):
            return [Configure(partial(apply_config, message=message))]
        return [End()]

    def _start(self, frame: str | bytes) -> Open:
        if isinstance(frame, bytes):
            raise Closing(1008, "audio before start",
                          ProtocolError("bad_request", "audio before 'start': send a start message first"))
        try:
            message = parse_text(frame)
        except ProtocolError as e:
            raise Closing(1008, BAD_START, e) from None
        if not isinstance(message, Start):
            raise Closing(1008, BAD_START, ProtocolError("bad_request", "the first message must be 'start'"))
        self.started = message
        return Open(message.request, message.session_id)

    def render(self, ev: Event) -> list[str]:
        if isinstance(ev, Ready):
            return [event("ready", session_id=ev.session_id, protocol=VERSION, model=ev.model, limits=ev.limits,
                          request=request_dict(ev.request))]
        if isinstance(ev, Partial):
            return [event("partial", **asdict(ev))]
        if isinstance(ev, Translation):
            return [event("translation", **asdict(ev))]
        if isinstance(ev, Final):
            return [event("final", **final_dict(ev))]
        if isinstance(ev, TurnEvent):
            fields = turn_dict(ev)
            return [event(fields.pop("type"), **fields)]
        if isinstance(ev, Error):
            return [error_message(ev)]
        if isinstance(ev, Done):
            return [event("done", session_id=ev.session_id)]
        return []  # Endpoint, Lost, Shutdown: v1 clients learn of them through finals and errors

    def farewell(self, closing: Closing) -> tuple[list[str], str]:
        e = closing.error
        return ([error_message(Error(e.code, str(e)))] if e is not None else []), closing.reason
