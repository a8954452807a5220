"""Building the model from a config, and checkpoints: save (atomically) and load.

A checkpoint directory:
  checkpoint.json        format, stage, step, which parts are trained, tasks -> target languages seen
  config.toml            the config it was trained with
  base/                  parts.json; for randomly initialised parts, what no checkpoint id can
                         restore: tokenizer/ (trained locally), encoder.safetensors, llm/
  projector.safetensors  when the projector has been trained, and always for the CTC bridge
  adapter/               PEFT LoRA adapter, when LoRA has been trained
  trainer_state.pt       optimizer, scheduler and RNG states (resumable checkpoints only)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tympan import __version__
from tympan.atomic import atomic_directory
from tympan.config import ConfigError, dump_toml, to_dict
from tympan.errors import TympanError
from tympan.tasks import INSTRUCTIONS
from tympan.training.model.ctc import CtcBridge
from tympan.training.model.encoder import SpeechEncoder, build_encoder
from tympan.training.model.llm import load_pretrained, lora_config, random_llm, train_tokenizer
from tympan.training.model.projector import Projector
from tympan.training.model.prompt import CLOSE, OPEN
from tympan.training.model.speech_llm import SpeechLLM
from tympan.training.recipe import Recipe, config_from_dict

FORMAT = 1


class CheckpointError(TympanError, RuntimeError):
    """A checkpoint is missing, incomplete or of an unknown format."""


@dataclass
class Base:
    """The frozen parts: encoder, LLM (before LoRA) and tokenizer."""

    encoder: SpeechEncoder
    llm: nn.Module
    tokenizer: Any


def llm_dtype(cfg: Recipe) -> torch.dtype:
    # A frozen 8B LLM in bf16 halves its memory; trainable LoRA weights stay fp32 (PEFT).
    if cfg.train.precision == "bf16" and torch.cuda.is_available():
        return torch.bfloat16
    return torch.float32


def tokenizer_corpus(cfg: Recipe, texts: Iterable[str]) -> list[str]:
    corpus = [t for langs in INSTRUCTIONS.values() for t in langs.values()]
    corpus += [t for langs in cfg.prompt.instructions.values() for t in langs.values()]
    corpus += [OPEN, CLOSE, "user", "assistant", "system"]
    return corpus + list(texts)


def build_base(cfg: Recipe, texts: Iterable[str] = ()) -> Base:
    """Fresh base from the config; a random LLM gets a tokenizer trained on `texts`."""
    encoder = build_encoder(cfg.encoder, seed=cfg.seed)
    if cfg.llm.checkpoint:
        llm, tokenizer = load_pretrained(cfg.llm, llm_dtype(cfg))
    else:
        assert cfg.llm.random is not None
        tokenizer = train_tokenizer(tokenizer_corpus(cfg, texts), cfg.llm.random.vocab_size)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            llm = random_llm(cfg.llm.random, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    llm.requires_grad_(False)
    return Base(encoder, llm, tokenizer)


def base_identity(cfg: Recipe) -> dict[str, Any]:
    """The config keys that decide the base weights: a base built for others must not be reused."""
    return {"seed": cfg.seed, "encoder": to_dict(cfg.encoder), "llm": to_dict(cfg.llm)}


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two nested dicts, described."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = first_difference(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
            if found:
                return found
        return None
    return None if old == new else f"{prefix} = {old!r} there, {new!r} in this config"


def check_base(path: Path, cfg: Recipe) -> None:
    """Refuse a saved base built from other encoder/LLM settings than `cfg`'s."""
    file = path / "parts.json"
    if not file.is_file():
        raise CheckpointError(f"{path}: parts.json is missing (not a tympan base directory)")
    diff = first_difference(json.loads(file.read_text(encoding="utf-8")), base_identity(cfg))
    if diff:
        raise CheckpointError(f"{path} was built with other base settings ({diff}); use another output directory")


def save_base(path: Path, cfg: Recipe, base: Base) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "parts.json").write_text(json.dumps(base_identity(cfg), indent=2) + "\n", encoding="utf-8")
    if not cfg.llm.checkpoint:
        # A pretrained LLM's tokenizer comes with it; only a locally trained one is saved.
        base.tokenizer.save_pretrained(str(path / "tokenizer"))
    if not cfg.encoder.checkpoint:
        save_file({k: v.contiguous() for k, v in base.encoder.state_dict().items()}, str(path / "encoder.safetensors"))
    if not cfg.llm.checkpoint:
        base.llm.save_pretrained(str(path / "llm"))


def load_base(path: Path, cfg: Recipe) -> Base:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    encoder = build_encoder(cfg.encoder, seed=cfg.seed)
    if not cfg.encoder.checkpoint:
        file = path / "encoder.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{path}: the random encoder's weights (encoder.safetensors) are missing")
        encoder.load_state_dict(load_file(str(file)), strict=True)
    if cfg.llm.checkpoint:
        llm, tokenizer = load_pretrained(cfg.llm, llm_dtype(cfg))
    else:
        if not (path / "tokenizer").is_dir():
            raise CheckpointError(f"{path}: base/tokenizer is missing")
        tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
        if not (path / "llm").is_dir():
            raise CheckpointError(f"{path}: the random LLM's weights (llm/) are missing")
        llm = AutoModelForCausalLM.from_pretrained(str(path / "llm"), dtype=torch.float32)
    llm.requires_grad_(False)
    return Base(encoder, llm, tokenizer)


def new_projector(cfg: Recipe, base: Base, state: dict[str, torch.Tensor] | None = None) -> Projector | CtcBridge:
    """The configured projector, loaded from `state` when given. The CTC bridge always comes from a
    trained ctc stage (its vocabulary is part of its state) and is tied to the LLM's embedding rows."""
    embeddings = base.llm.get_input_embeddings().weight
    projector: Projector | CtcBridge
    if cfg.projector.kind == "ctc":
        if state is None or "vocab_ids" not in state:
            raise CheckpointError("projector.kind = \"ctc\": the bridge must come from a finished ctc stage "
                                  "(OUT/ctc/final); run `tympan train --stage ctc` first")
        projector = CtcBridge(cfg.projector, base.encoder.output_dim, embeddings.shape[1], state["vocab_ids"])
        projector.tie(embeddings)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed + 1)
            projector = Projector(cfg.projector, base.encoder.output_dim, embeddings.shape[1])
    if state is not None:
        projector.load_state_dict(state, strict=True)
    return projector


def assemble_model(
    cfg: Recipe,
    base: Base,
    *,
    lora: bool,
    projector_state: dict[str, torch.Tensor] | None = None,
    adapter_dir: Path | None = None,
    trainable: bool = False,
) -> SpeechLLM:
    """SpeechLLM from a base, with a fresh or loaded projector and an optional (fresh or loaded) LoRA."""
    projector = new_projector(cfg, base, projector_state)
    llm = base.llm
    if lora:
        from peft import PeftModel, get_peft_model

        if adapter_dir is not None:
            llm = PeftModel.from_pretrained(llm, str(adapter_dir), is_trainable=trainable)
        else:
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed + 2)
                llm = get_peft_model(llm, lora_config(cfg.lora))
    return SpeechLLM(cfg, base.encoder, projector, llm, base.tokenizer)


def save_checkpoint(
    path: Path,
    model: SpeechLLM,
    *,
    stage: str,
    step: int,
    trained: list[str],
    base_dir: Path,
    trainer_state: dict[str, Any] | None = None,
    tasks: dict[str, list[str]] | None = None,
) -> None:
    with atomic_directory(path) as tmp:
        shutil.copytree(base_dir, tmp / "base")
        (tmp / "config.toml").write_text(dump_toml(model.cfg.to_toml_dict()), encoding="utf-8")
        # The CTC bridge is saved even where it was not trained: the model cannot run without it.
        if "projector" in trained or isinstance(model.projector, CtcBridge):
            state = {k: v.detach().cpu().contiguous() for k, v in model.projector.state_dict().items()}
            save_file(state, str(tmp / "projector.safetensors"))
        if "lora" in trained:
            model.llm.save_pretrained(str(tmp / "adapter"))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        meta = {"format": FORMAT, "tympan_version": __version__, "stage": stage, "step": step, "trained": trained,
                "tasks": tasks or {}}
        # Written last: a directory without it is never taken for a checkpoint.
        (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_meta(path: Path) -> dict[str, Any]:
    meta_file = path / "checkpoint.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a tympan checkpoint (checkpoint.json missing)")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, this tympan reads {FORMAT}")
    return meta


def read_config(path: Path) -> Recipe:
    from tympan.config import read_toml

    try:
        return config_from_dict(read_toml(path / "config.toml"), source=str(path / "config.toml"))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def takes_speech(path: Path) -> bool:
    """Whether a checkpoint holds projector weights: one that trained them, or any stage of a CTC bridge
    recipe (the bridge, trained in the ctc stage, is saved by every later stage)."""
    return (path / "projector.safetensors").is_file()


def load_checkpoint(path: str | Path, trainable: bool = False) -> SpeechLLM:
    """The model of a checkpoint (LoRA unmerged), in eval mode unless `trainable`."""
    path = Path(path)
    meta = read_meta(path)
    cfg = read_config(path)
    base = load_base(path / "base", cfg)
    trained = meta["trained"]
    projector_state = load_file(str(path / "projector.safetensors")) if takes_speech(path) else None
    model = assemble_model(
        cfg,
        base,
        lora="lora" in trained,
        projector_state=projector_state,
        adapter_dir=path / "adapter" if "lora" in trained else None,
        trainable=trainable,
    )
    return model if trainable else model.eval()
