"""Batch plans for training: which examples a stage trains on, epochs of length-bucketed batches."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tympan.manifest import Example, ManifestError


def stage_examples(
    examples: Sequence[Example], stage: str, tasks: Sequence[str]
) -> tuple[list[Example], list[Example]]:
    """(speech, text) examples a stage trains on.

    projector: speech only. lora: text only (text-only lines plus transcripts of speech
    lines). joint: both.
    """
    chosen = [e for e in examples if e.task in tasks]
    speech = [e for e in chosen if e.is_speech]
    text = [e for e in chosen if not e.is_speech]
    if stage == "projector":
        return speech, []
    if stage == "lora":
        return [], text + [e.as_text() for e in speech if e.text]
    return speech, text


@dataclass(frozen=True)
class PlannedBatch:
    examples: tuple[Example, ...]

    @property
    def is_speech(self) -> bool:
        return self.examples[0].is_speech


def _chunks(items: list[Example], size: int) -> list[tuple[Example, ...]]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def _length(e: Example) -> int:
    # Characters of the longer side (source or answer): on a CPU, padding a batch of short
    # commands to a 60-word passage wastes most of a step.
    return max(len(e.text or ""), len(e.target))


def _bucketed(items: list[Example], size: int, rng: random.Random, window: int = 32) -> list[tuple[Example, ...]]:
    """Batches of similar length: sort within windows of `window` batches, then shuffle the batches."""
    batches: list[tuple[Example, ...]] = []
    span = size * window
    for i in range(0, len(items), span):
        batches += _chunks(sorted(items[i : i + span], key=_length), size)
    rng.shuffle(batches)
    return batches


def epoch_plan(
    speech: Sequence[Example], text: Sequence[Example], batch_size: int, seed: int, epoch: int, pair_text: bool,
    length_buckets: bool = False,
) -> list[PlannedBatch]:
    """One epoch of batches, a deterministic function of (seed, epoch).

    Batches hold one modality. Speech and text batches are interleaved in proportion;
    with `pair_text`, a speech batch of ST examples that carry transcripts is followed
    by the matching MT batch (the same examples as text).
    """
    rng = random.Random(f"{seed}:{epoch}")
    s = list(speech)
    t = list(text)
    rng.shuffle(s)
    rng.shuffle(t)
    if length_buckets:
        s_batches, t_batches = _bucketed(s, batch_size, rng), _bucketed(t, batch_size, rng)
    else:
        s_batches, t_batches = _chunks(s, batch_size), _chunks(t, batch_size)
    plan: list[PlannedBatch] = []
    total = len(s_batches) + len(t_batches)
    si = ti = 0
    for i in range(total):
        # Interleave evenly: take a speech batch when speech is behind its share.
        want_speech = si < len(s_batches) and (ti >= len(t_batches) or si * total <= i * len(s_batches))
        if want_speech:
            batch = s_batches[si]
            si += 1
            plan.append(PlannedBatch(batch))
            if pair_text:
                paired = tuple(e.as_text() for e in batch if e.task == "st" and e.text)
                if paired:
                    plan.append(PlannedBatch(paired))
        else:
            plan.append(PlannedBatch(t_batches[ti]))
            ti += 1
    return plan


def batch_stream(
    speech: Sequence[Example], text: Sequence[Example], batch_size: int, seed: int, pair_text: bool,
    length_buckets: bool = False,
) -> Iterator[PlannedBatch]:
    """Endless stream of batches, epoch after epoch."""
    if not speech and not text:
        raise ManifestError("no training examples for this stage (check the manifests and the stage's tasks)")
    epoch = 0
    while True:
        yield from epoch_plan(speech, text, batch_size, seed, epoch, pair_text, length_buckets)
        epoch += 1
