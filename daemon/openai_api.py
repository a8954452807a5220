"""The OpenAI audio API on the daemon's port: `POST /v1/audio/transcriptions` and `POST /v1/audio/translations`.

Form fields (multipart/form-data, as OpenAI's): `file` (wav, flac, ogg/opus, mp3, m4a, webm, ...), `model`
(required: "tympan", the bundle's name, or one of OpenAI's transcription model names, all served by the
bundle), `response_format` (json, text, verbose_json, srt, vtt), `stream` (true: server-sent
`transcript.text.delta` / `transcript.text.done` events), `language`, `prompt` (names and terms to expect:
the instruction's context), `temperature` (accepted; decoding is greedy), `timestamp_granularities[]`
(segment, and word with verbose_json where the model has a second pass of hearing: the answer's `words`).
Where tympan differs from OpenAI: transcriptions take English speech
(`language` en, or none); translations write the target language given in `language` (de, it or zh; none
or en gives the English transcript), where OpenAI's translate into English only.

The upload is decoded here and then runs as a session like any other (openai_codec.py): admission, limits,
metrics, MQTT and Hermes apply. Errors are OpenAI-shaped, with the HTTP status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

from websockets.exceptions import ConnectionClosed

from tympan.daemon.auth import authorized, origin_allowed, presented_token
from tympan.daemon.host import SessionHost
from tympan.daemon.http11 import HttpError, HttpRequest, error_response, linger, read_request
from tympan.daemon.multipart import Form, MultipartError, parse_form
from tympan.daemon.openai_codec import END, TranscriptionCodec
from tympan.daemon.openai_formats import FORMATS
from tympan.daemon.protocol import LANGS, MAX_TEXT, Request
from tympan.daemon.session import Session
from tympan.daemon.upload import UploadError, decode_upload

log = logging.getLogger("tympan.openai")
ROUTES = {"/v1/audio/transcriptions": "transcribe", "/v1/audio/translations": "translate"}
OPENAI_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")  # names apps send; served by the bundle
CHUNK_S = 0.5  # the upload reaches the session in frames of this length
DECODES = 2  # uploads decoded at once (each holds its file and its decoded audio)


class UploadConnection:
    """The decoded upload as a session's connection: its frames, then END; what the codec renders goes to the
    HTTP client as is."""

    def __init__(self, frames: list[bytes], writer: asyncio.StreamWriter) -> None:
        self.frames: list[str | bytes] = [*frames, END]
        self.next, self.writer = 0, writer

    async def recv(self) -> str | bytes:
        if self.writer.is_closing():
            raise ConnectionClosed(None, None)
        if self.next == len(self.frames):
            raise ConnectionClosed(None, None)
        self.next += 1
        return self.frames[self.next - 1]

    async def send(self, message: str) -> None:
        try:
            self.writer.write(message.encode("utf-8"))
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            raise ConnectionClosed(None, None) from None

    async def close(self, code: int, reason: str) -> None:
        self.writer.close()


def _flag(form: Form, name: str) -> bool:
    value = (form.get(name) or "false").strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise HttpError(400, f"'{name}' must be true or false, got {value[:20]!r}", "invalid_value", name)
    return value in ("true", "1")


def _language(form: Form, task: str) -> str:
    raw = (form.get("language") or "").strip()
    lang = raw.replace("_", "-").split("-")[0].lower() or "en"
    if task == "transcribe" and lang != "en":
        raise HttpError(400, f"language {raw[:20]!r}: tympan transcribes English speech; to get {raw[:20]!r} text, "
                             "use /v1/audio/translations with that language", "unsupported_language", "language")
    if lang not in LANGS:
        raise HttpError(400, f"language {raw[:20]!r} is not one tympan writes ({', '.join(LANGS)})",
                        "unsupported_language", "language")
    return lang


def request_of(form: Form, task: str, models: tuple[str, ...], word_times: bool = False) -> tuple[Request, str, bool]:
    """The session's request, the response format and whether to stream; HttpError naming the bad field.
    `word_times`: the model gives them (then `timestamp_granularities[]=word` is served)."""
    model = (form.get("model") or "").strip()
    if not model:
        raise HttpError(400, "you must provide a model parameter", "missing_required_parameter", "model")
    if model not in models:
        raise HttpError(404, f"the model {model[:60]!r} does not exist here (models: {', '.join(models)})",
                        "model_not_found", "model")
    fmt = (form.get("response_format") or "json").strip()
    if fmt not in FORMATS:
        raise HttpError(400, f"response_format {fmt[:30]!r} is not supported ({', '.join(FORMATS)})",
                        "unsupported_value", "response_format")
    granularities = form.fields.get("timestamp_granularities[]", []) + form.fields.get("timestamp_granularities", [])
    unknown = [g for g in granularities if g not in ("word", "segment")]
    if unknown:
        raise HttpError(400, f"timestamp_granularities: {unknown[0][:20]!r} is neither word nor segment",
                        "invalid_value", "timestamp_granularities")
    words = "word" in granularities
    if words and not word_times:
        raise HttpError(400, "word timestamps are not available: this bundle's model gives text only (segment works)",
                        "unsupported_value", "timestamp_granularities")
    if granularities and fmt != "verbose_json":
        raise HttpError(400, "timestamp_granularities needs response_format verbose_json",
                        "invalid_value", "timestamp_granularities")
    temperature = form.get("temperature")
    if temperature is not None:
        try:
            t = float(temperature)
        except ValueError:
            t = math.nan
        if not 0 <= t <= 1:
            raise HttpError(400, f"temperature must be a number from 0 to 1, got {temperature[:20]!r}",
                            "invalid_value", "temperature")
    prompt = (form.get("prompt") or "").strip()
    if len(prompt) > MAX_TEXT:
        raise HttpError(400, f"prompt is longer than {MAX_TEXT} characters", "invalid_value", "prompt")
    lang = _language(form, task)
    request = Request("asr", "en") if lang == "en" else Request("st", lang)
    # Subtitles take their cue times from the words where there are any.
    timed = word_times and (words or fmt in ("srt", "vtt"))
    return (Request(request.task, request.target_lang, context=prompt or None, word_times=timed), fmt,
            _flag(form, "stream"))


class OpenAiApi:
    def __init__(self, host: SessionHost, bundle_name: str) -> None:
        self.host = host
        self.models = ("tympan", bundle_name, *OPENAI_MODELS)
        self.active = 0  # requests past the token check: their bodies being read, decoded or transcribed
        self.draining = False
        self.decoding = asyncio.Semaphore(DECODES)

    def _check(self, request: HttpRequest) -> None:
        """Before the body is read: the route, the method, the token, the browser's origin, then capacity. Only
        a request that passes takes one of the upload slots (`active`; the caller gives it back)."""
        if request.path not in ROUTES:
            raise HttpError(404, f"no route {request.method} {request.path[:80]} (the audio API is at "
                                 f"{', '.join(ROUTES)}; websockets and GET routes need GET)", "not_found")
        if request.method != "POST":
            raise HttpError(405, f"{request.path} takes POST", "method_not_allowed")
        auth = self.host.cfg.auth
        given = presented_token(request.headers.get("authorization"), request.query)
        if not authorized(auth.token, given):
            raise HttpError(401, "missing or wrong token (send Authorization: Bearer TOKEN)", "invalid_api_key")
        # A multipart POST needs no CORS preflight: a page elsewhere could send one with the user's network
        # position, so the browser's Origin is checked here as for the websockets.
        origin = request.headers.get("origin")
        if not origin_allowed(auth.allowed_origins, origin, request.headers.get("host")):
            raise HttpError(403, f"origin {str(origin)[:100]} is not allowed (auth.allowed_origins)",
                            "origin_not_allowed")
        if self.draining or self.active >= self.host.cfg.limits.max_sessions or not self.host.take_connection():
            raise HttpError(503, "the server is at capacity or shutting down; try again later", "overloaded")
        self.active += 1  # with a connection of the budget all entry points share

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False

        def check(request: HttpRequest) -> None:
            nonlocal counted
            self._check(request)
            counted = True

        try:
            cfg = self.host.cfg
            request = await read_request(reader, writer, cfg.openai.max_upload_bytes, cfg.limits.idle_timeout_s,
                                         check, head_timeout=cfg.limits.start_timeout_s,
                                         min_rate=cfg.openai.min_upload_bytes_per_s)
            if request is not None:
                await self._transcribe(request, writer)
        except HttpError as e:
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(error_response(e))
                await writer.drain()
        except ConnectionError:
            pass  # the client went away
        except Exception:
            log.exception("HTTP request failed")
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(error_response(HttpError(500, "internal error", "internal")))
        finally:
            if counted:
                self.active -= 1
                self.host.give_connection()
            await linger(reader, writer)
            writer.close()

    async def _transcribe(self, http: HttpRequest, writer: asyncio.StreamWriter) -> None:
        try:
            form = parse_form(http.body, http.headers.get("content-type", ""))
        except MultipartError as e:
            raise HttpError(400, str(e), "invalid_multipart") from None
        upload = form.files.get("file")
        if upload is None:
            raise HttpError(400, "no 'file' in the form: upload the audio as the multipart field 'file'",
                            "missing_required_parameter", "file")
        task = ROUTES[http.path]
        request, fmt, stream = request_of(form, task, self.models, bool(self.host.model_info.get("word_times")))
        rate = self.host.sample_rate
        try:
            async with self.decoding:
                audio = await asyncio.to_thread(decode_upload, upload.data, rate, self.host.cfg.openai.max_audio_s)
        except UploadError as e:
            raise HttpError(400, f"the file {upload.filename[:80]!r} cannot be used: {e}", "invalid_audio",
                            "file") from None
        step = int(CHUNK_S * rate)
        frames = [audio[i : i + step].astype("<f4").tobytes() for i in range(0, len(audio), step)]
        codec = TranscriptionCodec(request, rate, fmt, stream, task)
        await Session(self.host, UploadConnection(frames, writer), codec).run()
