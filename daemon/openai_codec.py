"""`POST /v1/audio/transcriptions` and `/translations` as a codec: an uploaded recording in, one HTTP answer out.

The route (openai_api.py) decodes the upload and hands the session its samples as f32le frames, then the
frame END; the codec opens the session on connect (its greeting) with the request the form asked for. Its
frames out are raw HTTP: the whole answer at Done (json, text, verbose_json, srt, vtt), or with `stream`, the
head of an event stream once the session is admitted, a `transcript.text.delta` per final and
`transcript.text.done` at the end. A session that is refused or fails answers with an OpenAI-shaped error.
"""

from __future__ import annotations

import logging

import numpy as np

from tympan.daemon import openai_formats as formats
from tympan.daemon.codec import DONE, Closing, Codec
from tympan.daemon.events import Audio, Command, Done, End, Error, Event, Final, Lost, Open, Ready, Shutdown
from tympan.daemon.http11 import HttpError, error_response, response
from tympan.daemon.protocol import Request
from tympan.daemon.transcript import Transcript

log = logging.getLogger("tympan.openai")
END = "end"  # the frame after the last audio frame
STATUS = {"bad_request": 400, "unsupported": 400, "unauthorized": 401, "overloaded": 503, "internal": 500}


class TranscriptionCodec(Codec):
    name = "openai"
    partials = False  # its text streams from finals only

    def __init__(self, request: Request, rate: int, fmt: str, stream: bool, task: str) -> None:
        self.request, self.rate, self.fmt, self.stream, self.task = request, rate, fmt, stream, task
        self.transcript = Transcript()
        self.samples = 0
        self.head_sent = False
        self.session_id = ""  # from Ready: the answer's x-request-id, the session id its finals are published under
        self.answered = False  # the answer (or an error in its place) is out: nothing more is sent
        self.failure: HttpError | None = None  # an utterance that could not be decoded

    @property
    def duration(self) -> float:
        return self.samples / self.rate

    def greeting(self) -> list[Command]:
        return [Open(self.request)]

    def parse(self, frame: str | bytes) -> list[Command]:
        if isinstance(frame, str):
            return [End()]
        samples = np.frombuffer(frame, dtype="<f4")
        self.samples += len(samples)
        return [Audio(samples, self.rate)]

    def render(self, ev: Event) -> list[str]:
        if self.answered:
            return []
        if isinstance(ev, Ready):
            self.session_id = ev.session_id
            if self.stream:
                self.head_sent = True
                return [response(200, "", "text/event-stream; charset=utf-8", length=False,
                                 request_id=self.session_id).decode("ascii")]
            return []
        if isinstance(ev, Final):
            added = self.transcript.add(ev)
            return [formats.delta_event(added)] if self.stream and added else []
        if isinstance(ev, Lost) and ev.failed and self.failure is None:
            # The transcript would miss this utterance: an answer without it would look whole.
            self.failure = HttpError(500, f"decoding utterance {ev.segment_id} failed; the transcript would be "
                                          "incomplete", "decode_failed")
        if isinstance(ev, Error):
            log.warning("transcription: %s", ev.message)
        if isinstance(ev, Shutdown):  # the daemon closes before the answer is ready
            return self._error(HttpError(503, "the server is shutting down; send the file again later",
                                         "shutting_down"))
        if isinstance(ev, Done):
            return self._done(ev)
        return []

    def _done(self, ev: Done) -> list[str]:
        if ev.drained:
            return self._error(HttpError(503, "the server is shutting down and cut this upload short; send the "
                                              "file again later", "shutting_down"))
        if self.failure is not None:
            return self._error(self.failure)
        if ev.gave_up:
            return self._error(HttpError(500, "the model did not finish every utterance in time; the transcript "
                                              "would be incomplete", "timeout"))
        self.answered = True
        if self.stream:
            return [formats.done_event(self.transcript.text, self.duration)]
        text = formats.body(self.fmt, self.transcript, self.task, self.request.target_lang, self.duration)
        return [response(200, text, formats.CONTENT_TYPES[self.fmt], request_id=self.session_id).decode("utf-8")]

    def _error(self, error: HttpError) -> list[str]:
        """`error` as the answer, or, mid-stream, as an event (the SDK raises on an event that carries one)."""
        self.answered = True
        if self.head_sent:
            kind = "server_error" if error.status >= 500 else "invalid_request_error"
            return [formats.sse({"error": {"message": error.message, "type": kind, "code": error.code}})]
        return [error_response(error).decode("utf-8")]

    def farewell(self, closing: Closing) -> tuple[list[str], str]:
        if closing.reason == DONE or self.answered:
            return [], closing.reason
        e = closing.error
        error = (HttpError(STATUS.get(e.code, 500), str(e), e.code) if e is not None
                 else HttpError(500, f"the transcription failed: {closing.reason}", "internal"))
        return self._error(error), closing.reason
