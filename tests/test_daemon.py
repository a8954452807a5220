"""The daemon end to end: a real `tympan serve` process, real websocket clients over loopback,
a real mosquitto broker, real human recordings."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from broker import Broker, Subscriber
from daemon_harness import DaemonProcess, alsa_speech, as_sent, silence, write_wav
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tympan.daemon.client import stream

SPEECH = np.concatenate([silence(0.6), alsa_speech("Front_Center"), silence(1.5), alsa_speech("Rear_Right"),
                         silence(1.2)])
FIRST_END = 0.6 + len(alsa_speech("Front_Center")) / 16000
REQUEST = ("st", "de")
ST_DE = {"task": "st", "target_lang": "de"}


@pytest.fixture(scope="module")
def bundle(tympan_home: Path) -> Path:
    from tympan.daemon.cli import default_bundle

    return default_bundle()


@pytest.fixture(scope="module")
def expected(bundle: Path) -> list[str]:
    """The finals an offline run gives: the same segmenter and model on what the daemon receives."""
    from tympan.daemon.settings import DaemonConfig
    from tympan.daemon.vad import Segmenter, UtteranceEnded
    from tympan.runtime.speech_model import SpeechModel

    model = SpeechModel.load(bundle)
    segmenter = Segmenter(DaemonConfig().vad, 16000)
    events = segmenter.push(as_sent(SPEECH)) + segmenter.finish()
    # The tiny test model was trained on tone-coded numbers: on real speech its German "translation"
    # is some number words, while its transcript is often empty. Non-empty text makes the test bite.
    instruction = model.prompts.instruction(*REQUEST)
    texts = [model.respond(e.audio, instruction) for e in events if isinstance(e, UtteranceEnded)]
    assert len(texts) == 2, "the offline segmenter should find the two recordings"
    assert any(texts), "the model says nothing: the comparison would not test much"
    return texts


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    with Broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="module")
def daemon(bundle: Path, broker: Broker, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("daemon")
    config = (f'[mqtt]\nurl = "{broker.url}"\nsite = "test"\nspool = "{work / "spool.sqlite"}"\nhermes = true\n'
              "[limits]\nmax_frame_bytes = 65536\nidle_timeout_s = 20\n")
    with DaemonProcess(bundle, work, config) as d:
        yield d


def chunks_of(audio: np.ndarray, rate: int = 16000, chunk_ms: int = 100):
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = rate * chunk_ms // 1000 * 2

    async def gen():
        for i in range(0, len(pcm), step):
            yield pcm[i : i + step], rate

    return gen()


def finals(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "final"]


def test_a_recording_in_the_right_finals_out_over_websocket_and_mqtt(daemon, broker, expected) -> None:
    async def main():
        async with Subscriber(broker.port, "tympan/test/#", "hermes/asr/textCaptured") as sub:
            events = await stream(daemon.url, chunks_of(SPEECH), ST_DE, lambda e: None)
            got = finals(events)
            await sub.wait_for(lambda m: len([x for x in m if x.topic.endswith("/final")]) >= len(expected), 10)
            await sub.wait_for(lambda m: len([x for x in m if x.topic.endswith("textCaptured")]) >= len(expected), 10)
            return events, got, sub.on("/final"), sub.on("hermes/asr/textCaptured")

    events, got, published, hermes = asyncio.run(main())
    assert events[0]["type"] == "ready" and events[-1]["type"] == "done"
    assert [f["text"] for f in got] == expected
    assert all(f["task"] == "st" and f["target_lang"] == "de" and f["latency_ms"] >= 0 for f in got)
    # Utterance boundaries: the first ends near the end of the first recording, the second starts after the gap.
    assert got[0]["start"] < 0.9 and abs(got[0]["end"] - FIRST_END) < 0.35
    assert got[1]["start"] > FIRST_END + 1.0
    # Each final is preceded by partials of its segment (its decode, streamed), the last equal to it.
    for f in got:
        partials = [e for e in events[: events.index(f)] if e["type"] == "partial" and e["segment_id"] ==
                    f["segment_id"]]
        if f["text"]:
            assert partials and partials[-1]["text"] == f["text"]
        assert [p["seq"] for p in partials] == sorted({p["seq"] for p in partials})
        assert all(p["stable_len"] <= len(p["text"]) for p in partials)
    session = events[0]["session_id"]
    payloads = [m.json() for m in published if f"/session/{session}/" in m.topic]
    assert [p["text"] for p in payloads] == [f["text"] for f in got]
    assert all(p["site"] == "test" and p["session_id"] == session and p["message_id"] and p["time"]
               for p in payloads)
    assert len({p["message_id"] for p in payloads}) == len(payloads)
    # Rhasspy/Home Assistant listeners: Hermes textCaptured, camelCase.
    captured = [m.json() for m in hermes if m.json()["sessionId"] == session]
    assert [c["text"] for c in captured] == [f["text"] for f in got]
    for c, f in zip(captured, got, strict=True):
        assert c == {"text": f["text"], "likelihood": 1.0, "seconds": round(f["end"] - f["start"], 3),
                     "siteId": "test", "sessionId": session, "lang": "de"}


def test_tones_noise_and_silence_make_no_utterance(daemon) -> None:
    t = np.arange(3 * 16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32)
    audio = np.concatenate([tone, noise, silence(3.0)])
    events = asyncio.run(stream(daemon.url, chunks_of(audio), {"task": "asr"}, lambda e: None))
    assert [e["type"] for e in events] == ["ready", "done"]


async def _exchange(url: str, frames: list[str | bytes], read_until_close: bool = True) -> tuple[list[dict], int]:
    """Send frames, collect events until the server closes; returns (events, close code)."""
    events: list[dict] = []
    async with connect(url) as ws:
        try:
            for f in frames:
                await ws.send(f)
            while read_until_close:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
                if events[-1]["type"] == "done":
                    break
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        return events, ws.close_code or 0


START = json.dumps({"type": "start", "task": "asr", "target_lang": "en", "sample_rate": 16000,
                    "encoding": "pcm_s16le"})


@pytest.mark.parametrize(
    ("frames", "code", "message"),
    [
        (["{not json"], "bad_request", "not valid JSON"),
        ([json.dumps({"type": "dance"})], "bad_request", "unknown message type 'dance'"),
        ([b"\x00\x01" * 100], "bad_request", "audio before 'start'"),
        ([START.replace("16000", "1000000")], "unsupported", "outside 8000-48000 Hz"),
        ([START.replace('"asr"', '"st"').replace('"en"', '"fr"')], "unsupported", "'target_lang' must be one of"),
        ([START, b"\x00\x01\x02"], "bad_request", "not a whole number of 2-byte pcm_s16le samples"),
    ],
)
def test_bad_input_gets_an_error_naming_the_problem(daemon, frames, code, message) -> None:
    events, close_code = asyncio.run(_exchange(daemon.url, frames))
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[0]["code"] == code and message in errors[0]["message"], events
    assert close_code in (1003, 1008)


def test_oversized_frames_are_refused_and_a_bad_config_message_is_survivable(daemon) -> None:
    async def main():
        oversized = await _exchange(daemon.url, [START, b"\x00" * 70000])
        survivable = await _exchange(daemon.url, [START, "{oops", json.dumps({"type": "config", "task": "nope"}),
                                                  json.dumps({"type": "stop"})])
        return oversized, survivable

    (_events, code), (events2, code2) = asyncio.run(main())
    assert code == 1009  # message too big, from the websocket layer, before the daemon buffers it
    assert [e["type"] for e in events2] == ["ready", "error", "error", "done"] and code2 == 1000
    assert "not valid JSON" in events2[1]["message"] and "'task' must be one of" in events2[2]["message"]


def test_the_daemon_keeps_serving_while_others_misbehave(daemon, expected) -> None:
    async def main():
        good = asyncio.create_task(stream(daemon.url, chunks_of(SPEECH, chunk_ms=50), ST_DE, lambda e: None))
        for frames in (["{bad"], [b"\x00" * 10], [START, b"\x01"], [START, b"\x00" * 70000]) * 3:
            await _exchange(daemon.url, frames)
        return await good

    events = asyncio.run(main())
    assert [f["text"] for f in finals(events)] == expected


def test_a_client_that_vanishes_mid_utterance_leaks_nothing_and_its_final_reaches_mqtt(daemon, broker) -> None:
    speech = np.concatenate([silence(0.5), alsa_speech("Side_Left")])  # no trailing silence: mid-utterance

    async def main():
        async with Subscriber(broker.port, "tympan/test/#") as sub:
            ws = await connect(daemon.url)
            await ws.send(START.replace('"start"', '"start", "session_id": "vanishing"'))
            json.loads(await ws.recv())
            async for data, _ in chunks_of(speech):
                await ws.send(data)
            await asyncio.sleep(0.3)
            ws.transport.abort()  # no close handshake: the client is just gone
            await sub.wait_for(lambda m: any("/session/vanishing/final" in x.topic for x in m), 15)

    asyncio.run(main())
    for _ in range(100):
        m = daemon.metrics()
        if m["tympan_sessions_active"] == 0 and m["tympan_sessions_lingering"] == 0:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert (m["tympan_sessions_active"], m["tympan_sessions_lingering"]) == (0, 0)


def buzz(seconds: float, f0: float = 150.0) -> np.ndarray:
    """A machine buzz (harmonics of one steady pitch): voiced to webrtcvad, not speech to the gate."""
    t = np.arange(int(seconds * 16000)) / 16000
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 30))
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def test_speech_running_into_a_buzz_still_ends_the_session(daemon) -> None:
    """Pause, resume, then the utterance is rejected: its cancelled speculation must not keep it pending."""
    audio = np.concatenate([silence(0.5), alsa_speech("Front_Center"), silence(0.2), buzz(1.5), silence(1.5)])

    async def main():
        return await asyncio.wait_for(stream(daemon.url, chunks_of(audio), ST_DE, lambda e: None), 20)

    events = asyncio.run(main())
    assert events[-1]["type"] == "done"
    assert daemon.metrics()["tympan_sessions_lingering"] == 0


def test_health_and_metrics(daemon) -> None:
    health = daemon.health()
    assert health["ready"] and health["bundle_loaded"] and health["mqtt"]["connected"]
    metrics = daemon.metrics()
    for name in ("tympan_sessions_active", "tympan_queue_depth", "tympan_real_time_factor", "tympan_spool_depth",
                 "tympan_final_latency_seconds_count", "tympan_utterances_total"):
        assert name in metrics, name


def test_a_broker_restart_mid_stream_loses_no_final(daemon, broker) -> None:
    audio = np.concatenate([SPEECH, SPEECH])

    async def main():
        async with Subscriber(broker.port, "tympan/test/session/restart/#") as sub:
            broker.kill()
            events = await stream(daemon.url, chunks_of(audio), {"task": "asr", "session_id": "restart"},
                                  lambda e: None)
            broker.start()
            await sub.wait_sessions(2)
            n = len(finals(events))
            await sub.wait_for(lambda m: len({x.json()["message_id"] for x in m if x.topic.endswith("/final")}) >= n,
                               20)
            return events, sub.on("/final")

    events, published = asyncio.run(main())
    texts = [f["text"] for f in finals(events)]
    assert len(texts) == 4
    unique = {}
    for m in published:
        unique.setdefault(m.json()["message_id"], m.json())
    assert [p["text"] for p in unique.values()] == texts  # all of them, in order


def test_sigterm_drains_open_utterances(bundle, broker, tmp_path) -> None:
    config = (f'[mqtt]\nurl = "{broker.url}"\nsite = "drain"\nspool = "{tmp_path / "spool.sqlite"}"\n'
              "[server]\ndrain_timeout_s = 5\n")
    proc = DaemonProcess(bundle, tmp_path, config).start()
    speech = np.concatenate([silence(0.5), alsa_speech("Front_Left")])  # still speaking at SIGTERM

    async def main():
        async with Subscriber(broker.port, "tympan/drain/#") as sub:
            events = []
            async with connect(proc.url) as ws:
                await ws.send(START)
                events.append(json.loads(await ws.recv()))
                async for data, _ in chunks_of(speech):
                    await ws.send(data)
                await asyncio.sleep(0.2)
                proc.proc.send_signal(signal.SIGTERM)
                try:
                    async for message in ws:
                        events.append(json.loads(message))
                except ConnectionClosed:
                    pass
                code = ws.close_code
            await sub.wait_for(lambda m: any(x.topic.endswith("/final") for x in m), 10)
            return events, code

    t0 = time.monotonic()
    events, code = asyncio.run(main())
    assert proc.proc.wait(timeout=30) == 0, proc.log()  # exits by itself after draining
    assert time.monotonic() - t0 < 5 + 8  # within the drain timeout, plus start-up slack
    assert len(finals(events)) == 1 and code == 1001


def test_the_stream_command_prints_the_transcript(daemon, expected, tmp_path) -> None:
    wav = write_wav(tmp_path / "speech.wav", SPEECH)
    out = subprocess.run([sys.executable, "-m", "tympan", "stream", str(wav), "--url", daemon.url, "--task", "st",
                          "--lang", "de"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split("] ", 1)[1] if "] " in line else "" for line in lines] == expected


def test_any_microphone_rate_is_resampled(daemon) -> None:
    audio48 = np.concatenate([silence(0.5, 48000), alsa_speech("Front_Center", 48000), silence(1.0, 48000)])
    events = asyncio.run(stream(daemon.url, chunks_of(audio48, rate=48000), {"task": "asr"}, lambda e: None))
    got = finals(events)
    assert len(got) == 1 and got[0]["start"] < 0.8 and abs(got[0]["end"] - FIRST_END) < 0.35


def test_capacity_and_auth(bundle, tmp_path) -> None:
    """Past max_sessions a new session gets `overloaded` while the live one goes on; a token is required."""
    config = ('[limits]\nmax_sessions = 1\n[auth]\ntoken = "s3cret"\n'
              'allowed_origins = ["http://127.0.0.1:8765"]\n')
    proc = DaemonProcess(bundle, tmp_path, config).start()
    url = proc.url + "?token=s3cret"

    async def main():
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as refused:
            await connect(proc.url)
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as refused:
            await connect(proc.url, additional_headers={"Authorization": "Bearer wrong"})
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, origin="http://evil.example")
        assert refused.value.response.status_code == 403
        # A connection that never sends `start` does not take the only session slot.
        idle = await connect(url, origin="http://127.0.0.1:8765")
        live = await connect(proc.url, additional_headers={"Authorization": "Bearer s3cret"})
        await live.send(START)
        assert json.loads(await live.recv())["type"] == "ready"
        events, code = await _exchange(url, [START])
        await live.send(json.dumps({"type": "stop"}))
        assert json.loads(await live.recv())["type"] == "done"
        await live.close()
        await idle.close()
        return events, code

    try:
        events, code = asyncio.run(main())
    finally:
        proc.stop()
    assert events[0]["type"] == "error" and events[0]["code"] == "overloaded" and code == 1013
