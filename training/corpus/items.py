"""The text items a corpus is made of: English text, its translations, questions about it."""

from __future__ import annotations

from dataclasses import dataclass, field

LANGS = ("en", "de", "it", "zh")


@dataclass(frozen=True)
class QA:
    lang: str  # the language of the question and of the answer: "en", "de", "it", "zh"
    question: str
    answer: str  # a short reference answer

    def __post_init__(self) -> None:
        if self.lang not in LANGS:
            raise ValueError(f"QA language {self.lang!r} not one of {', '.join(LANGS)}")
        if not self.question.strip() or not self.answer.strip():
            raise ValueError(f"QA needs a question and an answer, got {self.question!r} -> {self.answer!r}")


@dataclass(frozen=True)
class TextItem:
    id: str  # stable across runs and unique: source + a short hash of the normalised English text
    source: str  # where the text comes from: "libreoffice", "wordnet", "quiz", "numbers", ...
    text: str  # the English text to be spoken (for SQA: the passage)
    translations: dict[str, str] = field(default_factory=dict)  # "de"/"it"/"zh" -> reference translation
    qa: tuple[QA, ...] = ()  # questions about `text` (SQA), possibly in several languages
