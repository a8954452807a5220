"""Evaluation metrics as pure functions: WER, BLEU, chrF, exact match and token F1.

Every score is a percentage (0-100). Nothing here imports torch: transformers' Whisper text
normaliser is imported lazily (it pulls in transformers, about 1.4 s, but not torch), and jiwer
and sacrebleu are light.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from tympan.errors import TympanError

Normalizer = Callable[[str], str]


class ScoringError(TympanError, ValueError):
    """Inputs a metric cannot be computed on (e.g. references and hypotheses of unequal count)."""


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise ScoringError(f"{len(refs)} references but {len(hyps)} hypotheses")


@cache
def _english_normalizer() -> Any:
    """Whisper's English text normaliser, used as a library.

    It is built with an empty spelling mapping: Whisper's British -> American spelling list
    (`english.json`) is not shipped with transformers and cannot be downloaded here, so
    "colour" and "color" stay different words. Everything else applies: lower case, no
    punctuation, contractions and abbreviations expanded, filler words dropped, and spelled-out
    numbers written as digits ("ten of clubs" == "10 of clubs"). Its quirks come with it:
    consecutive number words join into one number ("five five" -> "55", while "5, 5" -> "5 5").
    """
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


@cache
def _basic_normalizer() -> Any:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


def normalize_english(text: str) -> str:
    """Whisper-style English normalisation (see `_english_normalizer`), whitespace collapsed."""
    return " ".join(_english_normalizer()(text).split())


def normalize_basic(text: str) -> str:
    """Whisper's language-neutral normalisation: lower case, punctuation and symbols removed."""
    return " ".join(_basic_normalizer()(text).split())


def word_errors(refs: Sequence[str], hyps: Sequence[str]) -> tuple[int, int]:
    """(S + D + I, N) over a set of already normalised pairs, N = reference words.

    Pairs with an empty reference are kept out of jiwer (which wants words to align) and
    count every hypothesis word as an insertion: saying something where nothing was said
    is an error, and it adds no reference words.
    """
    _check_pairs(refs, hyps)
    import jiwer

    errors = words = 0
    aligned_refs: list[str] = []
    aligned_hyps: list[str] = []
    for ref, hyp in zip(refs, hyps, strict=True):
        if ref.split():
            aligned_refs.append(ref)
            aligned_hyps.append(hyp)
        else:
            errors += len(hyp.split())
    if aligned_refs:
        out = jiwer.process_words(aligned_refs, aligned_hyps)
        errors += out.substitutions + out.deletions + out.insertions
        words += out.hits + out.substitutions + out.deletions
    return errors, words


def wer(refs: Sequence[str], hyps: Sequence[str], normalize: Normalizer | None = normalize_english) -> float:
    """Corpus-level word error rate in percent: 100 * (S + D + I) / N over the whole set.

    Both sides are normalised first (English by default; `normalize=None` compares as given).
    A set without a single reference word scores 0.0 when the hypotheses are empty too and
    100.0 otherwise (the rate is undefined there; this keeps it finite and still an error).
    """
    _check_pairs(refs, hyps)
    if normalize is not None:
        refs = [normalize(r) for r in refs]
        hyps = [normalize(h) for h in hyps]
    errors, words = word_errors(refs, hyps)
    if words == 0:
        return 0.0 if errors == 0 else 100.0
    return 100.0 * errors / words


def bleu_tokenizer(lang: str) -> str:
    """sacrebleu's tokenizer for a target language: `zh` segments Chinese characters, else `13a`."""
    return "zh" if lang == "zh" else "13a"


def bleu(refs: Sequence[str], hyps: Sequence[str], lang: str) -> float:
    """Corpus BLEU (sacrebleu, one reference per segment, its default settings but the tokenizer)."""
    _check_pairs(refs, hyps)
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize=bleu_tokenizer(lang)).score)


def chrf(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2); works on characters for any language."""
    _check_pairs(refs, hyps)
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score)


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punctuation(ch: str) -> bool:
    # Unicode punctuation (covers Chinese 。，？ as well as ASCII) and ASCII symbols.
    return unicodedata.category(ch).startswith("P") or ch in string.punctuation


def normalize_answer(text: str, lang: str) -> str:
    """SQuAD-style answer normalisation: lower case, no punctuation, no English articles, single spaces.

    English answers go through the English normaliser first, so that digits and number words
    agree ("12" == "twelve", "two" == "2"). Articles are removed for English only (SQuAD's rule);
    other languages are lower-cased and stripped of punctuation.
    """
    if lang == "en":
        text = normalize_english(text)
    text = "".join(" " if _is_punctuation(ch) else ch for ch in text.lower())
    if lang == "en":
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str, lang: str) -> list[str]:
    """The units token F1 counts: words, or characters for Chinese (which has no spaces)."""
    norm = normalize_answer(text, lang)
    if lang == "zh":
        return [ch for ch in norm if not ch.isspace()]
    return norm.split()


def exact_match(ref: str, hyp: str, lang: str) -> bool:
    return normalize_answer(ref, lang) == normalize_answer(hyp, lang)


def token_f1(ref: str, hyp: str, lang: str) -> float:
    """Token F1 of one answer, in [0, 1]. Two empty answers agree (1.0); one empty one scores 0.0."""
    r, h = answer_tokens(ref, lang), answer_tokens(hyp, lang)
    if not r or not h:
        return float(r == h)
    common = sum((Counter(r) & Counter(h)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(h), common / len(r)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(refs: Sequence[str], hyps: Sequence[str], lang: str) -> float:
    """Percentage of answers equal to their reference after `normalize_answer`."""
    _check_pairs(refs, hyps)
    if not refs:
        return 0.0
    return 100.0 * sum(exact_match(r, h, lang) for r, h in zip(refs, hyps, strict=True)) / len(refs)


def f1_score(refs: Sequence[str], hyps: Sequence[str], lang: str) -> float:
    """Mean token F1 over the answers, in percent."""
    _check_pairs(refs, hyps)
    if not refs:
        return 0.0
    return 100.0 * sum(token_f1(r, h, lang) for r, h in zip(refs, hyps, strict=True)) / len(refs)
