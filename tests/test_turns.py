"""End of turn: the model's features and file, the presets' decisions, and the events on every protocol."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProcess, alsa_speech, pcm16, silence

from tympan.config import ConfigError
from tympan.daemon.protocol import ProtocolError, Reconfigure, Request, apply_config, parse_text
from tympan.daemon.turn import PRESETS, Turn, TurnConfig
from tympan.daemon.vad import Segmenter, SpeechPaused, VadConfig
from tympan.runtime.turn import (
    FEATURES,
    FLAT,
    TurnModel,
    TurnModelError,
    features,
    fit,
    prosody,
    text_features,
)

RATE = 16000


def voice(seconds: float, f0_start: float, f0_end: float, rate: int = RATE) -> np.ndarray:
    """A vowel-like sound whose pitch glides from f0_start to f0_end, with syllable-rate loudness (4 Hz)."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = f0_start + (f0_end - f0_start) * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t - np.pi / 2)
    return (0.2 * wave * envelope).astype(np.float32)


def paused(audio: np.ndarray) -> SpeechPaused:
    """The segmenter's first pause in `audio`."""
    seg = Segmenter(VadConfig(), RATE)
    events = seg.push(audio)
    return next(e for e in events if isinstance(e, SpeechPaused))


# --- the model's inputs --------------------------------------------------------------------------------------


def test_text_features_see_sentence_ends_words_that_continue_and_numbers() -> None:
    assert text_features("I'll see you tomorrow.") == (1.0, 0.0, 0.0)
    assert text_features("My number is six two") == (0.0, 0.0, 0.0)
    assert text_features("My number is 62,") == (0.0, 1.0, 0.0)
    assert text_features("I want to") == (0.0, 0.0, 1.0)
    assert text_features("I went to the...") == (0.0, 1.0, 1.0)  # an ellipsis trails off
    assert text_features("") == (0.0, 0.0, 0.0)
    assert len(features("Hello.", FLAT, 0.2)) == len(FEATURES)


def test_prosody_hears_a_falling_end_against_a_rising_one() -> None:
    falling = paused(np.concatenate([silence(0.3), voice(1.2, 200, 120), silence(0.5)])).prosody
    rising = paused(np.concatenate([silence(0.3), voice(1.2, 120, 200), silence(0.5)])).prosody
    assert falling.pitch_slope < -5 < 5 < rising.pitch_slope
    assert falling.pitch_final < 0 < rising.pitch_final
    assert falling.final_voiced_ms >= 300 and rising.final_voiced_ms >= 300  # one long voiced stretch each
    # Frames with no activity give nothing to read.
    assert prosody(np.zeros(5), np.zeros(5, np.int64), np.zeros(5, bool), np.zeros(5, bool), 30, RATE) == FLAT


def test_the_model_file_is_checked_and_names_what_is_wrong(tmp_path: Path) -> None:
    shipped = TurnModel.load()
    assert len(shipped.weights) == len(FEATURES)
    for content, message in (("{", "cannot read"), (json.dumps({"features": ["bias"], "weights": [1]}), "features"),
                             (json.dumps({"features": list(FEATURES), "weights": "x"}), "list of numbers"),
                             (json.dumps({"features": list(FEATURES), "weights": [1.0]}), "finite weights")):
        path = tmp_path / "bad.json"
        path.write_text(content)
        with pytest.raises(TurnModelError, match=message):
            TurnModel.load(path)
    with pytest.raises(TurnModelError, match="cannot read"):
        TurnModel.load(tmp_path / "missing.json")


def test_fit_recovers_a_rule_from_labelled_rows() -> None:
    rng = np.random.default_rng(0)
    texts = ["See you then.", "My number is six two,", "I want to", "That is all."]
    rows, labels = [], []
    for _ in range(400):
        i = int(rng.integers(len(texts)))
        pause = float(rng.uniform(0.1, 1.0))
        rows.append(features(texts[i], FLAT, pause))
        labels.append(float(texts[i].endswith(".") or pause > 0.9))
    model = fit(np.array(rows), np.array(labels))
    assert model.probability("See you then.", FLAT, 0.2) > 0.9
    assert model.probability("I want to", FLAT, 0.3) < 0.1
    with pytest.raises(ValueError, match="rows of"):
        fit(np.zeros((3, 2)), np.zeros(3))


# --- the decision ------------------------------------------------------------------------------------------------


def decide_over(turn: Turn, text: str | None, until: float, step: float = 0.03) -> float | None:
    """The pause (s) at which the turn ends, its reading coming at once; None if it has not by `until`."""
    turn.paused(0.0, turn.prosody)
    if text is not None:
        turn.heard(text)
    t = 0.0
    while t <= until:
        d = turn.decide(t)
        if d is not None and d[0] == "end":
            return t
        t += step
    return None


def test_a_full_stop_ends_the_turn_before_a_comma_or_a_word_that_goes_on() -> None:
    """The shipped model, as fitted: what it learnt from the words. (It does not tell a falling sentence end from a
    voice held up on a number: the synthesized streams it was fitted on carry no such prosody; docs/turns.md.)"""
    model = TurnModel.load()
    for preset, p in PRESETS.items():
        def ends(text: str, preset: str = preset) -> float:
            t = decide_over(Turn(preset, False, model, 600), text, 3.0)
            assert t is not None
            return t

        done = ends("I'll see you tomorrow at the station.")
        assert done < p.max_silence_ms / 1000, f"{preset}: a sentence end waited for the longest silence"
        for held in ("My number is six two,", "I want to", "Please buy eggs, milk and"):
            assert ends(held) >= done + 0.15, f"{preset}: {held!r} ended as soon as a full stop"
    # The silence endpoint ends both at vad.silence_ms, whatever was said.
    for text in ("I'll see you tomorrow.", "My number is six two,"):
        assert decide_over(Turn("silence", False, model, 600), text, 2.0) == pytest.approx(0.6, abs=0.031)


def test_no_reading_no_early_end_and_the_maximum_silence_ends_it_anyway() -> None:
    model = TurnModel.load()
    for preset, p in PRESETS.items():
        assert decide_over(Turn(preset, False, model, 600), None, 3.0) == pytest.approx(p.max_silence_ms / 1000,
                                                                                        abs=0.031)


def test_eager_comes_once_before_the_end_and_resuming_says_so() -> None:
    model = TurnModel(PAUSE_ONLY)  # the pause alone
    turn = Turn("balanced", True, model, 600)
    turn.paused(1.0, FLAT)
    turn.heard("hello")
    decisions = [(round(t, 2), turn.decide(1.0 + t)) for t in np.arange(0.6, 1.2, 0.02)]
    kinds = [d[0] for _, d in decisions if d is not None]
    assert kinds[:2] == ["eager", "end"] and kinds.count("eager") == 1
    assert turn.resumed() is True and turn.resumed() is False  # once per eager end
    silent = Turn("balanced", False, model, 600)
    silent.paused(0.0, FLAT)
    silent.heard("hello")
    assert all(silent.decide(t) is None or silent.decide(t)[0] == "end" for t in np.arange(0.6, 1.2, 0.02))


def test_presets_and_settings_are_checked() -> None:
    assert TurnConfig().default_turn == "balanced" and TurnConfig(detection="silence").default_turn == "silence"
    with pytest.raises(ConfigError, match=r"turn\.preset"):
        TurnConfig(preset="fast")
    with pytest.raises(ConfigError, match="turn must be one of"):
        Turn("fast", False, TurnModel.load(), 600)
    start = {"type": "start", "sample_rate": 16000}
    assert parse_text(json.dumps({**start, "turn": "conservative", "eager_turn": True})).request == Request(
        turn="conservative", eager_turn=True)
    for bad, message in (({"turn": "fast"}, "'turn' must be one of"), ({"turn": 1}, "'turn' must be one of"),
                         ({"eager_turn": "yes"}, "'eager_turn' must be true")):
        with pytest.raises(ProtocolError, match=message):
            parse_text(json.dumps({**start, **bad}))
        reconfigure = parse_text(json.dumps({"type": "config", **bad}))
        assert isinstance(reconfigure, Reconfigure)
        with pytest.raises(ProtocolError, match=message):
            apply_config(Request(), reconfigure)


def test_the_daemon_config_names_a_bad_turn_setting(tmp_path: Path) -> None:
    from tympan.daemon.settings import load_daemon_config

    assert load_daemon_config(env={}).turn == TurnConfig()
    assert load_daemon_config(env={"TYMPAN_TURN_PRESET": "aggressive"}).turn.preset == "aggressive"
    with pytest.raises(ConfigError, match=r"turn\.detection"):
        load_daemon_config(env={"TYMPAN_TURN_DETECTION": "vad"})
    with pytest.raises(ConfigError, match=r"turn\.model"):
        load_daemon_config(env={"TYMPAN_TURN_MODEL": str(tmp_path / "none.json")})


# --- the events, through the daemon ------------------------------------------------------------------------------

PAUSE_ONLY = (-5.0, 0, 0, 0, 0, 0, 0, 0, 5.0)  # p = 0.5 at 1 s of silence: balanced is eager at 0.92 s, done at 1.08


@pytest.fixture(scope="module")
def daemon(tympan_home: Path, broker, tmp_path_factory: pytest.TempPathFactory):
    from tympan.daemon.cli import default_bundle
    from tympan.runtime.turn import FEATURES

    work = tmp_path_factory.mktemp("turn-daemon")
    (work / "pause.json").write_text(json.dumps({"features": list(FEATURES), "weights": list(PAUSE_ONLY)}))
    config = (f'[turn]\nmodel = "{work / "pause.json"}"\neager = true\n'
              f'[mqtt]\nurl = "{broker.url}"\nsite = "lab"\nspool = "{work / "spool.sqlite"}"\n')
    with DaemonProcess(default_bundle(), work, config) as d:
        yield d


async def _turns(daemon: DaemonProcess, request: dict) -> list[dict]:
    """Speech, then silence sent slowly until an eager end of turn, then more speech (the same turn goes on), then
    a long silence: the events, in order."""
    from websockets.asyncio.client import connect

    events: list[dict] = []
    async with connect(daemon.url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, **request}))

        async def until(kind: str, timeout: float = 60.0, **fields: object) -> dict:
            async def wait() -> dict:
                while True:
                    ev = json.loads(await ws.recv())
                    events.append(ev)
                    if ev["type"] == kind and all(ev.get(k) == v for k, v in fields.items()):
                        return ev
            return await asyncio.wait_for(wait(), timeout)

        await until("ready")
        data = pcm16(np.concatenate([silence(0.5), alsa_speech("Front_Center")]))
        for i in range(0, len(data), 3200):
            await ws.send(data[i:i + 3200])
        quiet = pcm16(silence(0.03))
        if request.get("eager_turn", True):
            async def slowly() -> None:
                for _ in range(100):
                    await ws.send(quiet)
                    await asyncio.sleep(0.05)

            sender = asyncio.create_task(slowly())
            await until("end_of_turn", eager=True)
            sender.cancel()
        else:
            for _ in range(12):  # 0.36 s: past the pause, short of the end
                await ws.send(quiet)
            await asyncio.sleep(2.0)
        more = pcm16(np.concatenate([alsa_speech("Rear_Right"), silence(1.5)]))
        for i in range(0, len(more), 3200):
            await ws.send(more[i:i + 3200])
        await until("final")
        await ws.send(json.dumps({"type": "stop"}))
        await until("done")
    return events


def test_v1_and_mqtt_say_eager_ends_resumed_turns_and_the_end(daemon: DaemonProcess, broker) -> None:
    from broker import Subscriber

    async def with_mqtt() -> tuple[list[dict], list[dict]]:
        async with Subscriber(broker.port, "tympan/lab/session/#") as sub:
            events = await _turns(daemon, {"task": "asr", "session_id": "turns-1"})
            await sub.wait_for(lambda m: any(x.topic.endswith("/final") for x in m))
            return events, [m.json() | {"topic": m.topic} for m in sub.messages]

    events, published = asyncio.run(with_mqtt())
    turn_events = [e for e in events if e["type"] in ("end_of_turn", "turn_resumed", "final")]
    kinds = [(e["type"], e.get("eager")) for e in turn_events]
    # The first pause ends eagerly; speech resumes; the second pause ends eagerly again, then for good.
    assert kinds == [("end_of_turn", True), ("turn_resumed", None), ("end_of_turn", True), ("end_of_turn", False),
                     ("final", None)], kinds
    assert len({e["segment_id"] for e in turn_events}) == 1, "one turn: the pause inside it did not end it"
    eager, _, _, end, final = turn_events
    balanced = PRESETS["balanced"]
    assert balanced.eager_threshold <= eager["probability"] < balanced.threshold <= end["probability"]
    assert final["text"] and not [e for e in events if e["type"] == "error"]
    on_mqtt = [(m["type"], m.get("eager")) for m in published if m["topic"].endswith("/turn")]
    assert on_mqtt == kinds[:4]
    assert {m["session_id"] for m in published} == {"turns-1"}


def test_a_session_chooses_its_turns_silence_or_no_eager_events(daemon: DaemonProcess) -> None:
    events = asyncio.run(_turns(daemon, {"task": "asr", "eager_turn": False}))
    ready = events[0]
    assert ready["request"]["turn"] == "balanced" and ready["request"]["eager_turn"] is False
    kinds = [(e["type"], e.get("eager")) for e in events if e["type"] in ("end_of_turn", "turn_resumed", "final")]
    assert kinds == [("end_of_turn", False), ("final", None)], kinds
    # The silence endpoint: the turn ends at vad.silence_ms, the probability is not needed.
    events = asyncio.run(_turns(daemon, {"task": "asr", "eager_turn": False, "turn": "silence"}))
    assert [e["type"] for e in events if e["type"] in ("end_of_turn", "turn_resumed", "final")] == [
        "end_of_turn", "final"]
