"""The CTC stage: the CTC bridge's head (projector kind "ctc") trained alone, on cached encoder outputs.

No LLM forward: a step is the head's forward and backward on a batch of cached frames, a few
hundred milliseconds on two CPU cores instead of seconds. Phases, as in the main trainer: `setup`
(data, targets, vocabulary, model, optimizer; resumes from the last step checkpoint), `fit` (the
step loop, with checkpoints every `train.save_every` steps and a greedy-CTC WER on the dev set every
`train.eval_every`), `save`.

Layout under OUT/ctc/: `vocab.json` (the scored LLM token ids, built once from the training speech's transcripts),
`step-NNNNNN/` (projector.safetensors, state.pt: optimizer, scheduler, step, RNG), `final/` (with
`errors.json`: how the head errs on the dev set, for the text stage's simulation), `log.jsonl`.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tympan import scoring
from tympan.atomic import atomic_directory
from tympan.errors import TympanError
from tympan.manifest import Example
from tympan.training.cache import EncoderCache
from tympan.training.model.ctc import CtcBridge, ctc_loss_sum, greedy_ids
from tympan.training.model.ctc_targets import CtcVocab, build_vocab, targets
from tympan.training.model.encoder import SpeechEncoder
from tympan.training.model.simulate import ErrorProfile, measure
from tympan.training.model.speech_llm import ctc_transcribe, mask_frames, pad_sequences
from tympan.training.recipe import Recipe
from tympan.training.resume import STEP_PREFIX, step_dirs
from tympan.training.schedule import lr_factor


class CtcStageError(TympanError, RuntimeError):
    """The CTC stage cannot run: wrong projector kind, no speech to train on."""


@dataclass
class CtcStage:
    cfg: Recipe
    dir: Path
    encoder: SpeechEncoder
    cache: EncoderCache
    tokenizer: Any
    vocab: CtcVocab
    model: CtcBridge
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train: list[Example]
    dev: list[Example]
    targets: dict[str, list[int]]
    step: int = 0
    generator: torch.Generator | None = None


def new_bridge(cfg: Recipe, encoder: SpeechEncoder, vocab: CtcVocab, embeddings: torch.Tensor) -> CtcBridge:
    if cfg.projector.kind != "ctc":
        raise CtcStageError(f"the CTC stage needs projector.kind = \"ctc\", the config has {cfg.projector.kind!r}")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = CtcBridge(cfg.projector, encoder.output_dim, embeddings.shape[1], torch.tensor(vocab.ids))
    model.tie(embeddings)
    return model


def setup(cfg: Recipe, out: Path, examples: Sequence[Example], dev: Sequence[Example], encoder: SpeechEncoder,
          tokenizer: Any, embeddings: torch.Tensor, cache: EncoderCache, init: Path | None = None) -> CtcStage:
    """Data, vocabulary, targets, the model and its optimizer; resumed from the last step checkpoint.

    `examples`: the training manifests' lines (speech lines with a transcript are trained on, and
    their text makes the vocabulary); `embeddings`: the LLM's input-embedding matrix; `init`: a
    ctc-stage checkpoint to warm-start a new run from (`warm_start`), ignored once the run has a step
    checkpoint of its own."""
    stage_cfg = cfg.train.ctc
    speech = [e for e in examples if e.is_speech and e.task in stage_cfg.tasks and e.transcript]
    if not speech:
        raise CtcStageError("ctc stage: no speech examples with a transcript for tasks "
                            + ", ".join(stage_cfg.tasks))
    stage_dir = out / "ctc"
    stage_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = stage_dir / "vocab.json"
    if vocab_file.is_file():
        vocab = CtcVocab.load(vocab_file, len(tokenizer))
    else:
        # The tokens of the speech it trains on (plus letters, to spell the rest): a token never heard
        # in training cannot be learnt, and every scored token costs a row of the classifier, the
        # step's largest product (measured: 15k tokens, those of all 116k text lines, made a step
        # ~3x slower than the speech transcripts' own).
        vocab = build_vocab(tokenizer, sorted({t for e in speech if (t := e.transcript)}))
        vocab.save(vocab_file)
    dev_examples = [e for e in dev if e.is_speech and e.task == "asr" and e.transcript]
    wanted = {e.id: e for e in [*speech, *dev_examples]}
    target_of = {i: targets(tokenizer, vocab, e.transcript or "") for i, e in wanted.items()}
    speech = [e for e in speech if target_of[e.id]]
    model = new_bridge(cfg, encoder, vocab, embeddings)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=stage_cfg.lr,
                                  weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(stage_cfg.warmup_steps, stage_cfg.steps))
    stage = CtcStage(cfg, stage_dir, encoder, cache, tokenizer, vocab, model, optimizer, scheduler, speech,
                     dev_examples, target_of, generator=torch.Generator().manual_seed(cfg.seed))
    if init is not None and not step_dirs(stage_dir, "state.pt"):
        warm_start(model, vocab, init, len(tokenizer))
    resume(stage)
    return stage


def warm_start(model: CtcBridge, vocab: CtcVocab, checkpoint: Path, tokenizer_size: int) -> int:
    """Start `model` from the head in `checkpoint` (OUT/ctc/final or step-N of an earlier run), whose
    vocabulary may differ: a grown corpus brings new tokens. Every weight is copied; the per-token
    bias is matched by LLM token id, and a token the old head never scored starts at the old biases'
    mean (a new word is not assumed rarer than the rest). Returns how many tokens are new."""
    old_vocab = CtcVocab.load(checkpoint / "vocab.json", tokenizer_size)
    try:
        state = load_file(str(checkpoint / "projector.safetensors"))
    except FileNotFoundError:
        raise CtcStageError(f"{checkpoint}: no projector.safetensors: not a ctc-stage checkpoint") from None
    own = model.state_dict()
    wrong = [k for k, v in own.items() if k not in ("vocab_ids", "bias") and (k not in state or
                                                                              state[k].shape != v.shape)]
    if wrong:
        k = wrong[0]
        got = tuple(state[k].shape) if k in state else "missing"
        raise CtcStageError(f"{checkpoint}: its head does not fit this config's ({k}: {got}, this config's "
                            f"{tuple(own[k].shape)}): same encoder and projector sizes needed")
    old_bias = state["bias"]
    bias = torch.full_like(own["bias"], float(old_bias.mean()))
    new = 0
    for i, token in enumerate(vocab.ids):
        j = old_vocab.index(token)
        if j is None:
            new += 1
        else:
            bias[i] = old_bias[j]
    state = {**state, "bias": bias, "vocab_ids": own["vocab_ids"]}
    model.load_state_dict(state, strict=True)
    return new


def resume(stage: CtcStage) -> None:
    checkpoints = step_dirs(stage.dir, "state.pt")
    if not checkpoints:
        return
    last = checkpoints[-1]
    stage.model.load_state_dict(load_file(str(last / "projector.safetensors")), strict=True)
    state = torch.load(last / "state.pt", weights_only=False)
    stage.optimizer.load_state_dict(state["optimizer"])
    stage.scheduler.load_state_dict(state["scheduler"])
    stage.step = int(state["step"])
    assert stage.generator is not None
    stage.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])


def fill_cache(stage: CtcStage, examples: Sequence[Example], progress: Callable[[str], None] = print) -> None:
    todo = [e for e in examples if not stage.cache.has(e)]
    if todo:
        progress(f"ctc: encoding {len(todo)} audio files into the cache")
        stage.cache.fill(todo, torch.device("cpu"), stage.cfg.train.encode_batch_size)


def epoch_batches(stage: CtcStage, epoch: int) -> list[list[Example]]:
    """Epoch `epoch`'s batches: examples shuffled (seeded by the epoch, so a resumed run replays the
    same plan), then cut into batches of similar target length (less padding)."""
    rng = random.Random(f"{stage.cfg.seed}:ctc:{epoch}")
    size = stage.cfg.train.batch_size
    items = list(stage.train)
    rng.shuffle(items)
    window = size * 32
    out: list[list[Example]] = []
    for i in range(0, len(items), window):
        chunk = sorted(items[i : i + window], key=lambda e: len(stage.targets[e.id]))
        out += [chunk[j : j + size] for j in range(0, len(chunk), size)]
    rng.shuffle(out)
    return out


def train_step(stage: CtcStage, batch: Sequence[Example]) -> float:
    stage.model.train()
    hidden, lengths = pad_sequences([stage.cache.get(e) for e in batch])
    hidden = mask_frames(hidden, lengths, stage.cfg.train.augment, stage.generator)  # type: ignore[arg-type]
    logits, frames = stage.model.logits(hidden, lengths)
    labels = [stage.targets[e.id] for e in batch]
    loss = ctc_loss_sum(logits, frames, labels, stage.vocab.blank) / sum(len(t) for t in labels)
    stage.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(stage.model.parameters(), stage.cfg.train.max_grad_norm)
    stage.optimizer.step()
    stage.scheduler.step()
    stage.step += 1
    return float(loss.detach())


def dev_wer(stage: CtcStage, examples: Sequence[Example]) -> float:
    """WER (%) of greedy CTC against the transcripts, after Whisper's English normalisation."""
    hyps = ctc_transcribe(stage.model, stage.tokenizer, stage.vocab, [stage.cache.get(e) for e in examples])
    return scoring.wer([e.target for e in examples], hyps, scoring.normalize_english)


@torch.no_grad()
def error_profile(stage: CtcStage, examples: Sequence[Example]) -> ErrorProfile:
    """How the head errs on `examples` (substitutions, deletions, insertions, confusions, the bridge's
    peak weights): what the text stage's simulated inputs are drawn from (training/model/simulate.py)."""
    stage.model.eval()
    cfg = stage.cfg.projector
    refs: list[list[int]] = []
    hyps: list[list[int]] = []
    peaks: list[float] = []
    for i in range(0, len(examples), 16):
        chunk = examples[i : i + 16]
        padded, lengths = pad_sequences([stage.cache.get(e) for e in chunk])
        logits, frames = stage.model.logits(padded, lengths)
        hyps += greedy_ids(logits, frames)
        refs += [stage.targets[e.id] for e in chunk]
        probs = logits.float().softmax(-1)
        top = probs[..., :-1].topk(min(cfg.top_k, stage.vocab.blank), dim=-1).values
        valid = torch.arange(probs.shape[1])[None, :] < frames[:, None]
        keep = (probs[..., -1] < cfg.blank_threshold) & valid
        peaks += (top[..., 0] / top.sum(-1))[keep].tolist()
    return measure(refs, hyps, peaks)


def save(stage: CtcStage, path: Path, with_state: bool) -> None:
    with atomic_directory(path) as tmp:
        state = {k: v.contiguous() for k, v in stage.model.state_dict().items()}
        save_file(state, str(tmp / "projector.safetensors"))
        stage.vocab.save(tmp / "vocab.json")
        if with_state:
            assert stage.generator is not None
            torch.save({"optimizer": stage.optimizer.state_dict(), "scheduler": stage.scheduler.state_dict(),
                        "step": stage.step, "generator": stage.generator.get_state(),
                        "torch": torch.get_rng_state()}, tmp / "state.pt")


def fit(stage: CtcStage, until_step: int | None = None, say: Callable[[str], None] = print) -> float | None:
    """Steps until `train.ctc.steps` (or `until_step`), checkpointing every `train.save_every`;
    returns the mean loss of the last logged steps."""
    cfg = stage.cfg
    last = min(cfg.train.ctc.steps, until_step or cfg.train.ctc.steps)
    fill_cache(stage, [*stage.train, *stage.dev], say)
    log = stage.dir / "log.jsonl"
    started, losses, last_loss = time.monotonic(), [], None
    per_epoch = len(epoch_batches(stage, 0))
    while stage.step < last:
        epoch, offset = divmod(stage.step, per_epoch)
        for batch in epoch_batches(stage, epoch)[offset:]:
            losses.append(train_step(stage, batch))
            record: dict[str, Any] = {"step": stage.step}
            if stage.step % cfg.train.log_every == 0:
                last_loss = sum(losses) / len(losses)
                record.update(loss=round(last_loss, 4), lr=stage.scheduler.get_last_lr()[0],
                              elapsed_s=round(time.monotonic() - started, 1))
                losses = []
            if cfg.train.eval_every and stage.step % cfg.train.eval_every == 0 and stage.dev:
                record["dev_wer"] = round(dev_wer(stage, stage.dev), 2)
            if len(record) > 1:
                say(f"ctc {json.dumps(record)}")
                with open(log, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            if stage.step % cfg.train.save_every == 0 or stage.step == last:
                save(stage, stage.dir / f"{STEP_PREFIX}{stage.step:06d}", with_state=True)
                for old in step_dirs(stage.dir, "state.pt")[: -cfg.train.keep_checkpoints]:
                    shutil.rmtree(old)
            if stage.step >= last:
                break
    if stage.step >= cfg.train.ctc.steps:
        save(stage, stage.dir / "final", with_state=False)
        profile = error_profile(stage, stage.dev or stage.train[:200])
        profile.save(stage.dir / "final" / "errors.json")
        say(f"ctc: error profile on {'dev' if stage.dev else 'training'} utterances: substitutions "
            f"{profile.substitution:.3f}, deletions {profile.deletion:.3f}, insertions {profile.insertion:.3f}, "
            f"peak {profile.peak_mean:.2f} +- {profile.peak_std:.2f}")
    return last_loss


def load_bridge(cfg: Recipe, checkpoint: Path, encoder: SpeechEncoder, tokenizer: Any,
                embeddings: torch.Tensor) -> tuple[CtcBridge, CtcVocab]:
    """The head of a ctc-stage checkpoint (OUT/ctc/step-N or final), tied to the LLM's embeddings."""
    vocab = CtcVocab.load(checkpoint / "vocab.json", len(tokenizer))
    model = new_bridge(cfg, encoder, vocab, embeddings)
    model.load_state_dict(load_file(str(checkpoint / "projector.safetensors")), strict=True)
    return model.eval(), vocab


def score_checkpoint(cfg: Recipe, checkpoint: Path, manifests: Sequence[Path]
                     ) -> list[tuple[Path, list[Example], list[str], float]]:
    """Greedy-CTC text and WER of a ctc-stage checkpoint on each manifest's ASR lines (a learning-curve point):
    (manifest, examples, hypotheses, WER %) each."""
    from tympan.config import tympan_home
    from tympan.manifest import load_manifest
    from tympan.training.model.checkpoint import build_base

    base = build_base(cfg)
    embeddings = base.llm.get_input_embeddings().weight.detach().float()
    model, vocab = load_bridge(cfg, checkpoint, base.encoder, base.tokenizer, embeddings)
    cache = EncoderCache(tympan_home() / "cache", base.encoder, cfg.train.cache_dtype)
    out = []
    for manifest in manifests:
        examples = [e for e in load_manifest(manifest) if e.is_speech and e.task == "asr"]
        cache.fill([e for e in examples if not cache.has(e)], torch.device("cpu"), cfg.train.encode_batch_size)
        hyps = ctc_transcribe(model, base.tokenizer, vocab, [cache.get(e) for e in examples])
        out.append((manifest, examples, hyps, scoring.wer([e.target for e in examples], hyps,
                                                          scoring.normalize_english)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Greedy-CTC WER of a ctc-stage checkpoint on manifests' ASR lines (a learning-curve point)."""
    import argparse

    from tympan.training.recipe import load_config

    p = argparse.ArgumentParser(prog="python -m tympan.training.ctc_stage", description=main.__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True, help="OUT/ctc/step-NNNNNN or OUT/ctc/final")
    p.add_argument("--manifest", type=Path, action="append", required=True)
    p.add_argument("--show", type=int, default=0, help="print N hypotheses per manifest")
    args = p.parse_args(argv)
    for manifest, examples, hyps, wer in score_checkpoint(load_config(args.config), args.checkpoint, args.manifest):
        print(json.dumps({"manifest": str(manifest), "n": len(examples), "ctc_wer": round(wer, 2)}))
        for e, h in list(zip(examples, hyps, strict=True))[: args.show]:
            print(f"  ref: {e.target}\n  hyp: {h}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
