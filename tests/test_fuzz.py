"""Protocol fuzzing with hypothesis, against a real `tympan serve` process, on `/v1/stream` and `/vosk`.

Random and mutated frames and messages (random JSON, `start` messages with one thing wrong, configs,
unicode, huge strings and numbers, deep nesting, binary frames of odd lengths, NaN samples, invalid UTF-8,
frames over the size limit, audio before `start`, messages after `stop`, in random interleavings) go over
a few persistent connections and over fresh ones. Each script is generated together with what the
protocol (docs/protocols.md, daemon/protocol.py, daemon/vosk.py) says must come back, and the answers are checked:
every refused message gets its `error` event (or, where the protocol closes, a close with that code and a
reason), nothing is left unanswered, nothing is answered twice. Meanwhile a well-behaved client on each
path streams a recording again and again and must get the same finals as it did alone. At the end the
daemon is alive and healthy, no session is left, and its log has no traceback.

Reproducible: `derandomize=True`, no example database; bounded: a fixed number of examples.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_harness import DaemonProcess, after_fuzzing, alsa_speech, silence
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

RATE = 16000
MAX_FRAME = 65536
TASKS, LANGS, ENCODINGS = ("asr", "st", "sqa"), ("en", "de", "it", "zh"), ("pcm_s16le", "f32le")
START_KEYS = {"type", "task", "target_lang", "question", "instruction", "sample_rate", "encoding", "session_id"}
CONFIG_KEYS = {"type", "task", "target_lang", "question", "instruction"}
SESSION_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
EVENTS = {"ready", "partial", "translation", "end_of_turn", "turn_resumed", "final", "error", "done"}
SPEECH = np.concatenate([silence(0.6), alsa_speech("Front_Center"), silence(1.5), alsa_speech("Rear_Right"),
                         silence(1.2)])
PCM = (np.clip(SPEECH, -1, 1) * 32767).astype("<i2").tobytes()
SPEECH_PCM = [PCM[i : i + 3200] for i in range(0, len(PCM), 3200)]  # 100 ms frames
SPEECH_F32 = [SPEECH[i : i + 1600].astype("<f4").tobytes() for i in range(0, len(SPEECH), 1600)]
STOP, EOF = json.dumps({"type": "stop"}), '{"eof" : 1}'
# No shrinking: the daemon is shared and stateful (persistent connections), so a replay is not the same
# run, and a failure is reported at once, as generated (frames print shortened).
FUZZ_SETTINGS = settings(database=None, derandomize=True, deadline=None, print_blob=False,
                         phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))


# --- what is sent, and what must come back -----------------------------------------------------------------


@dataclass
class Act:
    """One frame and what the protocol says it gets: `errors` error events, or (for Vosk) `answers`
    answers; `close`: the close code it causes (from the session, or from the websocket layer when
    `ws_level`); `utf8`: bytes sent as a text frame (invalid UTF-8)."""

    frame: str | bytes
    errors: int = 0
    answers: int = 0
    close: int | None = None
    ws_level: bool = False
    utf8: bool = False
    ready: bool = False
    end: bool = False  # stop / eof
    encoding: str = "pcm_s16le"

    def __repr__(self) -> str:  # falsifying examples stay readable: long frames shortened
        frame = self.frame
        if len(frame) > 80:
            frame = frame[:60] + (b"..." if isinstance(frame, bytes) else "...")  # type: ignore[operator]
        defaults = Act.__dataclass_fields__
        facts = [f"{k}={v!r}" for k, v in vars(self).items() if k != "frame" and v != defaults[k].default]
        return f"Act({frame!r} [{len(self.frame)}]{', ' if facts else ''}{', '.join(facts)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis prints an example
        printer.text(repr(self))


TEXT = st.characters(blacklist_categories=("Cs",))  # every code point a text frame can carry
texts = st.text(TEXT, max_size=30)
non_blank = st.text(TEXT, min_size=1, max_size=40).filter(lambda t: bool(t.strip()))
long_texts = st.integers(2001, 2600).map(lambda n: "ü" * n)  # over protocol.MAX_TEXT characters
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=6), inner, max_size=3),
    max_leaves=6)
non_strings = json_values.filter(lambda v: v is not None and not isinstance(v, str))
deep = st.integers(1000, 4000).map(lambda d: "[" * d + "]" * d)


@st.composite
def dumps(draw, obj: dict) -> str:
    """A JSON object as some client might write it: any key order, escaped or raw unicode, any layout."""
    items = draw(st.permutations(list(obj.items())))
    return json.dumps(dict(items), ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 0, 2])))


def control_type(text: str) -> Any:
    """The `type` of a text frame if it is a JSON object, else None (independently of the daemon's parser)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj.get("type") if isinstance(obj, dict) else None


def is_junk(text: str) -> bool:
    kind = control_type(text)
    return not (isinstance(kind, str) and kind in ("start", "config", "stop"))


# -- /v1/stream --


@st.composite
def start_request(draw) -> dict:
    """A valid `start` object."""
    msg: dict[str, Any] = {"type": "start",
                           "sample_rate": draw(st.sampled_from([16000, 8000, 48000, 44100]) | st.integers(8000, 48000))}
    kind = draw(st.sampled_from(["asr", "default", "st", "sqa"]))
    if kind == "asr":
        msg["task"] = "asr"
    if kind in ("asr", "default") and draw(st.booleans()):
        msg["target_lang"] = "en"
    if kind == "st":
        msg.update(task="st", target_lang=draw(st.sampled_from(["de", "it", "zh"])))
    if kind == "sqa":
        msg.update(task="sqa", question=draw(non_blank))
        if draw(st.booleans()):
            msg["target_lang"] = draw(st.sampled_from(LANGS))
    elif draw(st.booleans()):
        msg["question"] = draw(st.none() | texts)
    if draw(st.integers(0, 3)) == 0:
        msg["instruction"] = draw(st.none() | non_blank | st.integers(1900, 2000).map(lambda n: "ß" * n))
    if draw(st.booleans()):
        msg["encoding"] = draw(st.sampled_from(ENCODINGS))
    if draw(st.booleans()):
        msg["session_id"] = draw(st.none() | st.from_regex(SESSION_ID, fullmatch=True))
    return msg


@st.composite
def valid_start(draw) -> Act:
    msg = draw(start_request())
    return Act(draw(dumps(msg)), ready=True, encoding=msg.get("encoding", "pcm_s16le"))


@st.composite
def invalid_start(draw) -> str:
    """A `start` with exactly one thing wrong."""
    msg = draw(start_request())
    what = draw(st.sampled_from(["no rate", "rate type", "rate range", "huge rate", "task", "lang", "asr lang",
                                 "st en", "st no lang", "sqa no question", "question type", "question long",
                                 "instruction type", "instruction long", "encoding", "session id", "unknown key",
                                 "deep", "type"]))
    tail = ""
    if what == "no rate":
        del msg["sample_rate"]
    elif what == "rate type":
        msg["sample_rate"] = draw(json_values.filter(lambda v: isinstance(v, bool) or not isinstance(v, int)))
    elif what == "rate range":
        msg["sample_rate"] = draw(st.integers(max_value=7999) | st.integers(min_value=48001))
    elif what == "huge rate":  # more digits than Python's int parsing accepts
        del msg["sample_rate"]
        tail = '"sample_rate": 1' + "0" * draw(st.integers(4300, 6000))
    elif what == "task":
        msg["task"] = draw(json_values.filter(lambda v: not (isinstance(v, str) and v in TASKS)))
    elif what == "lang":
        msg["target_lang"] = draw(json_values.filter(lambda v: not (isinstance(v, str) and v in LANGS)))
    elif what == "asr lang":
        msg.update(task="asr", target_lang=draw(st.sampled_from(["de", "it", "zh"])))
    elif what == "st en":
        msg.update(task="st", target_lang="en")
    elif what == "st no lang":
        msg["task"] = "st"
        msg.pop("target_lang", None)
    elif what == "sqa no question":
        msg["task"] = "sqa"
        msg.pop("instruction", None)
        blank = draw(st.sampled_from([None, "", "   ", "\n\t", "\u3000"]))
        if blank is None and draw(st.booleans()):
            msg.pop("question", None)
        else:
            msg["question"] = blank
    elif what in ("question type", "instruction type"):
        msg[what.split()[0]] = draw(non_strings)
    elif what in ("question long", "instruction long"):
        msg[what.split()[0]] = draw(long_texts)
    elif what == "encoding":
        msg["encoding"] = draw(json_values.filter(lambda v: not (isinstance(v, str) and v in ENCODINGS)))
    elif what == "session id":
        msg["session_id"] = draw(non_strings | st.just("") | st.integers(65, 90).map(lambda n: "a" * n)
                                 | texts.filter(lambda s: not SESSION_ID.fullmatch(s)))
    elif what == "unknown key":
        msg[draw(st.text(TEXT, max_size=10).filter(lambda k: k not in START_KEYS))] = draw(json_values)
    elif what == "deep":
        tail = f'"{draw(st.sampled_from(sorted(START_KEYS - {"type"})))}": {draw(deep)}'
    else:
        msg["type"] = draw(st.sampled_from(["Start", "START", " start", "start ", "stArt"]))
    text = draw(dumps(msg))
    return text if not tail else text.rstrip().removesuffix("}") + ("," if len(msg) else "") + tail + "}"


junk_text = st.one_of(
    st.text(TEXT, max_size=60),
    json_values.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
    st.dictionaries(st.text(TEXT, max_size=8), json_values, max_size=4).map(json.dumps),
    st.builds(lambda kind, rest: json.dumps({**rest, "type": kind}), json_values,
              st.dictionaries(st.text(TEXT, max_size=8), json_values, max_size=3)),
    deep,
    st.integers(1000, 4000).map(lambda d: '{"type":' * d + "1" + "}" * d),
    st.integers(4300, 6000).map(lambda n: "1" + "0" * n),
    st.just('{"type": "stop"'),
).filter(is_junk)

always_valid_config = st.one_of(
    st.just({}),
    st.just({"task": "asr", "target_lang": "en"}),
    st.sampled_from(["de", "it", "zh"]).map(lambda lang: {"task": "st", "target_lang": lang}),
    st.builds(lambda lang, q: {"task": "sqa", "target_lang": lang, "question": q}, st.sampled_from(LANGS), non_blank),
).flatmap(lambda c: st.sampled_from([c, {**c, "instruction": None}]) | non_blank.map(lambda i: {**c, "instruction": i}))

always_invalid_config = st.one_of(
    json_values.filter(lambda v: not (isinstance(v, str) and v in TASKS)).map(lambda v: {"task": v}),
    json_values.filter(lambda v: not (isinstance(v, str) and v in LANGS)).map(lambda v: {"target_lang": v}),
    st.just({"task": "st", "target_lang": "en"}),
    st.sampled_from(["de", "it", "zh"]).map(lambda lang: {"task": "asr", "target_lang": lang}),
    st.builds(lambda lang, q: {"task": "sqa", "target_lang": lang, "question": q, "instruction": None},
              st.sampled_from(LANGS), st.sampled_from([None, "", "  "])),
    st.builds(lambda k, v: {k: v}, st.sampled_from(["question", "instruction"]), non_strings | long_texts),
    st.builds(lambda k, v: {k: v}, st.text(TEXT, max_size=10).filter(lambda k: k not in CONFIG_KEYS), json_values),
)


def config_text(changes: dict):
    return dumps({"type": "config", **changes})


def f32_frame(samples: list[float]) -> Act:
    values = np.array(samples, dtype=np.float32)
    bad = not np.isfinite(values).all()
    return Act(struct.pack(f"<{len(samples)}f", *samples), errors=int(bad), close=1003 if bad else None)


def audio(encoding: str) -> st.SearchStrategy[Act]:
    """Audio frames the session must take without a word (or refuse with an error and close 1003)."""
    if encoding == "pcm_s16le":
        good = st.sampled_from(SPEECH_PCM) | st.binary(max_size=1024).filter(lambda b: len(b) % 2 == 0) \
            | st.integers(0, 800).map(lambda n: b"\x00\x00" * n)
        bad = st.binary(min_size=1, max_size=999).filter(lambda b: len(b) % 2 == 1)
    else:
        good = st.sampled_from(SPEECH_F32) | st.integers(0, 400).map(lambda n: b"\x00" * 4 * n)
        bad = st.binary(min_size=1, max_size=999).filter(lambda b: len(b) % 4 != 0)
    return st.one_of(good.map(Act), good.map(Act), good.map(Act), bad.map(lambda b: Act(b, errors=1, close=1003)),
                     *([st.lists(st.floats(width=32), max_size=200).map(f32_frame)] if encoding == "f32le" else []))


# Frames the websocket layer refuses before any session code sees them.
oversize = st.one_of(st.integers(MAX_FRAME + 1, MAX_FRAME + 5000).map(lambda n: Act(b"\x01" * n, close=1009)),
                     st.integers(MAX_FRAME + 1, MAX_FRAME + 5000).map(lambda n: Act("{" * n, close=1009)))
invalid_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b'{"type": "stop"\xe2\x82}',
                                b'{"type": "start", "task": "\xc0\xaf"}']).map(lambda b: Act(b, utf8=True, close=1007))
ws_level = st.one_of(oversize, invalid_utf8).map(lambda a: Act(a.frame, utf8=a.utf8, close=a.close, ws_level=True))


def in_session(encoding: str, closers: bool) -> st.SearchStrategy[Act]:
    """Anything a client may send once its session has started."""
    answered = [
        audio(encoding).filter(lambda a: a.close is None),
        audio(encoding).filter(lambda a: a.close is None),
        audio(encoding).filter(lambda a: a.close is None),
        junk_text.map(lambda t: Act(t, errors=1)),
        junk_text.map(lambda t: Act(t, errors=1)),
        valid_start().map(lambda a: Act(a.frame, errors=1)),  # already started
        invalid_start().map(lambda t: Act(t, errors=1)),
        always_valid_config.flatmap(config_text).map(Act),
        always_invalid_config.flatmap(config_text).map(lambda t: Act(t, errors=1)),
    ]
    frames = st.one_of(*answered)
    if closers:  # rarer (1 in 12): each ends the connection
        ending = st.one_of(audio(encoding).filter(lambda a: a.close is not None), ws_level)
        return st.integers(0, 11).flatmap(lambda n: ending if n == 0 else frames)
    return frames


@st.composite
def stream_script(draw) -> list[Act]:
    """A fresh connection's frames, from the first to the end (the runner stops at the first that closes)."""
    if draw(st.integers(0, 9)) < 7:
        first = draw(valid_start())
    else:
        first = draw(st.one_of(
            invalid_start().map(lambda t: Act(t, errors=1, close=1008)),
            junk_text.map(lambda t: Act(t, errors=1, close=1008)),
            st.sampled_from([*SPEECH_PCM[:3], b"", b"\x00"]).map(lambda b: Act(b, errors=1, close=1008)),  # audio
            st.just(Act(STOP, errors=1, close=1008)),
            always_valid_config.flatmap(config_text).map(lambda t: Act(t, errors=1, close=1008)),
            ws_level))
    if first.close is not None:
        return [first]
    acts = [first, *draw(st.lists(in_session(first.encoding, closers=True), min_size=2, max_size=14))]
    if draw(st.booleans()):  # stop, and a few more frames after it (never read: `done` and the close answer them)
        acts.append(Act(STOP, end=True))
        acts += draw(st.lists(in_session(first.encoding, closers=False), max_size=3))
    return acts


# -- /vosk --


vosk_numbers = st.integers(8000, 48000)
valid_vosk_config = st.fixed_dictionaries({}, optional={
    "sample_rate": vosk_numbers | vosk_numbers.map(float) | vosk_numbers.map(lambda n: f" {n} "),
    "max_alternatives": st.integers(0, 5) | st.integers(0, 5).map(float) | st.integers(0, 5).map(str),
    "words": st.booleans(), "phrase_list": st.lists(texts, max_size=3),
}).flatmap(lambda c: st.dictionaries(st.text(TEXT, max_size=8).filter(
    lambda k: k not in ("sample_rate", "max_alternatives")), json_values, max_size=2).map(lambda extra: {**extra, **c}))
invalid_vosk_config = st.one_of(
    st.builds(lambda v: {"sample_rate": v}, st.integers(max_value=7999) | st.integers(min_value=48001)
              | st.floats().filter(lambda f: not (f.is_integer() and 8000 <= f <= 48000))
              | st.booleans() | st.none() | st.lists(st.integers(), max_size=2)
              | st.sampled_from(["fast", "", "nan", "inf", "1e400", "16000.5", "1" + "0" * 400])),
    st.builds(lambda v: {"max_alternatives": v}, st.integers(max_value=-1) | st.sampled_from([0.5, -1.0, "x", True])),
)
vosk_eof = st.builds(lambda v, extra: json.dumps({**extra, "eof": v}),
                     json_values.filter(bool), st.dictionaries(st.sampled_from(["x", "eof2", "text"]), json_values,
                                                               max_size=1))
vosk_junk = st.one_of(
    st.text(TEXT, max_size=40).filter(lambda t: control_type(t) is None and not t.lstrip().startswith("{")),
    json_values.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
    st.dictionaries(st.text(TEXT, max_size=6).filter(lambda k: k not in ("config", "eof")), json_values, max_size=3)
    .map(json.dumps),
    json_values.filter(lambda v: not v).map(lambda v: json.dumps({"eof": v})),  # a falsy eof is no eof
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps({"config": v})),
    deep,
)
vosk_audio = st.one_of(st.sampled_from(SPEECH_PCM), st.sampled_from(SPEECH_PCM),
                       st.binary(max_size=1024).filter(lambda b: len(b) % 2 == 0), st.just(b"")).map(
    lambda b: Act(b, answers=1))
vosk_odd = st.binary(min_size=1, max_size=999).filter(lambda b: len(b) % 2 == 1).map(lambda b: Act(b, close=1003))


def vosk_text_act(text: str) -> Act:
    return Act(text, close=1008)


@st.composite
def vosk_script(draw) -> list[Act]:
    acts = [Act(t) for t in draw(st.lists(valid_vosk_config.flatmap(lambda c: dumps({"config": c})), max_size=3))]
    before = draw(st.one_of(
        st.just(None), st.just(None), st.just(None),
        invalid_vosk_config.flatmap(lambda c: dumps({"config": c})).map(vosk_text_act),
        vosk_junk.map(vosk_text_act), vosk_odd, ws_level, vosk_eof.map(lambda t: Act(t, end=True))))
    if before is not None:
        return [*acts, before]
    acts.append(draw(vosk_audio))  # the audio starts: from now on a config changes nothing
    acts += draw(st.lists(st.one_of(
        vosk_audio, vosk_audio, vosk_audio, vosk_audio, vosk_audio, vosk_audio,
        st.one_of(valid_vosk_config, invalid_vosk_config).flatmap(lambda c: dumps({"config": c})).map(Act),  # ignored
        vosk_junk.map(vosk_text_act), vosk_odd, ws_level), min_size=2, max_size=14))
    if all(a.close is None for a in acts) or draw(st.booleans()):
        acts.append(Act(draw(vosk_eof), end=True))
    return acts


# --- running scripts -----------------------------------------------------------------------------------------


class Background:
    """An event loop in a thread: connections and well-behaved clients that live across hypothesis examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:  # after a failure: whatever still runs
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Peer:
    """A client connection with a reader that keeps every message it gets."""

    ws: ClientConnection
    received: list[Any] = field(default_factory=list)
    reader: asyncio.Task | None = None

    @classmethod
    async def open(cls, url: str) -> Peer:
        peer = cls(await connect(url, max_size=None, open_timeout=30))
        peer.reader = asyncio.create_task(peer._read())
        return peer

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.received.append(json.loads(message))
        except ConnectionClosed:
            pass

    async def send(self, act: Act) -> None:
        await self.ws.send(act.frame, text=True if act.utf8 else None)

    async def wait(self, predicate, what: str, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.received):
            assert loop.time() < deadline, f"timed out waiting for {what}; got {self.received[-5:]}"
            assert not self.reader.done(), f"connection closed ({self.ws.close_code} {self.ws.close_reason!r}) " \
                                           f"while waiting for {what}; got {self.received[-5:]}"
            await asyncio.sleep(0.005)

    async def closed(self, timeout: float = 60) -> tuple[int, str]:
        await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        await self.ws.wait_closed()
        return self.ws.close_code or 0, self.ws.close_reason or ""


def errors_of(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "error"]


def check_events(events: list[dict]) -> None:
    for e in events:
        assert e["type"] in EVENTS, e
        if e["type"] == "error":
            assert e["code"] in ("bad_request", "unsupported") and e["message"], e  # never internal
        if e["type"] in ("partial", "final"):
            assert isinstance(e["text"], str) and isinstance(e["segment_id"], int) and e["start"] <= e["end"], e
        if e["type"] == "end_of_turn":
            p = e["probability"]
            assert isinstance(e["eager"], bool) and (p is None or 0.0 <= p <= 1.0), e


async def run_stream_script(url: str, acts: list[Act]) -> int:
    """Play a script on a fresh /v1/stream connection and check every answer; returns the frames sent."""
    peer = await Peer.open(url)
    expected_errors, sent, ended, close = 0, 0, False, None
    try:
        for act in acts:
            if act.ws_level:  # what was said before must be answered before the websocket layer cuts in
                ready = acts[0].ready
                await peer.wait(lambda r, n=expected_errors, ready=ready: len(errors_of(r)) >= n and (
                    not ready or (r and r[0]["type"] == "ready")), "earlier answers")
            await peer.send(act)
            sent += 1
            if ended:
                continue  # after stop: never read
            expected_errors += act.errors
            ended = act.end
            if act.close is not None:
                close = act.close
                break
        if close is None and not ended:
            await peer.send(Act(STOP))
            sent += 1
    except ConnectionClosed:
        assert ended, f"the daemon closed the connection early: {peer.ws.close_code} {peer.ws.close_reason!r}"
    code, reason = await peer.closed()
    events = peer.received
    check_events(events)
    assert len(errors_of(events)) == expected_errors, (expected_errors, events[-6:])
    assert (events[0]["type"] == "ready") == acts[0].ready if events else not acts[0].ready, events[:2]
    if close is None:
        assert events[-1]["type"] == "done" and (code, reason) == (1000, "done"), (events[-3:], code, reason)
        assert [e["type"] for e in events].count("done") == 1
    else:
        assert code == close and reason, (close, code, reason)
        assert "done" not in [e["type"] for e in events]
    return sent


async def run_vosk_script(url: str, acts: list[Act]) -> int:
    """Play a script on a fresh /vosk connection: one answer per audio frame, the close the protocol says."""
    peer = await Peer.open(url)
    answers, sent, close, ended = 0, 0, None, False
    for act in acts:
        if act.ws_level:
            await peer.wait(lambda r, n=answers: len(r) >= n, "earlier answers")
        await peer.send(act)
        sent += 1
        answers += act.answers
        if act.close is not None or act.end:
            close, ended = act.close, act.end
            break
    code, reason = await peer.closed()
    got = peer.received
    for a in got:
        assert (list(a) in (["partial"], ["text"]) and isinstance(next(iter(a.values())), str)) or \
               (list(a) == ["alternatives"] and a["alternatives"][0]["confidence"] == 1.0), a
    if ended:
        assert len(got) >= answers + 1 and (code, reason) == (1000, "eof"), (answers, got[-3:], code, reason)
        assert all("partial" not in a for a in got[answers:])  # after eof: results only
    else:
        assert len(got) == answers, (answers, got[-3:])
        assert code == close and reason, (close, code, reason)
    return sent


# --- the daemon, the reference, and the clients beside the fuzzer ---------------------------------------------


@pytest.fixture(scope="module")
def daemon(tympan_home: Path, tmp_path_factory: pytest.TempPathFactory):
    from tympan.daemon.cli import default_bundle

    config = f"[limits]\nmax_frame_bytes = {MAX_FRAME}\nidle_timeout_s = 120\n"
    with DaemonProcess(default_bundle(), tmp_path_factory.mktemp("fuzz"), config) as d:
        yield d


async def good_stream(url: str) -> list[str]:
    """A well-behaved /v1/stream client: the recording at twice the speed of speech, then stop."""
    events: list[dict] = []
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "task": "st", "target_lang": "de", "sample_rate": RATE}))

        async def read() -> None:
            async for message in ws:
                events.append(json.loads(message))
                if events[-1]["type"] == "done":
                    return

        reader = asyncio.create_task(read())
        for frame in SPEECH_PCM:
            await ws.send(frame)
            await asyncio.sleep(0.05)
        await ws.send(STOP)
        await asyncio.wait_for(reader, 60)
    assert events[0]["type"] == "ready" and events[-1]["type"] == "done", events[-3:]
    return [e["text"] for e in events if e["type"] == "final"]


async def good_vosk(url: str) -> list[str]:
    """A well-behaved Vosk client (as vosk-server's test.py): a frame, its answer, ...; then eof."""
    results = []
    async with connect(url.replace("/v1/stream", "/vosk")) as ws:
        await ws.send(json.dumps({"config": {"sample_rate": RATE}}))
        for frame in SPEECH_PCM:
            await ws.send(frame)
            answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if "text" in answer:
                results.append(answer["text"])
            await asyncio.sleep(0.03)
        await ws.send(EOF)
        assert json.loads(await asyncio.wait_for(ws.recv(), 30)) == {"text": ""}
    return results


class Beside:
    """The well-behaved clients, each in a loop until told to stop; every run's finals are kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runs: dict[str, list[list[str]]] = {"stream": [], "vosk": []}
        self.stop = asyncio.Event()

    async def _loop(self, name: str, client) -> None:
        while not self.stop.is_set():
            self.runs[name].append(await client(self.url))

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._loop("stream", good_stream)),
                      asyncio.create_task(self._loop("vosk", good_vosk))]

    async def finish(self) -> dict[str, list[list[str]]]:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        return self.runs


@pytest.fixture(scope="module")
def reference(daemon: DaemonProcess) -> dict[str, list[str]]:
    """What the well-behaved clients get with nobody else on the daemon."""
    async def both() -> dict[str, list[str]]:
        return {"stream": await good_stream(daemon.url), "vosk": await good_vosk(daemon.url)}

    ref = asyncio.run(both())
    assert len(ref["stream"]) == 2 and any(ref["stream"]) and len(ref["vosk"]) == 2, ref
    return ref


# --- the tests -------------------------------------------------------------------------------------------------


def test_fuzzing_v1_stream(daemon, reference) -> None:
    bg = Background()
    sent = {"examples": 0, "fresh": 0, "persistent": 0}
    persistent: list[Peer] = []
    beside = Beside(daemon.url)

    async def open_persistent() -> None:
        beside.start()
        for encoding, rate in (("pcm_s16le", 16000), ("f32le", 8000)):
            peer = await Peer.open(daemon.url)
            await peer.send(Act(json.dumps({"type": "start", "task": "asr", "sample_rate": rate,
                                            "encoding": encoding})))
            persistent.append(peer)
        for peer in persistent:
            await peer.wait(lambda r: r and r[0]["type"] == "ready", "ready")

    async def on_persistent(index: int, acts: list[Act], marker: int) -> None:
        """Frames on a long-lived session, then a marker whose error says that all before it were answered."""
        peer = persistent[index]
        before = len(errors_of(peer.received))
        for act in acts:
            await peer.send(act)
        await peer.send(Act(json.dumps({"type": f"marker-{marker}"})))
        await peer.wait(lambda r: any(f"'marker-{marker}'" in e["message"] for e in errors_of(r)), f"marker {marker}")
        errors = errors_of(peer.received)[before:]
        check_events(peer.received)
        assert len(errors) == sum(a.errors for a in acts) + 1 and f"'marker-{marker}'" in errors[-1]["message"], \
            (acts, errors)
        sent["persistent"] += len(acts) + 1

    bg.run(open_persistent())
    counter = iter(range(10**9))

    @settings(FUZZ_SETTINGS, max_examples=200)
    @given(script=stream_script(), index=st.integers(0, 1), data=st.data())
    def fuzz(script: list[Act], index: int, data: st.DataObject) -> None:
        encoding = ("pcm_s16le", "f32le")[index]
        batch = data.draw(st.lists(in_session(encoding, closers=False), min_size=8, max_size=30))
        sent["examples"] += 1
        sent["fresh"] += bg.run(run_stream_script(daemon.url, script))
        bg.run(on_persistent(index, batch, next(counter)))

    try:
        fuzz()

        async def finish() -> dict[str, list[list[str]]]:
            for peer in persistent:
                await peer.send(Act(STOP))
                assert await peer.closed() == (1000, "done")
                assert peer.received[-1]["type"] == "done"
            return await beside.finish()

        runs = bg.run(finish())
    finally:
        bg.close()
    print(f"/v1/stream fuzzing: {sent} frames; well-behaved runs: {[len(r) for r in runs.values()]}")
    assert sent["fresh"] + sent["persistent"] >= 2000, sent
    after_fuzzing(daemon, runs, reference)


def test_fuzzing_vosk(daemon, reference) -> None:
    bg = Background()
    sent = {"examples": 0, "fresh": 0, "persistent": 0}
    persistent: list[Peer] = []
    beside = Beside(daemon.url)

    async def open_persistent() -> None:
        beside.start()
        peer = await Peer.open(daemon.vosk_url)
        await peer.send(Act(json.dumps({"config": {"sample_rate": 16000}})))
        await peer.send(Act(SPEECH_PCM[0]))  # the audio starts: later configs are ignored
        await peer.wait(lambda r: len(r) == 1, "the first answer")
        persistent.append(peer)

    async def on_persistent(acts: list[Act]) -> None:
        """Audio frames (one answer each) and configs after the audio started (ignored, no answer)."""
        peer = persistent[0]
        before = len(peer.received)
        for act in acts:
            await peer.send(act)
        n = sum(a.answers for a in acts)
        await peer.wait(lambda r: len(r) >= before + n, f"{n} answers")
        await asyncio.sleep(0.01)
        assert len(peer.received) == before + n
        sent["persistent"] += len(acts)

    bg.run(open_persistent())
    ignored = st.one_of(valid_vosk_config, invalid_vosk_config, st.dictionaries(texts, json_values, max_size=2)) \
        .flatmap(lambda c: dumps({"config": c})).map(Act)

    @settings(FUZZ_SETTINGS, max_examples=150)
    @given(script=vosk_script(), data=st.data())
    def fuzz(script: list[Act], data: st.DataObject) -> None:
        batch = data.draw(st.lists(st.one_of(vosk_audio, vosk_audio, ignored), min_size=8, max_size=30))
        sent["examples"] += 1
        sent["fresh"] += bg.run(run_vosk_script(daemon.vosk_url, script))
        bg.run(on_persistent(batch))

    try:
        fuzz()

        async def finish() -> dict[str, list[list[str]]]:
            peer = persistent[0]
            before = len(peer.received)
            await peer.send(Act(EOF))
            assert await peer.closed() == (1000, "eof")
            assert len(peer.received) > before
            return await beside.finish()

        runs = bg.run(finish())
    finally:
        bg.close()
    print(f"/vosk fuzzing: {sent} frames; well-behaved runs: {[len(r) for r in runs.values()]}")
    assert sent["fresh"] + sent["persistent"] >= 1500, sent
    after_fuzzing(daemon, runs, reference)
