"""The one greedy decode loop (tympan.runtime.decode): its stops, the loop guard, cancellation and streaming; and
`tympan eval --bundle` giving what a real daemon session gives for the same audio, loop guard included."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from daemon_harness import DaemonProcess, alsa_speech, as_sent, silence

from tympan.config import ConfigError
from tympan.daemon.client import stream
from tympan.daemon.settings import DaemonConfig
from tympan.evaluate import BundleRunner, evaluate
from tympan.manifest import load_manifest
from tympan.runtime.bundle import load_bundle
from tympan.runtime.bundle_manifest import MANIFEST
from tympan.runtime.decode import DEFAULT_SETTINGS, DecodeSettings, Stop, greedy_decode
from tympan.runtime.speech_model import SpeechModel

STOP = 0
VOCAB = 50


class ScriptedLLM:
    """An LLM that says `script`, one token per model call (prefill first), then STOP; counts its calls."""

    hidden_size = 4

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.calls = 0

    def embed(self, ids):
        return np.zeros((len(ids), self.hidden_size), np.float32)

    def prefill(self, inputs_embeds):
        return self._say(0)

    def step(self, token, state):
        assert token == self.script[state], "the loop feeds back the token it picked"
        return self._say(state + 1)

    def _say(self, i: int):
        self.calls += 1
        logits = np.random.default_rng(i).normal(0, 1, VOCAB).astype(np.float32)
        logits[self.script[i] if i < len(self.script) else STOP] = 100.0
        return logits, i


PROMPT = np.ones((3, 4), np.float32)


def decode(script: list[int], settings: DecodeSettings = DEFAULT_SETTINGS, **kwargs):
    llm = ScriptedLLM(script)
    return greedy_decode(llm, PROMPT, [STOP], settings, **kwargs), llm.calls


def test_a_stop_token_ends_decoding_and_is_not_returned() -> None:
    (decoded, calls) = decode([5, 6, 7])
    assert (decoded.tokens, decoded.stop, calls) == ([5, 6, 7], Stop.STOP_TOKEN, 4)
    assert decode([])[0].tokens == []


def test_an_ended_answer_keeps_its_last_token_and_costs_no_further_step() -> None:
    shown: list[list[int]] = []
    decoded, calls = decode([5, 6, 7, 8], ended=lambda tokens: tokens[-1] == 7,
                            on_token=lambda t: shown.append(list(t)))
    # The closing token (".\n" for Qwen) carries text: it stays, and no model call follows it.
    assert (decoded.tokens, decoded.stop, calls) == ([5, 6, 7], Stop.ENDED, 3)
    assert shown == [[5], [5, 6]]


def test_the_limit_ends_decoding_without_a_step_nobody_reads() -> None:
    decoded, calls = decode(list(range(1, 40)), DecodeSettings(max_new_tokens=3))
    assert (decoded.tokens, decoded.stop, calls) == ([1, 2, 3], Stop.LIMIT, 3)
    # A model's own limit caps the settings, never raises them.
    assert DecodeSettings(max_new_tokens=100).capped(24).max_new_tokens == 24
    assert DEFAULT_SETTINGS.capped(1000) is DEFAULT_SETTINGS


def test_the_loop_guard_cuts_the_repeats_and_keeps_one() -> None:
    looping = [9, 4, 5, 6, 4, 5, 6, 4, 5, 6, 4, 5, 6, 8]
    decoded, calls = decode(looping)
    assert (decoded.tokens, decoded.stop) == ([9, 4, 5, 6], Stop.LOOP)
    assert calls == 10  # stopped at the third "4 5 6", not at the limit
    one_token = decode([3] * 30)[0]
    assert (one_token.tokens, one_token.stop) == ([3], Stop.LOOP)
    # Digit groups and doubled words are not loops (a loop spans 8+ tokens).
    groups = [1, 7, 7, 7, 2, 7, 7, 7, 3, 11, 11, 4]
    assert decode(groups)[0].tokens == groups
    # Off (repeat_ngram_max = 0): the model's own tokens, loops and all, up to the limit.
    unguarded = decode(looping, DecodeSettings.unguarded(12))[0]
    assert (unguarded.tokens, unguarded.stop) == (looping[:12], Stop.LIMIT)
    # Longer n-grams must repeat `repeat_times` times; n-grams longer than repeat_ngram_max are never loops.
    pairs = [1, 2] * 6
    assert decode(pairs, DecodeSettings(repeat_times=6))[0].tokens == [1, 2]
    assert decode(pairs, DecodeSettings(repeat_ngram_max=1))[0].tokens == pairs


def test_streaming_shows_each_token_and_never_the_cut_repeats() -> None:
    seen: list[list[int]] = []
    decoded, _ = decode([9, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5], on_token=lambda tokens: seen.append(list(tokens)))
    assert decoded.stop is Stop.LOOP and decoded.tokens == [9, 4, 5]
    assert seen == [[9, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5][:i] for i in range(1, 9)]


def test_cancelling_stops_after_the_current_model_call() -> None:
    asked: list[int] = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) == 3

    decoded, calls = decode(list(range(1, 20)), cancelled=cancelled)
    assert (decoded.tokens, decoded.stop, calls) == ([1, 2], Stop.CANCELLED, 3)


def test_settings_are_validated_and_the_daemon_defaults_are_the_shared_ones() -> None:
    with pytest.raises(ConfigError, match=r"decode\.max_new_tokens: must be > 0"):
        DecodeSettings(max_new_tokens=0)
    with pytest.raises(ConfigError, match=r"decode\.repeat_ngram_max: must be >= 0"):
        DecodeSettings(repeat_ngram_max=-1)
    daemon = DaemonConfig().decode
    assert DecodeSettings(**{f.name: getattr(daemon, f.name) for f in fields(DecodeSettings)}) == DEFAULT_SETTINGS
    with pytest.raises(ValueError, match="hidden size 3"):
        greedy_decode(ScriptedLLM([1]), np.ones((2, 3), np.float32), [STOP], DEFAULT_SETTINGS)


# -- eval and the daemon, on a model that loops ------------------------------------------------------------------

RECORDINGS = ("Front_Center", "Rear_Right", "Side_Left")
SPEECH = np.concatenate([part for name in RECORDINGS for part in (silence(1.2), alsa_speech(name))] + [silence(1.5)])
ST_DE = {"task": "st", "target_lang": "de"}


@pytest.fixture(scope="module")
def looping_bundle(tympan_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with no stop token and room for 128 tokens: its model runs on after its answer, and
    loops. (manifest.json lists the files; changing it keeps the bundle whole.)"""
    from tympan.daemon.cli import default_bundle

    out = tmp_path_factory.mktemp("bundles") / "looping"
    shutil.copytree(default_bundle(), out)
    manifest = load_bundle(out).manifest
    never_stops = replace(manifest, prompt=replace(manifest.prompt, stop_ids=[], max_new_tokens=128))
    (out / MANIFEST).write_text(json.dumps(never_stops.to_json()))
    return out


def _segments(audio: np.ndarray) -> list[np.ndarray]:
    """The utterances a daemon with the default settings decodes for `audio`, as it receives them."""
    from tympan.daemon.vad import Segmenter, UtteranceEnded

    segmenter = Segmenter(DaemonConfig().vad, 16000)
    events = segmenter.push(as_sent(audio)) + segmenter.finish()
    return [e.audio for e in events if isinstance(e, UtteranceEnded)]


def _manifest_of(segments: list[np.ndarray], directory: Path) -> Path:
    lines = []
    for i, segment in enumerate(segments):
        path = directory / f"utterance-{i}.wav"
        sf.write(str(path), np.round(segment * 32768).astype(np.int16), 16000, subtype="PCM_16")  # exact
        lines.append({"id": f"utterance-{i}", "audio": path.name, "task": "st", "src_lang": "en", "tgt_lang": "de",
                      "target": "-"})
    manifest = directory / "utterances.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def test_eval_gives_the_daemons_text_loop_guard_included(looping_bundle: Path, tmp_path: Path) -> None:
    segments = _segments(SPEECH)
    assert len(segments) == len(RECORDINGS)

    # The guard matters here: the model loops on every utterance, and cutting changes the text.
    model = SpeechModel.load(looping_bundle)
    instruction = model.prompts.instruction("st", "de")
    changed = 0
    for segment in segments:
        (speech,) = model.embed_audio([segment])
        guarded = model.decode(speech, instruction)
        assert guarded.stop is Stop.LOOP
        unguarded = model.decode(speech, instruction, DecodeSettings.unguarded(128))
        assert len(unguarded.tokens) == 128 and unguarded.tokens[: len(guarded.tokens)] == guarded.tokens
        changed += model.prompts.decode(unguarded.tokens) != model.prompts.decode(guarded.tokens)
    assert changed, "the guard cuts only tokens that print nothing: the test would not show it is applied"

    examples = load_manifest(_manifest_of(segments, tmp_path))
    assert all(np.array_equal(sf.read(str(e.audio), dtype="float32")[0], s) for e, s in zip(examples, segments,
                                                                                         strict=True))
    report = evaluate(BundleRunner(looping_bundle), examples)
    evaluated = [h.text for h in report.hypotheses[("st", "de")]]

    with DaemonProcess(looping_bundle, tmp_path / "daemon") as daemon:
        events = asyncio.run(stream(daemon.url, _chunks(SPEECH), ST_DE, lambda e: None))
        looped = daemon.wait_log("output looped; cut", count=len(RECORDINGS))
    finals = [e["text"] for e in events if e["type"] == "final"]
    assert finals == evaluated
    assert any(finals), "empty texts would make the comparison weak"
    assert len(looped) >= len(RECORDINGS)


async def _chunks(audio: np.ndarray, chunk_ms: int = 100):
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = 16000 * chunk_ms // 1000 * 2
    for i in range(0, len(pcm), step):
        yield pcm[i : i + step], 16000
