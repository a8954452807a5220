"""The daemon's pure parts: protocol parsing, local agreement, the repetition guard, configuration."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from tympan.config import ConfigError
from tympan.daemon.protocol import (
    ProtocolError,
    Reconfigure,
    Request,
    Start,
    Stop,
    apply_config,
    decode_audio,
    parse_text,
)
from tympan.daemon.settings import DaemonConfig, load_daemon_config
from tympan.daemon.text import LocalAgreement
from tympan.runtime.decode import repeating_tail

ROOT = Path(__file__).resolve().parent.parent


def start(**fields) -> str:
    return json.dumps({"type": "start", "sample_rate": 16000, **fields})


def test_start_defaults_and_fields() -> None:
    m = parse_text(start())
    assert isinstance(m, Start)
    assert m.request == Request("asr", "en", None, None) and m.encoding == "pcm_s16le" and m.session_id is None
    m = parse_text(start(task="st", target_lang="zh", encoding="f32le", session_id="kitchen-1", sample_rate=44100))
    assert isinstance(m, Start)
    assert (m.request.task, m.request.target_lang, m.encoding, m.session_id, m.sample_rate) == (
        "st", "zh", "f32le", "kitchen-1", 44100)
    m = parse_text(start(task="sqa", question=" Who is speaking? "))
    assert isinstance(m, Start) and m.request.question == "Who is speaking?"
    assert isinstance(parse_text('{"type": "stop"}'), Stop)


@pytest.mark.parametrize(
    ("frame", "code", "message"),
    [
        (start(task="st"), "bad_request", "task 'st' needs a 'target_lang'"),
        (start(target_lang="de"), "unsupported", "task 'asr' transcribes English"),
        (start(task="st", target_lang="en"), "unsupported", "task 'st' translates English speech"),
        (start(task="sqa"), "bad_request", "task 'sqa' needs a 'question'"),
        (start(sample_rate=4000), "unsupported", "outside 8000-48000 Hz"),
        (start(sample_rate="16000"), "bad_request", "'sample_rate' must be an integer"),
        (start(sample_rate=True), "bad_request", "'sample_rate' must be an integer"),
        (start(encoding="mp3"), "unsupported", "'encoding' must be one of"),
        (start(session_id="a/b"), "bad_request", "'session_id' must be 1-64 characters"),
        (start(question=7), "bad_request", "'question' must be a string"),
        (start(speaker="x"), "bad_request", "unknown field 'speaker'"),
        ('{"type": "config", "volume": 3}', "bad_request", "unknown field 'volume'"),
        ("[1]", "bad_request", "must be a JSON object"),
        ('{"no": "type"}', "bad_request", "unknown message type None"),
        ("[" * 100000, "bad_request", "not valid JSON"),
        ('{"type": "stop", "n": ' + "9" * 5000 + "}", "bad_request", "not valid JSON"),
    ],
)
def test_invalid_messages_name_what_is_wrong(frame: str, code: str, message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_text(frame)
    assert err.value.code == code and message in str(err.value)


def test_config_changes_the_request_and_keeps_the_rest() -> None:
    base = Request("st", "de", None, None)
    m = parse_text('{"type": "config", "target_lang": "it"}')
    assert isinstance(m, Reconfigure)
    assert apply_config(base, m) == Request("st", "it", None, None)
    assert apply_config(base, Reconfigure({"task": "asr"})) == Request("asr", "en", None, None)
    assert apply_config(base, Reconfigure({"task": "sqa", "question": "Why?"})) == Request("sqa", "en", "Why?", None)
    with pytest.raises(ProtocolError, match="needs a 'question'"):
        apply_config(base, Reconfigure({"task": "sqa"}))


def test_audio_frames_decode_exactly_and_refuse_partial_samples() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    np.testing.assert_array_equal(decode_audio(pcm, "pcm_s16le"), [0, 0.5, -1, 32767 / 32768])
    f32 = np.array([0.25, -2.0], dtype="<f4").tobytes()
    np.testing.assert_array_equal(decode_audio(f32, "f32le"), [0.25, -1.0])
    with pytest.raises(ProtocolError, match="3 bytes is not a whole number of 2-byte"):
        decode_audio(b"\x00\x01\x02", "pcm_s16le")
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        decode_audio(np.array([np.nan], dtype="<f4").tobytes(), "f32le")


def test_local_agreement_only_ever_extends_the_stable_prefix() -> None:
    la = LocalAgreement("en")
    assert la.update("the cat") == ("the cat", 0)
    assert la.update("the cat sat on") == ("the cat sat on", len("the cat"))
    text, stable = la.update("the cat sat in the hat")
    assert (text, stable) == ("the cat sat in the hat", len("the cat sat"))
    text, stable = la.update("a dog")  # disagrees with what is stable: stable stays, shown first
    assert text.startswith("the cat sat") and stable == len("the cat sat")
    zh = LocalAgreement("zh")
    zh.update("你好世界")
    assert zh.update("你好朋友") == ("你好朋友", 2)


def test_repetition_guard_cuts_loops_but_not_repeated_groups() -> None:
    assert repeating_tail([1, 2, 3, 4, 5, 6], 8, 3) == 0
    assert repeating_tail([9, 4, 5, 6, 4, 5, 6, 4, 5, 6], 8, 3) == 6  # "4 5 6" three times: keep one
    assert repeating_tail([7] * 8, 8, 3) == 7
    assert repeating_tail([7] * 5, 8, 3) == 0  # a short run of one token is not a loop
    assert repeating_tail([1, 0, 0, 0, 2, 0, 0, 0], 8, 3) == 0


def test_daemon_config_layers_file_environment_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "d.toml"
    f.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[decode]\npartials = false\n')
    cfg = load_daemon_config(f, env={"TYMPAN_SERVER_PORT": "9100", "TYMPAN_MQTT_SITE": "kitchen",
                                     "TYMPAN_HOME": "/ignored"}, overrides={"server": {"host": "127.0.0.2"}})
    assert (cfg.server.port, cfg.server.host, cfg.mqtt.site, cfg.decode.partials) == (9100, "127.0.0.2", "kitchen",
                                                                                       False)
    with pytest.raises(ConfigError, match="TYMPAN_SERVER_PROT: no such setting"):
        load_daemon_config(None, env={"TYMPAN_SERVER_PROT": "1"})
    with pytest.raises(ConfigError, match=r"server\.port: must be a TCP port"):
        load_daemon_config(None, env={"TYMPAN_SERVER_PORT": "70000"})
    f.write_text("[limits]\nmax_sessions = 0\n")
    with pytest.raises(ConfigError, match=r"limits\.max_sessions: must be > 0"):
        load_daemon_config(f, env={})
    f.write_text('[tls]\ncert = "c.pem"\n')
    with pytest.raises(ConfigError, match=r"tls\.cert and tls\.key go together"):
        load_daemon_config(f, env={})


def test_configs_daemon_toml_documents_every_key_with_its_default() -> None:
    shipped = tomllib.loads((ROOT / "configs" / "daemon.toml").read_text())
    defaults = asdict(DaemonConfig())
    assert shipped == defaults
