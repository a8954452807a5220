"""Wire protocol v1 of `ws://HOST:PORT/v1/stream`: typed messages, parsed and validated here only.

Client -> server: a `start` text frame, then binary audio frames (mono, in the announced
encoding), `config` between utterances, `stop` at the end. `start` and `config` may carry `terms` (names and
jargon the speech may hold: the hearing spells them so), `words` (true: finals carry their words' times), `turn`
(when a turn ends: "silence" or an end-of-turn preset) and `eager_turn` (early end_of_turn events).
Server -> client: `ready`, `partial`, `translation`, `end_of_turn`, `turn_resumed`, `final`, `error`, `done` (JSON
text frames). codec_v1.py speaks it for a session;
the Request and the errors defined here are every protocol's.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from tympan.errors import TympanError

VERSION = 1
TASKS = ("asr", "st", "sqa")
TURNS = ("silence", "aggressive", "balanced", "conservative")  # daemon/turn.py's presets, and the silence endpoint
LANGS = ("en", "de", "it", "zh")
ENCODINGS = ("pcm_s16le", "f32le")
MIN_RATE, MAX_RATE = 8000, 48000
SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_TEXT = 2000  # characters of a question or instruction

ErrorCode = Literal["bad_request", "unsupported", "unauthorized", "overloaded", "internal"]


class ProtocolError(TympanError, ValueError):
    """A client message is invalid; `code` is the error event's code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Request:
    """What to do with the next utterances: the task, its language and its question/instruction."""

    task: str = "asr"
    target_lang: str = "en"
    question: str | None = None
    instruction: str | None = None
    # Names and terms the speech may contain (OpenAI's `prompt`, Wyoming's transcript names and terms),
    # added to the instruction as context, and given to the second pass of hearing as Whisper's previous text.
    context: str | None = None
    # Finals carry their words with start and end times and a probability (a second pass of hearing gives them).
    word_times: bool = False
    # When a turn ends: "silence" (vad.silence_ms), or an end-of-turn preset ("aggressive", "balanced",
    # "conservative"); None: the daemon's [turn] setting.
    turn: str | None = None
    # Early, eager end_of_turn events (and turn_resumed); None: the daemon's [turn] setting.
    eager_turn: bool | None = None


@dataclass(frozen=True)
class Start:
    request: Request
    sample_rate: int
    encoding: str
    session_id: str | None


@dataclass(frozen=True)
class Reconfigure:
    changes: dict[str, Any]


@dataclass(frozen=True)
class Stop:
    pass


ClientMessage = Start | Reconfigure | Stop


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError("bad_request", f"'{key}' must be a string or null")
    if len(value) > MAX_TEXT:
        raise ProtocolError("bad_request", f"'{key}' is longer than {MAX_TEXT} characters")
    return value.strip() or None


def _request_fields(obj: dict[str, Any], base: Request) -> Request:
    task = obj.get("task", base.task)
    if task not in TASKS:
        raise ProtocolError("bad_request", f"'task' must be one of {', '.join(TASKS)}, got {task!r}")
    if "target_lang" in obj:
        lang = obj["target_lang"]
    elif task == base.task:
        lang = base.target_lang
    elif task == "st":
        raise ProtocolError("bad_request", "task 'st' needs a 'target_lang' (de, it or zh)")
    else:
        lang = "en"
    if lang not in LANGS:
        raise ProtocolError("unsupported", f"'target_lang' must be one of {', '.join(LANGS)}, got {lang!r}")
    if task == "asr" and lang != "en":
        raise ProtocolError("unsupported", f"task 'asr' transcribes English: target_lang must be 'en', got {lang!r}")
    if task == "st" and lang == "en":
        raise ProtocolError("unsupported", "task 'st' translates English speech: choose target_lang de, it or zh")
    question = _text(obj, "question") if "question" in obj else base.question
    instruction = _text(obj, "instruction") if "instruction" in obj else base.instruction
    if task == "sqa" and not question and not instruction:
        raise ProtocolError("bad_request", "task 'sqa' needs a 'question' (or an 'instruction')")
    context = _text(obj, "terms") if "terms" in obj else base.context
    words = obj.get("words", base.word_times)
    if not isinstance(words, bool):
        raise ProtocolError("bad_request", f"'words' must be true or false, got {words!r}")
    turn = obj.get("turn", base.turn)
    if turn is not None and turn not in TURNS:
        raise ProtocolError("bad_request", f"'turn' must be one of {', '.join(TURNS)} (or null), got {turn!r}")
    eager = obj.get("eager_turn", base.eager_turn)
    if eager is not None and not isinstance(eager, bool):
        raise ProtocolError("bad_request", f"'eager_turn' must be true, false or null, got {eager!r}")
    return Request(task, lang, question, instruction, context, words, turn, eager)


def parse_text(frame: str) -> ClientMessage:
    """Parse one client text frame; raises ProtocolError with a message naming what is wrong."""
    try:
        obj = json.loads(frame)
    except json.JSONDecodeError as e:
        raise ProtocolError("bad_request", f"text frame is not valid JSON: {e.msg} at column {e.colno}") from None
    except (ValueError, RecursionError):  # absurd nesting or numbers: still just a bad message
        raise ProtocolError("bad_request", "text frame is not valid JSON (nested too deeply or too large)") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "text frame must be a JSON object with a 'type'")
    kind = obj.get("type")
    if kind == "start":
        known = {"type", "task", "target_lang", "question", "instruction", "terms", "words", "turn", "eager_turn",
                 "sample_rate", "encoding", "session_id"}
        _no_unknown(obj, known)
        rate = obj.get("sample_rate")
        if isinstance(rate, bool) or not isinstance(rate, int):
            raise ProtocolError("bad_request", "'sample_rate' must be an integer (Hz)")
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ProtocolError("unsupported", f"'sample_rate' {rate} is outside {MIN_RATE}-{MAX_RATE} Hz")
        encoding = obj.get("encoding", "pcm_s16le")
        if encoding not in ENCODINGS:
            raise ProtocolError("unsupported", f"'encoding' must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        session_id = obj.get("session_id")
        if session_id is not None and (not isinstance(session_id, str) or not SESSION_ID.match(session_id)):
            raise ProtocolError("bad_request", "'session_id' must be 1-64 characters of A-Z a-z 0-9 . _ - (or null)")
        return Start(_request_fields(obj, Request()), rate, encoding, session_id)
    if kind == "config":
        _no_unknown(obj, {"type", "task", "target_lang", "question", "instruction", "terms", "words", "turn",
                          "eager_turn"})
        return Reconfigure({k: v for k, v in obj.items() if k != "type"})
    if kind == "stop":
        _no_unknown(obj, {"type"})
        return Stop()
    raise ProtocolError("bad_request", f"unknown message type {kind!r} (start, config, stop)")


def with_context(instruction: str, context: str | None) -> str:
    """The instruction with the names and terms to expect, when a client gave some."""
    return f"{instruction}\nNames and terms that may occur: {context}" if context else instruction


def apply_config(base: Request, message: Reconfigure) -> Request:
    return _request_fields(message.changes, base)


def _no_unknown(obj: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise ProtocolError("bad_request", f"unknown field {unknown[0]!r} in a {obj['type']!r} message")


def decode_audio(frame: bytes, encoding: str) -> np.ndarray:
    """A binary frame -> float32 samples in [-1, 1]; odd byte counts are refused, not guessed."""
    width = 2 if encoding == "pcm_s16le" else 4
    if len(frame) % width:
        raise ProtocolError("bad_request", f"binary frame of {len(frame)} bytes is not a whole number of "
                                           f"{width}-byte {encoding} samples")
    if encoding == "pcm_s16le":
        return np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768.0
    samples = np.frombuffer(frame, dtype="<f4").astype(np.float32)
    if not np.isfinite(samples).all():
        raise ProtocolError("bad_request", "f32le audio contains NaN or infinite samples")
    return np.clip(samples, -1.0, 1.0)


def event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, ensure_ascii=False)


def error_event(code: ErrorCode, message: str) -> str:
    return event("error", code=code, message=message)


def request_dict(request: Request) -> dict[str, Any]:
    """The request as JSON; `context` only when set, `word_times` only when asked for."""
    d = asdict(request)
    if d["context"] is None:
        del d["context"]
    if not d["word_times"]:
        del d["word_times"]
    for key in ("turn", "eager_turn"):
        if d[key] is None:
            del d[key]
    return d
