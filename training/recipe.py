"""The recipe: the model and its training in one TOML file (class `Recipe`), validated at load time."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from tympan.config import (
    ConfigError,
    apply_overrides,
    check,
    from_dict,
    non_negative,
    positive,
    probability,
    read_toml,
    to_dict,
    tympan_home,
)
from tympan.tasks import TASKS

EncoderKind = Literal["seamless_m4t_v2", "whisper"]
# tympan.tasks.TASKS as a type: a config naming another task fails to load (a test keeps them equal).
Task = Literal["asr", "st", "sqa"]
Stage = Literal["ctc", "projector", "lora", "joint"]
STAGES: tuple[Stage, ...] = ("projector", "lora", "joint")  # a dense projector's stages, in order
CTC_STAGES: tuple[Stage, ...] = ("ctc", "lora", "joint")  # the CTC bridge's (projector.kind = "ctc")

LORA_TARGETS_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class RandomEncoderConfig:
    """Dimensions of a randomly initialised encoder (tests and tiny runs)."""

    hidden_size: int = field(default=32, metadata=check(positive))
    layers: int = field(default=2, metadata=check(positive))
    heads: int = field(default=2, metadata=check(positive))
    ffn_size: int = field(default=64, metadata=check(positive))


@dataclass(frozen=True)
class EncoderConfig:
    kind: EncoderKind
    # Model id or local directory; empty: random initialisation from `random`.
    checkpoint: str = ""
    # Output of this layer (1-based); 0 means the last layer.
    layer: int = field(default=0, metadata=check(non_negative))
    # Longest audio accepted, seconds (Whisper's positional table covers 30 s).
    max_seconds: float = field(default=30.0, metadata=check(positive))
    random: RandomEncoderConfig | None = None


@dataclass(frozen=True)
class ProjectorConfig:
    # "dense": the seed's projector (frames averaged, Transformer, linear to the LLM's width).
    # "ctc": a CTC head over the LLM's vocabulary and the bridge to token-rate embeddings
    # (training/model/ctc.py); `frame_average` frames are then stacked, not averaged.
    kind: Literal["dense", "ctc"] = "dense"
    frame_average: int = field(default=3, metadata=check(positive))
    width: int = field(default=1024, metadata=check(positive))
    layers: int = field(default=2, metadata=check(non_negative))
    heads: int = field(default=8, metadata=check(positive))
    ffn_size: int = field(default=4096, metadata=check(positive))
    dropout: float = field(default=0.1, metadata=check(probability))
    # kind "ctc": frames whose blank probability reaches this are dropped by the bridge.
    blank_threshold: float = field(default=0.9, metadata=check(probability))
    # kind "ctc": a frame's vector is the weighted sum of its `top_k` best embedding rows ("topk"),
    # or its best row ("top1").
    bridge: Literal["topk", "top1"] = "topk"
    top_k: int = field(default=8, metadata=check(positive))


@dataclass(frozen=True)
class RandomLLMConfig:
    """A randomly initialised Llama with a tokenizer trained locally (tests and tiny runs)."""

    hidden_size: int = field(default=64, metadata=check(positive))
    layers: int = field(default=2, metadata=check(positive))
    heads: int = field(default=4, metadata=check(positive))
    kv_heads: int = field(default=2, metadata=check(positive))
    ffn_size: int = field(default=128, metadata=check(positive))
    vocab_size: int = field(default=512, metadata=check(positive))
    init_std: float = field(default=0.2, metadata=check(positive))


@dataclass(frozen=True)
class LLMConfig:
    # Model id or local directory of an AutoModelForCausalLM with a chat template.
    checkpoint: str = ""
    # Name of a GGUF file inside `checkpoint` to load (dequantised) instead of safetensors.
    gguf_file: str = ""
    random: RandomLLMConfig | None = None


@dataclass(frozen=True)
class LoraConfig:
    r: int = field(default=8, metadata=check(positive))
    alpha: float = field(default=16.0, metadata=check(positive))
    dropout: float = field(default=0.0, metadata=check(probability))
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS_LLAMA))


@dataclass(frozen=True)
class PromptConfig:
    # System message; empty: none (short prompts). Note that some chat templates add
    # their own default system message when none is given.
    system: str = ""
    # With no system message, still open the chat with an empty system turn: some templates
    # (SmolLM2's) otherwise insert a default system message of about 20 tokens per example.
    empty_system_turn: bool = False
    # Instruction templates by task and target language; `{question}` is filled for SQA.
    # Missing entries fall back to the built-in ones (tympan.tasks.INSTRUCTIONS).
    instructions: dict[str, dict[str, str]] = field(default_factory=dict)
    max_new_tokens: int = field(default=100, metadata=check(positive))


@dataclass(frozen=True)
class DataConfig:
    # JSONL manifests; relative paths are relative to the config file.
    train: list[str] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)
    # Longest target accepted, in tokens; longer examples fail at load time.
    max_target_tokens: int = field(default=256, metadata=check(positive))


@dataclass(frozen=True)
class StageConfig:
    steps: int = field(default=100, metadata=check(non_negative))
    lr: float = field(default=1e-4, metadata=check(positive))
    # Joint stage only: a separate learning rate for the LoRA parameters (0: use `lr`).
    lr_lora: float = field(default=0.0, metadata=check(non_negative))
    warmup_steps: int = field(default=0, metadata=check(non_negative))
    tasks: list[Task] = field(default_factory=lambda: list(get_args(Task)))
    # Joint stage: after a speech ST batch, train on the same examples as text (MT).
    pair_text: bool = True
    # Joint stage: also train on the manifests' text-only lines (the lora stage always does).
    # Off when text-only lines far outnumber speech and would crowd it out.
    text_lines: bool = True
    # Joint stage with the CTC bridge: the CTC loss's weight beside the LM loss (Soundwave's 0.3).
    ctc_weight: float = field(default=0.3, metadata=check(non_negative))
    # Joint stage: train the projector (the bridge) too. False trains LoRA alone on what the frozen
    # bridge really gives: a joint run that trained both made the CTC head worse (docs/training.md).
    train_projector: bool = True
    # Each task's share of the stage's examples, per modality (empty: as many as the data hold). The
    # lora stage's text is ~90 % QA and translation lines; ASR, the first thing users need, gets more.
    task_shares: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AugmentConfig:
    """Masking on encoder outputs, applied after the cache so it varies per epoch."""

    time_masks: int = field(default=0, metadata=check(non_negative))
    time_mask_max: int = field(default=10, metadata=check(non_negative))
    feature_masks: int = field(default=0, metadata=check(non_negative))
    feature_mask_max: int = field(default=8, metadata=check(non_negative))


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = field(default=8, metadata=check(positive))
    grad_accum: int = field(default=1, metadata=check(positive))
    precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    weight_decay: float = field(default=0.0, metadata=check(non_negative))
    max_grad_norm: float = field(default=1.0, metadata=check(non_negative))
    # Batch examples of similar length (sorted within windows of 32 batches): less padding.
    length_buckets: bool = False
    # Compute encoder outputs once per audio file and train from the cache.
    cache_encoder: bool = True
    cache_dtype: Literal["float32", "float16"] = "float32"
    encode_batch_size: int = field(default=8, metadata=check(positive))
    log_every: int = field(default=10, metadata=check(positive))
    save_every: int = field(default=200, metadata=check(positive))
    eval_every: int = field(default=0, metadata=check(non_negative))
    keep_checkpoints: int = field(default=2, metadata=check(positive))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    projector: StageConfig = field(default_factory=lambda: StageConfig(tasks=["asr", "st"]))
    lora: StageConfig = field(default_factory=StageConfig)
    joint: StageConfig = field(default_factory=lambda: StageConfig(steps=1000))
    # The CTC stage (projector kind "ctc"): the head alone on cached encoder outputs, ASR lines.
    ctc: StageConfig = field(default_factory=lambda: StageConfig(steps=2000, lr=1e-3, tasks=["asr"]))


@dataclass(frozen=True)
class HearingConfig:
    """Who writes a final's words (two-pass hearing, tympan/runtime/whisper.py).

    "ctc": the model's own path, the LLM reading the bridge's output (a CTC bridge's beam-search text is what was
    heard; with the seed's dense projector, the LLM hears the speech itself). "whisper": the first pass stays
    (partials, and nothing served where it heard nothing), and Whisper's own decoder reads the utterance for
    the final: ASR serves its text, the other tasks give its text to the LLM as embedding rows (a text bridge).
    """

    kind: Literal["ctc", "whisper"] = "ctc"
    # A CTranslate2 Whisper directory, or package:whisper-base / package:whisper-tiny.en (training/base_models.py).
    checkpoint: str = ""
    # The encoder reads at least window_s and at least pad_s past the speech (docs/hearing.md).
    window_s: float = field(default=10.0, metadata=check(positive))
    pad_s: float = field(default=1.0, metadata=check(positive))


@dataclass(frozen=True)
class TextLlmConfig:
    """An instruction-tuned LLM that answers from the second pass's text (tympan/runtime/text_llm.py): translation,
    questions and custom instructions, prompted with its own chat template; no training. Empty checkpoint: the
    speech LLM reads the heard text through the text bridge."""

    # package:qwen2.5-coder-0.5b-instruct (training/base_models.py), or a transformers model directory.
    checkpoint: str = ""
    max_new_tokens: int = field(default=128, metadata=check(positive))
    # "int8" / "int4": block-wise quantized MatMul weights (export/llm_graph.py quantize_graph); "none": fp32.
    quantize: Literal["int8", "int4", "none"] = "int8"


@dataclass(frozen=True)
class Recipe:
    encoder: EncoderConfig
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hearing: HearingConfig = field(default_factory=HearingConfig)
    text_llm: TextLlmConfig = field(default_factory=TextLlmConfig)
    seed: int = 0
    # Where the config came from (not a TOML key): relative data paths resolve against it.
    base_dir: str = field(default=".", metadata={"internal": True})

    def stage(self, name: Stage) -> StageConfig:
        return getattr(self.train, name)

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages `--stage all` runs, in order."""
        return CTC_STAGES if self.projector.kind == "ctc" else STAGES

    def resolve(self, path: str) -> Path:
        """A data path from the config: `$VARS` expanded (`$TYMPAN_HOME` defaults), relative to the file."""
        env = dict(os.environ)
        env.setdefault("TYMPAN_HOME", str(tympan_home()))
        expanded = os.path.expanduser(_expand(path, env))
        p = Path(expanded)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def to_toml_dict(self) -> dict[str, Any]:
        """The config as TOML data, with data paths made absolute so that it reads the same anywhere."""
        data = to_dict(self)
        data.pop("base_dir", None)
        for split in ("train", "dev"):
            data["data"][split] = [p if p.startswith("toy:") else str(self.resolve(p)) for p in data["data"][split]]
        return data


def _expand(path: str, env: dict[str, str]) -> str:
    import string

    try:
        return string.Template(path).substitute(env)
    except KeyError as e:
        raise ConfigError(f"path {path!r} uses the unset environment variable {e.args[0]}") from None


def validate(cfg: Recipe, source: str) -> Recipe:
    """Cross-field checks that a single field cannot express."""
    enc = cfg.encoder
    if not enc.checkpoint and enc.random is None:
        raise ConfigError(f"{source}: encoder: set encoder.checkpoint or an [encoder.random] table")
    if enc.random is not None and enc.random.hidden_size % enc.random.heads:
        raise ConfigError(f"{source}: encoder.random.hidden_size must be divisible by encoder.random.heads")
    if enc.random is not None and enc.layer > enc.random.layers:
        raise ConfigError(
            f"{source}: encoder.layer = {enc.layer} but the random encoder has {enc.random.layers} layers"
        )
    if cfg.projector.width % cfg.projector.heads:
        raise ConfigError(f"{source}: projector.width must be divisible by projector.heads")
    llm = cfg.llm
    if not llm.checkpoint and llm.random is None:
        raise ConfigError(f"{source}: llm: set llm.checkpoint or an [llm.random] table")
    if llm.gguf_file and not llm.checkpoint:
        raise ConfigError(f"{source}: llm.gguf_file needs llm.checkpoint (the directory holding it)")
    if llm.random is not None:
        r = llm.random
        if r.hidden_size % r.heads or r.heads % r.kv_heads:
            raise ConfigError(
                f"{source}: llm.random: hidden_size must be divisible by heads, and heads by kv_heads"
            )
    if cfg.hearing.kind == "whisper" and not cfg.hearing.checkpoint:
        raise ConfigError(f"{source}: hearing.kind = \"whisper\" needs hearing.checkpoint (a CTranslate2 Whisper "
                          "directory, or package:whisper-base)")
    if cfg.text_llm.checkpoint and cfg.hearing.kind != "whisper":
        raise ConfigError(f"{source}: text_llm.checkpoint needs hearing.kind = \"whisper\": the text LLM answers from "
                          "the second pass's text")
    if cfg.hearing.window_s > 30:
        raise ConfigError(f"{source}: hearing.window_s = {cfg.hearing.window_s}: Whisper reads at most 30 s")
    if not cfg.lora.target_modules:
        raise ConfigError(f"{source}: lora.target_modules must name at least one module")
    for task, langs in cfg.prompt.instructions.items():
        if task not in TASKS:
            raise ConfigError(f"{source}: prompt.instructions.{task}: unknown task ({', '.join(TASKS)})")
        if task == "sqa":
            for lang, text in langs.items():
                if "{question}" not in text:
                    raise ConfigError(f"{source}: prompt.instructions.sqa.{lang}: must contain {{question}}")
    for name in (*STAGES, "ctc"):
        stage = cfg.stage(name)
        if name != "joint" and not stage.train_projector:
            raise ConfigError(f"{source}: train.{name}.train_projector: only the joint stage has this choice")
        if not stage.tasks:
            raise ConfigError(f"{source}: train.{name}.tasks must name at least one task")
        for task, share in stage.task_shares.items():
            if task not in stage.tasks:
                raise ConfigError(f"{source}: train.{name}.task_shares.{task}: not one of the stage's tasks "
                                  f"({', '.join(stage.tasks)})")
            if not share > 0:
                raise ConfigError(f"{source}: train.{name}.task_shares.{task}: must be > 0, got {share}")
        missing = [t for t in stage.tasks if stage.task_shares and t not in stage.task_shares]
        if missing:
            raise ConfigError(f"{source}: train.{name}.task_shares: no share for {missing[0]!r} (give every task "
                              f"of train.{name}.tasks a share, or none)")
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """The recipe in `path`, with `dotted.key=VALUE` overrides (`tympan train --set`) applied first."""
    path = Path(path)
    data = read_toml(path)
    if "base_dir" in data:
        raise ConfigError(f"{path}: unknown key base_dir")
    if overrides:
        data = apply_overrides(data, overrides, str(path))
    data["base_dir"] = str(path.resolve().parent)
    cfg = from_dict(Recipe, data, source=str(path))
    return validate(cfg, str(path))


def config_from_dict(data: dict[str, Any], source: str, base_dir: str = ".") -> Recipe:
    data = {**data, "base_dir": base_dir}
    return validate(from_dict(Recipe, data, source=source), source)


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)
