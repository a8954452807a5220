"""The OpenAI audio API's answers from a transcript: `response_format` json, text, verbose_json, srt, vtt, and
the server-sent events of `stream=true`. A segment is one of tympan's utterances (its final and its times: from
its first word's start to its last word's end where the final has word times, else the segmenter's). verbose_json
lists the words with their times where they were asked for (`timestamp_granularities[]=word`); token ids and
log-probabilities are not given, so those fields are empty or neutral."""

from __future__ import annotations

import json
from typing import Any

from tympan.daemon.events import Final
from tympan.daemon.transcript import Transcript

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
CONTENT_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain; charset=utf-8",
                 "srt": "text/plain; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}
LANGUAGE_NAMES = {"en": "english", "de": "german", "it": "italian", "zh": "chinese"}  # as OpenAI names them


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def span(final: Final) -> tuple[float, float]:
    """An utterance's times: its words' where it has them."""
    if final.words:
        return final.words[0].start, final.words[-1].end
    return final.start, final.end


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
    spans = [span(f) for f in segments]
    if fmt == "srt":
        return "".join(f"{i}\n{_clock(s, ',')} --> {_clock(e, ',')}\n{f.text.strip()}\n\n"
                       for i, (f, (s, e)) in enumerate(zip(segments, spans, strict=True), 1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(f"{_clock(s, '.')} --> {_clock(e, '.')}\n{f.text.strip()}\n\n"
                                      for f, (s, e) in zip(segments, spans, strict=True))
    answer: dict[str, Any] = {
        "task": task, "language": LANGUAGE_NAMES.get(language, language), "duration": round(duration, 3), "text": text,
        "segments": [{"id": i, "seek": 0, "start": round(s, 3), "end": round(e, 3), "text": f.text.strip(),
                      "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0,
                      "no_speech_prob": 0.0} for i, (f, (s, e)) in enumerate(zip(segments, spans, strict=True))]}
    words = [w for f in segments for w in f.words]
    if words:
        answer["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in words]
    return json.dumps({**answer, "usage": usage(duration)}, ensure_ascii=False)


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def delta_event(delta: str) -> str:
    return sse({"type": "transcript.text.delta", "delta": delta, "logprobs": []})


def done_event(text: str, duration: float) -> str:
    return sse({"type": "transcript.text.done", "text": text, "logprobs": [], "usage": usage(duration)})
