"""Metrics on inputs whose scores are worked out by hand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tympan.scoring import (
    ScoringError,
    bleu,
    chrf,
    exact_match,
    exact_match_score,
    f1_score,
    normalize_answer,
    normalize_english,
    token_f1,
    wer,
)


def test_the_english_normaliser_makes_spelling_variants_agree() -> None:
    assert normalize_english("ten of clubs") == normalize_english("10 of clubs") == "10 of clubs"
    assert normalize_english("Front, center") == normalize_english("front center") == "front center"
    assert normalize_english("It's   Mr. Smith!") == "it is mister smith"
    assert normalize_english("go forward ten meters") == "go forward 10 meters"
    assert normalize_english("") == ""


def test_wer_counts_substitutions_deletions_and_insertions_over_the_whole_set() -> None:
    assert wer(["the cat sat down"], ["the cat sat up"]) == 25.0  # 1 substitution / 4 words
    assert wer(["hello world"], ["hello big world"]) == 50.0  # 1 insertion / 2 words
    assert wer(["hello big world"], ["hello world"]) == pytest.approx(100 / 3)  # 1 deletion / 3 words
    # Corpus level: 1 error over 6 words, not the mean of the per-utterance rates (0 % and 50 %).
    assert wer(["a b c d", "e f"], ["a b c d", "e"]) == pytest.approx(100 / 6)
    assert wer(["Ten of clubs."], ["10 of clubs"]) == 0.0
    assert wer(["Ten of clubs."], ["10 of clubs"], normalize=None) == pytest.approx(200 / 3)  # "Ten", "clubs."


def test_wer_with_empty_references_counts_what_was_said_as_insertions() -> None:
    # "" has no words: the 2 words said there are insertions; "a b" adds the only 2 reference words.
    assert wer(["", "a b"], ["x y", "a b"]) == 100.0
    assert wer(["uh", "yes"], ["", "yes"]) == 0.0  # a filler word normalises to nothing
    assert wer([""], [""]) == 0.0
    assert wer([""], ["something"]) == 100.0
    with pytest.raises(ScoringError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])


def test_bleu_and_chrf() -> None:
    refs = ["the cat sat on the mat", "a dog barked at the moon"]
    assert bleu(refs, refs, "de") == pytest.approx(100.0)
    assert chrf(refs, refs) == pytest.approx(100.0)
    assert bleu(refs, ["xx yy zz ww", "qq vv jj pp"], "de") == 0.0
    assert chrf(refs, ["xx yy zz ww", "qq vv jj pp"]) == 0.0
    with pytest.raises(ScoringError):
        bleu(refs, refs[:1], "de")


def test_the_zh_tokenizer_splits_chinese_into_characters() -> None:
    ref, hyp = ["我喜欢狗和猫"], ["我喜欢猫和狗"]
    # One "word" for 13a: no match at all. Characters: 1-grams 6/6, 2-grams 2/5, 3-grams 1/4, and
    # 4-grams 0/3, which sacrebleu's default "exp" smoothing turns into 1/(2*3).
    assert bleu(ref, hyp, "de") == 0.0
    assert bleu(ref, hyp, "zh") == pytest.approx(100 * (1 * 2 / 5 * 1 / 4 * 1 / 6) ** 0.25)


def test_answers_match_after_squad_normalisation() -> None:
    assert exact_match("The Eiffel Tower!", "eiffel tower", "en")
    assert exact_match("twelve", "12", "en")  # numbers through the English normaliser
    assert not exact_match("twelve", "eleven", "en")
    assert exact_match("三个。", "三个", "zh")
    assert normalize_answer("Die Antwort: Vier!", "de") == "die antwort vier"  # English articles only
    assert token_f1("the big red dog", "red dog", "en") == pytest.approx(0.8)  # P 2/2, R 2/3
    assert token_f1("three dogs", "three cats", "en") == pytest.approx(0.5)
    assert token_f1("三个", "三", "zh") == pytest.approx(2 / 3)  # characters: P 1/1, R 1/2
    assert token_f1("", "", "en") == 1.0
    assert token_f1("dog", "", "en") == 0.0
    assert token_f1("dog", "cat", "en") == 0.0


def test_answer_scores_are_percentages_over_the_set() -> None:
    refs, hyps = ["four", "three", "big red dog"], ["three", "3", "red dog"]
    assert exact_match_score(refs, hyps, "en") == pytest.approx(100 / 3)
    assert f1_score(refs, hyps, "en") == pytest.approx(100 * (0 + 1 + 0.8) / 3)


def test_scoring_does_not_import_torch() -> None:
    code = ("import sys\nfrom tympan.scoring import wer, bleu\n"
            "assert wer(['ten'], ['10']) == 0.0 and bleu(['a b c d'], ['a b c d'], 'zh') > 99\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
