"""The local-agreement rule for partials: what of a growing utterance's text is shown as stable.

(The loop guard is part of decoding: `tympan.runtime.decode.repeating_tail`.)"""

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

