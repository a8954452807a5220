"""Fuzzing the Wyoming framing and the HTTP/multipart upload parser with hypothesis, against a real daemon.

Wyoming: scripts of events over raw TCP, well-formed ones (unknown types with random data and payloads,
silent audio, transcribe, ping, audio-stop) mixed with events whose data section is not a JSON object, and
ending, at random, in one that breaks the framing (not JSON, no type, lengths that are negative, fractional,
strings, huge or lying about what follows, a truncated header, a header line over the limit, audio of an odd
byte count). What must come back is computed with the script: an `error` per bad data section and the session
goes on; after a broken frame, one `error` and the close; a `pong` per ping, the transcript events per
audio-stop; every answer read by the `wyoming` package's own reader.

HTTP: requests to /v1/audio/transcriptions built right and then broken (truncated heads, Content-Length
lying either way, huge or not a number, chunked encoding with bad sizes, multipart without a boundary, with a
truncated or over-long part head, too many parts, a field that is not UTF-8, a file that is not audio, wrong
method, route and HTTP version). Each gets the status the parser owes it, OpenAI-shaped when an error.

Meanwhile a Wyoming client and an OpenAI SDK client transcribe a recording again and again and must get
what they got alone. At the end the daemon is healthy, no session is left, and its log has no traceback.
Reproducible: `derandomize=True`, no example database, a fixed number of examples.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile as sf
from broker import free_port
from daemon_harness import DaemonProcess, after_fuzzing, alsa_speech, pcm16, silence
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz import FUZZ_SETTINGS, Background
from wyoming.event import async_read_event

MAX_HEADER, MAX_FRAME, MAX_UPLOAD = 4096, 65536, 1 << 20
SPEECH = np.concatenate([silence(0.4), alsa_speech("Front_Center"), silence(0.8)])
TRANSCRIPT = ["transcript-start", "transcript", "transcript-stop"]  # what an audio-stop of silence gets


@pytest.fixture(scope="module")
def daemon(tympan_home: Path, tmp_path_factory: pytest.TempPathFactory):
    from tympan.daemon.cli import default_bundle

    port = free_port()  # just before the daemon binds it
    config = (f"[limits]\nmax_frame_bytes = {MAX_FRAME}\nidle_timeout_s = 20\n"
              f'[wyoming]\nuri = "tcp://127.0.0.1:{port}"\nmax_header_bytes = {MAX_HEADER}\n'
              f"[openai]\nmax_upload_bytes = {MAX_UPLOAD}\nmax_audio_s = 10.0\n")
    with DaemonProcess(default_bundle(), tmp_path_factory.mktemp("fuzz-wy"), config) as d:
        d.wyoming_port = port
        yield d


# --- Wyoming scripts ---------------------------------------------------------------------------------------------


def event_bytes(header: dict, data: bytes = b"", payload: bytes = b"") -> bytes:
    if data:
        header = {**header, "data_length": len(data)}
    if payload:
        header = {**header, "payload_length": len(payload)}
    return json.dumps(header).encode() + b"\n" + data + payload


@dataclass
class WyAct:
    data: bytes
    answers: list[str] = field(default_factory=list)  # event types it gets
    fatal: bool = False  # one error, then the close


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=8), v, max_size=3),
                           max_leaves=8)


@st.composite
def fine_act(draw) -> WyAct:
    kind = draw(st.sampled_from(["noise", "bad_data", "silence", "start", "transcribe", "ping", "stop"]))
    if kind == "noise":  # an event type nobody knows, data inline and in its own section, any payload
        header = {"type": "x-" + draw(st.text("abcdefgh-", min_size=1, max_size=10)),
                  "data": draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))}
        data = json.dumps(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))).encode()
        return WyAct(event_bytes(header, data if data != b"{}" else b"", draw(st.binary(max_size=300))))
    if kind == "bad_data":  # the lengths are right, the data section is not a JSON object
        junk = draw(st.sampled_from([b"[1, 2]", b"nope", b"\xff\xfe", b'"text"', b"{" * 50]))
        return WyAct(event_bytes({"type": draw(st.sampled_from(["x-thing", "audio-start", "transcribe"]))}, junk),
                     ["error"])
    if kind == "silence":
        n = draw(st.integers(0, 1600))
        return WyAct(event_bytes({"type": "audio-chunk"}, json.dumps({"rate": 16000, "width": 2, "channels": 1})
                                 .encode(), bytes(2 * n)))
    if kind == "start":
        return WyAct(event_bytes({"type": "audio-start", "data": {"rate": draw(st.sampled_from([8000, 16000, 22050])),
                                                                   "width": 2, "channels": 1}}))
    if kind == "transcribe":
        return WyAct(event_bytes({"type": "transcribe", "data": {"language": draw(st.sampled_from(["en", "de"]))}}))
    if kind == "ping":
        return WyAct(event_bytes({"type": "ping", "data": {"text": "x"}}), ["pong"])
    return WyAct(event_bytes({"type": "audio-stop"}), TRANSCRIPT)


@st.composite
def fatal_act(draw) -> WyAct:
    kind = draw(st.sampled_from(["not_json", "not_object", "no_type", "data_not_object", "bad_length", "huge",
                                 "truncated_header", "lying_length", "long_line", "odd_audio", "bad_rate"]))
    if kind == "not_json":
        line = draw(st.binary(min_size=1, max_size=80).filter(lambda b: b"\n" not in b and not b.strip().isdigit()))
        return WyAct(line + b"\n", fatal=True)
    if kind == "not_object":
        return WyAct(json.dumps(draw(st.lists(json_values, max_size=3) | st.integers())).encode() + b"\n", fatal=True)
    if kind == "no_type":
        return WyAct(json.dumps({"data": {}, "type": draw(st.sampled_from([None, 1, "", []]))}).encode() + b"\n",
                     fatal=True)
    if kind == "data_not_object":
        return WyAct(json.dumps({"type": "transcribe", "data": draw(st.sampled_from([[], "x", 3]))}).encode() + b"\n",
                     fatal=True)
    if kind in ("bad_length", "huge"):
        key = draw(st.sampled_from(["data_length", "payload_length"]))
        value = draw(st.sampled_from([-1, 1.5, "12", True, [1]])) if kind == "bad_length" else \
            draw(st.integers(MAX_FRAME + MAX_HEADER + 1, 10**15))
        return WyAct(json.dumps({"type": "audio-chunk", key: value}).encode() + b"\n", fatal=True)
    if kind == "truncated_header":
        return WyAct(b'{"type": "audio-chunk", "data_len', fatal=True)
    if kind == "lying_length":  # announces more than is sent before the stream ends
        n = draw(st.integers(1, 2000))
        return WyAct(json.dumps({"type": "audio-chunk", "payload_length": n + draw(st.integers(1, 500))}).encode()
                     + b"\n" + bytes(n), fatal=True)
    if kind == "long_line":
        return WyAct(b'{"type": "x", "pad": "' + b"a" * (MAX_HEADER + draw(st.integers(1, 3000))), fatal=True)
    if kind == "odd_audio":
        return WyAct(event_bytes({"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}},
                                 payload=bytes(2 * draw(st.integers(0, 100)) + 1)), fatal=True)
    return WyAct(event_bytes({"type": "audio-start", "data": {"rate": draw(st.sampled_from([0, 100, 10**6, -5])),
                                                               "width": 2, "channels": 1}}), fatal=True)


async def run_wyoming(port: int, acts: list[WyAct]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    fatal = bool(acts) and acts[-1].fatal
    for act in acts:
        writer.write(act.data)
    if fatal:
        writer.write_eof()  # a truncated event is cut by the end of the stream
    else:
        writer.write(event_bytes({"type": "describe"}))  # the marker: all before it has been answered
    await writer.drain()
    got: list = []
    while True:
        event = await asyncio.wait_for(async_read_event(reader), 30)
        if event is None:
            break
        got.append(event)
        if not fatal and event.type == "info":
            break
    writer.close()
    expected = [t for a in acts for t in a.answers] + (["error"] if fatal else ["info"])
    assert sorted(e.type for e in got) == sorted(expected), ([a.data[:80] for a in acts], [e.type for e in got])
    assert all(e.data.get("text") for e in got if e.type == "error")
    return len(acts)


# --- HTTP requests ------------------------------------------------------------------------------------------------


def silent_wav() -> bytes:
    out = io.BytesIO()
    sf.write(out, np.zeros(1600, np.int16), 16000, format="WAV", subtype="PCM_16")
    return out.getvalue()


WAV = silent_wav()


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "fuzz") -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def http(body: bytes, headers: dict[str, str] | None = None, line: str = "POST /v1/audio/transcriptions HTTP/1.1",
         length: str | None = None) -> bytes:
    h = {"Host": "x", "Content-Type": "multipart/form-data; boundary=fuzz",
         "Content-Length": str(len(body)) if length is None else length, **(headers or {})}
    return (line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items() if v != "")).encode() + b"\r\n" + body


GOOD = [("model", None, b"tympan"), ("file", "a.wav", WAV)]


@st.composite
def http_case(draw) -> tuple[bytes, set[int]]:
    """A request and the statuses it may get (0: none, the connection just closes)."""
    kind = draw(st.sampled_from(["good", "truncated_head", "longer_than_sent", "shorter", "huge_length", "nan_length",
                                 "chunked", "bad_chunk", "no_boundary", "other_boundary", "truncated_part",
                                 "long_part_head", "many_parts", "not_utf8", "not_audio", "no_file", "method",
                                 "route", "version", "garbage_line", "no_length"]))
    body = multipart(GOOD)
    if kind == "good":
        return http(body), {200}
    if kind == "truncated_head":
        return http(body)[: draw(st.integers(0, 60))], {0}
    if kind == "longer_than_sent":
        return http(body, length=str(len(body) + draw(st.integers(1, 10**5)))), {400}
    if kind == "shorter":
        return http(body, length=str(len(body) - draw(st.integers(10, len(body))))), {400}
    if kind == "huge_length":
        return http(body, length=str(draw(st.integers(MAX_UPLOAD + 1, 10**15)))), {413}
    if kind == "nan_length":
        return http(body, length=draw(st.sampled_from(["-1", "1e3", "abc", "0x10", " "]))), {400}
    if kind == "chunked":
        return http(hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n",
                    {"Transfer-Encoding": "chunked"}, length=""), {200}
    if kind == "bad_chunk":
        size = draw(st.sampled_from([b"zz", b"-1", b"FFFFFFFFF", b"", hex(len(body) + 99)[2:].encode()]))
        return http(size + b"\r\n" + body + b"\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}, length=""), {400}
    if kind == "no_boundary":
        return http(body, {"Content-Type": draw(st.sampled_from(["multipart/form-data", "application/json",
                                                                  "text/plain; boundary=fuzz"]))}), {400}
    if kind == "other_boundary":
        return http(multipart(GOOD, "other")), {400}
    if kind == "truncated_part":
        return http(body[: draw(st.integers(0, len(body) - 12))]), {400}
    if kind == "long_part_head":
        return http(b"--fuzz\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\nx\r\n--fuzz--\r\n"), {400}
    if kind == "many_parts":
        return http(multipart([("f", None, b"x")] * 70 + GOOD)), {400}
    if kind == "not_utf8":
        return http(multipart([("model", None, b"\xff\xfe"), *GOOD[1:]])), {400}
    if kind == "not_audio":
        # Random bytes: almost never audio, but FFmpeg may find an MP3 frame in some; then it is transcribed.
        return http(multipart([GOOD[0], ("file", "a.wav", draw(st.binary(max_size=500)))])), {400, 200}
    if kind == "no_file":
        return http(multipart(GOOD[:1])), {400}
    if kind == "method":
        return http(body, line="PUT /v1/audio/transcriptions HTTP/1.1"), {405}
    if kind == "route":
        return http(body, line="POST /v1/audio/speech HTTP/1.1"), {404}
    if kind == "version":
        return http(body, line="POST /v1/audio/transcriptions HTTP/2.0"), {505}
    if kind == "garbage_line":
        return http(body, line=draw(st.sampled_from(["POST", "POST  / HTTP/1.1", "POST nope HTTP/1.1"]))), {400}
    return http(body, length=""), {411}


async def run_http(port: int, data: bytes, statuses: set[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    if statuses == {0}:
        assert answer == b"", answer[:200]
        return
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert status in statuses, (data[:200], answer[:300])
    if status != 200:
        error = json.loads(body)["error"]
        assert error["message"] and error["type"] and error["code"], error
    else:
        assert json.loads(body)["text"] == ""


# --- the well-behaved clients beside the fuzzer -----------------------------------------------------------------


async def good_wyoming(port: int) -> str:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="de").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        data = pcm16(SPEECH)
        for i in range(0, len(data), 3200):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=data[i : i + 3200]).event())
            await asyncio.sleep(0.01)
        await client.write_event(AudioStop().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), 60)
            assert event is not None
            if Transcript.is_type(event.type):
                return Transcript.from_event(event).text


async def good_openai(port: int) -> str:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
    out = io.BytesIO()
    sf.write(out, np.frombuffer(pcm16(SPEECH), "<i2"), 16000, format="WAV", subtype="PCM_16")
    answer = await client.audio.translations.create(model="tympan", file=("s.wav", out.getvalue()),
                                                    extra_body={"language": "de"})
    return answer.text


class Beside:
    def __init__(self, port: int, wyoming_port: int) -> None:
        self.port, self.wyoming_port, self.stop = port, wyoming_port, asyncio.Event()
        self.runs: dict[str, list[str]] = {"wyoming": [], "openai": []}

    async def _loop(self, name: str, client) -> None:
        while not self.stop.is_set():
            self.runs[name].append(await client())

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._loop("wyoming", lambda: good_wyoming(self.wyoming_port))),
                      asyncio.create_task(self._loop("openai", lambda: good_openai(self.port)))]

    async def finish(self) -> dict[str, list[str]]:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        return self.runs


def test_fuzzing_wyoming_framing_and_http_uploads(daemon) -> None:
    async def alone() -> dict[str, str]:
        return {"wyoming": await good_wyoming(daemon.wyoming_port), "openai": await good_openai(daemon.port)}

    reference = asyncio.run(alone())
    assert reference["wyoming"] and reference["wyoming"] == reference["openai"], reference
    bg, beside, sent = Background(), Beside(daemon.port, daemon.wyoming_port), {"wyoming": 0, "http": 0}

    async def start() -> None:
        beside.start()

    bg.run(start())

    @settings(FUZZ_SETTINGS, max_examples=150)
    @given(fine=st.lists(fine_act(), max_size=12), fatal=st.none() | fatal_act(), case=http_case())
    def fuzz(fine: list[WyAct], fatal: WyAct | None, case: tuple[bytes, set[int]]) -> None:
        sent["wyoming"] += bg.run(run_wyoming(daemon.wyoming_port, fine + ([fatal] if fatal else [])))
        bg.run(run_http(daemon.port, *case))
        sent["http"] += 1

    try:
        fuzz()
        runs = bg.run(beside.finish())
    finally:
        bg.close()
    print(f"fuzzing: {sent}; well-behaved runs: {[len(r) for r in runs.values()]}")
    after_fuzzing(daemon, runs, reference)
