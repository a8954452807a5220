"""The Wyoming, realtime and upload codecs and their parsers on their own (frames in, commands out; events in,
frames out). End to end, with the real clients: test_wyoming.py, test_openai_api.py, test_fuzz_wyoming_http.py."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tympan.daemon.codec import Closing
from tympan.daemon.events import (
    Audio,
    Configure,
    Configured,
    Done,
    End,
    Endpoint,
    Final,
    Lost,
    Onset,
    Open,
    Ready,
    Shutdown,
    Translation,
)
from tympan.daemon.multipart import MultipartError, parse_form
from tympan.daemon.openai_codec import TranscriptionCodec
from tympan.daemon.openai_formats import body
from tympan.daemon.protocol import ProtocolError, Request
from tympan.daemon.realtime import RealtimeCodec
from tympan.daemon.transcript import Transcript
from tympan.daemon.wyoming_codec import WyomingCodec, request_for
from tympan.daemon.wyoming_frames import FramingError, decode, encode


def final(segment_id: int, text: str, lang: str = "de", start: float = 0.5, end: float = 1.5) -> Final:
    return Final(segment_id, text, "st" if lang != "en" else "asr", lang, start, end, 100)


def event(kind: str, data: dict | None = None, payload: bytes = b"") -> bytes:
    body_ = json.dumps(data or {}).encode()
    header = {"type": kind, "data_length": len(body_), "payload_length": len(payload)}
    return json.dumps(header).encode() + b"\n" + body_ + payload


def test_wyoming_languages_are_the_languages_written_and_names_are_context() -> None:
    assert request_for({}) == Request("asr", "en")
    assert request_for({"language": "de-DE", "transcript_names": ["Kitchen"], "transcript_terms": ["dimmer"]}) == \
        Request("st", "de", context="Kitchen, dimmer")
    with pytest.raises(ProtocolError, match="'fr' is not one tympan can write"):
        request_for({"language": "fr"})
    with pytest.raises(ProtocolError, match="'transcript_names' must be a list of strings"):
        request_for({"transcript_names": "Kitchen"})


def test_wyoming_codec_opens_on_transcribe_and_renders_the_stream_then_the_transcript() -> None:
    codec = WyomingCodec()
    assert codec.parse(event("transcribe", {"language": "it"})) == [Open(Request("st", "it"))]
    assert codec.parse(event("audio-start", {"rate": 8000, "width": 2, "channels": 2})) == []
    [audio] = codec.parse(event("audio-chunk", {"rate": 8000, "width": 2, "channels": 2},
                                np.array([16384, 0, -16384, -16384], "<i2").tobytes()))
    assert isinstance(audio, Audio) and audio.sample_rate == 8000 and audio.samples.tolist() == [0.25, -0.5]
    with pytest.raises(Closing, match="invalid audio"):
        codec.parse(event("audio-chunk", {"rate": 8000, "width": 2, "channels": 2}, b"\x00" * 6))
    with pytest.raises(ProtocolError, match="not valid JSON"):  # the stream is in step: the session goes on
        codec.parse(b'{"type": "transcribe", "data_length": 3}\nabc')
    assert codec.parse(event("x-unknown")) == []
    assert codec.parse(event("audio-stop")) == [End()]
    frames = [decode(f.encode()) for ev in (Onset(0, 0.1), final(0, "Ciao."), Onset(1, 2.0), final(1, "Come stai?"),
                                            Done("s")) for f in codec.render(ev)]
    assert [(f.type, f.data.get("text")) for f in frames] == [
        ("transcript-start", None), ("transcript-chunk", "Ciao."), ("transcript-chunk", " Come stai?"),
        ("transcript", "Ciao. Come stai?"), ("transcript-stop", None)]


def test_wyoming_frames_merge_the_data_section_and_refuse_what_is_not_an_object() -> None:
    got = decode(b'{"type": "t", "data": {"a": 1}, "data_length": 8, "payload_length": 2}\n{"b": 2}xy')
    assert (got.type, got.data, got.payload) == ("t", {"a": 1, "b": 2}, b"xy")
    assert decode(encode("transcript", {"text": "Grüße"}).encode()).data == {"text": "Grüße"}
    with pytest.raises(FramingError, match="must be a JSON object"):
        decode(b'{"type": "t", "data_length": 2}\n[]')


def test_transcript_joins_finals_in_order_and_chinese_without_spaces() -> None:
    t = Transcript()
    assert t.add(final(1, "zwei")) == "zwei" and t.add(final(2, "")) == "" and t.add(final(3, "drei")) == " drei"
    assert t.text == "zwei drei" and [f.segment_id for f in t.segments] == [1, 3]
    zh = Transcript()
    zh.add(final(0, "你好。", "zh"))
    zh.add(final(1, "再见。", "zh"))
    assert zh.text == "你好。再见。"


def test_openai_formats_time_their_cues_by_utterance() -> None:
    t = Transcript()
    t.add(final(0, "Hallo", start=0.25, end=1.5))
    t.add(final(1, "Welt", start=3661.0, end=3662.125))
    assert body("srt", t, "translate", "de", 3663) == \
        "1\n00:00:00,250 --> 00:00:01,500\nHallo\n\n2\n01:01:01,000 --> 01:01:02,125\nWelt\n\n"
    assert body("vtt", t, "translate", "de", 3663).startswith("WEBVTT\n\n00:00:00.250 --> 00:00:01.500\nHallo\n\n")
    verbose = json.loads(body("verbose_json", t, "translate", "de", 3663))
    assert verbose["language"] == "german" and [s["id"] for s in verbose["segments"]] == [0, 1]
    assert body("text", t, "translate", "de", 3663) == "Hallo Welt\n"


def test_multipart_fields_files_and_what_is_refused() -> None:
    form = parse_form(b'preamble\r\n--x\r\nContent-Disposition: form-data; name="model"\r\n\r\ntympan\r\n'
                      b'--x\r\nContent-Disposition: form-data; name="file"; filename*=UTF-8\'\'gr%C3%BC%C3%9F.wav\r\n'
                      b'Content-Type: audio/wav\r\n\r\nRIFF\r\n-x\r\n--x--\r\nepilogue',
                      'multipart/form-data; boundary="x"')
    assert form.get("model") == "tympan"
    assert (form.files["file"].filename, form.files["file"].content_type, form.files["file"].data) == \
        ("grüß.wav", "audio/wav", b"RIFF\r\n-x")
    for data, content_type, message in [
        (b"", "application/json", "must be multipart/form-data"),
        (b"", "multipart/form-data", "boundary of 1-70"),
        (b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nvalue", "multipart/form-data; boundary=x",
         "not closed by the boundary"),
        (b"--x\r\nContent-Type: text/plain\r\n\r\nv\r\n--x--", "multipart/form-data; boundary=x", "name=..."),
        (b"--xjunk", "multipart/form-data; boundary=x", "not followed by CRLF"),
    ]:
        with pytest.raises(MultipartError, match=message):
            parse_form(data, content_type)


def test_realtime_codec_speaks_first_and_reports_each_turn() -> None:
    codec = RealtimeCodec(beta=True)
    [opened] = codec.greeting()
    assert isinstance(opened, Open) and opened.request == Request("asr", "en", eager_turn=False)
    [configure] = codec.parse(json.dumps({"type": "transcription_session.update", "session": {
        "input_audio_transcription": {"language": "zh", "prompt": "Tympan"}}}))
    assert isinstance(configure, Configure) and configure.update(Request()) == Request(
        "st", "zh", context="Tympan", eager_turn=False)
    [audio] = codec.parse(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(np.array([16384], "<i2").tobytes()).decode()}))
    assert isinstance(audio, Audio) and audio.sample_rate == 24000 and audio.samples.tolist() == [0.5]
    refused = [({"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}},
                "not supported"), ({"type": "input_audio_buffer.append", "audio": "@@"}, "base64"),
               ({"type": "input_audio_buffer.commit"}, "server VAD"), ({"type": "response.create"}, "unknown")]
    for bad, message in refused:
        with pytest.raises(ProtocolError, match=message):
            codec.parse(json.dumps(bad))
    rendered = [json.loads(f) for ev in (Ready("s", Request(), {}, {}), Configured(configure.update(Request())),
                                         Onset(0, 0.5), Endpoint(0, 1.25), final(0, "你好", "zh"), Onset(1, 2.0),
                                         Lost(1)) for f in codec.render(ev)]
    assert [r["type"] for r in rendered] == [
        "transcription_session.created", "transcription_session.updated", "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta", "conversation.item.input_audio_transcription.completed",
        "input_audio_buffer.speech_started"]  # turn 1 was dropped before its commit: nothing more about it
    assert rendered[1]["session"]["input_audio_transcription"] == {"model": "tympan", "language": "zh",
                                                                   "prompt": "Tympan"}
    assert rendered[3]["audio_end_ms"] == 1250 and rendered[6]["transcript"] == "你好"
    assert len({r["item_id"] for r in rendered[2:7]}) == 1 and len({r["event_id"] for r in rendered}) == len(rendered)
    assert RealtimeCodec(beta=False).render(Ready("s", Request(), {}, {}))[0].startswith('{"type": "session.created"')


def test_the_wyoming_uri_setting_flag_and_environment() -> None:
    import argparse

    from tympan.config import ConfigError
    from tympan.daemon.cli import register
    from tympan.daemon.settings import load_daemon_config, parse_tcp_uri

    assert load_daemon_config(env={}).wyoming.uri == ""  # off unless configured
    assert load_daemon_config(env={"TYMPAN_WYOMING_URI": "tcp://0.0.0.0:10300"}).wyoming.uri == "tcp://0.0.0.0:10300"
    assert parse_tcp_uri("tcp://[::1]:10300") == ("::1", 10300)
    for bad in ("udp://host:1", "tcp://host", "tcp://host:99999", "host:10300"):
        with pytest.raises(ConfigError, match=r"wyoming\.uri"):
            load_daemon_config(env={"TYMPAN_WYOMING_URI": bad})
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["serve", "--wyoming-uri", "tcp://127.0.0.1:10300"]).wyoming_uri == "tcp://127.0.0.1:10300"


def test_a_refused_realtime_update_leaves_the_settings_and_languages_ignore_case() -> None:
    codec = RealtimeCodec(beta=True)
    codec.render(Ready("s", Request(), {}, {}))

    def update(transcription: dict) -> Configure:
        [configure] = codec.parse(json.dumps({"type": "transcription_session.update",
                                              "session": {"input_audio_transcription": transcription}}))
        assert isinstance(configure, Configure)
        return configure

    # "ZH" is one of tympan's languages, but say this bundle refuses it: the session answers an Error, no Configured.
    assert update({"language": "ZH"}).update(Request()) == Request("st", "zh", eager_turn=False)
    # The next update gives only a prompt: it must build on the settings in force (English), not the refused ones.
    prompt_only = update({"prompt": "Tympan"})
    assert prompt_only.update(Request()) == Request("asr", "en", context="Tympan", eager_turn=False)
    [updated] = codec.render(Configured(Request("asr", "en", context="Tympan", eager_turn=False)))
    assert json.loads(updated)["session"]["input_audio_transcription"] == {"model": "tympan", "language": "en",
                                                                           "prompt": "Tympan"}
    assert update({"language": "DE-de"}).update(Request()) == Request("st", "de", context="Tympan", eager_turn=False)
    with pytest.raises(ProtocolError, match="'FR'"):
        update({"language": "FR"})


def upload_codec(stream: bool = False) -> TranscriptionCodec:
    codec = TranscriptionCodec(Request("st", "de"), 16000, "json", stream, "translate")
    codec.render(Ready("s", Request("st", "de"), {}, {}))
    return codec


def status_of(frames: list[str]) -> int:
    [answer] = frames
    return int(answer.split(" ", 2)[1])


def test_an_upload_cut_by_the_shutdown_or_missing_an_utterance_is_not_a_200() -> None:
    ok = upload_codec()
    ok.render(final(0, "Hallo"))
    assert status_of(ok.render(Done("s"))) == 200
    drained = upload_codec()
    drained.render(final(0, "Hallo"))
    [answer] = drained.render(Done("s", drained=True))
    assert status_of([answer]) == 503 and '"code": "shutting_down"' in answer
    failed = upload_codec()
    assert failed.render(Lost(0)) == []  # the gate dropped a blip: the transcript is whole
    failed.render(Lost(1, failed=True))
    failed.render(final(2, "Hallo"))
    [answer] = failed.render(Done("s"))
    assert status_of([answer]) == 500 and "utterance 1" in answer and '"type": "server_error"' in answer
    assert status_of(upload_codec().render(Done("s", gave_up=True))) == 500
    shutdown = upload_codec()
    assert status_of(shutdown.render(Shutdown())) == 503 and shutdown.render(Done("s")) == []
    streaming = upload_codec(stream=True)
    streaming.render(final(0, "Hallo"))
    [event] = streaming.render(Done("s", drained=True))
    assert event.startswith("data: ") and json.loads(event[6:])["error"]["code"] == "shutting_down"


def test_uploads_at_rates_or_with_channels_beyond_recorded_sound_are_refused_before_decoding() -> None:
    import io

    import soundfile as sf

    from tympan.audio import resample
    from tympan.daemon.upload import UploadError, decode_upload

    def flac(rate: int, channels: int, frames: int = 4096) -> bytes:
        out = io.BytesIO()
        sf.write(out, np.zeros((frames, channels), np.float32), rate, format="FLAC")
        return out.getvalue()

    # A few hundred bytes that would decode to 655350 x 8 float32 per second of audio.
    with pytest.raises(UploadError, match="655350 Hz; at most 48000 Hz"):
        decode_upload(flac(655350, 8), 16000, 1500)
    with pytest.raises(UploadError, match="96000 Hz"):
        decode_upload(flac(96000, 1), 16000, 1500)
    wav16 = io.BytesIO()
    sf.write(wav16, np.zeros((160, 16), np.float32), 16000, format="WAV")
    with pytest.raises(UploadError, match="16 channels; at most 8"):
        decode_upload(wav16.getvalue(), 16000, 1500)
    # Decoded block by block (down-mixed and resampled as it goes): the same as all at once.
    t = np.arange(44100 * 3) / 44100
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 300 * t)], 1).astype(np.float32)
    out = io.BytesIO()
    sf.write(out, stereo, 44100, format="WAV", subtype="FLOAT")
    got = decode_upload(out.getvalue(), 16000, 1500)
    expected = resample(stereo.mean(axis=1), 44100, 16000)
    assert len(got) == len(expected) and np.abs(got - expected).max() < 1e-3
    with pytest.raises(UploadError, match="limit is 2 s"):
        decode_upload(out.getvalue(), 16000, 2)


def test_wyoming_allowed_networks_are_checked_at_start() -> None:
    from tympan.config import ConfigError
    from tympan.daemon.settings import load_daemon_config

    assert load_daemon_config(env={}).wyoming.allowed_networks == []  # any, as before
    cfg = load_daemon_config(env={"TYMPAN_WYOMING_ALLOWED_NETWORKS": '["192.168.1.0/24", "::1/128"]'})
    assert cfg.wyoming.allowed_networks == ["192.168.1.0/24", "::1/128"]
    with pytest.raises(ConfigError, match=r"wyoming\.allowed_networks: '192\.168\.1/33' is not a network"):
        load_daemon_config(env={"TYMPAN_WYOMING_ALLOWED_NETWORKS": '["192.168.1/33"]'})


def test_a_request_body_trickling_below_the_rate_floor_is_cut() -> None:
    """read_request over a real loopback socket: the head must come within its timeout, and after a grace of
    `timeout` the body must average `min_rate` bytes/s, though each read comes well within `timeout`."""
    import asyncio
    import time

    from tympan.daemon.http11 import HttpError, read_request

    async def serve_one(send) -> tuple[HttpError | bytes, float]:
        done: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                request = await read_request(reader, writer, 1 << 20, 0.4, lambda r: None, head_timeout=0.3,
                                             min_rate=2000)
                done.set_result(request.body if request is not None else b"")
            except HttpError as e:
                done.set_result(e)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        started = time.monotonic()
        _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        sender = asyncio.ensure_future(send(writer))
        result = await asyncio.wait_for(done, 10)
        sender.cancel()
        writer.close()
        server.close()
        return result, time.monotonic() - started

    head = b"POST /v1/audio/transcriptions HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"

    async def trickle(writer: asyncio.StreamWriter) -> None:  # 50 bytes every 0.1 s: 500 bytes/s
        writer.write(head)
        while True:
            writer.write(b"x" * 50)
            await asyncio.sleep(0.1)

    async def silent(writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /v1/audio/transcriptions HTTP/1.1\r\n")

    async def whole(writer: asyncio.StreamWriter) -> None:
        writer.write(head.replace(b"100000", b"5000") + b"y" * 5000)

    slow, took = asyncio.run(serve_one(trickle))
    assert isinstance(slow, HttpError) and slow.status == 408 and "slower than 2000 bytes/s" in slow.message
    assert took < 2, took  # 0.4 s of grace, then 500 bytes/s falls behind at once
    head_late, took = asyncio.run(serve_one(silent))
    assert isinstance(head_late, HttpError) and head_late.status == 408 and "within 0.3 s" in head_late.message
    assert asyncio.run(serve_one(whole))[0] == b"y" * 5000


def test_a_translation_streams_as_realtime_deltas_and_v1_events() -> None:
    from tympan.daemon.codec_v1 import V1Codec

    codec = RealtimeCodec(beta=True)
    events = [Translation(0, 1, "good morning", ""), Translation(0, 2, "good morning", "Guten"),
              Translation(0, 3, "good morning", "Guten Morgen"), Translation(0, 4, "good morning", "Gute"),
              Final(0, "Guten Morgen.", "st", "de", 0.5, 1.5, 100, (), "good morning")]
    rendered = [json.loads(f) for ev in events for f in codec.render(ev)]
    deltas = [r["delta"] for r in rendered if r["type"].endswith(".delta")]
    # Deltas only append: an empty start and a shorter rewrite send nothing; the final sends what is left.
    assert deltas == ["Guten", " Morgen", "."]
    assert rendered[-1]["transcript"] == "Guten Morgen." == "".join(deltas)
    assert len({r["item_id"] for r in rendered}) == 1
    v1 = V1Codec()
    [first] = [json.loads(f) for f in v1.render(events[0])]
    assert first == {"type": "translation", "segment_id": 0, "seq": 1, "source": "good morning", "text": ""}
    [last] = [json.loads(f) for f in v1.render(events[-1])]
    assert last["source"] == "good morning" and last["text"] == "Guten Morgen."
    [asr] = [json.loads(f) for f in v1.render(final(1, "hello", "en"))]
    assert "source" not in asr
    # A slow v1 reader may lose a translation event (the next one carries the whole text); a Realtime reader may
    # not lose a delta, nor anyone a final.
    from tympan.daemon.sinks import droppable

    assert droppable(events[1], v1) and not droppable(events[1], codec)
    assert not droppable(events[-1], v1) and not droppable(events[-1], codec)


def test_realtime_turn_detection_maps_to_the_turn_settings() -> None:
    for beta in (True, False):
        codec = RealtimeCodec(beta=beta)
        codec.render(Ready("s", Request(turn="balanced"), {}, {}))

        def update(detection: object, codec: RealtimeCodec = codec, beta: bool = beta) -> Request:
            session = {"turn_detection": detection} if beta else {"audio": {"input": {"turn_detection": detection}}}
            [command] = codec.parse(json.dumps({"type": "transcription_session.update" if beta else "session.update",
                                                "session": session}))
            assert isinstance(command, Configure)
            return command.update(Request())

        assert update({"type": "server_vad"}).turn == "silence"
        for eagerness, preset in (("high", "aggressive"), ("medium", "balanced"), ("auto", "balanced"),
                                  ("low", "conservative")):
            assert update({"type": "semantic_vad", "eagerness": eagerness}).turn == preset
        assert update({"type": "semantic_vad"}).turn == "balanced"
        for bad, message in (({"type": "semantic_vad", "eagerness": "max"}, "eagerness must be one of"),
                             ({"type": "semantic_vad", "eagerness": []}, "eagerness must be one of"),
                             ({"type": "pause"}, "server_vad or semantic_vad"), (None, "not supported"),
                             ("fast", "must be an object")):
            with pytest.raises(ProtocolError, match=message):
                update(bad)
        # The session's settings are echoed: semantic_vad with the preset's eagerness.
        wanted = update({"type": "semantic_vad", "eagerness": "low"})
        [updated] = [json.loads(f) for f in codec.render(Configured(wanted))]
        session = updated["session"] if beta else updated["session"]["audio"]["input"]
        assert session["turn_detection"] == {"type": "semantic_vad", "eagerness": "low"}
        wanted = update({"type": "semantic_vad", "eagerness": "auto"})  # echoed as the client wrote it
        [updated] = [json.loads(f) for f in codec.render(Configured(wanted))]
        session = updated["session"] if beta else updated["session"]["audio"]["input"]
        assert session["turn_detection"] == {"type": "semantic_vad", "eagerness": "auto"}
