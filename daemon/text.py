"""Text-side guards of streaming decoding: the local-agreement rule for partials and the
repetition guard that stops an LLM decoder looping."""

from __future__ import annotations

from collections.abc import Sequence


def _units(text: str, lang: str) -> list[str]:
    # Chinese has no spaces: agree character by character.
    return list(text) if lang == "zh" else text.split()


def _join(units: Sequence[str], lang: str) -> str:
    return "".join(units) if lang == "zh" else " ".join(units)


class LocalAgreement:
    """Stable prefix of successive hypotheses of one utterance.

    Words that two consecutive hypotheses agree on become stable and are never taken back;
    the rest of the newest hypothesis follows them, unstable.
    """

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.stable: list[str] = []
        self.previous: list[str] | None = None

    def update(self, hypothesis: str) -> tuple[str, int]:
        """(text to show, length in characters of its stable prefix)."""
        units = _units(hypothesis, self.lang)
        if self.previous is not None:
            agreed = 0
            for a, b in zip(self.previous, units, strict=False):
                if a != b:
                    break
                agreed += 1
            if agreed > len(self.stable) and units[: len(self.stable)] == self.stable:
                self.stable = units[:agreed]
        self.previous = units
        n = len(self.stable)
        tail = units[n:] if units[:n] == self.stable else units[min(n, len(units)):]
        stable_text = _join(self.stable, self.lang)
        text = _join(self.stable + tail, self.lang)
        return text, len(stable_text)


def repeating_tail(tokens: Sequence[int], ngram_max: int, times: int) -> int:
    """How many trailing tokens are a loop (an n-gram repeated `times` times in a row), else 0.

    Returns the length of the repeats beyond the first occurrence, to cut them off. Short
    n-grams must repeat more often (a loop spans at least 8 tokens), so that digit groups
    ("1,000,000") or a doubled word are not taken for a loop.
    """
    for n in range(1, ngram_max + 1):
        repeats = max(times, -(-8 // n))
        span = n * repeats
        if len(tokens) < span:
            continue
        tail = tokens[-span:]
        gram = tail[-n:]
        if all(tail[i * n : (i + 1) * n] == gram for i in range(repeats)):
            return n * (repeats - 1)
    return 0
