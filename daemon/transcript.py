"""A whole transcript from a session's finals, for protocols that answer once per recording (Wyoming, the
OpenAI audio API): the finals in order, their text joined, and each as a timed segment."""

from __future__ import annotations

from dataclasses import dataclass, field

from tympan.daemon.events import Final


@dataclass
class Transcript:
    finals: list[Final] = field(default_factory=list)

    def add(self, final: Final) -> str:
        """Keep `final`; returns the text it adds to the transcript (with the space before it, where needed)."""
        before = self.text
        self.finals.append(final)
        self.finals.sort(key=lambda f: f.segment_id)
        after = self.text
        return after[len(before):] if after.startswith(before) else final.text

    @property
    def segments(self) -> list[Final]:
        """The finals that have text (an utterance heard, nothing recognised, is not a segment)."""
        return [f for f in self.finals if f.text.strip()]

    @property
    def text(self) -> str:
        texts = [f.text.strip() for f in self.segments]
        zh = bool(self.finals) and self.finals[0].target_lang == "zh"  # Chinese has no spaces between sentences
        return ("" if zh else " ").join(texts)
