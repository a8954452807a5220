"""What the CTC stage predicts: the LLM tokens of a transcript's spoken form, and the vocabulary scored.

The target of a transcript is the LLM's tokenization of " " + `ctc_target(text)` (lowercase words,
numbers written out, no punctuation; the leading space makes the first word's token the same as
anywhere else in a sentence). The scored vocabulary is every token those targets use over all the
training text (speech transcripts and text-only lines, so that what the text-only stage simulates
can also be emitted), plus every token of one or two lowercase letters, so that any word can still
be spelt. A token outside it (a word seen only at test time) is spelt with the letter tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tympan.atomic import write_json
from tympan.errors import TympanError
from tympan.spoken import ctc_target

SPACE = "Ġ"  # byte-level BPE's mark of a leading space (GPT-2, Llama 3, SmolLM2)
_LETTERS = re.compile(rf"^{SPACE}?[a-z']{{1,2}}$")


class VocabError(TympanError, ValueError):
    """A CTC vocabulary file is missing, malformed, or was built for another tokenizer."""


@dataclass(frozen=True)
class CtcVocab:
    """LLM token ids the CTC head scores, in order (index i = the head's class i; the blank is last)."""

    ids: tuple[int, ...]
    tokenizer_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.ids)})

    @property
    def blank(self) -> int:
        return len(self.ids)

    def index(self, token_id: int) -> int | None:
        return self._index.get(token_id)  # type: ignore[attr-defined]  # set in __post_init__

    def save(self, path: Path) -> None:
        write_json(path, {"ids": list(self.ids), "tokenizer_size": self.tokenizer_size})

    @classmethod
    def load(cls, path: Path, tokenizer_size: int | None = None) -> CtcVocab:
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            vocab = cls(tuple(int(i) for i in data["ids"]), int(data["tokenizer_size"]))
        except FileNotFoundError:
            raise VocabError(f"{path}: CTC vocabulary not found") from None
        except (ValueError, KeyError, TypeError) as e:
            raise VocabError(f"{path}: not a CTC vocabulary ({e})") from None
        if tokenizer_size is not None and vocab.tokenizer_size != tokenizer_size:
            raise VocabError(f"{path}: built for a tokenizer of {vocab.tokenizer_size} tokens, this one has "
                             f"{tokenizer_size}")
        return vocab


def spoken_tokens(tokenizer: Any, text: str) -> list[int]:
    """LLM token ids of the spoken form of `text` (see the module docstring); [] for no words."""
    words = ctc_target(text)
    return list(tokenizer.encode(" " + words, add_special_tokens=False)) if words else []


def build_vocab(tokenizer: Any, texts: Iterable[str]) -> CtcVocab:
    ids: set[int] = set()
    for text in texts:
        ids.update(spoken_tokens(tokenizer, text))
    for token, token_id in tokenizer.get_vocab().items():
        if _LETTERS.match(token):
            ids.add(token_id)
    return CtcVocab(tuple(sorted(ids)), len(tokenizer))


def targets(tokenizer: Any, vocab: CtcVocab, text: str) -> list[int]:
    """The head's class indices for `text`. A token outside the vocabulary (a word first seen at
    test time) is spelt with the longest vocabulary pieces that make it up, letters at worst."""
    out: list[int] = []
    for token_id in spoken_tokens(tokenizer, text):
        index = vocab.index(token_id)
        if index is not None:
            out.append(index)
        else:
            out += _spell(tokenizer, vocab, tokenizer.convert_ids_to_tokens(token_id))
    return out


def _spell(tokenizer: Any, vocab: CtcVocab, piece: str) -> list[int]:
    out: list[int] = []
    while piece:
        for end in range(len(piece), 0, -1):
            index = vocab.index(tokenizer.convert_tokens_to_ids(piece[:end]))
            if index is not None:
                out.append(index)
                piece = piece[end:]
                break
        else:
            piece = piece[1:]  # a character no vocabulary piece holds: left out
    return out


def text_of(tokenizer: Any, vocab: CtcVocab, indices: Sequence[int]) -> str:
    """The words of a sequence of class indices (greedy CTC output)."""
    return str(tokenizer.decode([vocab.ids[i] for i in indices], skip_special_tokens=True)).strip()
