"""Wyoming speech-to-text end to end: a real daemon with `[wyoming] uri`, driven by the `wyoming` package's own
AsyncTcpClient as Home Assistant's integration drives it (describe; then transcribe, audio-start, audio-chunks,
audio-stop, reading up to `transcript`), on human recordings. `/v1/stream` on the same daemon, for the same
audio, is the reference: the transcript is its finals joined. The tiny test model's English transcripts are
often empty, so translations (language "de") are compared too, and the MQTT finals are checked."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from broker import Broker, Subscriber, free_port
from daemon_harness import DaemonProcess, alsa_speech, joined, pcm16, silence, v1_finals
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

RATE, WIDTH, CHANNELS = 16000, 2, 1  # what Home Assistant sends
MAX_SESSIONS = 2  # limits.max_sessions: a connection budget of 2 x 2 + 4 for every entry point together
SPEECH = np.concatenate([silence(0.5), alsa_speech("Front_Center"), silence(1.0), alsa_speech("Rear_Right"),
                         silence(0.3)])


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    with Broker(tmp_path_factory.mktemp("wyoming-broker")) as b:
        yield b


@pytest.fixture(scope="module")
def daemon(tympan_home: Path, tmp_path_factory: pytest.TempPathFactory, broker: Broker):
    from tympan.daemon.cli import default_bundle

    work = tmp_path_factory.mktemp("wyoming")
    config = (f'[mqtt]\nurl = "{broker.url}"\nsite = "wy"\nspool = "{work / "spool.sqlite"}"\n'
              f"[limits]\nmax_sessions = {MAX_SESSIONS}\n")
    port = free_port()  # just before the daemon binds it
    # The URI comes in as TYMPAN_WYOMING_URI, as any key can.
    with DaemonProcess(default_bundle(), work, config, env={"TYMPAN_WYOMING_URI": f"tcp://127.0.0.1:{port}"}) as d:
        d.wyoming_port = port
        yield d


async def transcribe(port: int, audio: np.ndarray, language: str | None, chunk_s: float = 0.1,
                     **transcribe: object) -> list[Event]:
    """As Home Assistant's Wyoming STT entity: returns every event up to and including `transcript` and what
    follows it before the stream's `transcript-stop`."""
    data, step = pcm16(audio), int(RATE * chunk_s) * WIDTH
    events: list[Event] = []
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language=language, **transcribe).event())
        await client.write_event(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event())
        for i in range(0, len(data), step):
            await client.write_event(AudioChunk(rate=RATE, width=WIDTH, channels=CHANNELS,
                                                audio=data[i : i + step]).event())
        await client.write_event(AudioStop().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), 60)
            assert event is not None, f"the daemon closed the connection after {[e.type for e in events]}"
            events.append(event)
            if TranscriptStop.is_type(event.type) or Error.is_type(event.type):
                return events


def check_stream(events: list[Event]) -> str:
    """Wyoming's streaming order: transcript-start, chunks, transcript, transcript-stop; the chunks add up to the
    transcript. Returns the transcript's text."""
    types = [e.type for e in events]
    assert types[0] == "transcript-start" and types[-2:] == ["transcript", "transcript-stop"], types
    assert set(types[1:-2]) <= {"transcript-chunk"}, types
    text = Transcript.from_event(events[-2]).text
    assert "".join(TranscriptChunk.from_event(e).text for e in events[1:-2]) == text
    return text


def test_describe_lists_the_model_and_the_languages_it_writes(daemon) -> None:
    async def main() -> Info:
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 10)
        assert event is not None and Info.is_type(event.type), event
        return Info.from_event(event)

    info = asyncio.run(main())
    [program] = info.asr
    assert program.installed and program.supports_transcript_streaming
    [model] = program.models
    assert model.languages[0] == "en" and "de" in model.languages, model.languages
    assert model.name and model.version


def test_transcripts_and_translations_are_the_finals_of_v1_stream(daemon, broker) -> None:
    references = {"ref-en": {"task": "asr"}, "ref-de": {"task": "st", "target_lang": "de"}}

    def wyoming_finals(msgs) -> list[dict]:
        # The /v1/stream references' own finals may still be delivered: only the Wyoming sessions' count.
        return [m for m in (m.json() for m in msgs) if m["session_id"] not in references]

    async def main():
        reference = {sid[4:]: await v1_finals(daemon, SPEECH, {**request, "session_id": sid})
                     for sid, request in references.items()}
        async with Subscriber(broker.port, "tympan/wy/session/+/final") as sub:
            got = {lang: await transcribe(daemon.wyoming_port, SPEECH, lang) for lang in ("en", "de")}
            n = sum(len(r) for r in reference.values())
            await sub.wait_for(lambda msgs: len(wyoming_finals(msgs)) >= n, timeout=30)
            published = wyoming_finals(sub.messages)
        return reference, got, published

    reference, got, published = asyncio.run(main())
    assert len(reference["en"]) == len(reference["de"]) == 2, "the segmenter should find the two recordings"
    assert reference["de"][0]["text"], "the tiny model's German should not be empty (the comparison would be weak)"
    for lang in ("en", "de"):
        assert check_stream(got[lang]) == joined(reference[lang]), lang
        assert TranscriptStart.from_event(got[lang][0]).language == lang
    # Finals reached through Wyoming are published like any other (after the /v1/stream ones, not counted here).
    assert sorted(m["text"] for m in published) == sorted(f["text"] for r in reference.values() for f in r)
    assert len({m["session_id"] for m in published}) == 2  # one session per transcription
    assert daemon.metrics()['tympan_protocol_sessions_total{protocol="wyoming"}'] == 2  # the sessions metric's label


def test_several_transcriptions_on_one_connection_and_names_as_context(daemon) -> None:
    one = np.concatenate([silence(0.3), alsa_speech("Side_Left"), silence(0.2)])

    async def main():
        reference = joined(await v1_finals(daemon, one, {"task": "st", "target_lang": "de"}))
        texts = []
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            for names in (None, ["Kitchen", "Living Room"]):
                await client.write_event(Transcribe(language="de-DE", transcript_names=names).event())
                await client.write_event(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event())
                await client.write_event(AudioChunk(rate=RATE, width=WIDTH, channels=CHANNELS,
                                                    audio=pcm16(one)).event())
                await client.write_event(AudioStop().event())
                while True:
                    event = await asyncio.wait_for(client.read_event(), 60)
                    assert event is not None, "the daemon closed the connection before the transcript"
                    if Transcript.is_type(event.type):
                        break
                texts.append(Transcript.from_event(event).text)
        return reference, texts

    # With names, the instruction differs (test_names_and_terms_reach_the_models_instruction), so may the text:
    # what counts here is that the second transcription on the connection is answered too.
    reference, texts = asyncio.run(main())
    assert len(texts) == 2 and texts[0] == reference


def test_names_and_terms_reach_the_models_instruction(daemon) -> None:
    """What the engine tells the model for the request a `transcribe` with names and terms makes: the bundle's
    instruction for the task, then the names and terms, in the very tokens the LLM is given."""
    from tympan.daemon.engine import instruction_for
    from tympan.daemon.wyoming_codec import WyomingCodec
    from tympan.daemon.wyoming_frames import encode
    from tympan.runtime.bundle import load_bundle
    from tympan.runtime.prompt import Prompts

    prompts = Prompts(load_bundle(daemon.bundle))
    asked = {"language": "de", "transcript_names": ["Kitchen", "Living Room"], "transcript_terms": ["dimmer"]}
    [opened] = WyomingCodec().parse(encode("transcribe", asked).encode())
    instruction = instruction_for(prompts, opened.request)
    assert instruction.startswith(prompts.instruction("st", "de"))
    assert instruction.endswith("Kitchen, Living Room, dimmer")
    _, after_speech = prompts.ids(instruction)
    assert "Kitchen, Living Room, dimmer" in prompts.tokenizer.decode(after_speech)
    assert instruction_for(prompts, WyomingCodec().parse(encode("transcribe", {"language": "de"}).encode())[0]
                           .request) == prompts.instruction("st", "de")


def test_a_refused_language_gets_an_error_and_a_bad_stream_is_closed(daemon) -> None:
    async def main():
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            await client.write_event(Transcribe(language="fr").event())
            refused = await asyncio.wait_for(client.read_event(), 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.wyoming_port)
        writer.write(json.dumps({"type": "audio-chunk", "payload_length": 10**12}).encode() + b"\n")
        await writer.drain()
        garbage = await asyncio.wait_for(reader.read(), 10)  # an error event, then the close
        writer.close()
        return refused, garbage

    refused, garbage = asyncio.run(main())
    assert refused is not None and Error.is_type(refused.type)
    assert "'fr'" in Error.from_event(refused).text and Error.from_event(refused).code == "unsupported"
    header, _, data = garbage.partition(b"\n")
    assert json.loads(header)["type"] == "error" and b"over the limit" in data, garbage
    assert daemon.health()["ready"] and not daemon.tracebacks()


def test_clients_outside_allowed_networks_are_refused(tympan_home: Path, tmp_path: Path) -> None:
    """Wyoming carries no token: `[wyoming] allowed_networks` is its access control. A daemon that allows only
    192.0.2.0/24 closes the loopback connection of the `wyoming` package's own client, and says why in its log."""
    from tympan.daemon.cli import default_bundle

    port = free_port()
    config = f'[wyoming]\nuri = "tcp://127.0.0.1:{port}"\nallowed_networks = ["192.0.2.0/24", "2001:db8::/32"]\n'
    with DaemonProcess(default_bundle(), tmp_path, config) as d:
        async def main() -> Event | str | None:
            try:
                async with AsyncTcpClient("127.0.0.1", port) as client:
                    await client.write_event(Describe().event())
                    return await asyncio.wait_for(client.read_event(), 10)
            except ConnectionError as e:  # closed with the describe unread: the kernel resets the connection
                return type(e).__name__

        assert asyncio.run(main()) in (None, "ConnectionResetError")  # no `info`: nothing is said to a stranger
        assert d.wait_log("refused: not in wyoming.allowed_networks")
        assert d.health()["ready"] and not d.tracebacks()


def test_one_connection_budget_for_every_entry_point(daemon) -> None:
    """Wyoming connections count against the budget the websockets and uploads share: with it spent by idle
    Wyoming clients, the next Wyoming client is told `overloaded` and a websocket gets 503; once they go, both
    are served again."""

    async def main():
        held = [await asyncio.open_connection("127.0.0.1", daemon.wyoming_port) for _ in range(2 * MAX_SESSIONS + 4)]
        await asyncio.sleep(0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.wyoming_port)
        refused = await asyncio.wait_for(reader.read(), 10)  # an error event, then the close
        writer.close()
        with pytest.raises(InvalidStatus) as e:
            async with connect(daemon.url):
                pass
        for _, w in held:
            w.close()
        await asyncio.sleep(0.5)
        async with connect(daemon.url):
            pass
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            await client.write_event(Describe().event())
            info = await asyncio.wait_for(client.read_event(), 10)
        return refused, e.value.response.status_code, info

    refused, status, info = asyncio.run(main())
    assert b'"overloaded"' in refused and status == 503
    assert info is not None and Info.is_type(info.type)
