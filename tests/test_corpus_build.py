"""`tympan data build`: the synthetic speech corpus, with the real engines (small size)."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.cli import main
from tympan.manifest import load_manifest
from tympan.training.corpus import augment
from tympan.training.corpus.build import DEFAULT_MIX, plan_corpus
from tympan.training.corpus.text import QA, TextItem, normalise
from tympan.training.corpus.voices import (
    KOKORO_MODEL_NAME,
    VoiceAssetError,
    catalogue,
    ensure_kokoro_model,
    kokoro_part_files,
)

REPO = Path(__file__).resolve().parent.parent
SPLITS = ("train", "dev", "test")


def _build(out: Path, *extra: str) -> int:
    return main(["data", "build", "--out", str(out), "--size", "small", "--no-progress", *extra])


def _files(root: Path) -> dict[str, int]:
    """Every file under root with its mtime (ns)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def _utterances(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "utterances.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Its speed (under a minute on an idle 2-core machine) is a figure for the README, not a test:
    # a timed assertion fails whenever the machine is busy.
    out = tmp_path_factory.mktemp("corpus") / "c"
    assert _build(out, "--jobs", "2") == 0
    return out


def test_small_corpus_manifests_load_and_audio_is_speech(corpus: Path) -> None:
    tasks: set[tuple[str, str]] = set()
    audio_files: set[Path] = set()
    for split in SPLITS:
        for ex in load_manifest(corpus / f"{split}.jsonl"):
            tasks.add((split, ex.task))
            assert ex.audio is not None
            audio_files.add(ex.audio)
            if ex.task == "st":
                assert ex.text and ex.tgt_lang in ("de", "it", "zh")
    for split in ("train", "test"):
        assert {t for s, t in tasks if s == split} == {"asr", "st", "sqa"}, split
    for path in audio_files:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), path
        audio, _ = sf.read(str(path), dtype="float32")
        assert np.sqrt(np.mean(audio**2)) > 0.005, f"{path} is (nearly) silent"
        assert 0.5 < len(audio) / 16000 <= 30.0
    recipe = json.loads((corpus / "recipe.json").read_text())
    assert recipe["complete"] and recipe["failed"] == 0
    assert {u["engine"] for u in _utterances(corpus)} == {"kokoro", "piper", "flite", "festival", "espeak"}
    assert recipe["hours"]["train"] > 0


def test_dev_and_test_are_held_out_by_sentence_and_voice(corpus: Path) -> None:
    utts = _utterances(corpus)
    sentences = {s: set() for s in SPLITS}
    for split in SPLITS:
        for ex in load_manifest(corpus / f"{split}.jsonl"):
            if ex.task == "asr":
                sentences[split].add(normalise(ex.target))
    for held_out in ("dev", "test"):
        assert sentences[held_out] and not sentences[held_out] & sentences["train"]
        for key in ("voice", "family"):
            train = {u[key] for u in utts if u["split"] == "train"}
            held = {u[key] for u in utts if u["split"] == held_out}
            assert held and not held & train, (held_out, key)
    voices = json.loads((corpus / "voices.json").read_text())
    families = {s: {v["family"] for v in voices[s]} for s in SPLITS}
    assert not families["train"] & (families["dev"] | families["test"])
    assert all(u["voice"] in {v["id"] for v in voices[u["split"]]} for u in utts)


def test_text_manifest_covers_training_sentences_only(corpus: Path) -> None:
    """text.jsonl: MT and text-QA lines of training sentences, none of dev or test."""
    text = load_manifest(corpus / "text.jsonl")
    assert text and all(not ex.is_speech and ex.text for ex in text)
    assert {ex.task for ex in text} == {"st", "sqa"}
    sources = {normalise(ex.text or "") for ex in text}
    for held_out in ("dev", "test"):
        held = {normalise(ex.text or ex.target) for ex in load_manifest(corpus / f"{held_out}.jsonl")}
        assert held and not held & sources, held_out
    # Every synthesised training sentence with a translation has its MT lines there too.
    train_st = {(normalise(ex.text or ""), ex.tgt_lang, ex.target) for ex in load_manifest(corpus / "train.jsonl")
                if ex.task == "st"}
    assert train_st and train_st <= {(normalise(ex.text or ""), ex.tgt_lang, ex.target) for ex in text}


def test_rerun_is_a_noop_and_a_lost_file_is_remade(corpus: Path) -> None:
    before = _files(corpus)
    manifests = {s: (corpus / f"{s}.jsonl").read_bytes() for s in SPLITS}
    assert _build(corpus, "--jobs", "2") == 0
    assert _files(corpus) == before, "a rerun rewrote files"

    lost = next(u["audio"] for u in _utterances(corpus) if u["engine"] == "espeak")
    (corpus / lost).unlink()
    assert _build(corpus, "--jobs", "1") == 0
    after = _files(corpus)
    assert lost in after
    assert {k: v for k, v in after.items() if k != lost} == {k: v for k, v in before.items() if k != lost}
    assert {s: (corpus / f"{s}.jsonl").read_bytes() for s in SPLITS} == manifests


def test_same_seed_same_corpus_other_seed_other_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fast = ("--engines", "flite,espeak", "--jobs", "1")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _build(a, *fast) == 0 and _build(b, "--engines", "espeak,flite") == 0
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "utterances.jsonl", "voices.json", "recipe.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for u in _utterances(a):  # these two engines are deterministic: the very same samples
        assert (a / u["audio"]).read_bytes() == (b / u["audio"]).read_bytes()

    # A budget of 0 hours: dev and test are made, training waits for a later run.
    assert _build(c, *fast, "--seed", "1", "--max-hours", "0") == 0
    assert "--max-hours" in capsys.readouterr().out
    recipe = json.loads((c / "recipe.json").read_text())
    assert recipe["hours"]["train"] == 0 and recipe["hours"]["test"] > 0 and not recipe["complete"]
    assert _build(c, *fast, "--seed", "1") == 0
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    # One directory, one corpus: other settings are refused rather than mixed in.
    assert _build(c, *fast) == 2
    assert "built with seed 1, not 0" in capsys.readouterr().err


def test_interrupted_build_keeps_what_is_done_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-m", "tympan", "data", "build", "--out", str(out), "--size", "small",
                             "--jobs", "1", "--no-progress", "--engines", "espeak,flite,festival"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not list(out.glob("audio/*/*/*.wav")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "resume" in output
    assert not list(out.rglob(".*tmp*")), "temporary files left behind"
    recipe = json.loads((out / "recipe.json").read_text())
    assert not recipe["complete"]
    listed = [json.loads(line)["audio"] for s in SPLITS for line in (out / f"{s}.jsonl").read_text().splitlines()]
    assert all((out / a).is_file() for a in listed)
    done = _files(out)

    assert _build(out, "--jobs", "1", "--engines", "espeak,flite,festival") == 0
    assert json.loads((out / "recipe.json").read_text())["complete"]
    after = _files(out)
    assert all(after[k] == v for k, v in done.items() if k.startswith("audio/")), "finished audio was remade"
    for split in SPLITS:
        load_manifest(out / f"{split}.jsonl")


def test_corrupt_kokoro_model_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    parts = []
    for i, part in enumerate(kokoro_part_files()):
        parts.append(tmp_path / f"part{i}.bin")
        shutil.copyfile(part, parts[-1])
    with open(parts[2], "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(VoiceAssetError, match=r"sha256 \w+, expected 6e742170"):
        ensure_kokoro_model(tmp_path / "k", parts)
    assert not (tmp_path / "k" / KOKORO_MODEL_NAME).exists()
    assert not list((tmp_path / "k").iterdir()), "a temporary file was left behind"

    # A damaged joined copy is not trusted: it is joined again from the installed parts.
    (tmp_path / "k" / KOKORO_MODEL_NAME).write_bytes(b"not a model")
    model = ensure_kokoro_model(tmp_path / "k")
    assert model.stat().st_size == 92_361_271


def test_plan_follows_the_mix_and_holds_out_sentences() -> None:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    rng = random.Random(3)
    items = []
    for i in range(3000):
        tag = "".join("abcdefghij"[int(d)] for d in str(i))  # unique, and no digits (no extra voices)
        text = " ".join(rng.choice(words) for _ in range(6)) + " " + tag
        tr = {"de": f"de {i}", "it": f"it {i}", "zh": f"zh {i}"} if i % 2 else {}
        qa = (QA("en", f"q{i}?", f"a{i}"),) if i % 5 == 0 else ()
        items.append(TextItem(f"t:{i}", "test", text, tr, qa))
    plan = plan_corpus(items, seed=0, size="full")
    by_split: dict[str, list] = {s: [u for u in plan.utterances if u.split == s] for s in SPLITS}
    assert len({u.item.id for u in by_split["test"]}) >= 300
    train = by_split["train"]
    for engine, share in DEFAULT_MIX.items():
        got = sum(u.voice.engine == engine for u in train) / len(train)
        assert abs(got - share) < 0.005, (engine, got, share)
    held = {u.item.id for u in by_split["test"] + by_split["dev"]}
    assert not held & {u.item.id for u in train}
    assert [u.split for u in plan.utterances] == sorted((u.split for u in plan.utterances),
                                                         key=("test", "dev", "train").index)
    # Duplicated sentences (case, punctuation) are one item, so they cannot straddle splits.
    dup = [*items[:50], TextItem("t:dup", "test", items[0].text.upper() + "!", {}, ())]
    assert len({u.item.id for u in plan_corpus(dup, 0, "small").utterances}) <= 50


def test_catalogue_holds_out_whole_speakers() -> None:
    cat = catalogue(seed=0)
    fam = {s: {v.family for v in vs} for s, vs in cat.voices.items()}
    assert not fam["train"] & fam["test"] and not fam["train"] & fam["dev"] and not fam["dev"] & fam["test"]
    kokoro_test = cat.by_engine("test", "kokoro")
    assert {v.group for v in kokoro_test} == {"us-f", "us-m", "uk-f", "uk-m"}
    assert all(v.blend is None for s in ("dev", "test") for v in cat.voices[s])
    blends = [v for v in cat.by_engine("train", "kokoro") if v.blend]
    assert blends and all(v.blend[0][:2] == v.blend[1][:2] for v in blends)
    assert catalogue(seed=0) == cat and catalogue(seed=1) != cat


def _sine(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("color", augment.NOISE_COLORS)
@pytest.mark.parametrize("snr_db", [5.0, 20.0])
def test_noise_is_added_at_the_requested_snr(color: str, snr_db: float) -> None:
    clean = _sine()
    noisy = augment.add_noise(clean, snr_db, color, np.random.default_rng(0))
    noise = noisy - clean
    measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert abs(measured - snr_db) < 0.1
    spectrum = np.abs(np.fft.rfft(noise)) ** 2
    low, high = spectrum[100:1000].mean(), spectrum[5000:8000].mean()
    assert (low / high > 10) == (color != "white"), color


def test_reverb_lengthens_the_tail() -> None:
    clean = _sine(0.5)
    wet = augment.add_reverb(clean, 16000, rt60=0.6, drr_db=3.0, damping=0.4, rng=np.random.default_rng(1))
    assert len(wet) > len(clean) + 0.5 * 16000
    tail = wet[len(clean) + 800 : len(clean) + 2400]
    assert np.sqrt(np.mean(tail**2)) > 0.01
    assert np.max(np.abs(wet)) == pytest.approx(np.max(np.abs(clean)), rel=1e-3)


def test_augmentation_is_data_and_deterministic() -> None:
    aug = augment.choose(random.Random("seed:utt"))
    assert augment.choose(random.Random("seed:utt")) == aug
    aug = {**aug, "noise": {"color": "pink", "snr_db": 10.0}, "reverb": {"rt60": 0.3, "drr_db": 5.0, "damping": 0.2}}
    json.dumps(aug)
    speech = np.concatenate([np.zeros(8000, np.float32), _sine(), np.zeros(8000, np.float32)])
    a = augment.apply(speech, 16000, aug)
    assert np.array_equal(a, augment.apply(speech, 16000, aug))
    assert np.max(np.abs(a)) == pytest.approx(10 ** (aug["peak_db"] / 20), rel=1e-4)
    # The engine's own silence is trimmed and replaced by the drawn one (plus the room's tail).
    dry = augment.apply(speech, 16000, {k: v for k, v in aug.items() if k not in ("noise", "reverb")})
    assert len(dry) == pytest.approx(16000 * (1 + aug["lead_s"] + aug["trail_s"]), abs=16000 * 0.05)
    with pytest.raises(augment.AugmentError, match="silent"):
        augment.apply(np.zeros(1600, np.float32), 16000, aug)


def test_bad_options_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "build", "--out", str(tmp_path), "--engines", "espeak,mbrola"]) == 2
    assert "unknown engine 'mbrola'" in capsys.readouterr().err
    assert main(["data", "build", "--out", str(tmp_path), "--engines", "piper", "--size", "small"]) == 2
    assert "no test voices" in capsys.readouterr().err
    assert not os.listdir(tmp_path)

    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert main(["data", "build", "--out", str(busy), "--size", "small", "--engines", "espeak"]) == 2
    assert "another `tympan data build` is writing" in capsys.readouterr().err
