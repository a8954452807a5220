"""The Vosk-compatible endpoint (`/vosk`) end to end: a real daemon, a client written from vosk-server's
protocol (config, PCM16 frames each answered by one JSON message, `{"eof" : 1}`), real recordings.

What tympan's own `/v1/stream` gives for the same audio on the same daemon is the reference: the
tiny test model's English transcripts are often empty, so the number of results (one per utterance
tympan's segmenter finds) is checked as well as their texts.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProcess, alsa_speech, silence
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tympan.daemon.client import stream

EOF = '{"eof" : 1}'  # byte for byte what vosk-server's clients send
CHUNK_S = 0.2  # vosk-server's test.py sends 0.2 s of audio per frame
SILENCE_S = 0.6  # vad.silence_ms, the default: an utterance ends after this much silence


def recording(rate: int) -> np.ndarray:
    return np.concatenate([silence(0.6, rate), alsa_speech("Front_Center", rate), silence(1.5, rate),
                           alsa_speech("Rear_Right", rate), silence(1.5, rate)])


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def frames_of(audio: np.ndarray, rate: int, seconds: float = CHUNK_S) -> list[bytes]:
    data, step = pcm16(audio), int(rate * seconds) * 2
    return [data[i : i + step] for i in range(0, len(data), step)]


@pytest.fixture(scope="module")
def daemon(tympan_home: Path, tmp_path_factory: pytest.TempPathFactory):
    from tympan.daemon.cli import default_bundle

    work = tmp_path_factory.mktemp("vosk")
    # The silence endpoint: the finals' frames are checked against vad.silence_ms (test_turns.py has the model's).
    config = "[limits]\nmax_frame_bytes = 65536\nidle_timeout_s = 20\n[turn]\ndetection = \"silence\"\n"
    with DaemonProcess(default_bundle(), work, config) as d:
        yield d


def vosk_url(daemon: DaemonProcess) -> str:
    return daemon.url.replace("/v1/stream", "/vosk")


async def vosk_client(url: str, frames: list[bytes], config: dict | None,
                      pause: float = 0.0) -> tuple[list[dict], list[dict], int]:
    """As vosk-server's test.py: send a frame, read its answer; then eof and read until the close.
    Returns (the answers to the frames, the messages after eof, the close code)."""
    answers, after_eof = [], []
    async with connect(url) as ws:
        if config is not None:
            await ws.send(f'{{ "config" : {json.dumps(config)} }}')  # spaced like vosk's clients
        for data in frames:
            await ws.send(data)
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await asyncio.sleep(pause)
        await ws.send(EOF)
        try:
            while True:
                after_eof.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        except ConnectionClosed:
            pass
        return answers, after_eof, ws.close_code or 0


async def tympan_finals(daemon: DaemonProcess, frames: list[bytes], rate: int) -> list[dict]:
    async def chunks():
        for data in frames:
            yield data, rate

    events = await stream(daemon.url, chunks(), {"task": "asr"}, lambda e: None)
    return [e for e in events if e["type"] == "final"]


def check_shapes(answers: list[dict]) -> None:
    for a in answers:
        assert (list(a) == ["partial"] and isinstance(a["partial"], str)) or \
               (list(a) == ["text"] and isinstance(a["text"], str)), a


@pytest.mark.parametrize(("rate", "config"), [(16000, {"sample_rate": 16000}), (8000, {"sample_rate": 8000}),
                                              (8000, None)], ids=["16k", "8k", "8k-default-rate"])
def test_one_answer_per_frame_and_the_finals_of_v1_stream(daemon, rate, config) -> None:
    frames = frames_of(recording(rate), rate)

    async def main():
        return await tympan_finals(daemon, frames, rate), await vosk_client(vosk_url(daemon), frames, config)

    expected, (answers, after_eof, code) = asyncio.run(main())
    assert len(expected) == 2, "tympan's segmenter should find the two recordings"
    assert len(answers) == len(frames)
    check_shapes(answers + after_eof)
    results = [(i, a["text"]) for i, a in enumerate(answers) if "text" in a]
    assert [t for _, t in results] == [f["text"] for f in expected]
    # Each result answers the frame in which its utterance ended: speech end + the endpoint silence.
    for (i, _), f in zip(results, expected, strict=True):
        assert abs((i + 1) * CHUNK_S - (f["end"] + SILENCE_S)) <= CHUNK_S + 0.15, (i, f)
    # Nothing was left at eof: vosk's empty final result, then a normal close.
    assert after_eof == [{"text": ""}] and code == 1000


def test_eof_mid_utterance_gives_its_final_and_alternatives_shape(daemon) -> None:
    speech = np.concatenate([silence(0.5), alsa_speech("Side_Left")])  # no trailing silence
    frames = frames_of(speech, 16000, 0.1)
    config = {"sample_rate": 16000, "words": True, "max_alternatives": 3, "phrase_list": ["left", "right"]}

    async def main():
        return await tympan_finals(daemon, frames, 16000), await vosk_client(vosk_url(daemon), frames, config)

    expected, (answers, after_eof, code) = asyncio.run(main())
    assert len(expected) == 1 and len(answers) == len(frames)
    assert all(list(a) == ["partial"] for a in answers)  # the utterance never ended before eof
    assert after_eof == [{"alternatives": [{"text": expected[0]["text"], "confidence": 1.0}]}] and code == 1000


def test_eof_right_away_and_a_config_after_the_audio_is_ignored(daemon) -> None:
    async def main():
        async with connect(vosk_url(daemon)) as ws:
            await ws.send(EOF)
            first = json.loads(await ws.recv())
            await ws.wait_closed()
            code1 = ws.close_code
        async with connect(vosk_url(daemon)) as ws:
            await ws.send(pcm16(silence(0.2, 8000)))
            answer = json.loads(await ws.recv())
            await ws.send(json.dumps({"config": {"sample_rate": 1}}))  # no answer, no effect
            await ws.send(pcm16(silence(0.2, 8000)))
            answer2 = json.loads(await ws.recv())
            await ws.send(EOF)
            last = json.loads(await ws.recv())
        return first, code1, answer, answer2, last

    first, code1, answer, answer2, last = asyncio.run(main())
    assert first == {"text": ""} and code1 == 1000
    assert answer == answer2 == {"partial": ""} and last == {"text": ""}


async def closed_by(url: str, messages: list[str | bytes]) -> tuple[list[str], int, str]:
    received = []
    async with connect(url) as ws:
        try:
            for m in messages:
                await ws.send(m)
            async for message in ws:
                received.append(message)
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        return received, ws.close_code or 0, ws.close_reason or ""


BAD = [
    (["{oops"], 1008, "not valid JSON"),
    (["[1, 2]"], 1008, "must be {\"config\""),
    (["[" * 5000 + "]" * 5000], 1008, "nested too deeply"),
    (['{"hello": 1}'], 1008, "unknown text message"),
    ([json.dumps({"config": {"sample_rate": 1000000}})], 1008, "'sample_rate' 1000000 is outside 8000-48000 Hz"),
    ([json.dumps({"config": {"sample_rate": "fast"}})], 1008, "'sample_rate' must be a number"),
    ([json.dumps({"config": {"sample_rate": 16000.5}})], 1008, "whole number of Hz"),
    (['{"config": {"sample_rate": 1%s}}' % ("0" * 400)], 1008, "whole number of Hz"),
    ([json.dumps({"config": {"max_alternatives": -1}})], 1008, "'max_alternatives'"),
    ([json.dumps({"config": 16000})], 1008, "'config' must be a JSON object"),
    ([b"\x00\x01" * 100, b"\x00\x01\x02"], 1003, "not a whole number of 2-byte"),
]


def test_bad_input_closes_with_the_reason_while_another_session_goes_on(daemon) -> None:
    rate = 16000
    frames = frames_of(recording(rate), rate, 0.1)

    async def main():
        reference = await tympan_finals(daemon, frames, rate)
        good = asyncio.create_task(vosk_client(vosk_url(daemon), frames, {"sample_rate": rate}, pause=0.02))
        await asyncio.sleep(0.1)
        bad = [await closed_by(vosk_url(daemon), messages) for messages, _, _ in BAD]
        assert not good.done(), "the good session should overlap the bad ones"
        return reference, await good, bad

    reference, (answers, after_eof, code), bad = asyncio.run(main())
    for (received, got_code, reason), (messages, close_code, text) in zip(bad, BAD, strict=True):
        assert got_code == close_code and text in reason, (messages, got_code, reason)
        # Frames before the bad one were answered; the bad one was not.
        assert len(received) == sum(isinstance(m, bytes) for m in messages[:-1])
    assert len(answers) == len(frames) and code == 1000
    assert [a["text"] for a in answers if "text" in a] == [f["text"] for f in reference]
    assert after_eof == [{"text": ""}]
    assert daemon.health()["ready"]
    for _ in range(50):
        if daemon.metrics()["tympan_sessions_active"] == 0:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert daemon.metrics()["tympan_sessions_active"] == 0
