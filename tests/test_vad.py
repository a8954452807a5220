"""The utterance segmenter (tympan.daemon.vad): speech gate, endpoints, max length, chunking, bounds, config."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tympan.config import ConfigError, from_dict
from tympan.daemon.vad import (
    Event,
    Segmenter,
    SpeechPaused,
    SpeechResumed,
    UtteranceDropped,
    UtteranceEnded,
    UtteranceStarted,
    VadConfig,
)

SR = 16000
ALSA = Path("/usr/share/sounds/alsa")
RNG_SEED = 1234
Say = Callable[..., np.ndarray]


# -- signals ---------------------------------------------------------------------------------------


def load_16k(path: Path) -> np.ndarray:
    import soundfile as sf
    import soxr

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return soxr.resample(data.mean(axis=1), rate, SR).astype(np.float32)


def trim(x: np.ndarray, db: float = -50.0) -> np.ndarray:
    """Cut leading/trailing near-silence so the speech boundaries are known exactly."""
    idx = np.flatnonzero(np.abs(x) > 10 ** (db / 20))
    return x[idx[0]:idx[-1] + 1]


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-20))


def at_db(x: np.ndarray, db: float) -> np.ndarray:
    return (x * 10 ** ((db - rms_db(x)) / 20)).astype(np.float32)


def silence(s: float) -> np.ndarray:
    return np.zeros(round(s * SR), np.float32)


def tone(hz: float, s: float = 6.0, db: float = -12.0) -> np.ndarray:
    return at_db(np.sin(2 * np.pi * hz * np.arange(round(s * SR)) / SR), db)


def white(s: float, db: float, seed: int = RNG_SEED) -> np.ndarray:
    return at_db(np.random.default_rng(seed).standard_normal(round(s * SR)), db)


def pink(s: float, db: float, seed: int = RNG_SEED) -> np.ndarray:
    n = round(s * SR)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1))
    return at_db(np.fft.irfft(spec, n), db)


def hum(s: float = 6.0, db: float = -20.0, harmonics: tuple[int, ...] = (1, 2, 3, 5)) -> np.ndarray:
    t = np.arange(round(s * SR)) / SR
    return at_db(sum(np.sin(2 * np.pi * 50 * k * t) / k for k in harmonics), db)


def clicks(s: float = 6.0, rate: float = 2.0, harmonic: bool = False, decay_s: float = 0.003) -> np.ndarray:
    """A metronome: noise ticks, or harmonic 'woodblock' clicks (800/1600/2400 Hz) with a longer decay."""
    n, length = round(s * SR), round(0.05 * SR)
    t = np.arange(length) / SR
    if harmonic:
        burst = sum(np.sin(2 * np.pi * f * t) for f in (800, 1600, 2400))
    else:
        burst = np.random.default_rng(RNG_SEED).standard_normal(length)
    burst = burst * np.exp(-t / decay_s)
    x = np.zeros(n)
    for start in np.arange(0.2, s, 1 / rate):
        i = round(start * SR)
        x[i:i + length] += burst[:n - i]
    return (x / np.abs(x).max() * 0.5).astype(np.float32)


def chirps(n: int = 6) -> np.ndarray:
    """Short rising beeps (600 -> 900 Hz in 0.4 s): the pitch moves, so only tonality tells them from voice."""
    t = np.arange(round(0.4 * SR)) / SR
    beep = 0.3 * np.sin(2 * np.pi * (600 * t + 375 * t**2))
    return np.concatenate([np.concatenate([beep, np.zeros(round(0.6 * SR))]) for _ in range(n)]).astype(np.float32)


def with_noise(speech: np.ndarray, noise: Callable[[float, float], np.ndarray], snr_db: float,
               level_db: float = -20.0) -> tuple[np.ndarray, float, float]:
    """Speech at level_db between 1 s and 1.5 s of silence, all under noise snr_db below it.

    -> (stream, speech start, speech end) in seconds."""
    x = np.concatenate([silence(1.0), at_db(speech, level_db), silence(1.5)])
    return x + noise(len(x) / SR, level_db - snr_db), 1.0, 1.0 + len(speech) / SR


def alone(speech: np.ndarray) -> tuple[np.ndarray, float, float]:
    return speech, 0.0, len(speech) / SR


def then_typing(speech: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Speech, then loud key clicks: impulses must not hold the utterance open."""
    return np.concatenate([speech, silence(0.3), clicks(2.0, rate=6)]), 0.0, len(speech) / SR


def drone(s: float = 6.0, db: float = -20.0) -> np.ndarray:
    """An engine: a buzzy harmonic sound whose pitch glides (100 -> 130 Hz) at a steady level."""
    t = np.arange(round(s * SR)) / SR
    phase = 2 * np.pi * (100 * t + 15 / s * t**2)
    return at_db(sum(np.sin(k * phase) / k for k in range(1, 15)), db)


@pytest.fixture(scope="module")
def say(tmp_path_factory: pytest.TempPathFactory) -> Say:
    """espeak-ng speech, trimmed, at 16 kHz: say(text, voice="en-us", speed=160)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("espeak")
    cache: dict[tuple[str, str, int], np.ndarray] = {}

    def _say(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
        key = (text, voice, speed)
        if key not in cache:
            out = folder / f"{len(cache)}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True,
                           capture_output=True)
            cache[key] = trim(load_16k(out))
        return cache[key]

    return _say


def alsa(name: str) -> np.ndarray:
    path = ALSA / f"{name}.wav"
    if not path.is_file():
        pytest.skip(f"{path} not installed (alsa-utils)")
    return trim(load_16k(path))


# -- running the segmenter -------------------------------------------------------------------------


def run(x: np.ndarray, cfg: VadConfig | None = None, chunk: int | None = None) -> list[Event]:
    seg = Segmenter(cfg or VadConfig())
    events: list[Event] = []
    step = chunk or max(len(x), 1)
    for i in range(0, len(x), step):
        events += seg.push(x[i:i + step])
    return events + seg.finish()


def ended(events: list[Event]) -> list[UtteranceEnded]:
    return [e for e in events if isinstance(e, UtteranceEnded)]


def key(event: Event) -> tuple[Any, ...]:
    """An event as comparable data (audio as bytes)."""
    return (type(event).__name__, *(v.tobytes() if isinstance(v, np.ndarray) else v
                                    for v in dataclasses.astuple(event)))


def check_audio_is_the_stream(x: np.ndarray, utterances: list[UtteranceEnded]) -> None:
    for u in utterances:
        a, b = round(u.start * SR), round(u.end * SR)
        assert b - a == len(u.audio)
        assert np.array_equal(u.audio, x[a:b])


# -- the gate --------------------------------------------------------------------------------------

NON_SPEECH: dict[str, Callable[[], np.ndarray]] = {
    "tone 200 Hz": lambda: tone(200),
    "tone 440 Hz": lambda: tone(440),
    "tone 1000 Hz": lambda: tone(1000),
    "tone 3000 Hz": lambda: tone(3000),
    "quiet tone 1000 Hz": lambda: tone(1000, db=-40),
    "loud tone 440 Hz in noise": lambda: tone(440, db=-6) + white(6, -40),
    "rising beeps": chirps,
    "engine drone": drone,
    "white noise -10 dBFS": lambda: white(6, -10),
    "white noise -30 dBFS": lambda: white(6, -30),
    "white noise -50 dBFS": lambda: white(6, -50),
    "pink noise -10 dBFS": lambda: pink(6, -10),
    "pink noise -30 dBFS": lambda: pink(6, -30),
    "pink noise -50 dBFS": lambda: pink(6, -50),
    "noise bursts": lambda: np.concatenate([np.concatenate([white(0.7, -20, s), silence(0.6)]) for s in range(4)]),
    "50 Hz hum": lambda: hum(harmonics=(1,)),
    "50 Hz hum with harmonics": lambda: hum(),
    "loud 50 Hz hum with harmonics": lambda: hum(db=-6, harmonics=(1, 2, 3, 4, 5, 6, 7)),
    "metronome ticks 2 Hz": lambda: clicks(rate=2),
    "metronome ticks 8 Hz": lambda: clicks(rate=8),
    "woodblock clicks 2 Hz": lambda: clicks(rate=2, harmonic=True, decay_s=0.02),
    "woodblock clicks 4 Hz": lambda: clicks(rate=4, harmonic=True, decay_s=0.03),
    "digital silence": lambda: silence(6),
    "very quiet noise": lambda: white(6, -70),
}


@pytest.mark.parametrize("name", list(NON_SPEECH))
def test_non_speech_never_becomes_an_utterance(name: str) -> None:
    x = np.concatenate([silence(0.5), NON_SPEECH[name](), silence(1.0)])
    events = run(x, chunk=4000)
    # Not even a started-then-dropped utterance: the daemon must hear nothing at all.
    assert events == [], [(type(e).__name__, e.segment_id) for e in events]


SPEECH: dict[str, Callable[[Say], tuple[np.ndarray, float, float]]] = {
    "espeak en-us": lambda say: alone(say("Please call me back in five minutes.")),
    "espeak en-gb slow": lambda say: alone(say("Please call me back in five minutes.", "en-gb", 120)),
    "espeak en+f3 fast": lambda say: alone(say("Please call me back in five minutes.", "en+f3", 240)),
    "espeak en+m3": lambda say: alone(say("Turn left at the bridge.", "en+m3", 160)),
    "espeak en-gb-scotland": lambda say: alone(say("What time is it?", "en-gb-scotland", 175)),
    "espeak one word": lambda say: alone(say("yes", "en-us")),
    "alsa Front_Left": lambda say: alone(alsa("Front_Left")),
    "alsa Rear_Center": lambda say: alone(alsa("Rear_Center")),
    "alsa Side_Right": lambda say: alone(alsa("Side_Right")),
    "quiet speech -30 dBFS": lambda say: alone(at_db(say("Please call me back in five minutes."), -30)),
    "quiet alsa -30 dBFS": lambda say: alone(at_db(alsa("Rear_Left"), -30)),
    "white noise 10 dB SNR": lambda say: with_noise(say("Please call me back in five minutes."), white, 10),
    "pink noise 10 dB SNR": lambda say: with_noise(say("Please call me back in five minutes."), pink, 10),
    "pink noise 15 dB SNR, alsa": lambda say: with_noise(alsa("Side_Left"), pink, 15),
    "white noise 15 dB SNR, alsa": lambda say: with_noise(alsa("Front_Right"), white, 15),
    # webrtcvad calls noise this loud speech throughout: only the tracked noise floor ends the utterance.
    "loud noise 12 dB SNR": lambda say: with_noise(say("Open the window, please."), white, 12, level_db=-8),
    "typing after speech": lambda say: then_typing(say("Please call me back in five minutes.")),
    "hum 15 dB below": lambda say: with_noise(say("Open the window, please."), lambda s, db: hum(s, db), 15),
}


@pytest.mark.parametrize("name", list(SPEECH))
def test_speech_becomes_one_utterance(name: str, say: Say) -> None:
    audio, start, end = SPEECH[name](say)
    x = np.concatenate([silence(1.0), audio, silence(1.5)])
    events = run(x, chunk=4000)
    (u,) = ended(events)
    assert u.reason == "silence"
    assert not [e for e in events if isinstance(e, UtteranceDropped)]
    # Noise before the speech may pull the start earlier (onset search + pre-roll); a faint first
    # syllable under noise may be missed.
    assert 1.0 + start - 0.5 <= u.start <= 1.0 + start + 0.15
    assert abs(u.speech_end - (1.0 + end)) <= 0.3
    check_audio_is_the_stream(x, [u])


def test_blips_below_min_voiced_are_never_started(say: Say) -> None:
    x = np.concatenate([silence(1.0), say("yes"), silence(1.5)])  # ~150 ms of voicing
    assert len(ended(run(x))) == 1
    assert run(x, VadConfig(min_voiced_ms=400)) == []


# -- endpoints -------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_speech_silence_speech_gives_two_accurate_utterances(frame_ms: int, say: Say) -> None:
    a = say("The quick brown fox jumps over the lazy dog.")
    b = say("Seven, eight, nine.", "en+f3")
    x = np.concatenate([silence(1.0), a, silence(1.5), b, silence(1.5)])
    truth = [(1.0, 1.0 + len(a) / SR), (2.5 + len(a) / SR, 2.5 + (len(a) + len(b)) / SR)]
    utterances = ended(run(x, VadConfig(frame_ms=frame_ms), chunk=320))
    assert len(utterances) == 2
    pause = VadConfig().pause_ms / 1000  # the audio runs on to the pause that started the speculation
    for u, (start, end) in zip(utterances, truth, strict=True):
        assert u.reason == "silence"
        assert abs(u.start - start) <= 0.15
        assert abs(u.end - (end + pause)) <= 0.15
        assert abs(u.speech_end - end) <= 0.15
    check_audio_is_the_stream(x, utterances)


def test_max_length_cuts_at_a_quiet_point_and_loses_nothing(say: Say) -> None:
    sentences = ["When the rain stopped we walked to the station and bought two tickets",
                 "then we waited on the platform for the last train to the city",
                 "it was late and the air was cold but nobody seemed to mind at all"]
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) < 25 * SR:  # continuous speech: word-length gaps only
        for voice in ("en-us", "en-gb", "en+f3"):
            for text in sentences:
                parts += [say(text, voice), silence(0.06)]  # shorter than a pause (90 ms)
    speech = np.concatenate(parts)[:26 * SR]
    x = np.concatenate([silence(1.0), speech, silence(1.5)])
    cfg = VadConfig()
    events = run(x, cfg, chunk=4000)
    utterances = ended(events)
    assert [u.reason for u in utterances] == ["max_length", "silence"]
    first, second = utterances
    assert cfg.max_utterance_s - cfg.cut_search_s <= first.end - first.start <= cfg.max_utterance_s
    cut = round(first.end * SR)
    # The cut went into a pause, not through a word.
    assert rms_db(x[cut - 480:cut + 480]) < rms_db(speech) - 20
    # The rest started the next utterance at once, where the first one ended.
    i = next(j for j, e in enumerate(events) if e is first)
    assert events[i + 1] == UtteranceStarted(first.segment_id + 1, first.end)
    assert second.start == first.end
    check_audio_is_the_stream(x, utterances)
    # Everything voiced is inside an utterance.
    frames = x[:len(x) // 160 * 160].reshape(-1, 160)
    loud = np.flatnonzero(10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20) > -45)
    assert first.start <= loud[0] * 0.01 and (loud[-1] + 1) * 0.01 <= second.end


# -- streaming behaviour ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_stream(say: Say) -> np.ndarray:
    """Speech with a comma pause, noise, noisy speech, a tone and silences: about 12 s."""
    return np.concatenate([
        silence(0.7), say("Well, I think so, but nobody really knows."), silence(0.8),
        pink(1.5, -35), with_noise(say("Open the window.", "en-gb"), white, 12)[0], tone(1000, 1.0),
        silence(0.4), say("Stop.", "en+f3"), silence(0.3),
    ])


def test_chunk_sizes_do_not_change_the_events(mixed_stream: np.ndarray) -> None:
    x = mixed_stream
    reference = [key(e) for e in run(x)]
    assert len(ended(run(x))) >= 3
    for chunk in (1, 160, 4000):
        assert [key(e) for e in run(x, chunk=chunk)] == reference, chunk
    seg = Segmenter(VadConfig())
    events: list[Event] = []
    rng = np.random.default_rng(RNG_SEED)
    i = 0
    while i < len(x):
        n = int(rng.integers(0, 3000))  # empty pushes included
        events += seg.push(x[i:i + n])
        i += n
    assert [key(e) for e in events + seg.finish()] == reference


@pytest.mark.parametrize("pause_ms", [30, 90])
def test_paused_resumed_and_ended_are_consistent(pause_ms: int, say: Say, mixed_stream: np.ndarray) -> None:
    x = np.concatenate([mixed_stream, say("After a long pause, she said: yes, let us try again tomorrow.",
                                          "en-us", 120), silence(1.0)])
    events = run(x, VadConfig(pause_ms=pause_ms), chunk=480)
    ids = [e.segment_id for e in events if isinstance(e, UtteranceStarted)]
    assert ids == list(range(len(ids))) and len(ids) >= 3
    resumed = 0
    for sid in ids:
        mine = [e for e in events if e.segment_id == sid]
        assert isinstance(mine[0], UtteranceStarted)
        assert isinstance(mine[-1], UtteranceEnded | UtteranceDropped)
        middle = mine[1:-1]
        # Pauses and resumptions alternate, starting with a pause.
        for j, e in enumerate(middle):
            assert isinstance(e, SpeechPaused if j % 2 == 0 else SpeechResumed)
        resumed += sum(isinstance(e, SpeechResumed) for e in middle)
        end = mine[-1]
        if isinstance(end, UtteranceEnded):
            assert end.start <= end.speech_end <= end.end
            assert end.end - end.start == pytest.approx(len(end.audio) / SR)
            if end.reason == "silence":
                paused = middle[-1]
                assert isinstance(paused, SpeechPaused)
                assert paused.audio.tobytes() == end.audio.tobytes()
                assert paused.speech_end == end.speech_end
    assert resumed >= 1  # the comma pauses were exercised
    # Events come in stream order.
    starts = [e.start for e in events if isinstance(e, UtteranceStarted)]
    assert starts == sorted(starts)


def test_finish_ends_an_open_utterance(say: Say) -> None:
    speech = say("Please call me back in five minutes, or send a message.")
    seg = Segmenter(VadConfig())
    assert seg.current() is None
    # Cut in the loudest 50 ms of the second half (mid-vowel), leaving a partial frame.
    loudness = np.convolve(speech.astype(np.float64) ** 2, np.ones(800), "valid")
    half = len(loudness) // 2
    x = np.concatenate([silence(0.5), speech[:half + int(np.argmax(loudness[half:])) + 400 + 77]])
    events = seg.push(x)
    assert isinstance(events[0], UtteranceStarted)
    sid, audio = seg.current()  # type: ignore[misc]
    assert sid == 0 and len(audio) > SR and not audio.flags.writeable
    assert np.array_equal(audio, x[round(len(x) - len(audio) - len(x) % 480):len(x) - len(x) % 480])
    (u,) = seg.finish()
    assert isinstance(u, UtteranceEnded) and u.reason == "end_of_stream"
    assert u.end == pytest.approx(len(x) / SR)  # the partial frame too
    check_audio_is_the_stream(x, [u])
    assert seg.current() is None and seg.buffered_seconds == 0
    # A new stream starts over.
    assert isinstance(seg.push(x)[0], UtteranceStarted) and seg.current()[0] == 0  # type: ignore[index]

    # Ended during a pause: the speculative audio is final.
    seg = Segmenter(VadConfig())
    events = seg.push(np.concatenate([silence(0.5), speech, silence(0.3)])) + seg.finish()
    paused = [e for e in events if isinstance(e, SpeechPaused)][-1]
    (u,) = ended(events)
    assert u.reason == "end_of_stream" and u.audio.tobytes() == paused.audio.tobytes()
    # Nothing open, or only a blip: nothing to say.
    assert Segmenter(VadConfig()).finish() == []
    seg = Segmenter(VadConfig())
    assert seg.push(np.concatenate([silence(0.5), clicks(1.0, rate=4, harmonic=True, decay_s=0.03)])) == []
    assert seg.finish() == []


def test_buffer_stays_bounded_over_ten_minutes(say: Say) -> None:
    cfg = VadConfig()
    speech = np.concatenate([say(t, v) for v in ("en-us", "en-gb", "en+f3")
                             for t in ("The meeting is on Tuesday at ten, please bring the report",
                                       "and the budget and your notes from the last visit")])
    block = np.concatenate([speech, silence(0.8), pink(3, -30), tone(440, 2), white(2, -45),
                            say("Open the window.", "en+m3"), silence(1.0)])
    reps = int(np.ceil(600 * SR / len(block)))
    seg = Segmenter(cfg)
    limit = cfg.max_utterance_s + cfg.pre_roll_ms / 1000
    counts: dict[str, int] = {}
    tracemalloc.start()
    try:
        for r in range(reps):
            if r == reps // 4:
                baseline = tracemalloc.get_traced_memory()[0]
            for i in range(0, len(block), 4000):
                for e in seg.push(block[i:i + 4000]):
                    counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1
                assert seg.buffered_seconds <= limit
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert reps * len(block) >= 600 * SR
    assert counts["UtteranceEnded"] >= 2 * reps
    assert grown < 1 << 20, grown  # nothing accumulates with the stream


def test_cpu_cost_is_far_below_real_time(mixed_stream: np.ndarray) -> None:
    x = np.tile(mixed_stream, 5)
    seg = Segmenter(VadConfig())
    t0 = time.process_time()
    for i in range(0, len(x), 320):
        seg.push(x[i:i + 320])
    cost = (time.process_time() - t0) / (len(x) / SR)
    assert cost < 0.05  # < 5 % of a core; measured ~0.2 % with 30 ms frames


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "message"), [
    ("aggressiveness", 4, "must be 0, 1, 2 or 3"),
    ("aggressiveness", "2", "expected an integer"),
    ("frame_ms", 25, "must be 10, 20 or 30"),
    ("frame_ms", True, "expected an integer"),
    ("silence_ms", 0, "must be > 0"),
    ("pause_ms", 2000, "must be <= silence_ms"),
    ("max_utterance_s", -1.0, "must be > 0"),
    ("cut_search_s", 30.0, "must be < max_utterance_s"),
    ("pre_roll_ms", -10, "must be >= 0"),
    ("min_harmonicity", 1.5, "must be in [0, 1)"),
    ("energy_floor_db", 3.0, "must be <= 0"),
    ("max_pitch_share", 0.0, "must be in (0, 1]"),
])
def test_bad_config_values_raise_naming_the_key(name: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"vad\.{name}: .*{re.escape(message)}"):
        VadConfig(**{name: value})


def test_config_from_toml_names_file_and_key() -> None:
    with pytest.raises(ConfigError, match=r"daemon\.toml: vad\.frame_ms: must be 10, 20 or 30"):
        from_dict(VadConfig, {"frame_ms": 15}, source="daemon.toml", prefix="vad")
    cfg = from_dict(VadConfig, {"silence_ms": 700, "aggressiveness": 3}, source="daemon.toml", prefix="vad")
    assert (cfg.silence_ms, cfg.aggressiveness) == (700, 3)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_other_sample_rates(rate: int, say: Say) -> None:
    import soxr

    x = np.concatenate([silence(1.0), say("Please call me back in five minutes."), silence(1.5)])
    y = soxr.resample(x, SR, rate).astype(np.float32)
    seg = Segmenter(VadConfig(), sample_rate=rate)
    (u,) = ended(seg.push(y) + seg.finish())
    pause = VadConfig().pause_ms / 1000  # the audio runs on to the pause that started the speculation
    assert abs(u.start - 1.0) <= 0.15 and abs(u.end - (len(x) / SR - 1.5 + pause)) <= 0.15
    seg = Segmenter(VadConfig(), sample_rate=rate)
    assert seg.push(soxr.resample(tone(440), SR, rate).astype(np.float32)) + seg.finish() == []


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        Segmenter(VadConfig(), sample_rate=44100)
    seg = Segmenter(VadConfig())
    with pytest.raises(ValueError, match="mono"):
        seg.push(np.zeros((2, 160), np.float32))
    with pytest.raises(TypeError, match="float"):
        seg.push(np.zeros(160, np.int16))
    assert seg.push(np.zeros(0, np.float32)) == []
    assert seg.push(np.full(1000, np.nan, np.float32)) == []
