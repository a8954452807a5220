"""Which LLM for translation: candidate LLMs on the same text-only translation, side by side.

The speech side is left out: each system translates English sentences as text (what a perfect hearing would hand
it), so the figures say what the LLM itself can do for ST. Rows:
  - each candidate LLM (a `package:` name of training/model/base_models.py) with each `--prompt`:
      "fewshot": a plain "English: ... / German: ..." prompt with `--shots` pairs from the dev set first;
      "chat": the model's chat template around the instruction a bundle's text LLM is given
      (tympan/tasks.py TEXT_INSTRUCTIONS) and the sentence: exactly what the daemon sends it.
    An answer ends at its first line break (the text before it is kept: Qwen writes ".\n" as one token).
  - each `--runtime`: "torch" (fp32), "onnx" (the exported graph, fp32), "onnx-int8" / "onnx-int4" (the graph a
    bundle serves, block-wise quantized MatMul weights). Graphs are exported once into $TYMPAN_HOME/onnx/.
  - with `--checkpoint`, a tympan checkpoint (e.g. models/default) given each sentence as its bridge would give it
    when every word is heard right, with its own ST instruction.
Sets: the test set's help-page sentences, and with `--ood FILE` (JSON lines with "en" and the targets, as
`python -m tympan.training.corpus.manuals` writes them) sentences of another domain.
Figures per language: BLEU and chrF (sacrebleu, as `tympan eval`); the time to the first token (the prompt's
prefill); milliseconds per further token; the time to a whole translation; the process's RSS after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import BenchmarkError, cpu_model, rss_bytes, run_main

from tympan import scoring
from tympan.manifest import Example, load_manifest
from tympan.runtime.text_llm import CHAT_FRAMES, first_line
from tympan.tasks import ST_LANGS, TEXT_INSTRUCTIONS

LANG_NAMES = {"de": "German", "it": "Italian", "zh": "Chinese"}
PROMPTS = ("fewshot", "chat")
RUNTIMES = ("torch", "onnx", "onnx-int8", "onnx-int4")


@dataclass(frozen=True)
class Pair:
    source: str
    target: str


@dataclass
class Timing:
    first_token_s: list[float] = field(default_factory=list)  # prefill + the first token, per sentence
    step_s: float = 0.0  # all further tokens
    steps: int = 0
    whole_s: list[float] = field(default_factory=list)  # per sentence


@dataclass
class Scored:
    system: str
    set: str
    lang: str
    bleu: float
    chrf: float
    first_token_ms: float  # median
    ms_per_token: float  # decode steps after the first token
    whole_ms: float  # median time to a whole translation
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


def ood_pairs(path: Path, lang: str, limit: int | None) -> list[Pair]:
    """(English, target) pairs of a JSON-lines file of aligned sentences ({"en": ..., "de": ..., ...})."""
    out: list[Pair] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BenchmarkError(f"--ood {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"--ood {path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("en"), str):
            raise BenchmarkError(f"--ood {path}:{n}: expected an object with an \"en\" sentence")
        if isinstance(row.get(lang), str) and row[lang].strip():
            out.append(Pair(row["en"], row[lang]))
    # Spread over the file, not its first pages: a manual's chapters differ in style.
    if limit and len(out) > limit:
        out = [out[i * len(out) // limit] for i in range(limit)]
    if not out:
        raise BenchmarkError(f"--ood {path}: no sentences with a {lang!r} translation")
    return out


def few_shot_prompt(shots: Sequence[Pair], source: str, lang: str) -> str:
    name = LANG_NAMES[lang]
    lines = [f"English: {p.source}\n{name}: {p.target}\n" for p in shots]
    return "\n".join([*lines, f"English: {source}\n{name}:"])


class BaseLLM:
    """A candidate LLM from its package, prompted few-shot or through its chat template, decoded greedily to the
    end of the answer's line, in PyTorch or through its exported ONNX graph."""

    def __init__(self, name: str, prompt: str, runtime: str, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tympan.training.model.base_models import resolve

        path = resolve(f"package:{name}")
        self.name = f"{name} {prompt} {runtime}"
        self.prompt = prompt
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.model_type = str(model.config.model_type)
        self.stop_ids = {i for i in (self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
                         if isinstance(i, int) and i != self.tokenizer.unk_token_id}
        self.newline_ids = {i for tok, i in self.tokenizer.get_vocab().items() if "Ċ" in tok or "\n" in tok}
        if runtime == "torch":
            self.step: Any = TorchSteps(model)
        else:
            self.step = onnx_steps(model, name, runtime, threads)
            del model

    def prompt_text(self, shots: Sequence[Pair], source: str, lang: str) -> str:
        if self.prompt == "fewshot":
            return few_shot_prompt(shots, source, lang)
        instruction = TEXT_INSTRUCTIONS["st"][lang]
        if self.model_type in CHAT_FRAMES:  # the frame the daemon renders
            return CHAT_FRAMES[self.model_type].render(instruction, source)
        messages = [{"role": "user", "content": f"{instruction}\n\n{source}"}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def translate(self, shots: Sequence[Pair], source: str, lang: str, max_new_tokens: int,
                  timing: Timing) -> str:
        import numpy as np

        ids = self.tokenizer(self.prompt_text(shots, source, lang), add_special_tokens=False).input_ids
        if self.prompt == "chat" and self.model_type in CHAT_FRAMES and isinstance(self.step, OnnxSteps):
            frame = CHAT_FRAMES[self.model_type]
            self.step.prefix = self.tokenizer(frame.before + TEXT_INSTRUCTIONS["st"][lang] + frame.between,
                                              add_special_tokens=False).input_ids
            self.step.prefill([*self.step.prefix, 0])  # the instruction's cache is made once, before timing
        out: list[int] = []
        started = time.perf_counter()
        logits, state = self.step.prefill(ids)
        timing.first_token_s.append(time.perf_counter() - started)
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            if token in self.stop_ids:
                break
            out.append(token)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            if token in self.newline_ids and first_line(text):  # the answer's line ended
                break
            t = time.perf_counter()
            logits, state = self.step.step(token, state)
            timing.step_s += time.perf_counter() - t
            timing.steps += 1
        timing.whole_s.append(time.perf_counter() - started)
        return first_line(self.tokenizer.decode(out, skip_special_tokens=True))


class TorchSteps:
    def __init__(self, model: Any) -> None:
        import torch

        self.torch, self.model = torch, model

    def prefill(self, ids: list[int]) -> tuple[Any, Any]:
        with self.torch.no_grad():
            r = self.model(input_ids=self.torch.tensor([ids]), use_cache=True)
        return r.logits[0, -1].numpy(), r.past_key_values

    def step(self, token: int, past: Any) -> tuple[Any, Any]:
        with self.torch.no_grad():
            r = self.model(input_ids=self.torch.tensor([[token]]), past_key_values=past, use_cache=True)
        return r.logits[0, -1].numpy(), r.past_key_values


class OnnxSteps:
    """The graph as the daemon runs it: a chat prompt's part before the sentence from the prefix cache."""

    def __init__(self, llm: Any) -> None:
        from tympan.runtime.text_llm import PrefixCache

        self.llm, self.prefixes = llm, PrefixCache(llm)
        self.prefix: list[int] = []

    def prefill(self, ids: list[int]) -> tuple[Any, Any]:
        llm, rest = self.prefixes.split(self.prefix, ids)
        return llm.prefill(self.llm.embed(rest))  # type: ignore[no-any-return]

    def step(self, token: int, state: Any) -> tuple[Any, Any]:
        return self.llm.step(token, state)  # type: ignore[no-any-return]


def onnx_steps(model: Any, name: str, runtime: str, threads: int) -> OnnxSteps:
    """The model's ONNX graph (exported once into $TYMPAN_HOME/onnx/), run by onnxruntime."""
    from tympan.atomic import atomic_directory
    from tympan.config import tympan_home
    from tympan.export.llm_graph import INFO_FILE, export_llm_onnx
    from tympan.runtime.bundle_manifest import LlmOnnx
    from tympan.runtime.onnx_llm import OnnxLLM

    out = tympan_home() / "onnx" / f"{name}-{runtime}"
    if not (out / INFO_FILE).is_file():
        started = time.perf_counter()
        with atomic_directory(out) as tmp:
            export_llm_onnx(model, tmp, quantize=runtime.removeprefix("onnx-") if "-" in runtime else None)
        print(f"{name}: exported {runtime} in {time.perf_counter() - started:.0f} s")
    info = LlmOnnx.from_json(json.loads((out / INFO_FILE).read_text()))
    return OnnxSteps(OnnxLLM(out, info, threads=threads))


class Checkpoint:
    """A tympan checkpoint given the sentence as its bridge gives a perfectly heard utterance."""

    def __init__(self, path: Path) -> None:
        from tympan.runtime.decode import DecodeSettings
        from tympan.training.model.checkpoint import load_checkpoint

        self.name = f"{path.name} (perfect hearing)"
        self.model = load_checkpoint(path)
        self.settings = DecodeSettings.unguarded(self.model.cfg.prompt.max_new_tokens)

    def translate(self, shots: Sequence[Pair], source: str, lang: str, max_new_tokens: int,
                  timing: Timing) -> str:
        m = self.model
        ex = Example(id="bench", task="st", src_lang="en", tgt_lang=lang, target="", text=source)
        started = time.perf_counter()
        tokens = m.greedy(source, m.instruction(ex), self.settings.capped(max_new_tokens)).tokens
        elapsed = time.perf_counter() - started
        timing.whole_s.append(elapsed)
        timing.step_s += elapsed
        timing.steps += max(len(tokens), 1)
        return str(m.decode(tokens)).replace("\ufffd", "").strip()


def _median(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2] if values else float("nan")


def score(system: Any, name: str, lang: str, test: Sequence[Pair], shots: Sequence[Pair], max_new_tokens: int,
          say: Callable[[str], None]) -> Scored:
    hyps, timing, started = [], Timing(), time.perf_counter()
    for p in test:
        hyps.append(system.translate(shots, p.source, lang, max_new_tokens, timing))
    elapsed = time.perf_counter() - started
    refs = [p.target for p in test]
    row = Scored(system.name, name, lang, scoring.bleu(refs, hyps, lang), scoring.chrf(refs, hyps),
                 1000 * _median(timing.first_token_s), 1000 * timing.step_s / max(timing.steps, 1),
                 1000 * _median(timing.whole_s), [(p.source, p.target, h) for p, h in zip(test, hyps, strict=True)])
    say(f"{system.name} {name} {lang}: BLEU {row.bleu:.1f}, chrF {row.chrf:.1f} ({elapsed:.0f} s)")
    return row


def print_table(rows: Sequence[Scored], rss: dict[str, float], header: str, show: int) -> None:
    print(header)
    print()
    print("| system | set | lang | BLEU | chrF | first token ms | ms per token | whole ms | RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.system} | {r.set} | {r.lang} | {r.bleu:.1f} | {r.chrf:.1f} | {r.first_token_ms:.0f} | "
              f"{r.ms_per_token:.0f} | {r.whole_ms:.0f} | {rss.get(r.system, float('nan')):.1f} |")
    for r in rows:
        for source, ref, hyp in r.samples[:show]:
            print(f"\n{r.system} {r.set} {r.lang}\n  en:  {source}\n  ref: {ref}\n  hyp: {hyp}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("TYMPAN_HOME", "~/.local/share/tympan")).expanduser()
    p.add_argument("--llm", action="append", metavar="NAME",
                   help="a candidate LLM package name (repeatable; default: smollm2-135m-instruct and gemma3-270m)")
    p.add_argument("--prompt", action="append", choices=PROMPTS, help="prompt style (repeatable; default fewshot)")
    p.add_argument("--runtime", action="append", choices=RUNTIMES, help="runtime (repeatable; default torch)")
    p.add_argument("--checkpoint", type=Path, help="also a tympan checkpoint, e.g. models/default")
    p.add_argument("--test", type=Path, default=home / "data/default/test.jsonl", help="sentences to translate")
    p.add_argument("--dev", type=Path, default=home / "data/default/dev.jsonl", help="where the shots come from")
    p.add_argument("--ood", type=Path, action="append", default=[], metavar="JSONL",
                   help="also sentences of another domain (aligned JSON lines; repeatable)")
    p.add_argument("--no-test", action="store_true", help="only the --ood sets")
    p.add_argument("--langs", default=",".join(ST_LANGS), help="target languages (default de,it,zh)")
    p.add_argument("--limit", type=int, default=30, help="sentences per language and set (default 30)")
    p.add_argument("--shots", type=int, default=3, help="example pairs in each few-shot prompt (default 3)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--show", type=int, default=0, help="print N translations per row")
    args = p.parse_args(argv)
    args.llm = args.llm or ["smollm2-135m-instruct", "gemma3-270m"]
    args.prompt = args.prompt or ["fewshot"]
    args.runtime = args.runtime or ["torch"]
    args.langs = [x for x in args.langs.split(",") if x]
    bad = [x for x in args.langs if x not in LANG_NAMES]
    if bad:
        p.error(f"--langs: {bad[0]!r} is not a translation target ({', '.join(LANG_NAMES)})")
    for name in ("limit", "threads", "max_new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.shots < 0:
        p.error(f"--shots must be >= 0, got {args.shots}")
    if args.no_test and not args.ood:
        p.error("--no-test needs at least one --ood set")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sets: dict[str, dict[str, list[Pair]]] = {}
    if not args.no_test:
        sets[args.test.stem] = {lang: pairs(args.test, lang, args.limit) for lang in args.langs}
    for path in args.ood:
        sets[path.stem] = {lang: ood_pairs(path, lang, args.limit) for lang in args.langs}
    shots = {lang: pairs(args.dev, lang, args.shots) if args.shots else [] for lang in args.langs}
    rows: list[Scored] = []
    rss: dict[str, float] = {}
    systems: list[Callable[[], Any]] = [
        lambda n=n, pr=pr, rt=rt: BaseLLM(n, pr, rt, args.threads)
        for n in args.llm for rt in args.runtime for pr in args.prompt
    ]
    if args.checkpoint:
        systems.append(lambda: Checkpoint(args.checkpoint))
    for make in systems:
        system = make()
        for name, by_lang in sets.items():
            rows += [score(system, name, lang, by_lang[lang], shots[lang], args.max_new_tokens, print)
                     for lang in args.langs]
        rss[system.name] = rss_bytes(os.getpid()) / 1e9
        del system
    header = (f"{', '.join(f'{name} ({len(next(iter(v.values())))} per language)' for name, v in sets.items())}; "
              f"{args.shots}-shot prompts where fewshot; greedy; {args.threads} threads; {cpu_model()}")
    print()
    print_table(rows, rss, header, args.show)
    return 0


if __name__ == "__main__":
    run_main(main)
