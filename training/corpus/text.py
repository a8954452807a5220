"""The text side of the training corpus: English text to speak, with translations and questions.

`text_items(sources, seed, size)` gathers every source into one deduplicated list:

| source | what | translations | questions (SQA) |
|---|---|---|---|
| libreoffice | help paragraphs, aligned by id | de, it, zh | - |
| wordnet | WordNet example sentences | - | - |
| names | people (with their years) and places, from WordNet instance nouns | - | people: en, de, it, zh |
| fortunes | short plain fortunes | - | - |
| quiz | 2-3 bsdgames quiz facts told as sentences | - | en |
| taxonomy | a plant or animal from WordNet and its genus | - | en |
| numeric-qa | everyday passages with numbers (written here) | - | en, de, it, zh |
| numbers | sentences with times, prices, years, digit strings, ordinals | - | - |
| questions | questions people ask | - | - |
| commands | one to three words ("Next slide."), numbers said alone | - | - |

Sources come in that order, each shuffled by the seed, so the first N of a source are a
random sample of it. An English text that two sources (or two help pages) share is kept
once, where it first appears. Only the help pages carry translations: no translation model
exists offline, and machine-made references would teach the model their mistakes.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from tympan.training.corpus import english, helpdocs, numeric_qa, quiz, wordnet
from tympan.training.corpus.items import LANGS, QA, TextItem
from tympan.training.corpus.sources import Sources

__all__ = ["LANGS", "QA", "SIZES", "SOURCE_ORDER", "TextItem", "normalise", "text_items"]

SIZES = ("small", "full")
SOURCE_ORDER = (
    "libreoffice", "wordnet", "names", "fortunes", "quiz", "taxonomy", "numeric-qa", "numbers", "questions", "commands",
)


@dataclass(frozen=True)
class _Budget:
    """How much of each source a size takes (None: all of it)."""

    help_pages: int | None
    sample: dict[str, int | None]
    numeric_qa: int
    numbers: int
    questions: int
    quiz_rounds: int


_BUDGETS = {
    # a few hundred items from a handful of help pages: seconds, for tests and smoke runs
    "small": _Budget(
        help_pages=8,
        sample={"wordnet": 40, "names": 30, "fortunes": 30, "quiz": 16, "taxonomy": 12, "commands": 30},
        numeric_qa=len(numeric_qa.TEMPLATES),
        numbers=len(english.NUMBER_TEMPLATES),
        questions=30,
        quiz_rounds=1,
    ),
    # everything that passes the filters; generated sources about 100 per template
    "full": _Budget(
        help_pages=None,
        sample={},
        numeric_qa=100 * len(numeric_qa.TEMPLATES),
        numbers=100 * len(english.NUMBER_TEMPLATES),
        questions=3000,
        quiz_rounds=2,
    ),
}


def normalise(text: str) -> str:
    """The form texts are compared in: case, accents, punctuation and spacing ignored."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def _item_id(source: str, text: str) -> str:
    return f"{source}-{hashlib.sha1(normalise(text).encode('utf-8')).hexdigest()[:12]}"


Draft = tuple[str, dict[str, str], tuple[QA, ...]]  # (English text, translations, questions)


def _libreoffice(sources: Sources, rng: random.Random, budget: _Budget) -> list[Draft]:
    roots = sources.libreoffice
    if not roots:
        return []
    pages = helpdocs.help_pages(roots["en"])
    if budget.help_pages is not None:
        pages = sorted(rng.sample(pages, min(budget.help_pages, len(pages))))
    merged: dict[str, tuple[str, dict[str, str]]] = {}
    for en, translations in helpdocs.aligned_pairs(roots, pages):
        key = normalise(en)
        if key in merged:
            # The same English on another page: keep the first translation of each language.
            for lang, tgt in translations.items():
                merged[key][1].setdefault(lang, tgt)
        else:
            merged[key] = (en, dict(translations))
    return [(en, translations, ()) for en, translations in merged.values()]


def _plain(texts: list[str]) -> list[Draft]:
    return [(t, {}, ()) for t in texts]


def _qa(passages: list[tuple[str, tuple[QA, ...]]]) -> list[Draft]:
    return [(t, {}, qa) for t, qa in passages]


def _builders(sources: Sources, budget: _Budget) -> dict[str, Callable[[random.Random], list[Draft]]]:
    wn, fortunes_dir, quiz_dir = sources.wordnet, sources.fortunes, sources.quiz
    facts = quiz.quiz_facts(quiz_dir) if quiz_dir is not None else {}
    builders: dict[str, Callable[[random.Random], list[Draft]]] = {
        "libreoffice": lambda rng: _libreoffice(sources, rng, budget),
        "numeric-qa": lambda rng: _qa(numeric_qa.numeric_passages(budget.numeric_qa, rng)),
        "numbers": lambda rng: _plain(english.number_sentences(budget.numbers, rng)),
        "questions": lambda rng: _plain(english.questions(
            budget.questions, rng, sorted({q.question for fs in facts.values() for f in fs for q in f.qa}))),
        "commands": lambda rng: _plain(english.commands(rng)),
    }
    if wn is not None:
        builders["wordnet"] = lambda rng: _plain(wordnet.examples(wn))
        builders["taxonomy"] = lambda rng: _qa(wordnet.genus_passages(wn))

        def names(rng: random.Random) -> list[Draft]:
            people, places = wordnet.names(wn)
            return _qa(people) + _plain(places)

        builders["names"] = names
    if fortunes_dir is not None:
        builders["fortunes"] = lambda rng: _plain(english.fortunes(fortunes_dir))
    if quiz_dir is not None:
        builders["quiz"] = lambda rng: _qa(quiz.quiz_passages(facts, rng, budget.quiz_rounds))
    return builders


def text_items(sources: Sources, seed: int, size: str) -> list[TextItem]:
    """Every text item of the corpus, deduplicated by normalised English, for a seed and size.

    size "small": a few hundred items from a sample of every source (seconds); "full": all of
    them. The same (sources, seed, size) give the same list in the same order.
    """
    if size not in _BUDGETS:
        raise ValueError(f"unknown corpus size {size!r} (sizes: {', '.join(SIZES)})")
    budget = _BUDGETS[size]
    builders = _builders(sources, budget)
    seen: set[str] = set()
    items: list[TextItem] = []
    for source in SOURCE_ORDER:
        if source not in builders:
            continue
        # One generator per source: adding or changing a source leaves the others as they were.
        rng = random.Random(f"{seed}:{source}")
        drafts = builders[source](rng)
        rng.shuffle(drafts)
        limit = budget.sample.get(source)
        taken = 0
        for text, translations, qa in drafts:
            if limit is not None and taken >= limit:
                break
            key = normalise(text)
            if not key or key in seen:
                continue
            seen.add(key)
            items.append(TextItem(_item_id(source, text), source, text, translations, qa))
            taken += 1
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise RuntimeError("text_items: two items got the same id (a hash collision); report this")
    return items
