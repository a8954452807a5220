"""The training loop: the seed's three stages, one loop for CPU, one GPU or many (Accelerate).

Stage 1 `projector`: projector on speech (ASR, ST); encoder and LLM frozen, no LoRA.
Stage 2 `lora`: LoRA on text-only instructions; independent of stage 1.
Stage 3 `joint`: stage-1 projector + stage-2 LoRA trained together on speech and text
batches (an ST batch followed by its MT batch), each with its own learning rate.

Each stage runs in three phases: `setup` (examples, model, optimizer, scheduler, and the
state of the last step checkpoint when resuming), `fit` (the steps: batches, loss, optimizer,
log, dev loss, step checkpoints) and `finish` (the final checkpoint).

Every stage writes resumable checkpoints to OUT/<stage>/step-NNNNNN, a JSONL log to
OUT/<stage>/log.jsonl, and OUT/<stage>/final when done. Randomly initialised base
weights live in OUT/base so that every stage and every resume sees the same ones.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tympan.atomic import atomic_directory
from tympan.audio import load_audio
from tympan.config import to_dict, tympan_home
from tympan.errors import TympanError
from tympan.manifest import Example, load_manifests
from tympan.tasks import merged_templates
from tympan.training.batches import PlannedBatch, batch_stream, stage_examples, with_task_shares
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
from tympan.training.model.simulate import ErrorProfile
from tympan.training.model.speech_llm import SpeechLLM
from tympan.training.recipe import STAGES, Recipe, Stage
from tympan.training.resume import STEP_PREFIX, rng_state, set_rng_state, step_dirs, truncate_log
from tympan.training.schedule import lr_factor


class TrainError(TympanError, RuntimeError):
    """Training cannot start or continue (missing inputs, no data)."""


@dataclass
class StageOutcome:
    stage: str
    step: int
    final: Path | None  # None when stopped early (--until-step)
    last_loss: float | None


@dataclass
class StageData:
    speech: list[Example]
    text: list[Example]
    dev: list[Example]  # speech and text


@dataclass
class StageRun:
    """A stage in progress: built by `setup`, advanced by `fit`, saved by `finish`."""

    stage: Stage
    dir: Path
    data: StageData
    model: SpeechLLM  # the model itself, for saving and evaluation
    prepared: torch.nn.Module  # the same, as Accelerate wraps it for training (DDP)
    optimizer: Any  # Accelerate's wrapper around the AdamW optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    groups: list[dict[str, Any]]  # the optimizer's parameter groups, each named after a trained part
    trained: list[str]  # the parts this stage trains: projector, lora
    tasks: dict[str, list[str]]  # task -> target languages trained on
    stream: Iterator[PlannedBatch]
    step: int
    last_loss: float | None = None

    @property
    def log(self) -> Path:
        return self.dir / "log.jsonl"

    @property
    def final(self) -> Path:
        return self.dir / "final"


def _trained_parts(stage: Stage, cfg: Recipe) -> list[str]:
    projector = stage == "projector" or (stage == "joint" and cfg.train.joint.train_projector)
    return [part for part, on in (("projector", projector), ("lora", stage in ("lora", "joint"))) if on]


def _tasks_seen(examples: Sequence[Example]) -> dict[str, list[str]]:
    """Task -> sorted target languages, for the checkpoint's metadata."""
    tasks: dict[str, set[str]] = {}
    for e in examples:
        tasks.setdefault(e.task, set()).add(e.tgt_lang)
    return {t: sorted(langs) for t, langs in sorted(tasks.items())}


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
        return {task: set(langs) for task, langs in merged_templates(self.cfg.prompt.instructions).items()}

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
        """One stage in three phases: setup (or resume), fit up to `until_step`, finish."""
        assert stage in (*STAGES, "ctc")
        if stage == "ctc":
            return self._run_ctc(until_step, (init or {}).get("ctc"))
        final = self.out / stage / "final"
        if (final / "checkpoint.json").is_file():
            self._say(f"[{stage}] already finished: {final}")
            return StageOutcome(stage, read_meta(final)["step"], final, None)
        run = self.setup(stage, init or {})
        self.fit(run, until_step)
        outcome = self.finish(run)
        if "lora" in run.trained:
            # get_peft_model injected LoRA layers into the shared base LLM: take them out so
            # the next stage starts from the clean base.
            self.base.llm = run.model.llm.unload()
        return outcome

    def _run_ctc(self, until_step: int | None, init: Path | None) -> StageOutcome:
        """The CTC stage (training/ctc_stage.py): the bridge's head alone, on cached encoder outputs;
        a new run warm-starts from `init` (an earlier run's head) when given."""
        from tympan.training import ctc_stage

        final = self.out / "ctc" / "final"
        if (final / "projector.safetensors").is_file():
            self._say(f"[ctc] already finished: {final}")
            return StageOutcome("ctc", self.cfg.train.ctc.steps, final, None)
        if self.acc.num_processes > 1:
            raise TrainError("the ctc stage runs in one process (its steps cost milliseconds)")
        self.base.encoder.to(self.acc.device)
        cache = EncoderCache(tympan_home() / "cache", self.base.encoder, self.cfg.train.cache_dtype)
        embeddings = self.base.llm.get_input_embeddings().weight.detach().float()
        stage = ctc_stage.setup(self.cfg, self.out, self.train_examples, self.dev_examples, self.base.encoder,
                                self.base.tokenizer, embeddings, cache, init)
        start = f"from step {stage.step}" if stage.step or init is None else f"warm-started from {init}"
        self._say(f"[ctc] {len(stage.train)} utterances, vocabulary of {len(stage.vocab.ids)} tokens, {start}")
        loss = ctc_stage.fit(stage, until_step, self._say)
        done = final if (final / "projector.safetensors").is_file() else None
        return StageOutcome("ctc", stage.step, done, loss)

    # -- setup: examples, model, optimizer, resume state -----------------------------

    def setup(self, stage: Stage, init: dict[str, Path | None]) -> StageRun:
        """A stage ready for its next step: from the last step checkpoint if there is one."""
        data = self._stage_data(stage)
        checkpoints = step_dirs(self.out / stage)
        resume = checkpoints[-1] if checkpoints else None
        trained = _trained_parts(stage, self.cfg)
        model = self._stage_model(stage, trained, resume, init)
        groups = self._param_groups(stage, model, trained)
        scfg = self.cfg.stage(stage)
        optimizer = torch.optim.AdamW(groups, weight_decay=self.cfg.train.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(scfg.warmup_steps, scfg.steps))
        step = self._restore(stage, resume, optimizer, scheduler) if resume else self._fresh_start()
        prepared, prepared_optimizer = self.acc.prepare(model, optimizer)
        return StageRun(stage=stage, dir=self.out / stage, data=data, model=self.acc.unwrap_model(prepared),
                        prepared=prepared, optimizer=prepared_optimizer, scheduler=scheduler, groups=groups,
                        trained=trained, tasks=_tasks_seen([*data.speech, *data.text]),
                        stream=self._batches(stage, data, step), step=step)

    def _stage_data(self, stage: Stage) -> StageData:
        """The stage's training and dev examples, their encoder outputs cached."""
        scfg = self.cfg.stage(stage)
        speech, text = stage_examples(self.train_examples, stage, scfg.tasks)
        if stage == "joint" and not scfg.text_lines:
            text = []
        if stage == "projector" and not speech:
            raise TrainError("projector stage: no speech examples for tasks " + ", ".join(scfg.tasks))
        if stage == "lora" and not text:
            raise TrainError("lora stage: no text examples (text-only lines or transcripts) for its tasks")
        speech = with_task_shares(speech, scfg.task_shares, self.cfg.seed)
        text = with_task_shares(text, scfg.task_shares, self.cfg.seed)
        dev_speech, dev_text = stage_examples(self.dev_examples, stage, scfg.tasks)
        self._fill_cache(speech + dev_speech)
        return StageData(speech, text, dev_speech + dev_text)

    def _stage_model(self, stage: Stage, trained: list[str], resume: Path | None,
                     init: dict[str, Path | None]) -> SpeechLLM:
        """The model with the stage's trainable parts: from `resume`, else from the earlier stages."""
        from safetensors.torch import load_file

        proj_init, lora_init = self._init_paths(stage, init)
        projector_src = resume or proj_init
        lora_src = resume or lora_init
        projector_state = (
            load_file(str(projector_src / "projector.safetensors"))
            if projector_src and (projector_src / "projector.safetensors").is_file()
            else None
        )
        adapter_dir = lora_src / "adapter" if lora_src and (lora_src / "adapter").is_dir() else None
        model = assemble_model(self.cfg, self.base, lora="lora" in trained, projector_state=projector_state,
                               adapter_dir=adapter_dir, trainable=True)
        model.projector.requires_grad_("projector" in trained)
        model.encoder.requires_grad_(False)
        if self.cfg.projector.kind == "ctc" and proj_init is not None:
            errors = proj_init / "errors.json"
            if errors.is_file():  # how the head errs: what the text's simulated bridge inputs imitate
                model.errors = ErrorProfile.load(errors)
            # A frozen bridge learns nothing from the CTC loss: it would only cost time.
            model.ctc_weight = self.cfg.stage(stage).ctc_weight if stage == "joint" and "projector" in trained else 0.0
        model.to(self.acc.device)
        model.train()
        model.encoder.eval()
        if self.cfg.train.gradient_checkpointing:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def _init_paths(self, stage: str, init: dict[str, Path | None]) -> tuple[Path | None, Path | None]:
        """(projector checkpoint, lora checkpoint) the stage starts from."""
        if self.cfg.projector.kind == "ctc" and stage in ("lora", "joint"):
            # The bridge comes from the ctc stage (frozen in the lora stage: it only defines what text
            # looks like there); LoRA from the lora stage, for the joint one.
            bridge = init.get("projector") or self.out / "ctc" / "final"
            if not (bridge / "projector.safetensors").is_file():
                raise TrainError(f"{stage} stage needs a finished ctc stage: {bridge} has no projector.safetensors")
            return bridge, (self._finished("lora", init) if stage == "joint" else None)
        if stage != "joint":
            return None, None
        return self._finished("projector", init), self._finished("lora", init)

    def _finished(self, part: str, init: dict[str, Path | None]) -> Path:
        """The final checkpoint of an earlier stage that trained `part`, checked against this config."""
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
        return p

    def _param_groups(self, stage: Stage, model: SpeechLLM, trained: list[str]) -> list[dict[str, Any]]:
        """One optimizer group per trained part, each with its own learning rate."""
        scfg = self.cfg.stage(stage)
        groups: list[dict[str, Any]] = []
        if "projector" in trained:
            groups.append({"params": list(model.projector.parameters()), "lr": scfg.lr, "name": "projector"})
        if "lora" in trained:
            lora = [p for n, p in model.llm.named_parameters() if p.requires_grad and "lora_" in n]
            groups.append({"params": lora, "lr": scfg.lr_lora or scfg.lr, "name": "lora"})
        return groups

    def _restore(self, stage: Stage, resume: Path, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler) -> int:
        """Optimizer, scheduler and RNG states from a step checkpoint; its step."""
        acc = self.acc
        state = torch.load(resume / "trainer_state.pt", weights_only=False)
        if len(state["rng"]) != acc.num_processes:
            raise TrainError(f"{resume} was written by {len(state['rng'])} processes; resume it with as many "
                             f"(this run has {acc.num_processes})")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][acc.process_index], acc.device)
        step: int = state["step"]
        if acc.is_main_process:
            truncate_log(self.out / stage / "log.jsonl", step)
        self._say(f"[{stage}] resuming from {resume} (step {step})")
        return step

    def _fresh_start(self) -> int:
        # Each process draws its own dropout and masking noise.
        torch.manual_seed(self.cfg.seed + self.acc.process_index)
        return 0

    def _batches(self, stage: Stage, data: StageData, step: int) -> Iterator[PlannedBatch]:
        """The stage's batch stream, advanced to `step`."""
        cfg = self.cfg
        # Paired MT batches train only LoRA: they belong to the joint stage.
        pair = cfg.stage(stage).pair_text and stage == "joint"
        stream = batch_stream(data.speech, data.text, cfg.train.batch_size, cfg.seed, pair, cfg.train.length_buckets)
        for _ in range(step * self._micro_batches_per_step):  # replay the plan up to the resume point
            next(stream)
        return stream

    @property
    def _micro_batches_per_step(self) -> int:
        return self.cfg.train.grad_accum * self.acc.num_processes

    # -- fit: the step loop ---------------------------------------------------------------

    def fit(self, run: StageRun, until_step: int | None = None) -> None:
        """Train up to the stage's last step or `until_step`: log, evaluate, checkpoint on the way."""
        from tqdm import tqdm

        steps = self.cfg.stage(run.stage).steps
        stop_at = steps if until_step is None else min(steps, until_step)
        bar = tqdm(total=steps, initial=run.step, desc=run.stage, unit="step",
                   disable=not (self.show_progress and self.acc.is_main_process))
        run.dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        while run.step < stop_at:
            step_start = time.perf_counter()
            examples, lrs = self._step(run)
            assert run.last_loss is not None
            rate = examples * self.acc.num_processes / (time.perf_counter() - step_start)
            bar.update(1)
            bar.set_postfix(loss=f"{run.last_loss:.3f}", ex_s=f"{rate:.1f}")
            if self.acc.is_main_process and (run.step % self.cfg.train.log_every == 0 or run.step == stop_at):
                self._log(run, {"loss": round(run.last_loss, 6), "examples_per_s": round(rate, 2),
                                "elapsed_s": round(time.perf_counter() - t0, 2), **lrs})
            if self.cfg.train.eval_every and run.step % self.cfg.train.eval_every == 0 and run.data.dev:
                self._log_dev(run)
            if run.step % self.cfg.train.save_every == 0 or run.step == stop_at:
                self._save_step(run)
        bar.close()

    def _step(self, run: StageRun) -> tuple[int, dict[str, float]]:
        """One optimizer step over this process's micro-batches: (examples seen, learning rates used)."""
        acc = self.acc
        batches = [next(run.stream) for _ in range(self._micro_batches_per_step)]
        mine = batches[acc.process_index :: acc.num_processes]
        # Mean over the answer tokens of the whole step, all processes (DDP averages gradients).
        step_tokens = self._all_sum(sum(run.model.target_tokens(b.examples) for b in mine))
        loss_sum = self._accumulate(run, mine, acc.num_processes / step_tokens)
        if self.cfg.train.max_grad_norm > 0:
            acc.clip_grad_norm_([p for g in run.groups for p in g["params"]], self.cfg.train.max_grad_norm)
        run.optimizer.step()
        lrs = {f"lr_{g['name']}": run.optimizer.param_groups[j]["lr"] for j, g in enumerate(run.groups)}
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        run.last_loss = self._all_sum(loss_sum) / step_tokens
        return sum(len(b.examples) for b in mine), lrs

    def _accumulate(self, run: StageRun, batches: Sequence[PlannedBatch], scale: float) -> float:
        """Forward and backward over the micro-batches, gradients synchronised on the last; summed loss."""
        acc = self.acc
        loss_sum = 0.0
        for i, batch in enumerate(batches):
            examples = list(batch.examples)
            hidden = self._hidden(run.model, examples) if batch.is_speech else None
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + run.step * 1009 + i)
            sync = i == len(batches) - 1
            ctx = acc.no_sync(run.prepared) if not sync else nullcontext()
            with ctx, acc.autocast():
                summed = run.prepared(examples, hidden=hidden, gen=gen)
                acc.backward(summed * scale)
            loss_sum += float(summed.detach())
        return loss_sum

    def _all_sum(self, value: float) -> float:
        """`value` summed over all processes."""
        return float(self.acc.reduce(torch.tensor(float(value), device=self.acc.device), reduction="sum"))

    def _log(self, run: StageRun, entry: dict[str, Any]) -> None:
        with open(run.log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": run.stage, "step": run.step, **entry}) + "\n")

    @torch.no_grad()
    def _log_dev(self, run: StageRun) -> None:
        loss = self.evaluate_loss(run.model, run.data.dev)
        if self.acc.is_main_process:
            self._log(run, {"dev_loss": round(loss, 6)})

    def _save_step(self, run: StageRun) -> None:
        """A resumable checkpoint at this step; only the newest `keep_checkpoints` are kept."""
        self._save(run, run.dir / f"{STEP_PREFIX}{run.step:06d}", with_state=True)
        if self.acc.is_main_process:
            for old in step_dirs(run.dir)[: -self.cfg.train.keep_checkpoints]:
                shutil.rmtree(old)

    def _save(self, run: StageRun, path: Path, with_state: bool) -> None:
        from accelerate.utils import gather_object

        acc = self.acc
        rng = gather_object([rng_state(acc.device)]) if with_state else None
        if acc.is_main_process:
            state = None
            if with_state:
                state = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                         "rng": rng, "step": run.step}
            save_checkpoint(path, run.model, stage=run.stage, step=run.step, trained=run.trained,
                            base_dir=self.base_dir, trainer_state=state, tasks=run.tasks)
        acc.wait_for_everyone()

    # -- finish: the final checkpoint ----------------------------------------------------

    def finish(self, run: StageRun) -> StageOutcome:
        """The final checkpoint (after a last dev loss) when the stage has run all its steps."""
        steps = self.cfg.stage(run.stage).steps
        if run.step < steps:
            self._say(f"[{run.stage}] stopped at step {run.step} of {steps}; run again to resume")
            return StageOutcome(run.stage, run.step, None, run.last_loss)
        if run.data.dev:
            self._log_dev(run)
        self._save(run, run.final, with_state=False)
        self._say(f"[{run.stage}] finished at step {run.step}: {run.final}")
        return StageOutcome(run.stage, run.step, run.final, run.last_loss)

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
    stages = list(cfg.stages) if stage == "all" else [stage]
    trainer = Trainer(cfg, out, show_progress=show_progress)
    return trainer.run(stages, until_step=until_step, init=init)
