"""`tympan eval` end to end on the tiny default model, and the real-speech manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from tympan.cli import main
from tympan.evaluate import BundleRunner, evaluate
from tympan.manifest import load_manifest
from tympan.tasks import TASKS
from tympan.training.corpus.real import MissingRecordingError, build_real_manifest


@pytest.fixture(scope="module")
def bundle(tympan_home: Path) -> Path:
    from tympan.daemon.cli import default_bundle

    return default_bundle()


@pytest.fixture(scope="module")
def checkpoint(bundle: Path, tympan_home: Path) -> Path:
    # The default bundle is exported from this checkpoint (export/default.py).
    return tympan_home / "models" / "tiny" / "joint" / "final"


@pytest.fixture(scope="module")
def dev(toy_corpus: Path) -> Path:
    return toy_corpus / "dev.jsonl"


def _manifest_counts(manifest: Path) -> tuple[Counter, int]:
    lines = [json.loads(x) for x in manifest.read_text(encoding="utf-8").splitlines() if x.strip()]
    speech = Counter((x["task"], x["tgt_lang"]) for x in lines if x.get("audio"))
    return speech, sum(1 for x in lines if not x.get("audio"))


def _eval(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bundle_and_checkpoint_give_the_same_hypotheses_and_figures(bundle: Path, checkpoint: Path, dev: Path,
                                                                    tmp_path: Path, capsys) -> None:
    code, bundle_out, _ = _eval(capsys, "--bundle", str(bundle), "--manifest", str(dev), "--show", "100",
                                "--json", str(tmp_path / "bundle.json"))
    assert code == 0
    code, ckpt_out, _ = _eval(capsys, "--checkpoint", str(checkpoint), "--manifest", str(dev), "--show", "100",
                              "--threads", "1", "--json", str(tmp_path / "ckpt.json"))
    assert code == 0
    samples = bundle_out.split("\n\nASR\n")[0]
    assert samples == ckpt_out.split("\n\nASR\n")[0]
    assert any(line.strip() != "hyp:" for line in samples.splitlines() if "hyp:" in line), "every hypothesis empty"

    report = json.loads((tmp_path / "bundle.json").read_text())
    other = json.loads((tmp_path / "ckpt.json").read_text())
    assert report.pop("rtf") > 0 and other.pop("rtf") > 0
    assert report == other
    assert sorted(tmp_path.iterdir()) == [tmp_path / "bundle.json", tmp_path / "ckpt.json"]  # no temporary left

    speech, text_only = _manifest_counts(dev)
    hypotheses = report.pop("hypotheses")
    assert len(hypotheses) == sum(speech.values()) and all(set(h) == {"id", "target", "text"} for h in hypotheses)
    assert set(report) == {"asr", "st", "sqa"}
    metrics = {"asr": {"wer", "n"}, "st": {"bleu", "chrf", "n"}, "sqa": {"em", "f1", "n"}}
    assert {(task, lang): figures["n"] for task, langs in report.items() for lang, figures in langs.items()} == speech
    for task, langs in report.items():
        for figures in langs.values():
            assert set(figures) == metrics[task]
            assert all(0 <= figures[m] <= 100 for m in metrics[task] - {"n"})
    assert f"{sum(speech.values())} speech examples; {text_only} text-only examples skipped" in bundle_out
    for header in ("ASR", "ST", "SQA", "RTF"):
        assert f"\n{header}" in bundle_out


def test_limit_takes_the_first_examples_of_each_group(bundle: Path, dev: Path, tmp_path: Path, capsys) -> None:
    code, _, _ = _eval(capsys, "--bundle", str(bundle), "--manifest", str(dev), "--limit", "1",
                       "--max-new-tokens", "4", "--json", str(tmp_path / "r.json"))
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    speech, _ = _manifest_counts(dev)
    assert {(t, lang): f["n"] for t, langs in report.items() if t in TASKS for lang, f in langs.items()} == {
        key: 1 for key in speech
    }


def test_bad_inputs_stop_with_a_clear_message(bundle: Path, dev: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "task": "asr"}\n')
    code, _, err = _eval(capsys, "--bundle", str(bundle), "--manifest", str(bad))
    assert code == 2 and f"{bad}:1: missing field 'src_lang'" in err

    code, _, err = _eval(capsys, "--bundle", str(tmp_path / "nope"), "--manifest", str(dev))
    assert code == 2 and "bundle directory not found" in err

    text_only = tmp_path / "text.jsonl"
    text_only.write_text('{"id": "t", "task": "st", "src_lang": "en", "tgt_lang": "de", "target": "eins", '
                         '"text": "one"}\n')
    code, _, err = _eval(capsys, "--bundle", str(bundle), "--manifest", str(text_only))
    assert code == 2 and "no speech examples to evaluate (1 text-only examples skipped)" in err

    audio = json.loads(dev.read_text().splitlines()[0])["audio"]
    french = tmp_path / "fr.jsonl"
    french.write_text(json.dumps({"id": "f", "audio": str(dev.parent / audio), "task": "st", "src_lang": "en",
                                  "tgt_lang": "fr", "target": "un"}) + "\n")
    code, _, err = _eval(capsys, "--bundle", str(bundle), "--manifest", str(french), "--json", str(tmp_path / "o.json"))
    assert code == 2 and f"{french}:1: no instruction for task 'st' into 'fr'" in err
    assert not (tmp_path / "o.json").exists()


def test_the_real_speech_manifest(bundle: Path, tmp_path: Path) -> None:
    manifest = build_real_manifest(tmp_path / "real")
    examples = load_manifest(manifest)
    assert Counter(e.id.split("-")[0] for e in examples) == {"alsa": 8, "cards": 5, "goforward": 1}
    assert all(e.task == "asr" and e.src_lang == e.tgt_lang == "en" and e.text == e.target for e in examples)
    for e in examples:
        info = sf.info(str(e.audio))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.8 < info.duration < 5
    targets = {e.id: e.target for e in examples}
    assert targets["alsa-front-center"] == "Front, center"
    assert targets["cards-001"] == "ten of clubs"
    assert targets["goforward"] == "go forward ten meters"
    # The raw recording is 16 kHz s16le: its WAV has one sample per two bytes.
    raw = Path("/usr/share/pocketsphinx/test/data/goforward.raw").stat().st_size
    assert sf.info(str(tmp_path / "real" / "audio" / "goforward.wav")).frames == raw // 2

    report = evaluate(BundleRunner(bundle), examples)
    assert report.to_json()["asr"]["en"]["n"] == 14 and report.audio_s > 20

    with pytest.raises(MissingRecordingError, match="install the Debian package alsa-utils"):
        build_real_manifest(tmp_path / "other", alsa_dir=tmp_path / "no-such-dir")
    assert not (tmp_path / "other").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(MissingRecordingError, match="not a real-speech corpus"):
        build_real_manifest(tmp_path / "busy")
    assert build_real_manifest(tmp_path / "real") == manifest  # a corpus is rebuilt in place
