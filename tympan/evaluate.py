"""`tympan eval`: run a bundle or a checkpoint over a manifest's speech examples and score them.

ASR: corpus WER after normalisation (Whisper's English normaliser for English, its basic one
otherwise). ST: corpus BLEU and chrF (sacrebleu; the `zh` tokenizer for Chinese). SQA: exact
match and token F1 of the answers (`tympan.scoring.normalize_answer`). RTF: model compute
seconds (encoder, projector and decoding; not reading the audio) per second of audio, after one
untimed warm-up call.

Text-only manifest lines are skipped and counted: this evaluates speech. Examples are decoded
one at a time through the runtime's greedy decode loop with the daemon's limits and loop guard
(`tympan.runtime.decode`), as the daemon decodes an utterance, so a bundle, a daemon serving it
and the checkpoint it was exported from (verified to give the same greedy tokens) give the same
hypotheses.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from tympan import scoring
from tympan.atomic import write_json
from tympan.errors import TympanError
from tympan.manifest import Example, load_manifest
from tympan.runtime.decode import DEFAULT_SETTINGS, DecodeSettings
from tympan.runtime.grounding import held
from tympan.tasks import TASKS

if TYPE_CHECKING:  # for annotations only
    import numpy as np

GroupKey = tuple[str, str]  # (task, target language)
METRICS = {"asr": ("wer", "llm_wer", "ctc_wer", "replaced"), "st": ("bleu", "chrf"), "sqa": ("em", "f1")}
HEADERS = {"wer": "WER", "llm_wer": "LLM WER", "ctc_wer": "CTC WER", "replaced": "replaced", "bleu": "BLEU",
           "chrf": "chrF", "em": "EM", "f1": "F1"}


class EvalError(TympanError, ValueError):
    """The evaluation cannot run: nothing to score, or an example the model has no instruction for."""


class Runner(Protocol):
    """A model as evaluation sees it: an instruction per example, and audio + instruction -> text."""

    sample_rate: int
    settings: DecodeSettings

    def instruction(self, ex: Example) -> str: ...

    def respond(self, audio: np.ndarray, instruction: str, task: str) -> str: ...

    def heard(self, audio: np.ndarray) -> str | None:
        """The greedy CTC text, before the LLM (a CTC bridge); None when the model has none."""
        ...

    @property
    def second_pass(self) -> bool:
        """ASR answers are the second pass of hearing's words (Whisper's), served as they are."""
        ...


class BundleRunner:
    """A serving bundle, loaded and run as the daemon runs it (`tympan.runtime.speech_model.SpeechModel`), by
    default with the daemon's decode limits and loop guard."""

    def __init__(self, path: Path, threads: int | None = None, settings: DecodeSettings = DEFAULT_SETTINGS) -> None:
        from tympan.runtime.speech_model import SpeechModel

        self.model = SpeechModel.load(path, threads=threads)
        self.sample_rate = self.model.sample_rate
        self.settings = settings

    def instruction(self, ex: Example) -> str:
        return self.model.instruction(ex.task, ex.tgt_lang, ex.question)

    def respond(self, audio: np.ndarray, instruction: str, task: str) -> str:
        """The LLM's own answer (evaluation holds ASR answers to what was heard itself, `_served`), or, with a second
        pass of hearing, what it serves for the task."""
        return self.model.respond(audio, instruction, self.settings, task=task if self.second_pass else None)

    @property
    def second_pass(self) -> bool:
        return self.model.hearing is not None

    def heard(self, audio: np.ndarray) -> str | None:
        if not self.model.hears:
            return None
        (encoded,) = self.model.encode([audio])
        return self.model.heard(encoded)


@dataclass(frozen=True)
class Hypothesis:
    example: Example
    text: str  # what is served: the LLM's answer, or for ASR with a CTC bridge the heard words if it departed
    heard: str | None = None  # ASR with a CTC bridge: the greedy CTC text the LLM's answer started from
    answer: str | None = None  # ASR with a CTC bridge: the LLM's own answer

    def to_json(self) -> dict[str, str | None]:
        extra = {"heard": self.heard, "answer": self.answer} if self.heard is not None else {}
        return {"id": self.example.id, "target": self.example.target, "text": self.text, **extra}


@dataclass
class Report:
    scores: dict[GroupKey, dict[str, float | int]]
    hypotheses: dict[GroupKey, list[Hypothesis]]
    compute_s: float
    audio_s: float
    skipped_text: int

    @property
    def rtf(self) -> float:
        return self.compute_s / self.audio_s

    def to_json(self, hypotheses: bool = False) -> dict[str, Any]:
        """Figures per task and language, the RTF, and with `hypotheses` every example's output."""
        out: dict[str, Any] = {task: {} for task in TASKS}
        for (task, lang), figures in self.scores.items():
            out[task][lang] = figures
        out["rtf"] = round(self.rtf, 4)
        if hypotheses:
            out["hypotheses"] = [h.to_json() for hyps in self.hypotheses.values() for h in hyps]
        return out


def speech_groups(examples: Sequence[Example], limit: int | None = None) -> tuple[dict[GroupKey, list[Example]], int]:
    """Speech examples by (task, target language), in manifest order, the first `limit` of each;
    and how many text-only examples were left out."""
    groups: dict[GroupKey, list[Example]] = {}
    skipped = 0
    for ex in examples:
        if not ex.is_speech:
            skipped += 1
            continue
        group = groups.setdefault((ex.task, ex.tgt_lang), [])
        if limit is None or len(group) < limit:
            group.append(ex)
    order = {task: i for i, task in enumerate(TASKS)}
    return dict(sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))), skipped


def score_group(task: str, lang: str, refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float | int]:
    """The figures of one (task, language) group, percentages rounded to 2 decimals, and n."""
    if task == "asr":
        normalize = scoring.normalize_english if lang == "en" else scoring.normalize_basic
        figures = {"wer": scoring.wer(refs, hyps, normalize)}
    elif task == "st":
        figures = {"bleu": scoring.bleu(refs, hyps, lang), "chrf": scoring.chrf(refs, hyps)}
    elif task == "sqa":
        figures = {"em": scoring.exact_match_score(refs, hyps, lang), "f1": scoring.f1_score(refs, hyps, lang)}
    else:
        raise EvalError(f"unknown task {task!r}")
    return {**{k: round(v, 2) for k, v in figures.items()}, "n": len(refs)}


def _audio(ex: Example, sample_rate: int) -> np.ndarray:
    from tympan.audio import load_audio

    assert ex.audio is not None
    return load_audio(ex.audio, sample_rate)


def evaluate(
    runner: Runner,
    examples: Sequence[Example],
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Decode every selected speech example with `runner` and score each group."""
    groups, skipped = speech_groups(examples, limit)
    if not groups:
        raise EvalError(f"no speech examples to evaluate ({skipped} text-only examples skipped)")
    instructions: dict[str, str] = {}
    for group in groups.values():
        for ex in group:
            try:  # before any decoding, so an unsupported task or language fails at once
                instructions[ex.id] = runner.instruction(ex)
            except ValueError as e:
                raise EvalError(f"{ex.where}: {e}") from None
    total = sum(len(g) for g in groups.values())
    first = next(iter(groups.values()))[0]
    # One untimed call first: one-off start-up costs (thread pools, lazy initialisation) are not RTF.
    runner.respond(_audio(first, runner.sample_rate), instructions[first.id], first.task)
    compute_s = audio_s = 0.0
    hypotheses: dict[GroupKey, list[Hypothesis]] = {}
    done = 0
    for key, group in groups.items():
        for ex in group:
            audio = _audio(ex, runner.sample_rate)
            start = time.perf_counter()
            answer = runner.respond(audio, instructions[ex.id], ex.task)
            compute_s += time.perf_counter() - start
            audio_s += len(audio) / runner.sample_rate
            heard = runner.heard(audio) if ex.task == "asr" else None  # untimed: the encoder again
            hypotheses.setdefault(key, []).append(_served(ex, answer, heard, runner.settings, runner.second_pass))
            done += 1
            if progress is not None:
                progress(done, total)
    scores = {
        (task, lang): score_group(task, lang, [h.example.target for h in hyps], [h.text for h in hyps])
        for (task, lang), hyps in hypotheses.items()
    }
    for (task, lang), hyps in hypotheses.items():
        ctc_texts = [h.heard for h in hyps if h.heard is not None]
        answers = [h.answer for h in hyps if h.answer is not None]
        if task == "asr" and len(ctc_texts) == len(hyps):
            refs = [h.example.target for h in hyps]
            extra: dict[str, float | int] = {"ctc_wer": score_group(task, lang, refs, ctc_texts)["wer"]}
            if len(answers) == len(hyps):  # the LLM's answers, held to what was heard (no second pass)
                extra = {"llm_wer": score_group(task, lang, refs, answers)["wer"], **extra,
                         "replaced": sum(h.text != h.answer for h in hyps)}
            scores[(task, lang)] = {**scores[(task, lang)], **extra}
    return Report(scores, hypotheses, compute_s, audio_s, skipped)


def _served(ex: Example, answer: str, heard: str | None, settings: DecodeSettings, second_pass: bool) -> Hypothesis:
    """What the daemon would serve for this answer (runtime/grounding.held, as the engine serves it; the second
    pass's words as they are)."""
    if heard is None:
        return Hypothesis(ex, answer)
    if second_pass:  # Whisper's words, served as they are; the first pass's text beside them
        return Hypothesis(ex, answer, heard)
    return Hypothesis(ex, held(answer, heard, settings)[0], heard, answer)


def format_samples(report: Report, n: int) -> str:
    lines: list[str] = []
    for (task, lang), hyps in report.hypotheses.items():
        lines.append(f"{task} {lang}:")
        for h in hyps[:n]:
            lines += [f"  {h.example.id}", f"    ref: {h.example.target}", f"    hyp: {h.text}"]
            if h.answer is not None and h.answer != h.text:
                lines.append(f"    llm: {h.answer} (departed from what was heard: replaced)")
            if h.heard is not None:
                lines.append(f"    ctc: {h.heard}")
    return "\n".join(lines)


def format_report(report: Report) -> str:
    """One table per task, a row per target language, then the real-time factor."""
    blocks: list[str] = []
    for task in TASKS:
        rows = [(lang, figures) for (t, lang), figures in report.scores.items() if t == task]
        if not rows:
            continue
        metrics = [m for m in METRICS[task] if all(m in figures for _, figures in rows)]
        lines = [task.upper(), f"{'lang':<6}{'n':>6}" + "".join(f"{HEADERS[m]:>9}" for m in metrics)]
        lines += [f"{lang:<6}{figures['n']:>6}" + "".join(_figure(figures[m]) for m in metrics)
                  for lang, figures in rows]
        blocks.append("\n".join(lines))
    n = sum(len(h) for h in report.hypotheses.values())
    blocks.append(f"RTF {report.rtf:.4f} (model compute {report.compute_s:.2f} s for {report.audio_s:.2f} s of audio, "
                  f"{n} speech examples; {report.skipped_text} text-only examples skipped)")
    return "\n\n".join(blocks)


def _figure(value: float | int) -> str:
    return f"{value:>9d}" if isinstance(value, int) else f"{value:>9.2f}"


def _positive(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {n}")
    return n


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


# Opens a training checkpoint as a Runner (path, threads, decode settings): given by the command line,
# which composes the packages, so that evaluation never imports training code.
OpenCheckpoint = Callable[[Path, int | None, DecodeSettings], Runner]


def register(sub: argparse._SubParsersAction, open_checkpoint: OpenCheckpoint) -> None:
    p = sub.add_parser("eval", help="score a bundle or checkpoint on a manifest (WER, BLEU/chrF, EM/F1, RTF)",
                       description="Decode a manifest's speech examples and print one table per task.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--bundle", type=Path, help="bundle directory (default: the default bundle, built if missing)")
    source.add_argument("--checkpoint", type=Path, help="a training checkpoint directory (e.g. RUN/joint/final)")
    p.add_argument("--manifest", type=Path, required=True, help="JSONL manifest (the training format)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the figures and every output as JSON")
    p.add_argument("--limit", type=_positive, metavar="N", help="the first N examples of each task and language")
    p.add_argument("--threads", type=_positive, metavar="N", help="CPU threads for the model")
    p.add_argument("--max-new-tokens", type=_positive, metavar="N",
                   help="decoding limit per example (default: the daemon's, under the model's own)")
    p.add_argument("--show", type=_non_negative, default=0, metavar="N",
                   help="print N hypothesis/reference pairs per task and language")
    p.set_defaults(run=lambda args: _run(args, open_checkpoint))


def _progress(out: TextIO) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        if out.isatty():
            print(f"\r{done}/{total}", end="\n" if done == total else "", file=out, flush=True)

    return show


def _run(args: argparse.Namespace, open_checkpoint: OpenCheckpoint) -> int:
    examples = load_manifest(args.manifest)  # a bad manifest fails before a model is loaded
    # The daemon's decode defaults (configs/daemon.toml [decode]), so the figures are what a daemon user gets.
    settings = DEFAULT_SETTINGS if args.max_new_tokens is None else DecodeSettings(max_new_tokens=args.max_new_tokens)
    runner: Runner
    if args.checkpoint is not None:
        runner = open_checkpoint(args.checkpoint, args.threads, settings)
    else:
        from tympan.runtime.bundle import default_bundle

        runner = BundleRunner(args.bundle or default_bundle(), args.threads, settings)
    report = evaluate(runner, examples, args.limit, _progress(sys.stderr))
    if args.show:
        print(format_samples(report, args.show), end="\n\n")
    print(format_report(report))
    if args.json:
        write_json(args.json, report.to_json(hypotheses=True))
    return 0
