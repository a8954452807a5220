"""Data manifests: JSONL files of examples, validated at load time (training, evaluation, export checks).

One example a line:
  {"id", "audio"?, "task": "asr"|"st"|"sqa", "src_lang": "en", "tgt_lang", "question"?,
   "target", "text"?}
`audio` is a path relative to the manifest (or absolute). Text-only examples carry no audio
and must carry `text`, the source text; speech examples may carry `text` (the transcript),
which the LoRA stage and the joint stage's paired MT batches use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tympan.errors import TympanError
from tympan.tasks import TASKS

FIELDS = {"id", "audio", "task", "src_lang", "tgt_lang", "question", "target", "text"}


class ManifestError(TympanError, ValueError):
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

    @property
    def transcript(self) -> str | None:
        """What was said: `text`, or for ASR the target itself."""
        return self.text or (self.target if self.task == "asr" else None)

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


