"""Which LLM for translation: candidate base LLMs on the same text-only translation, side by side.

The speech side is left out: each system translates the test set's English sentences as text, so
the figures say what the LLM itself can do for ST. Rows:
  - each candidate base LLM (a `package:` name of training/model/base_models.py), few-shot: a
    plain "English: ... / German: ..." prompt with `--shots` pairs from the dev set before the
    sentence, greedy, up to the end of the line. This measures the pre-training's languages.
  - with `--checkpoint`, a tympan checkpoint (e.g. models/default) given each sentence as its bridge
    would give it when every word is heard right, with its own ST instruction: the trained model's
    translation when recognition is perfect, so the gap to the served ST BLEU is recognition's.
Figures per language: BLEU and chrF (sacrebleu, as `tympan eval`), the reference's length in the
LLM's tokens (what a decode step costs per word), and milliseconds per generated token.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import BenchmarkError, cpu_model, run_main

from tympan import scoring
from tympan.manifest import Example, load_manifest
from tympan.tasks import ST_LANGS

LANG_NAMES = {"de": "German", "it": "Italian", "zh": "Chinese"}


@dataclass(frozen=True)
class Pair:
    source: str
    target: str


@dataclass
class Scored:
    system: str
    lang: str
    bleu: float
    chrf: float
    ref_tokens: float  # mean reference length in this system's tokens
    ms_per_token: float
    samples: list[tuple[str, str, str]]  # (source, reference, hypothesis)


def pairs(path: Path, lang: str, limit: int | None) -> list[Pair]:
    """Distinct (source, target) text pairs of a manifest's translation lines into `lang`."""
    seen: dict[str, Pair] = {}
    for ex in load_manifest(path):
        if ex.task == "st" and ex.tgt_lang == lang and ex.text and ex.target and ex.text not in seen:
            seen[ex.text] = Pair(ex.text, ex.target)
    out = list(seen.values())[:limit] if limit else list(seen.values())
    if not out:
        raise BenchmarkError(f"{path}: no translation lines into {lang!r} with their English text")
    return out


def few_shot_prompt(shots: Sequence[Pair], source: str, lang: str) -> str:
    name = LANG_NAMES[lang]
    lines = [f"English: {p.source}\n{name}: {p.target}\n" for p in shots]
    return "\n".join([*lines, f"English: {source}\n{name}:"])


class BaseLLM:
    """A base LLM from its package, prompted few-shot and decoded greedily to the end of the line."""

    def __init__(self, name: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tympan.training.model.base_models import resolve

        path = resolve(f"package:{name}")
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def translate(self, shots: Sequence[Pair], source: str, lang: str, max_new_tokens: int) -> tuple[str, int]:
        import torch

        ids = self.tokenizer(few_shot_prompt(shots, source, lang), return_tensors="pt").input_ids
        out: list[int] = []
        past = None
        with torch.no_grad():
            step = ids
            for _ in range(max_new_tokens):
                r = self.model(input_ids=step, past_key_values=past, use_cache=True)
                past = r.past_key_values
                token = int(r.logits[0, -1].argmax())
                if token == self.tokenizer.eos_token_id or "\n" in self.tokenizer.decode([token]):
                    break
                out.append(token)
                step = torch.tensor([[token]])
        return self.tokenizer.decode(out, skip_special_tokens=True).strip(), max(len(out), 1)


class Checkpoint:
    """A tympan checkpoint given the sentence as its bridge gives a perfectly heard utterance."""

    def __init__(self, path: Path) -> None:
        from tympan.runtime.decode import DecodeSettings
        from tympan.training.model.checkpoint import load_checkpoint

        self.name = f"{path.name} (perfect hearing)"
        self.model = load_checkpoint(path)
        self.settings = DecodeSettings.unguarded(self.model.cfg.prompt.max_new_tokens)

    def tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=False).input_ids)

    def translate(self, shots: Sequence[Pair], source: str, lang: str, max_new_tokens: int) -> tuple[str, int]:
        m = self.model
        ex = Example(id="bench", task="st", src_lang="en", tgt_lang=lang, target="", text=source)
        tokens = m.greedy(source, m.instruction(ex), self.settings.capped(max_new_tokens)).tokens
        return m.decode(tokens).replace("\ufffd", "").strip(), max(len(tokens), 1)


def score(system: Any, lang: str, test: Sequence[Pair], shots: Sequence[Pair], max_new_tokens: int,
          say: Callable[[str], None]) -> Scored:
    hyps, generated, started = [], 0, time.perf_counter()
    for p in test:
        text, n = system.translate(shots, p.source, lang, max_new_tokens)
        hyps.append(text)
        generated += n
    elapsed = time.perf_counter() - started
    refs = [p.target for p in test]
    row = Scored(system.name, lang, scoring.bleu(refs, hyps, lang), scoring.chrf(refs, hyps),
                 sum(system.tokens(r) for r in refs) / len(refs), 1000 * elapsed / generated,
                 [(p.source, p.target, h) for p, h in zip(test, hyps, strict=True)])
    say(f"{system.name} {lang}: BLEU {row.bleu:.1f}, chrF {row.chrf:.1f} ({elapsed:.0f} s)")
    return row


def print_table(rows: Sequence[Scored], header: str, show: int) -> None:
    print(header)
    print()
    print("| system | lang | BLEU | chrF | reference tokens | ms per generated token |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.system} | {r.lang} | {r.bleu:.1f} | {r.chrf:.1f} | {r.ref_tokens:.1f} | {r.ms_per_token:.0f} |")
    for r in rows:
        for source, ref, hyp in r.samples[:show]:
            print(f"\n{r.system} {r.lang}\n  en:  {source}\n  ref: {ref}\n  hyp: {hyp}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("TYMPAN_HOME", "~/.local/share/tympan")).expanduser()
    p.add_argument("--llm", action="append", metavar="NAME",
                   help="a base LLM package name (repeatable; default: smollm2-135m-instruct and gemma3-270m)")
    p.add_argument("--checkpoint", type=Path, help="also a tympan checkpoint, e.g. models/default")
    p.add_argument("--test", type=Path, default=home / "data/default/test.jsonl", help="sentences to translate")
    p.add_argument("--dev", type=Path, default=home / "data/default/dev.jsonl", help="where the shots come from")
    p.add_argument("--langs", default=",".join(ST_LANGS), help="target languages (default de,it,zh)")
    p.add_argument("--limit", type=int, default=30, help="sentences per language (default 30)")
    p.add_argument("--shots", type=int, default=3, help="example pairs in each few-shot prompt (default 3)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--show", type=int, default=0, help="print N translations per row")
    args = p.parse_args(argv)
    args.llm = args.llm or ["smollm2-135m-instruct", "gemma3-270m"]
    args.langs = [x for x in args.langs.split(",") if x]
    bad = [x for x in args.langs if x not in LANG_NAMES]
    if bad:
        p.error(f"--langs: {bad[0]!r} is not a translation target ({', '.join(LANG_NAMES)})")
    for name in ("limit", "threads", "max_new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.shots < 0:
        p.error(f"--shots must be >= 0, got {args.shots}")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    test = {lang: pairs(args.test, lang, args.limit) for lang in args.langs}
    shots = {lang: pairs(args.dev, lang, args.shots) if args.shots else [] for lang in args.langs}
    rows: list[Scored] = []
    systems: list[Callable[[], Any]] = [lambda n=n: BaseLLM(n) for n in args.llm]
    if args.checkpoint:
        systems.append(lambda: Checkpoint(args.checkpoint))
    for make in systems:
        system = make()
        rows += [score(system, lang, test[lang], shots[lang], args.max_new_tokens, print) for lang in args.langs]
        del system
    header = (f"{', '.join(f'{len(v)} {k}' for k, v in test.items())} sentences of {args.test.name}; "
              f"{args.shots}-shot prompts for base LLMs; greedy; {args.threads} threads; {cpu_model()}")
    print()
    print_table(rows, header, args.show)
    return 0


if __name__ == "__main__":
    run_main(main)
