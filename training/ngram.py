"""The token n-gram LM the CTC bridge's beam search reads (tympan/runtime/ctc_lm.py).

Counted from the spoken forms of the training text's English (every transcript, MT source and QA
passage of the config's `data.train`): the same LLM tokens the CTC head predicts. Interpolated
absolute discounting (discount 0.7), stored in backoff form, which for this smoothing is exact: an
unseen token after a context h gets lambda(h) x its lower-order probability, lambda(h) = the mass the
discount took from h. Its weight and length bonus are chosen on dev utterances with the checkpoint's
own head, and the result is written beside the head, where export and ship find it:

  python -m tympan.training.ngram --checkpoint RUN/lora/final [--dev DEV.jsonl]   # -> RUN/lora/final/lm.npz
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tympan import scoring
from tympan.manifest import Example
from tympan.runtime.ctc_lm import BITS, BOS, EOS, LM_FILE, MAX_ORDER, LmSettings, NgramLM, beam_search, pack
from tympan.runtime.onnx_encoder import collapse
from tympan.spoken import ctc_target

DISCOUNT = 0.7
UNIGRAM_ADD = 0.1
# Searched on dev: weight x length bonus (ctc6's head, 2026-12-04: dev WER 36.8 greedy, 27.8-35.0 over
# weights 0.2-1.0 and bonuses 0-6; the LM alone would shorten the text, hence the bonus).
WEIGHTS = (0.2, 0.3, 0.5, 0.8)
BONUSES = (1.0, 2.0, 3.0, 4.0)
BEAM = 12
UNTUNED = LmSettings(weight=0.3, length_bonus=1.0, beam=BEAM)  # without dev utterances to choose on
MISSING = -99.0  # log p of a history that is only ever a context (BOS runs): never scored as a token


def english_texts(examples: Iterable[Example]) -> list[str]:
    """The distinct English texts of a corpus, in first-seen order: what was said, or an MT source or passage."""
    seen: dict[str, None] = {}
    for ex in examples:
        if ex.src_lang == "en" and ex.transcript:
            seen.setdefault(ex.transcript, None)
    return list(seen)


def token_sequences(tokenizer, texts: Iterable[str]) -> list[list[int]]:
    """LLM token ids of each text's spoken form (what the CTC head is trained to emit); empty ones left out."""
    out = []
    for text in texts:
        words = ctc_target(text)
        if words:
            out.append(list(tokenizer.encode(" " + words, add_special_tokens=False)))
    return out


def count(sequences: Iterable[Sequence[int]], order: int, vocab_size: int,
          settings: LmSettings = UNTUNED) -> NgramLM:
    """An n-gram model of token sequences (ids below `vocab_size`); see the module docstring."""
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"n-gram order {order}: must be 1 to {MAX_ORDER}")
    if vocab_size >= EOS:
        raise ValueError(f"a vocabulary of {vocab_size} tokens does not fit {BITS}-bit ids")
    counts: list[Counter[tuple[int, ...]]] = [Counter() for _ in range(order + 1)]
    for seq in sequences:
        if any(not 0 <= t < vocab_size for t in seq):
            raise ValueError(f"a token id outside 0..{vocab_size - 1} in {list(seq)[:20]}")
        padded = [BOS] * (order - 1) + list(seq) + [EOS]
        for n in range(1, order + 1):
            for i in range(order - n if n > 1 else order - 1, len(padded) - n + 1):
                counts[n][tuple(padded[i:i + n])] += 1
    if not counts[1]:
        raise ValueError("no tokens to count")
    total = sum(counts[1].values())
    denominator = total + UNIGRAM_ADD * (vocab_size + 1)  # every token and EOS
    probs: list[dict[tuple[int, ...], float]] = [{}, {g: (c + UNIGRAM_ADD) / denominator for g, c in counts[1].items()}]
    unk = UNIGRAM_ADD / denominator
    lambdas: list[dict[tuple[int, ...], float]] = [{}, {}]

    def lower(gram: tuple[int, ...]) -> float:
        """P(last | the rest) from the orders below, backing off as the runtime does."""
        weight = 1.0
        for n in range(len(gram), 0, -1):
            if gram[-n:] in probs[n]:
                return weight * probs[n][gram[-n:]]
            if n > 1:
                weight *= lambdas[n].get(gram[-n:-1], 1.0)
        return weight * unk

    for n in range(2, order + 1):
        totals: Counter[tuple[int, ...]] = Counter()
        types: Counter[tuple[int, ...]] = Counter()
        for g, c in counts[n].items():
            totals[g[:-1]] += c
            types[g[:-1]] += 1
        lambdas.append({h: DISCOUNT * types[h] / totals[h] for h in totals})
        probs.append({g: max(c - DISCOUNT, 0.0) / totals[g[:-1]] + lambdas[n][g[:-1]] * lower(g[1:])
                      for g, c in counts[n].items()})
    keys, logps, backoffs = [], [], []
    for n in range(1, order + 1):
        table = {g: math.log(p) for g, p in probs[n].items()}
        if n < order:
            for h in lambdas[n + 1]:
                table.setdefault(h, MISSING)  # a context that never ends a counted n-gram (BOS runs)
        grams = sorted(table, key=pack)
        keys.append(np.array([pack(g) for g in grams], dtype=np.int64))
        logps.append(np.array([table[g] for g in grams], dtype=np.float32))
        backoff = lambdas[n + 1] if n < order else {}
        backoffs.append(np.array([math.log(backoff[g]) if g in backoff else 0.0 for g in grams], dtype=np.float32))
    return NgramLM(order, keys, logps, backoffs, math.log(unk), settings)


Posteriors = tuple[np.ndarray, np.ndarray, np.ndarray]  # top ids (T, K) as LLM ids, their log p, blank log p (T,)


def greedy(posteriors: Posteriors) -> list[int]:
    """Greedy CTC over the same frames: each frame's best label, or the blank where it wins."""
    ids, logp, blank = posteriors
    return collapse(np.where(logp[:, 0] > blank, ids[:, 0], -1))


def utterance_errors(refs: Sequence[str], hyps: Sequence[str]) -> np.ndarray:
    """(errors, reference words) of each pair, after English normalisation: (n, 2)."""
    return np.array([scoring.word_errors([scoring.normalize_english(r)], [scoring.normalize_english(h)])
                     for r, h in zip(refs, hyps, strict=True)], dtype=np.float64).reshape(-1, 2)


def standard_error(errors: np.ndarray, resamples: int = 1000) -> float:
    """Bootstrap standard error of the WER (%) over utterances."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(errors), size=(resamples, len(errors)))
    sums = errors[picks].sum(axis=1)
    return float(np.std(100.0 * sums[:, 0] / np.maximum(sums[:, 1], 1.0)))


def tune(lm: NgramLM, posteriors: Sequence[Posteriors], refs: Sequence[str], tokenizer,
         say=print) -> tuple[NgramLM, dict[str, float]]:
    """The weakest LM whose dev WER is within one standard error of the best (the one-standard-error rule):
    dev sentences come from the LM's own corpus, and a strong LM costs speech outside it (measured on the
    14 human recordings: `ctc6`'s head lost 2-7 words of 40 at weight >= 0.6). Returns it and every figure."""
    def errors(hyps: list[list[int]]) -> np.ndarray:
        return utterance_errors(refs, [tokenizer.decode(h, skip_special_tokens=True).strip() for h in hyps])

    def rate(e: np.ndarray) -> float:
        return round(100.0 * e[:, 0].sum() / max(e[:, 1].sum(), 1.0), 2)

    figures = {"greedy": rate(errors([greedy(p) for p in posteriors]))}
    say(f"ngram: greedy CTC WER {figures['greedy']}")
    tried: list[tuple[float, LmSettings, np.ndarray]] = []
    for weight in WEIGHTS:
        for bonus in BONUSES:
            settings = LmSettings(weight=weight, length_bonus=bonus, beam=BEAM)
            started = time.monotonic()
            e = errors([beam_search(*p, lm.with_settings(settings)) for p in posteriors])
            figures[f"weight={weight} bonus={bonus}"] = rate(e)
            tried.append((rate(e), settings, e))
            say(f"ngram: weight {weight} bonus {bonus}: WER {rate(e)} ({time.monotonic() - started:.1f} s)")
    best = min(tried, key=lambda t: t[0])
    figures["standard_error"] = round(standard_error(best[2]), 2)
    close = [t for t in tried if t[0] <= best[0] + figures["standard_error"]]
    chosen = min(close, key=lambda t: (t[1].weight, t[0]))
    say(f"ngram: best WER {best[0]} +- {figures['standard_error']}; chosen: weight {chosen[1].weight}, "
        f"bonus {chosen[1].length_bonus} (WER {chosen[0]})")
    return lm.with_settings(chosen[1]), figures


def dev_posteriors(model, examples: Sequence[Example]) -> list[Posteriors]:
    """The checkpoint's CTC frames for each utterance, 8 encoded at a time."""
    from tympan.audio import load_audio
    from tympan.training.model.speech_llm import ctc_posteriors

    out: list[Posteriors] = []
    for i in range(0, len(examples), 8):
        audios = [load_audio(e.audio, model.encoder.sample_rate) for e in examples[i : i + 8] if e.audio]
        out += ctc_posteriors(model.projector, model.encode(audios))
    return out


def build(checkpoint: Path, dev_path: Path | None, order: int = 3, say=print) -> tuple[NgramLM, dict[str, float]]:
    """The LM of a checkpoint's training text, weighed on its dev ASR utterances (the config's dev by default)."""
    from tympan.manifest import load_manifest, load_manifests
    from tympan.training.model.checkpoint import load_checkpoint
    from tympan.training.model.ctc import CtcBridge
    from tympan.training.trainer import resolve_manifest

    model = load_checkpoint(checkpoint)
    if not isinstance(model.projector, CtcBridge):
        raise ValueError(f"{checkpoint}: a dense projector: an n-gram LM is for a CTC bridge")
    cfg = model.cfg
    started = time.monotonic()
    texts = english_texts(load_manifests([resolve_manifest(cfg, e) for e in cfg.data.train]))
    dev_paths = [dev_path] if dev_path else [resolve_manifest(cfg, e) for e in cfg.data.dev]
    dev = [e for path in dev_paths for e in load_manifest(path) if e.is_speech and e.task == "asr"]
    held = {ctc_target(e.target) for e in dev}
    lm = count(token_sequences(model.tokenizer, texts), order, len(model.tokenizer))
    say(f"ngram: {len(texts)} texts, n-grams {[int(k.size) for k in lm.keys]}, "
        f"{sum(ctc_target(t) in held for t in texts)} texts equal to a dev transcript "
        f"({time.monotonic() - started:.0f} s)")
    if not dev:
        say(f"ngram: no dev ASR utterances: weight {lm.settings.weight}, bonus {lm.settings.length_bonus} untuned")
        return lm, {}
    return tune(lm, dev_posteriors(model, dev), [e.target for e in dev], model.tokenizer, say)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tympan.training.ngram", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint with a CTC bridge (RUN/lora/final)")
    p.add_argument("--dev", type=Path, help="ASR utterances to choose the weight on (default: the config's dev)")
    p.add_argument("--order", type=int, default=3, choices=range(1, MAX_ORDER + 1))
    args = p.parse_args(argv)
    try:
        lm, figures = build(args.checkpoint, args.dev, args.order)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lm.save(args.checkpoint / LM_FILE)
    s = lm.settings
    print(json.dumps({"lm": str(args.checkpoint / LM_FILE), "order": lm.order, "weight": s.weight,
                      "length_bonus": s.length_bonus, "beam": s.beam, "dev_wer": figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
