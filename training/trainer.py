"""The training loop: the seed's three stages, one loop for CPU, one GPU or many (Accelerate).

Stage 1 `projector`: projector on speech (ASR, ST); encoder and LLM frozen, no LoRA.
Stage 2 `lora`: LoRA on text-only instructions; independent of stage 1.
Stage 3 `joint`: stage-1 projector + stage-2 LoRA trained together on speech and text
batches (an ST batch followed by its MT batch), each with its own learning rate.

Every stage writes resumable checkpoints to OUT/<stage>/step-NNNNNN, a JSONL log to
OUT/<stage>/log.jsonl, and OUT/<stage>/final when done. Randomly initialised base
weights live in OUT/base so that every stage and every resume sees the same ones.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tympan.atomic import atomic_directory
from tympan.audio import load_audio
from tympan.config import to_dict, tympan_home
from tympan.errors import TympanError
from tympan.manifest import Example, load_manifests
from tympan.training.batches import batch_stream, stage_examples
from tympan.training.cache import EncoderCache
from tympan.training.model.checkpoint import (
    Base,
    CheckpointError,
    assemble_model,
    build_base,
    check_base,
    first_difference,
    load_base,
    read_config,
    read_meta,
    save_base,
    save_checkpoint,
)
from tympan.training.model.speech_llm import SpeechLLM
from tympan.training.recipe import STAGES, Recipe

STEP_PREFIX = "step-"


class TrainError(TympanError, RuntimeError):
    """Training cannot start or continue (missing inputs, no data)."""


@dataclass
class StageOutcome:
    stage: str
    step: int
    final: Path | None  # None when stopped early (--until-step)
    last_loss: float | None


def _step_dirs(stage_dir: Path) -> list[Path]:
    dirs = [p for p in stage_dir.glob(f"{STEP_PREFIX}*") if (p / "checkpoint.json").is_file()]
    return sorted(dirs, key=lambda p: int(p.name[len(STEP_PREFIX) :]))


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _truncate_log(log: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run that stopped before its next checkpoint)."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a crash
    log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def resolve_manifest(cfg: Recipe, entry: str) -> Path:
    """A manifest path from the config; `toy:train` / `toy:dev` name the generated toy corpus."""
    if entry.startswith("toy:"):
        from tympan.training.toy import build_toy

        split = entry[4:]
        if split not in ("train", "dev"):
            raise TrainError(f"unknown toy split {entry!r} (toy:train, toy:dev)")
        return build_toy(tympan_home() / "toy") / f"{split}.jsonl"
    return cfg.resolve(entry)


class Trainer:
    def __init__(self, cfg: Recipe, out: Path, *, accelerator=None, show_progress: bool = True) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.cfg = cfg
        self.out = Path(out)
        # Text batches leave the projector unused; DDP must be told.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
        # cpu=True on a CPU-only host: without it, Accelerate ignores a torchrun process group
        # and every process would train alone.
        self.acc = accelerator or Accelerator(mixed_precision=cfg.train.precision, kwargs_handlers=[ddp],
                                              cpu=not torch.cuda.is_available())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != self.acc.num_processes:
            raise TrainError(f"launched as {world} processes but Accelerate sees {self.acc.num_processes}")
        from accelerate.utils import DistributedType

        if self.acc.distributed_type not in (DistributedType.NO, DistributedType.MULTI_GPU,
                                             DistributedType.MULTI_CPU):
            raise TrainError(
                f"distributed type {self.acc.distributed_type} is not supported: use data parallel "
                "(configs/accelerate/ddp.yaml). LoRA + projector on Llama-3.1-8B in bf16 fit one 80 GB GPU."
            )
        self.show_progress = show_progress
        self.train_examples = load_manifests([resolve_manifest(cfg, p) for p in cfg.data.train], self._known_langs())
        self.dev_examples = load_manifests([resolve_manifest(cfg, p) for p in cfg.data.dev], self._known_langs())
        if not self.train_examples:
            raise TrainError("no training manifests: set data.train in the config or pass --train")
        self.base = self._base()
        self._check_target_lengths()
        self.cache: EncoderCache | None = None

    def _check_target_lengths(self) -> None:
        examples = self.train_examples + self.dev_examples
        limit = self.cfg.data.max_target_tokens
        ids = self.base.tokenizer([e.target for e in examples], add_special_tokens=False)["input_ids"]
        for e, tokens in zip(examples, ids, strict=True):
            if len(tokens) > limit:
                raise TrainError(f"{e.where}: the target of {e.id!r} is {len(tokens)} tokens long, "
                                 f"above data.max_target_tokens = {limit}")

    def _say(self, message: str) -> None:
        """Progress messages go to stderr: stdout is for results."""
        if self.acc.is_main_process:
            print(message, file=sys.stderr, flush=True)

    def _known_langs(self) -> dict[str, set[str]]:
        from tympan.training.model.prompt import INSTRUCTIONS

        langs = {t: set(v) for t, v in INSTRUCTIONS.items()}
        for t, v in self.cfg.prompt.instructions.items():
            langs.setdefault(t, set()).update(v)
        return langs

    @property
    def base_dir(self) -> Path:
        return self.out / "base"

    def _base(self) -> Base:
        """Load OUT/base if a previous stage or run wrote it, else build and write it."""
        if (self.base_dir / "parts.json").is_file():
            try:
                check_base(self.base_dir, self.cfg)
            except CheckpointError as e:
                raise TrainError(str(e)) from None
            return load_base(self.base_dir, self.cfg)
        texts = [t for e in self.train_examples for t in (e.target, e.text, e.question) if t]
        base = build_base(self.cfg, texts)
        if self.acc.is_main_process:
            with atomic_directory(self.base_dir) as tmp:
                save_base(tmp, self.cfg, base)
        self.acc.wait_for_everyone()
        return base

    # -- data ---------------------------------------------------------------------------

    def _fill_cache(self, examples: Sequence[Example]) -> None:
        if not self.cfg.train.cache_encoder or not examples:
            return
        if self.cache is None:
            self.base.encoder.to(self.acc.device)
            self.cache = EncoderCache(tympan_home() / "cache", self.base.encoder, self.cfg.train.cache_dtype)
        mine = list(examples)[self.acc.process_index :: self.acc.num_processes]
        todo = [e for e in mine if not self.cache.has(e)]
        if todo:
            from tqdm import tqdm

            with tqdm(total=len(todo), desc="encoding", unit="utt", disable=not self.show_progress) as bar:
                self.cache.fill(todo, self.acc.device, self.cfg.train.encode_batch_size, bar.update)
        self.acc.wait_for_everyone()

    def _hidden(self, model: SpeechLLM, examples: Sequence[Example]) -> list[torch.Tensor]:
        if self.cache is not None:
            return [self.cache.get(e) for e in examples]
        audios = [load_audio(e.audio, model.encoder.sample_rate) for e in examples if e.audio]
        return model.encode(audios)

    # -- stages -------------------------------------------------------------------------

    def _init_paths(self, stage: str, init: dict[str, Path | None]) -> tuple[Path | None, Path | None]:
        """(projector checkpoint, lora checkpoint) the stage starts from."""
        if stage != "joint":
            return None, None
        paths = []
        for part in ("projector", "lora"):
            p = init.get(part) or self.out / part / "final"
            try:
                meta = read_meta(p)
            except Exception as e:
                raise TrainError(f"joint stage needs a finished {part} stage: {e}") from None
            if part not in meta["trained"]:
                raise TrainError(f"{p}: this checkpoint has no trained {part}")
            try:
                check_base(p / "base", self.cfg)
            except CheckpointError as e:
                raise TrainError(f"{part} checkpoint {p}: {e}") from None
            if part == "projector":
                diff = first_difference(to_dict(read_config(p).projector), to_dict(self.cfg.projector), "projector")
                if diff:
                    raise TrainError(f"projector checkpoint {p} has another projector ({diff})")
            paths.append(p)
        return paths[0], paths[1]

    def run(self, stages: Sequence[str], until_step: int | None = None,
            init: dict[str, Path | None] | None = None) -> list[StageOutcome]:
        outcomes = []
        for stage in stages:
            outcome = self.run_stage(stage, until_step=until_step, init=init or {})
            outcomes.append(outcome)
            if outcome.final is None:
                break
        return outcomes

    def run_stage(self, stage: str, until_step: int | None = None,
                  init: dict[str, Path | None] | None = None) -> StageOutcome:
        from safetensors.torch import load_file

        assert stage in STAGES
        cfg, acc = self.cfg, self.acc
        scfg = cfg.stage(stage)
        stage_dir = self.out / stage
        final = stage_dir / "final"
        if (final / "checkpoint.json").is_file():
            self._say(f"[{stage}] already finished: {final}")
            return StageOutcome(stage, read_meta(final)["step"], final, None)

        speech, text = stage_examples(self.train_examples, stage, scfg.tasks)
        if stage == "joint" and not scfg.text_lines:
            text = []
        if stage == "projector" and not speech:
            raise TrainError("projector stage: no speech examples for tasks " + ", ".join(scfg.tasks))
        if stage == "lora" and not text:
            raise TrainError("lora stage: no text examples (text-only lines or transcripts) for its tasks")
        dev_speech, dev_text = stage_examples(self.dev_examples, stage, scfg.tasks)
        self._fill_cache(speech + dev_speech)

        trains_projector = stage in ("projector", "joint")
        trains_lora = stage in ("lora", "joint")
        proj_init, lora_init = self._init_paths(stage, init or {})
        resume = _step_dirs(stage_dir)[-1] if _step_dirs(stage_dir) else None
        start = resume or None
        projector_src = start if start else proj_init
        lora_src = start if start else lora_init
        projector_state = (
            load_file(str(projector_src / "projector.safetensors"))
            if projector_src and (projector_src / "projector.safetensors").is_file()
            else None
        )
        adapter_dir = lora_src / "adapter" if lora_src and (lora_src / "adapter").is_dir() else None
        model = assemble_model(cfg, self.base, lora=trains_lora, projector_state=projector_state,
                               adapter_dir=adapter_dir, trainable=True)
        model.projector.requires_grad_(trains_projector)
        model.encoder.requires_grad_(False)
        model.to(acc.device)
        model.train()
        model.encoder.eval()
        if cfg.train.gradient_checkpointing:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        lora_params = [p for n, p in model.llm.named_parameters() if p.requires_grad and "lora_" in n]
        groups = []
        if trains_projector:
            groups.append({"params": list(model.projector.parameters()), "lr": scfg.lr, "name": "projector"})
        if trains_lora:
            groups.append({"params": lora_params, "lr": scfg.lr_lora or scfg.lr, "name": "lora"})
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(scfg.warmup_steps, scfg.steps))

        step = 0
        log = stage_dir / "log.jsonl"
        if resume is not None:
            state = torch.load(resume / "trainer_state.pt", weights_only=False)
            if len(state["rng"]) != acc.num_processes:
                raise TrainError(f"{resume} was written by {len(state['rng'])} processes; resume it with as many "
                                 f"(this run has {acc.num_processes})")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"][acc.process_index], acc.device)
            step = state["step"]
            if acc.is_main_process:
                _truncate_log(log, step)
            self._say(f"[{stage}] resuming from {resume} (step {step})")
        else:
            # Each process draws its own dropout and masking noise.
            torch.manual_seed(cfg.seed + acc.process_index)

        prepared, optimizer = acc.prepare(model, optimizer)
        unwrapped: SpeechLLM = acc.unwrap_model(prepared)
        trained = [p for p, on in (("projector", trains_projector), ("lora", trains_lora)) if on]
        tasks: dict[str, list[str]] = {}
        for e in [*speech, *text]:
            tasks.setdefault(e.task, [])
            if e.tgt_lang not in tasks[e.task]:
                tasks[e.task].append(e.tgt_lang)
        tasks = {t: sorted(langs) for t, langs in sorted(tasks.items())}

        micro_per_step = cfg.train.grad_accum * acc.num_processes
        # Paired MT batches train only LoRA: they belong to the joint stage.
        pair = scfg.pair_text and stage == "joint"
        stream = batch_stream(speech, text, cfg.train.batch_size, cfg.seed, pair, cfg.train.length_buckets)
        for _ in range(step * micro_per_step):  # replay the plan up to the resume point
            next(stream)

        def save(path: Path, with_state: bool) -> None:
            from accelerate.utils import gather_object

            rng = gather_object([_rng_state(acc.device)]) if with_state else None
            if acc.is_main_process:
                state = None
                if with_state:
                    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "rng": rng, "step": step}
                save_checkpoint(path, unwrapped, stage=stage, step=step, trained=trained,
                                base_dir=self.base_dir, trainer_state=state, tasks=tasks)
            acc.wait_for_everyone()

        from tqdm import tqdm

        stop_at = scfg.steps if until_step is None else min(scfg.steps, until_step)
        bar = tqdm(total=scfg.steps, initial=step, desc=stage, unit="step",
                   disable=not (self.show_progress and acc.is_main_process))
        stage_dir.mkdir(parents=True, exist_ok=True)
        last_loss = None
        t0 = time.perf_counter()
        while step < stop_at:
            step_start = time.perf_counter()
            n_examples = 0
            loss_sum = 0.0
            batches = [next(stream) for _ in range(micro_per_step)][acc.process_index :: acc.num_processes]
            # Mean over the answer tokens of the whole step, all processes (DDP averages gradients).
            local_tokens = sum(unwrapped.target_tokens(b.examples) for b in batches)
            step_tokens = float(acc.reduce(torch.tensor(float(local_tokens), device=acc.device), reduction="sum"))
            scale = acc.num_processes / step_tokens
            for i, batch in enumerate(batches):
                examples = list(batch.examples)
                n_examples += len(examples)
                hidden = self._hidden(unwrapped, examples) if batch.is_speech else None
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + i)
                sync = i == len(batches) - 1
                ctx = acc.no_sync(prepared) if not sync else nullcontext()
                with ctx, acc.autocast():
                    summed = prepared(examples, hidden=hidden, gen=gen)
                    acc.backward(summed * scale)
                loss_sum += float(summed.detach())
            if cfg.train.max_grad_norm > 0:
                acc.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.train.max_grad_norm)
            optimizer.step()
            lrs = {f"lr_{g['name']}": optimizer.param_groups[j]["lr"] for j, g in enumerate(groups)}
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last_loss = float(acc.reduce(torch.tensor(loss_sum, device=acc.device), reduction="sum")) / step_tokens
            rate = n_examples * acc.num_processes / (time.perf_counter() - step_start)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", ex_s=f"{rate:.1f}")
            if acc.is_main_process and (step % cfg.train.log_every == 0 or step == stop_at):
                entry = {"stage": stage, "step": step, "loss": round(last_loss, 6), "examples_per_s": round(rate, 2),
                         "elapsed_s": round(time.perf_counter() - t0, 2), **lrs}
                with open(log, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and (dev_speech or dev_text):
                self._log_dev(unwrapped, stage, step, dev_speech, dev_text, log)
            if step % cfg.train.save_every == 0 or step == stop_at:
                save(stage_dir / f"{STEP_PREFIX}{step:06d}", with_state=True)
                if acc.is_main_process:
                    for old in _step_dirs(stage_dir)[: -cfg.train.keep_checkpoints]:
                        shutil.rmtree(old)
        bar.close()
        outcome = self._finish(stage, step, scfg.steps, final, last_loss, unwrapped, save, dev_speech, dev_text, log)
        if trains_lora:
            # get_peft_model injected LoRA layers into the shared base LLM: take them out so
            # the next stage starts from the clean base.
            self.base.llm = unwrapped.llm.unload()
        return outcome

    def _finish(self, stage: str, step: int, steps: int, final: Path, last_loss: float | None,
                model: SpeechLLM, save: Callable[[Path, bool], None], dev_speech: Sequence[Example],
                dev_text: Sequence[Example], log: Path) -> StageOutcome:
        if step < steps:
            self._say(f"[{stage}] stopped at step {step} of {steps}; run again to resume")
            return StageOutcome(stage, step, None, last_loss)
        if dev_speech or dev_text:
            self._log_dev(model, stage, step, dev_speech, dev_text, log)
        save(final, False)
        self._say(f"[{stage}] finished at step {step}: {final}")
        return StageOutcome(stage, step, final, last_loss)

    @torch.no_grad()
    def _log_dev(self, model: SpeechLLM, stage: str, step: int, speech: Sequence[Example],
                 text: Sequence[Example], log: Path) -> None:
        loss = self.evaluate_loss(model, list(speech) + list(text))
        if self.acc.is_main_process:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"stage": stage, "step": step, "dev_loss": round(loss, 6)}) + "\n")

    @torch.no_grad()
    def evaluate_loss(self, model: SpeechLLM, examples: Sequence[Example]) -> float:
        """Mean loss per answer token on `examples`, without dropout or augmentation."""
        was_training = model.training
        model.eval()
        total = 0.0
        tokens = 0
        bs = self.cfg.train.batch_size
        for i in range(0, len(examples), bs):
            chunk = list(examples[i : i + bs])
            for modality in (True, False):
                part = [e for e in chunk if e.is_speech == modality]
                if part:
                    hidden = self._hidden(model, part) if modality else None
                    total += float(model(part, hidden=hidden))
                    tokens += model.target_tokens(part)
        model.train(was_training)
        model.encoder.eval()
        return total / max(1, tokens)


def train(cfg: Recipe, stage: str, out: Path, *, until_step: int | None = None,
          init: dict[str, Path | None] | None = None, show_progress: bool = True) -> list[StageOutcome]:
    stages = list(STAGES) if stage == "all" else [stage]
    trainer = Trainer(cfg, out, show_progress=show_progress)
    return trainer.run(stages, until_step=until_step, init=init)
