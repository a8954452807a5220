"""An ASR answer held to what the CTC bridge heard.

With a CTC bridge, the encoder call that feeds the LLM also gives what was heard: the greedy CTC
text. The LLM's ASR answer should be those words in written form (case, punctuation, numbers as
digits), perhaps with a misheard word mended from context. An LLM trained on little compute also
writes what nobody said ("10:00" for a heard "front left"), and made-up text is what users of
speech services complain of most. So an answer whose spoken form departs from the heard words by
more than `max_departure` word edits per heard word is replaced by the heard words themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

from tympan.runtime.decode import DecodeSettings
from tympan.spoken import ctc_target


def word_edits(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def departure(answer: str, heard: str) -> float:
    """Word edits from the heard words to the answer's spoken form (lower case, numbers as words, no
    punctuation: the form the CTC head writes), per heard word."""
    said = heard.split()
    return word_edits(ctc_target(answer).split(), said) / max(1, len(said))


def grounded(answer: str, heard: str, max_departure: float) -> tuple[str, bool]:
    """(the text to serve, whether the heard words replaced the answer)."""
    if not heard.strip() or departure(answer, heard) <= max_departure:
        return answer, False
    text = heard.strip()
    return text[:1].upper() + text[1:], True


def held(answer: str, heard: str | None, settings: DecodeSettings) -> tuple[str, bool]:
    """An ASR answer as served under `settings`: held to `heard` (None: no CTC bridge, nothing to hold it
    to), unless `settings.ground_asr` is off. The daemon, `tympan infer` and `tympan eval` all serve this."""
    if heard is None or not settings.ground_asr:
        return answer, False
    return grounded(answer, heard, settings.max_departure)
