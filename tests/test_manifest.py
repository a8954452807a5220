from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from tympan.manifest import ManifestError, load_manifest
from tympan.training.batches import epoch_plan, stage_examples

GOOD = {"id": "a", "audio": "a.wav", "task": "asr", "src_lang": "en", "tgt_lang": "en", "target": "hello"}


def _manifest(tmp_path: Path, lines: list[str]) -> Path:
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({**GOOD, "task": "summarise"}), "unknown task 'summarise'"),
        (json.dumps({**GOOD, "audio": "missing.wav"}), "audio file not found"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "target"}), "missing field 'target'"),
        (json.dumps({**GOOD, "target": ""}), "field 'target' must be a non-empty string"),
        (json.dumps({**GOOD, "speaker": "x"}), "unknown field 'speaker'"),
        (json.dumps({**GOOD, "tgt_lang": "de"}), "task 'asr' needs tgt_lang == src_lang"),
        (json.dumps({**GOOD, "task": "st"}), "task 'st' needs a tgt_lang other than"),
        (json.dumps({**GOOD, "task": "sqa"}), "task 'sqa' needs a 'question'"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "audio"}), "needs 'text'"),
        (json.dumps({**GOOD, "task": "st", "tgt_lang": "fr"}), "no instruction for task 'st' into 'fr'"),
    ],
)
def test_bad_line_fails_naming_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    p = _manifest(tmp_path, [json.dumps(GOOD | {"id": "ok"}), line])
    with pytest.raises(ManifestError) as err:
        load_manifest(p, known_langs={"asr": {"en"}, "st": {"de"}, "sqa": {"en"}})
    assert f"{p}:2:" in str(err.value)
    assert message in str(err.value)


def test_duplicate_ids_and_empty_manifests_are_refused(tmp_path: Path) -> None:
    p = _manifest(tmp_path, [json.dumps(GOOD), json.dumps(GOOD)])
    with pytest.raises(ManifestError, match=r"m.jsonl:2: duplicate id 'a' \(first on line 1\)"):
        load_manifest(p)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ManifestError, match="no examples"):
        load_manifest(empty)
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.jsonl")


def test_audio_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    (ex,) = load_manifest(_manifest(tmp_path, [json.dumps(GOOD)]))
    assert ex.audio == tmp_path / "a.wav"
    assert ex.is_speech


def test_stages_take_their_modalities_and_joint_pairs_st_with_mt(toy_corpus: Path) -> None:
    examples = load_manifest(toy_corpus / "train.jsonl")
    speech, text = stage_examples(examples, "projector", ["asr", "st"])
    assert speech and not text and {e.task for e in speech} == {"asr", "st"}
    speech, text = stage_examples(examples, "lora", ["asr", "st", "sqa"])
    assert not speech and text and all(not e.is_speech for e in text)
    speech, text = stage_examples(examples, "joint", ["st"])
    plan = epoch_plan(speech, text, 4, seed=0, epoch=0, pair_text=True)
    for prev, batch in itertools.pairwise(plan):
        if prev.is_speech:
            # The batch after an ST speech batch is the same examples as text.
            assert not batch.is_speech
            assert [e.id + "#text" for e in prev.examples] == [e.id for e in batch.examples]
    # Deterministic per (seed, epoch), different across epochs.
    again = epoch_plan(speech, text, 4, seed=0, epoch=0, pair_text=True)
    assert [b.examples for b in plan] == [b.examples for b in again]
    other = epoch_plan(speech, text, 4, seed=0, epoch=1, pair_text=True)
    assert [b.examples for b in plan] != [b.examples for b in other]


def test_length_buckets_cut_padding_and_keep_every_example(toy_corpus: Path) -> None:
    from tympan.training.batches import _length

    examples = load_manifest(toy_corpus / "train.jsonl")
    speech, text = stage_examples(examples, "joint", ["asr", "st", "sqa"])

    def padding(plan: list) -> int:
        return sum(len(b.examples) * max(map(_length, b.examples)) - sum(map(_length, b.examples)) for b in plan)

    plain = epoch_plan(speech, text, 4, seed=0, epoch=0, pair_text=False)
    bucketed = epoch_plan(speech, text, 4, seed=0, epoch=0, pair_text=False, length_buckets=True)
    assert sorted(e.id for b in bucketed for e in b.examples) == sorted(e.id for b in plain for e in b.examples)
    assert all(len({e.is_speech for e in b.examples}) == 1 for b in bucketed)
    assert padding(bucketed) < padding(plain)
    again = epoch_plan(speech, text, 4, seed=0, epoch=0, pair_text=False, length_buckets=True)
    assert [b.examples for b in bucketed] == [b.examples for b in again]


def test_the_lora_stage_learns_asr_from_every_english_text(tmp_path: Path) -> None:
    """Each distinct English source of a text line becomes an ASR example, plus a few-word fragment of it;
    transcripts of speech lines are not doubled."""
    from tympan.training.batches import fragment

    said, written = "Press the red button now.", "Open the file menu and choose Save As to keep a copy."
    lines = [
        {"id": "s1", "audio": "a.wav", "task": "asr", "src_lang": "en", "tgt_lang": "en", "target": said},
        {"id": "s2", "audio": "a.wav", "task": "st", "src_lang": "en", "tgt_lang": "de", "target": "Drück.",
         "text": said},
        {"id": "t1", "task": "st", "src_lang": "en", "tgt_lang": "de", "target": "Öffne.", "text": written},
        {"id": "t2", "task": "st", "src_lang": "en", "tgt_lang": "it", "target": "Apri.", "text": written},
        {"id": "t3", "task": "st", "src_lang": "en", "tgt_lang": "it", "target": "Premi.", "text": said},
    ]
    examples = load_manifest(_manifest(tmp_path, [json.dumps(x) for x in lines]))
    _, text = stage_examples(examples, "lora", ["asr", "st", "sqa"])
    asr = sorted((e.text, e.target) for e in text if e.task == "asr" and not e.id.endswith("#asr-part"))
    # t1's source once; not t2's again, nor t3's (s2's transcript: the lora stage has it already).
    assert asr == [(written, written)]
    assert [(e.text, e.target) for e in text if e.task == "asr" and e.id.endswith("#asr-part")] == [
        (fragment(written), fragment(written))]
    assert all(not e.is_speech and e.tgt_lang == e.src_lang == "en" for e in text if e.task == "asr")
    _, st_only = stage_examples(examples, "lora", ["st"])
    assert {e.task for e in st_only} == {"st"} and len(st_only) == 4
    # Fragments: 1-6 consecutive words of the sentence, the same each time, none of a short text.
    sentence = "He was born in Paris in 1551, and he died there, aged 54."
    part = fragment(sentence)
    assert part and part == fragment(sentence) and 1 <= len(part.split()) <= 6
    assert part.lower().strip(".,") in sentence.lower() and part[0].isupper() and part[-1] not in ".,"
    assert fragment("Front left.") is None


def test_task_shares_resample_each_task_to_its_share() -> None:
    from tympan.manifest import Example
    from tympan.training.batches import with_task_shares

    def ex(task: str, i: int) -> Example:
        return Example(id=f"{task}{i}", task=task, src_lang="en", tgt_lang="en" if task == "asr" else "de",
                       target="x", text="y", question="q" if task == "sqa" else None)

    pool = [ex("asr", i) for i in range(10)] + [ex("st", i) for i in range(60)] + [ex("sqa", i) for i in range(30)]
    mixed = with_task_shares(pool, {"asr": 0.5, "st": 0.3, "sqa": 0.2}, seed=1)
    counts = {t: sum(e.task == t for e in mixed) for t in ("asr", "st", "sqa")}
    assert counts == {"asr": 50, "st": 30, "sqa": 20}
    assert {e.id for e in mixed if e.task == "asr"} == {f"asr{i}" for i in range(10)}  # each repeated 5 times
    assert mixed == with_task_shares(pool, {"asr": 0.5, "st": 0.3, "sqa": 0.2}, seed=1)
    assert with_task_shares(pool, {}, seed=1) == pool
    # A share of a task this modality lacks is not counted; a task left out of the shares is left out.
    assert {e.task for e in with_task_shares(pool, {"st": 1.0, "asr": 1.0}, seed=1)} == {"st", "asr"}
    assert with_task_shares(pool[:10], {"asr": 1.0, "st": 3.0}, seed=1) == with_task_shares(pool[:10], {"asr": 1.0},
                                                                                             seed=1)
