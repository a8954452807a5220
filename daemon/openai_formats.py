"""The OpenAI audio API's answers from a transcript: `response_format` json, text, verbose_json, srt, vtt, and
the server-sent events of `stream=true`. A segment is one of tympan's utterances (its final and its times);
tympan gives no word times, token ids or log-probabilities, so those fields are empty or neutral."""

from __future__ import annotations

import json
from typing import Any

from tympan.daemon.transcript import Transcript

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
CONTENT_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain; charset=utf-8",
                 "srt": "text/plain; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}
LANGUAGE_NAMES = {"en": "english", "de": "german", "it": "italian", "zh": "chinese"}  # as OpenAI names them


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": round(duration, 3)}


def body(fmt: str, transcript: Transcript, task: str, language: str, duration: float) -> str:
    """The answer's body in format `fmt` (one of FORMATS)."""
    text = transcript.text
    segments = transcript.segments
    if fmt == "json":
        return json.dumps({"text": text, "usage": usage(duration)}, ensure_ascii=False)
    if fmt == "text":
        return text + "\n"
    if fmt == "srt":
        return "".join(f"{i}\n{_clock(f.start, ',')} --> {_clock(f.end, ',')}\n{f.text.strip()}\n\n"
                       for i, f in enumerate(segments, 1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(f"{_clock(f.start, '.')} --> {_clock(f.end, '.')}\n{f.text.strip()}\n\n"
                                      for f in segments)
    return json.dumps({
        "task": task, "language": LANGUAGE_NAMES.get(language, language), "duration": round(duration, 3), "text": text,
        "segments": [{"id": i, "seek": 0, "start": round(f.start, 3), "end": round(f.end, 3), "text": f.text.strip(),
                      "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0,
                      "no_speech_prob": 0.0} for i, f in enumerate(segments)],
        "usage": usage(duration)}, ensure_ascii=False)


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def delta_event(delta: str) -> str:
    return sse({"type": "transcript.text.delta", "delta": delta, "logprobs": []})


def done_event(text: str, duration: float) -> str:
    return sse({"type": "transcript.text.done", "text": text, "logprobs": [], "usage": usage(duration)})
