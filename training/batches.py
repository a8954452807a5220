"""Batch plans for training: which examples a stage trains on, epochs of length-bucketed batches."""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from tympan.manifest import Example, ManifestError

PUNCTUATION = string.punctuation + "“”‘’«»…–—"


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
        transcripts = [e.as_text() for e in speech if e.text]
        heard = asr_from_text(text, {e.text for e in transcripts}) if "asr" in tasks else []
        return [], text + transcripts + heard
    return speech, text


def asr_from_text(text: Sequence[Example], known: set[str | None]) -> list[Example]:
    """An ASR example for each distinct English source text of the text-only lines (MT sources, QA
    passages) not already in `known`: with the CTC bridge, its input is the simulated bridge output of
    the text's spoken form and its answer the written text, so ASR's restoring of case, punctuation and
    numbers is learnt from all the text, not only from the transcripts of the synthesised audio."""
    seen = set(known)
    out = []
    for e in text:
        if e.src_lang == "en" and e.text and e.text not in seen:
            seen.add(e.text)
            out.append(Example(id=f"{e.id}#asr", task="asr", src_lang="en", tgt_lang="en", target=e.text,
                               text=e.text, where=e.where))
            words = fragment(e.text)
            if words:
                out.append(Example(id=f"{e.id}#asr-part", task="asr", src_lang="en", tgt_lang="en",
                                   target=words, text=words, where=e.where))
    return out


def fragment(text: str, longest: int = 6) -> str | None:
    """A run of 1 to `longest` words of `text`, the same for the same text, its outer punctuation
    stripped and its first letter capitalised; None for a text that short. What people say to a
    voice service is often a few words ("front left", "ten of clubs"), and a model that saw only
    whole sentences makes sentences of them."""
    words = text.split()
    if len(words) <= longest:
        return None
    rng = random.Random(zlib.crc32(text.encode()))
    n = rng.randint(1, longest)
    start = rng.randrange(len(words) - n + 1)
    part = " ".join(words[start : start + n]).strip(PUNCTUATION)
    return part[:1].upper() + part[1:] if part else None


def with_task_shares(examples: Sequence[Example], shares: Mapping[str, float], seed: int) -> list[Example]:
    """`examples` resampled so each task in `shares` holds that share of them (as many in all): a small
    task's examples repeat, a large one's are subsampled, deterministically for `seed`. Tasks not in
    `shares` are left out (a recipe gives every task of a stage a share: recipe.validate), and shares of
    tasks this modality has no example of are not counted (the lora stage has no speech); empty
    `shares` leaves the examples as they are."""
    rng = random.Random(f"{seed}:shares")
    pools = {task: [e for e in examples if e.task == task] for task in shares}
    pools = {task: pool for task, pool in pools.items() if pool}
    if not pools:
        return list(examples)
    total, weight = len(examples), sum(shares[task] for task in pools)
    out: list[Example] = []
    for task, pool in pools.items():
        want = round(total * shares[task] / weight)
        rng.shuffle(pool)
        out += [pool[i % len(pool)] for i in range(want)]
    return out


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
