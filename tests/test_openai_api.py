"""The OpenAI audio API end to end: a real daemon (with a token and MQTT), driven by the official `openai` SDK
with `base_url` pointed at it: transcriptions and translations in every response format, `stream=True`, the
upload formats people send, the SDK's typed errors for bad requests, and the realtime transcription websocket
in both of its dialects. `/v1/stream` on the same daemon, for the same audio, is the reference. The tiny test
model's English is nearly empty, so the formats are compared on translations into German."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import openai
import pytest
import soundfile as sf
from broker import Broker, Subscriber
from daemon_harness import DaemonProcess, alsa_speech, joined, pcm16, silence, v1_finals
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

TOKEN = "s3cret-token"
RATE = 16000
SPEECH = np.concatenate([silence(0.5), alsa_speech("Front_Center"), silence(1.0), alsa_speech("Rear_Right"),
                         silence(1.0)])
SPEECH_24K = np.concatenate([silence(0.5, 24000), alsa_speech("Front_Center", 24000), silence(1.0, 24000),
                             alsa_speech("Rear_Right", 24000), silence(1.0, 24000)])  # the realtime API's rate
GERMAN = {"task": "st", "target_lang": "de"}
ORIGIN = "https://app.example"  # auth.allowed_origins
MAX_SESSIONS = 4


def wav(audio: np.ndarray, rate: int = RATE, **kw: str) -> bytes:
    """A sound file of `audio` as PCM16, the very sample values /v1/stream's client sends (daemon_harness.pcm16)."""
    out = io.BytesIO()
    samples = np.frombuffer(pcm16(audio), dtype="<i2").reshape(len(audio), -1)
    sf.write(out, samples, rate, **{"format": "WAV", "subtype": "PCM_16", **kw})
    return out.getvalue()


def pyav(audio: np.ndarray, container: str, codec: str, rate: int) -> bytes:
    """`audio` (16 kHz) encoded by FFmpeg through PyAV: m4a (AAC) and webm (Opus), what browsers and phones send."""
    import soxr

    out = io.BytesIO()
    with av.open(out, "w", format=container) as c:
        stream = c.add_stream(codec, rate=rate)
        stream.layout = "mono"
        pcm = (np.clip(soxr.resample(audio, RATE, rate), -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def daemon(tympan_home: Path, tmp_path_factory: pytest.TempPathFactory, broker: Broker):
    from tympan.daemon.cli import default_bundle

    work = tmp_path_factory.mktemp("openai")
    config = (f'[auth]\ntoken = "{TOKEN}"\nallowed_origins = ["{ORIGIN}"]\n[openai]\nmax_audio_s = 20.0\n'
              f'[limits]\nstart_timeout_s = 2.0\nmax_sessions = {MAX_SESSIONS}\n'
              f'[mqtt]\nurl = "{broker.url}"\nsite = "oa"\nspool = "{work / "spool.sqlite"}"\n'
              # Two sentences a second apart are two utterances whatever the tiny model writes (its words are
              # noise, so the end-of-turn model's view of them is too): the finals are compared across protocols.
              '[turn]\ndetection = "silence"\n')
    with DaemonProcess(default_bundle(), work, config) as d:
        yield d


@pytest.fixture(scope="module")
def reference(daemon) -> dict[str, list[dict]]:
    async def both():
        return {"en": await v1_finals(daemon, SPEECH, token=TOKEN),
                "de": await v1_finals(daemon, SPEECH, GERMAN, token=TOKEN)}

    ref = asyncio.run(both())
    assert len(ref["en"]) == len(ref["de"]) == 2, "the segmenter should find the two recordings"
    assert all(f["text"] for f in ref["de"]), "the tiny model's German should not be empty"
    return ref


def client(daemon, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.http}/v1", api_key=key, max_retries=0)


def test_every_response_format_is_the_finals_of_v1_stream(daemon, reference, broker) -> None:
    c, data, de = client(daemon), wav(SPEECH), reference["de"]
    texts = [f["text"].strip() for f in de]

    ids: list[str] = []  # the uploads' sessions (x-request-id): other sessions' finals may still arrive

    def parsed(raw):
        ids.append(raw.headers["x-request-id"])
        return raw.parse()

    def translate(fmt: str):
        return parsed(c.audio.translations.with_raw_response.create(
            model="whisper-1", file=("speech.wav", data), response_format=fmt, extra_body={"language": "de"}))

    def ours(msgs) -> list[dict]:
        return [m for m in (m.json() for m in msgs) if m["session_id"] in ids]

    async def with_subscriber():
        async with Subscriber(broker.port, "tympan/oa/session/+/final") as sub:
            answers = {fmt: await asyncio.to_thread(translate, fmt)
                       for fmt in ("json", "text", "verbose_json", "srt", "vtt")}
            english = parsed(await asyncio.to_thread(c.audio.transcriptions.with_raw_response.create, model="tympan",
                                                     file=("s.wav", data)))
            await sub.wait_for(lambda msgs: len(ours(msgs)) >= 5 * len(de) + len(reference["en"]), timeout=30)
            return answers, english, ours(sub.messages)

    answers, english, published = asyncio.run(with_subscriber())
    assert len(set(ids)) == 6 and all(ids), ids
    assert answers["json"].text == joined(de)
    assert answers["text"] == joined(de) + "\n"
    verbose = answers["verbose_json"]
    assert verbose.language == "german" and verbose.text == joined(de)
    assert abs(verbose.duration - len(SPEECH) / RATE) < 0.01
    assert [s.text for s in verbose.segments] == texts
    assert [(s.start, s.end) for s in verbose.segments] == [(round(f["start"], 3), round(f["end"], 3)) for f in de]
    srt_blocks = answers["srt"].strip().split("\n\n")
    assert [b.split("\n")[0] for b in srt_blocks] == ["1", "2"] and [b.split("\n")[2] for b in srt_blocks] == texts
    assert " --> " in srt_blocks[0] and "," in srt_blocks[0].split("\n")[1]
    vtt = answers["vtt"]
    assert vtt.startswith("WEBVTT\n\n") and [b.split("\n")[1] for b in vtt[8:].strip().split("\n\n")] == texts
    assert english.text == joined(reference["en"])
    # Every one of those finals went to MQTT like any other (under the session id the answer named).
    assert sorted(m["text"] for m in published if m["target_lang"] == "de") == sorted(texts * 5)
    assert len([m for m in published if m["target_lang"] == "en"]) == len(reference["en"])
    sessions = {k: v for k, v in daemon.metrics().items() if k.startswith("tympan_protocol_sessions_total")}
    assert sessions['tympan_protocol_sessions_total{protocol="openai"}'] >= 6, sessions  # these six, at least
    assert sessions['tympan_protocol_sessions_total{protocol="v1"}'] >= 2, sessions  # the references


def test_stream_true_sends_deltas_then_done(daemon, reference) -> None:
    events = list(client(daemon).audio.transcriptions.create(model="gpt-4o-transcribe", file=("s.wav", wav(SPEECH)),
                                                             stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == joined(reference["en"])


def test_the_upload_formats_people_send(daemon, reference) -> None:
    c, expected = client(daemon), [f["text"].strip() for f in reference["de"]]
    files = {"speech.flac": wav(SPEECH, format="FLAC", subtype="PCM_16"),
             "speech.ogg": wav(SPEECH, format="OGG", subtype="OPUS"),
             "speech.mp3": wav(SPEECH, format="MP3", subtype="MPEG_LAYER_III"),
             "speech.m4a": pyav(SPEECH, "ipod", "aac", RATE),
             "speech.webm": pyav(SPEECH, "webm", "libopus", 48000),
             "speech-stereo.wav": wav(np.stack([SPEECH, SPEECH], 1))}
    for name, data in files.items():
        got = c.audio.translations.create(model="tympan", file=(name, data), response_format="verbose_json",
                                          extra_body={"language": "de"})
        assert abs(got.duration - len(SPEECH) / RATE) < 0.15, (name, got.duration)
        if name.endswith((".flac", ".wav")):  # lossless: the very samples /v1/stream got
            assert [s.text for s in got.segments] == expected, name
        else:  # lossy: the same utterances found
            assert len(got.segments) == len(expected), (name, got.segments)


def test_bad_requests_get_the_sdks_typed_errors(daemon) -> None:
    c, good = client(daemon), ("s.wav", wav(SPEECH[:RATE]))
    cases = [
        (dict(file=good, model="whisper-1"), client(daemon, "wrong"), openai.AuthenticationError, "token"),
        (dict(file=good, model="nope"), c, openai.NotFoundError, "'nope' does not exist"),
        (dict(file=good, model="tympan", response_format="diarized_json"), c, openai.BadRequestError,
         "response_format 'diarized_json'"),
        (dict(file=good, model="tympan", timestamp_granularities=["word"]), c, openai.BadRequestError, "word times"),
        (dict(file=good, model="tympan", language="fr"), c, openai.BadRequestError, "transcribes English"),
        (dict(file=("notes.wav", b"RIFF\x00\x00 this is no audio"), model="tympan"), c, openai.BadRequestError,
         "'notes.wav' cannot be used"),
        (dict(file=("empty.mp3", b""), model="tympan"), c, openai.BadRequestError, "empty"),
        (dict(file=("long.wav", wav(silence(21.0))), model="tympan"), c, openai.BadRequestError, "limit is 20 s"),
        # A few hundred bytes of FLAC that would decode to 655350 x 8 float32 a second: refused before decoding.
        (dict(file=("bomb.flac", wav(np.zeros((4096, 8)), 655350, format="FLAC")), model="tympan"), c,
         openai.BadRequestError, "655350 Hz; at most 48000 Hz"),
    ]
    for kwargs, sdk, error, text in cases:
        with pytest.raises(error) as e:
            sdk.audio.transcriptions.create(**kwargs)
        body = e.value.body
        assert isinstance(body, dict) and text in body["message"] and body["type"] and body["code"], (kwargs, body)
    # No file at all (the SDK always sends one): a plain multipart POST.
    form = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ntympan\r\n--b--\r\n'
    request = urllib.request.Request(f"{daemon.http}/v1/audio/transcriptions", data=form, method="POST", headers={
        "Content-Type": "multipart/form-data; boundary=b", "Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    assert e.value.code == 400 and json.loads(e.value.read())["error"]["param"] == "file"
    assert daemon.health()["ready"] and not daemon.tracebacks()


async def realtime(daemon, beta: bool) -> list:
    """A realtime transcription session through the SDK's realtime client (beta or GA), translating into German;
    returns the completed transcripts' events."""
    c = openai.AsyncOpenAI(base_url=f"{daemon.http}/v1", api_key=TOKEN,
                           websocket_base_url=daemon.http.replace("http", "ws") + "/v1")
    audio = pcm16(SPEECH_24K)
    events: list = []
    manager = c.beta.realtime.connect(model="tympan", extra_query={"intent": "transcription"}) if beta else \
        c.realtime.connect(extra_query={"intent": "transcription"})
    async with manager as conn:
        if beta:
            await conn.transcription_session.update(session={
                "input_audio_format": "pcm16", "turn_detection": {"type": "server_vad"},
                "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "de"}})
        else:
            await conn.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-transcribe", "language": "de"}}}})
        for i in range(0, len(audio), 4800):  # 100 ms, as v1_finals sends it
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i : i + 4800]).decode())
        while sum(e.type.endswith(".completed") for e in events) < 2:
            events.append(await asyncio.wait_for(conn.recv(), 30))
    return events


@pytest.mark.parametrize("beta", [True, False], ids=["beta", "ga"])
def test_realtime_transcription_sessions(daemon, beta) -> None:
    async def both():
        return await v1_finals(daemon, SPEECH_24K, GERMAN, rate=24000, token=TOKEN), await realtime(daemon, beta)

    expected, events = asyncio.run(both())
    prefix = "transcription_session" if beta else "session"
    assert [e.type for e in events[:2]] == [f"{prefix}.created", f"{prefix}.updated"]
    per_turn = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed", "conversation.item.input_audio_transcription.delta",
                "conversation.item.input_audio_transcription.completed"]
    assert sorted(e.type for e in events[2:]) == sorted(per_turn * 2)
    completed = [e for e in events if e.type.endswith(".completed")]
    assert [e.transcript for e in completed] == [f["text"] for f in expected] and all(f["text"] for f in expected)
    committed = [e.item_id for e in events if e.type == "input_audio_buffer.committed"]
    assert [e.item_id for e in completed] == committed


def test_realtime_auth_by_subprotocol_and_refusals(daemon) -> None:
    url = daemon.http.replace("http", "ws") + "/v1/realtime?intent=transcription"

    async def main():
        async with connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{TOKEN}",
                                              "openai-beta.realtime-v1"]) as ws:
            created = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            refused = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "not base64!"}))
            bad = json.loads(await ws.recv())
            chosen = ws.subprotocol
        with pytest.raises(InvalidStatus) as e:
            async with connect(url, subprotocols=["realtime", "openai-insecure-api-key.wrong"]):
                pass
        return created, refused, bad, chosen, e.value.response.status_code

    created, refused, bad, chosen, status = asyncio.run(main())
    assert created["type"] == "transcription_session.created" and chosen == "realtime"
    assert refused["type"] == "error" and "server VAD" in refused["error"]["message"]
    assert bad["type"] == "error" and "base64" in bad["error"]["message"]
    assert status == 401


def test_a_connection_that_says_too_little_to_route_is_closed(daemon) -> None:
    """The port's first bytes decide between websockets and the HTTP API: a client that never sends them is
    closed after limits.start_timeout_s, as websockets' own handshake timeout did."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(b"PO")
        started = time.monotonic()
        assert s.recv(100) == b""
        waited = time.monotonic() - started
    assert 1.5 < waited < 6, waited
    assert daemon.health()["ready"]


def test_uploads_from_a_foreign_origin_are_refused_and_idle_heads_take_no_slot(daemon) -> None:
    """A multipart POST needs no CORS preflight, so a page elsewhere could send one: auth.allowed_origins applies
    (403, as for the websockets). Connections that have not passed the token check yet hold no upload slot."""
    good = ("s.wav", wav(silence(0.5)))
    sdk = openai.OpenAI(base_url=f"{daemon.http}/v1", api_key=TOKEN, max_retries=0,
                        default_headers={"Origin": "https://evil.example"})
    with pytest.raises(openai.PermissionDeniedError) as e:
        sdk.audio.transcriptions.create(model="tympan", file=good)
    assert isinstance(e.value.body, dict) and "https://evil.example is not allowed" in e.value.body["message"]
    assert e.value.body["type"] == "permission_error"
    listed = openai.OpenAI(base_url=f"{daemon.http}/v1", api_key=TOKEN, max_retries=0,
                           default_headers={"Origin": ORIGIN})
    assert listed.audio.transcriptions.create(model="tympan", file=good).text == ""
    idle = [socket.create_connection(("127.0.0.1", daemon.port), timeout=10) for _ in range(MAX_SESSIONS + 2)]
    try:
        for s in idle:
            s.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        time.sleep(0.2)
        assert client(daemon).audio.transcriptions.create(model="tympan", file=good).text == ""
    finally:
        for s in idle:
            s.close()


def test_an_upload_cut_short_by_the_shutdown_gets_503_not_a_partial_transcript(tympan_home: Path,
                                                                                tmp_path: Path) -> None:
    """SIGTERM while an upload is being transcribed: the drain ends its stream early, so the transcript would
    cover only its start. The client gets 503 (send it again later), not a 200 passing the start off as whole."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    from tympan.daemon.cli import default_bundle

    many = np.concatenate([SPEECH] * 8)  # 16 utterances, their finals decoded one at a time (session_backlog)
    with DaemonProcess(default_bundle(), tmp_path, "[limits]\nsession_backlog = 1\n") as d:
        sdk = openai.OpenAI(base_url=f"{d.http}/v1", api_key="any", max_retries=0, timeout=60)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(sdk.audio.transcriptions.create, model="tympan", file=("many.wav", wav(many)))
            d.wait_log(r"session \w+ started \(openai")
            d.proc.send_signal(signal.SIGTERM)
            with pytest.raises(openai.InternalServerError) as e:
                answer.result(60)
        assert e.value.status_code == 503 and e.value.body["code"] == "shutting_down", e.value.body
        assert d.proc.wait(30) == 0 and not d.tracebacks()
