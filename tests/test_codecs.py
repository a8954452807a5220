"""The two codecs over the session (tympan.daemon.codec_v1, tympan.daemon.vosk) on their own: frames in,
commands out; events in, frames out. The wire behaviour end to end is in test_daemon.py and test_vosk.py."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from tympan.daemon.codec import DONE, INTERNAL, OVERLOADED, TOO_LONG, Closing
from tympan.daemon.codec_v1 import MAX_ERROR_CHARS, V1Codec
from tympan.daemon.events import (
    Audio,
    Configure,
    Done,
    End,
    Endpoint,
    Error,
    Final,
    Lost,
    Open,
    Partial,
    Ready,
    Shutdown,
)
from tympan.daemon.protocol import ProtocolError, Request
from tympan.daemon.vosk import ASR, VoskCodec


def final(segment_id: int, text: str) -> Final:
    return Final(segment_id, text, "asr", "en", 0.5, 1.5, 120)


# -- protocol v1 ----------------------------------------------------------------------------------------


def started(**fields: object) -> V1Codec:
    codec = V1Codec()
    message = {"type": "start", "sample_rate": 44100, "session_id": "s-1", **fields}
    assert codec.parse(json.dumps(message)) == [Open(Request(), "s-1")]
    return codec


@pytest.mark.parametrize(("frame", "reason", "message"), [
    (b"\x00\x00", "audio before start", "audio before 'start'"),
    ('{"type": "stop"}', "bad start message", "the first message must be 'start'"),
    ('{"type": "start"}', "bad start message", "'sample_rate' must be an integer"),
])
def test_v1_the_first_frame_must_be_start(frame: str | bytes, reason: str, message: str) -> None:
    codec = V1Codec()
    with pytest.raises(Closing) as e:
        codec.parse(frame)
    assert (e.value.code, e.value.reason) == (1008, reason)
    frames, said = codec.farewell(e.value)
    assert said == reason and [json.loads(f)["code"] for f in frames] == ["bad_request"]
    assert message in json.loads(frames[0])["message"]


def test_v1_audio_config_and_stop_after_start() -> None:
    codec = started(encoding="f32le")
    [audio] = codec.parse(np.array([0.5, -2.0], "<f4").tobytes())
    assert isinstance(audio, Audio) and audio.sample_rate == 44100
    assert audio.samples.tolist() == [0.5, -1.0]  # clipped
    with pytest.raises(Closing) as e:
        codec.parse(b"\x00" * 6)  # not a whole number of 4-byte samples
    assert (e.value.code, e.value.reason) == (1003, "invalid audio frame")
    [configure] = codec.parse('{"type": "config", "task": "st", "target_lang": "it"}')
    assert isinstance(configure, Configure) and configure.update(Request()) == Request("st", "it")
    [bad] = codec.parse('{"type": "config", "task": "st"}')
    assert isinstance(bad, Configure)
    with pytest.raises(ProtocolError, match="needs a 'target_lang'"):  # when applied: the session goes on
        bad.update(Request())
    with pytest.raises(ProtocolError, match="already started"):
        codec.parse('{"type": "start", "sample_rate": 16000}')
    assert codec.parse('{"type": "stop"}') == [End()]


def test_v1_renders_every_event_as_json_and_says_nothing_of_the_rest() -> None:
    codec = V1Codec()
    [ready] = codec.render(Ready("s-1", Request("sqa", "en", "Why?"), {"sample_rate": 16000}, {"max_session_s": 60}))
    request = {"task": "sqa", "target_lang": "en", "question": "Why?", "instruction": None}
    assert json.loads(ready) == {"type": "ready", "session_id": "s-1", "protocol": 1, "model": {"sample_rate": 16000},
                                 "limits": {"max_session_s": 60}, "request": request}
    [f] = codec.render(final(2, "Straße"))
    assert f == ('{"type": "final", "segment_id": 2, "text": "Straße", "task": "asr", "target_lang": "en", '
                 '"start": 0.5, "end": 1.5, "latency_ms": 120}')
    [p] = codec.render(Partial(2, 7, "a b", 1, 0.5, 1.0))
    assert list(json.loads(p)) == ["type", "segment_id", "seq", "text", "stable_len", "start", "end"]
    [error] = codec.render(Error("bad_request", "x" * 5000))  # an error may quote the client: cut short
    assert len(json.loads(error)["message"]) == MAX_ERROR_CHARS
    assert json.loads(codec.render(Done("s-1"))[0]) == {"type": "done", "session_id": "s-1"}
    assert codec.render(Endpoint(2)) == codec.render(Lost(2)) == codec.render(Shutdown()) == []


# -- Vosk -----------------------------------------------------------------------------------------------


def test_vosk_the_first_frame_opens_and_a_config_holds_until_the_audio() -> None:
    codec = VoskCodec()
    [opened] = codec.parse('{ "config" : {"sample_rate": "16000", "max_alternatives": 1, "words": true} }')
    assert isinstance(opened, Open) and opened.request == ASR and opened.session_id.startswith("vosk-")
    [audio] = codec.parse(b"\x00\x40" * 4)
    assert isinstance(audio, Audio) and audio.sample_rate == 16000 and audio.samples.tolist() == [0.5] * 4
    assert codec.parse('{"config": {"sample_rate": 8000}}') == []  # after the audio: ignored
    [again] = codec.parse(b"\x00\x00")
    assert isinstance(again, Audio) and again.sample_rate == 16000
    assert codec.parse('{"eof" : 1}') == [End()]


def test_vosk_bad_frames_close_with_the_reason() -> None:
    for frame, code, reason in [("{oops", 1008, "not valid JSON"), ('{"config": {"sample_rate": 1}}', 1008,
                                                                   "bad config: 'sample_rate' 1 is outside"),
                                (b"\x00", 1003, "invalid audio: binary frame of 1 bytes")]:
        with pytest.raises(Closing) as e:
            VoskCodec().parse(frame)
        assert e.value.code == code and reason in e.value.reason


def answer(codec: VoskCodec) -> dict:
    [frame] = asyncio.run(codec.answer())
    return json.loads(frame)


def test_vosk_answers_each_frame_with_the_next_final_in_order_else_the_hypothesis() -> None:
    codec = VoskCodec()
    assert answer(codec) == {"partial": ""}
    codec.render(Partial(0, 1, "hel", 0, 0.5, 1.0))
    assert answer(codec) == {"partial": "hel"}
    for ev in (Endpoint(0), Partial(1, 1, "next", 0, 2.0, 2.5), Endpoint(1), final(1, "second")):
        assert codec.render(ev) == []
    # Utterance 1's final is in, but 0's (older) is not: it waits; the answer is the hypothesis of the oldest.
    assert answer(codec) == {"partial": "hel"}
    codec.render(final(0, "first"))
    assert answer(codec) == {"text": "first"}
    assert answer(codec) == {"text": "second"}
    assert answer(codec) == {"partial": ""}


def test_vosk_an_answer_waits_for_an_owed_final_and_a_lost_one_releases_it() -> None:
    async def main() -> tuple[list[str], float, list[str]]:
        codec = VoskCodec()
        codec.render(Endpoint(0))
        waiting = asyncio.create_task(codec.answer())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        codec.render(final(0, "in time"))
        got = await waiting
        codec.render(Endpoint(1))
        t0 = time.monotonic()
        lost = asyncio.create_task(codec.answer())
        await asyncio.sleep(0.05)
        codec.render(Lost(1))  # a failed decode: no final comes
        return got, time.monotonic() - t0, await lost

    got, waited, lost = asyncio.run(main())
    assert [json.loads(f) for f in got] == [{"text": "in time"}]
    assert waited < 1 and [json.loads(f) for f in lost] == [{"partial": ""}]


def test_vosk_finals_left_at_the_end_and_at_shutdown() -> None:
    codec = VoskCodec()
    codec.parse('{"config": {"max_alternatives": 2}}')
    assert [json.loads(f) for f in codec.render(Done("v"))] == [{"alternatives": [{"text": "", "confidence": 1.0}]}]
    codec = VoskCodec()
    codec.render(final(3, "c"))
    codec.render(final(2, "b"))
    assert [json.loads(f) for f in codec.render(Shutdown())] == [{"text": "b"}, {"text": "c"}]
    assert codec.render(Shutdown()) == [] and codec.render(Ready("v", ASR, {}, {})) == []


def test_vosk_close_reasons() -> None:
    codec = VoskCodec()
    assert codec.farewell(Closing(1000, DONE)) == ([], "eof")
    overloaded = ProtocolError("overloaded", "the server is at capacity; try again later")
    assert codec.farewell(Closing(1013, OVERLOADED, overloaded)) == (
        [], "overloaded: the server is at capacity; try again later")
    too_long = ProtocolError("bad_request", "session longer than 60 s; start a new one")
    assert codec.farewell(Closing(1008, TOO_LONG, too_long)) == ([], "session longer than 60 s; start a new one")
    internal = ProtocolError("internal", "internal error; the session ends")
    assert codec.farewell(Closing(1011, INTERNAL, internal)) == ([], "internal error")
    assert codec.farewell(Closing(1008, "idle for 3 s")) == ([], "idle for 3 s")
