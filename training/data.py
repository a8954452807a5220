"""Training data: JSONL manifests of examples, validated at load time, and batch plans.

One example a line:
  {"id", "audio"?, "task": "asr"|"st"|"sqa", "src_lang": "en", "tgt_lang", "question"?,
   "target", "text"?}
`audio` is a path relative to the manifest (or absolute). Text-only examples carry no audio
and must carry `text`, the source text; speech examples may carry `text` (the transcript),
which the LoRA stage and the joint stage's paired MT batches use.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

TASKS = ("asr", "st", "sqa")
FIELDS = {"id", "audio", "task", "src_lang", "tgt_lang", "question", "target", "text"}


class ManifestError(ValueError):
    """A manifest line is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    id: str
    task: str
    src_lang: str
    tgt_lang: str
    target: str
    audio: Path | None = None
    text: str | None = None
    question: str | None = None
    where: str = ""  # manifest file and line, for error messages

    @property
    def is_speech(self) -> bool:
        return self.audio is not None

    def as_text(self) -> Example:
        """The same example with its transcript as input instead of the audio."""
        assert self.text is not None
        return replace(self, audio=None, id=f"{self.id}#text")


def _example(obj: object, where: str, base: Path, known_langs: dict[str, set[str]] | None) -> Example:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(FIELDS))})")
    for key in ("id", "task", "src_lang", "tgt_lang", "target"):
        if key not in obj:
            raise ManifestError(f"{where}: missing field {key!r}")
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise ManifestError(f"{where}: field {key!r} must be a non-empty string")
    for key in ("audio", "text", "question"):
        if obj.get(key) is not None and (not isinstance(obj[key], str) or not obj[key].strip()):
            raise ManifestError(f"{where}: field {key!r} must be a non-empty string or absent")
    task = obj["task"]
    if task not in TASKS:
        raise ManifestError(f"{where}: unknown task {task!r} (tasks: {', '.join(TASKS)})")
    src, tgt = obj["src_lang"], obj["tgt_lang"]
    if task == "asr" and tgt != src:
        raise ManifestError(f"{where}: task 'asr' needs tgt_lang == src_lang, got {src!r} -> {tgt!r}")
    if task == "st" and tgt == src:
        raise ManifestError(f"{where}: task 'st' needs a tgt_lang other than src_lang {src!r}")
    if task == "sqa" and not obj.get("question"):
        raise ManifestError(f"{where}: task 'sqa' needs a 'question'")
    if known_langs is not None and tgt not in known_langs.get(task, set()):
        langs = ", ".join(sorted(known_langs.get(task, set()))) or "none"
        raise ManifestError(f"{where}: no instruction for task {task!r} into {tgt!r} (known: {langs})")
    audio = None
    if obj.get("audio"):
        audio = Path(obj["audio"])
        if not audio.is_absolute():
            audio = base / audio
        if not audio.is_file():
            raise ManifestError(f"{where}: audio file not found: {audio}")
    elif not obj.get("text"):
        raise ManifestError(f"{where}: an example without 'audio' needs 'text' (the source text)")
    return Example(
        id=obj["id"],
        task=task,
        src_lang=src,
        tgt_lang=tgt,
        target=obj["target"],
        audio=audio,
        text=obj.get("text"),
        question=obj.get("question"),
        where=where,
    )


def load_manifest(path: str | Path, known_langs: dict[str, set[str]] | None = None) -> list[Example]:
    """Parse and validate a JSONL manifest; the first bad line raises ManifestError."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    examples: list[Example] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None
            ex = _example(obj, where, path.parent, known_langs)
            if ex.id in seen:
                raise ManifestError(f"{where}: duplicate id {ex.id!r} (first on line {seen[ex.id]})")
            seen[ex.id] = lineno
            examples.append(ex)
    if not examples:
        raise ManifestError(f"{path}: manifest has no examples")
    return examples


def load_manifests(paths: Sequence[str | Path], known_langs: dict[str, set[str]] | None = None) -> list[Example]:
    out: list[Example] = []
    for p in paths:
        out.extend(load_manifest(p, known_langs))
    return out


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
