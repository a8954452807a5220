"""Ship a trained checkpoint inside the repository: the trained parts only, in fp16 if that is lossless.

The base weights stay in their packages (`package:` checkpoints); what ships is the projector,
the LoRA adapter, the config and the metadata: a few MB. Before writing fp16, the fp16 copy is
checked against the fp32 checkpoint on examples of a manifest: the greedy outputs must be the
same, else fp32 is shipped and the reason printed.

  python -m tympan.training.ship RUN/joint/final models/default --check $TYMPAN_HOME/data/default/dev.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tympan.atomic import atomic_directory
from tympan.config import tympan_home
from tympan.runtime.bundle import BESIDE_MODEL
from tympan.runtime.ctc_lm import LM_FILE
from tympan.training.model.checkpoint import CheckpointError, read_meta, takes_speech


def _portable(text: str) -> str:
    """This machine's $TYMPAN_HOME written as `$TYMPAN_HOME`: a shipped file names no local path."""
    return text.replace(str(tympan_home()), "$TYMPAN_HOME")


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating-point weights in `dtype`; integer tensors (a CTC bridge's LLM token ids) as they are."""
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _copy_trained(src: Path, dst: Path, dtype: torch.dtype) -> None:
    """checkpoint.json, config.toml, base/parts.json, the trained weights in `dtype` and an n-gram LM."""
    meta = read_meta(src)
    shutil.copy(src / "checkpoint.json", dst / "checkpoint.json")
    (dst / "config.toml").write_text(_portable((src / "config.toml").read_text(encoding="utf-8")), encoding="utf-8")
    (dst / "base").mkdir()
    shutil.copy(src / "base" / "parts.json", dst / "base" / "parts.json")
    if takes_speech(src):
        state = load_file(str(src / "projector.safetensors"))
        save_file(_cast(state, dtype), str(dst / "projector.safetensors"))
    if (src / LM_FILE).is_file():  # the beam search's n-gram LM (tympan.training.ngram), as it is
        shutil.copy(src / LM_FILE, dst / LM_FILE)
    if "lora" in meta["trained"]:
        (dst / "adapter").mkdir()
        for item in (src / "adapter").iterdir():
            if item.suffix == ".safetensors":
                state = load_file(str(item))
                save_file(_cast(state, dtype), str(dst / "adapter" / item.name))
            elif item.suffix == ".json":  # adapter_config.json; not PEFT's generated model card
                (dst / "adapter" / item.name).write_text(_portable(item.read_text(encoding="utf-8")),
                                                         encoding="utf-8")


def _greedy(checkpoint: Path, manifest: Path, limit: int) -> list[str]:
    from tympan.audio import load_audio
    from tympan.evaluate import speech_groups
    from tympan.manifest import load_manifest
    from tympan.training.model.runner import CheckpointRunner

    runner = CheckpointRunner(checkpoint)
    groups, _ = speech_groups(load_manifest(manifest), limit)
    out = []
    for group in groups.values():
        for ex in group:
            assert ex.audio is not None
            out.append(runner.respond(load_audio(ex.audio, runner.sample_rate), runner.instruction(ex), ex.task))
    return out


def ship(src: Path, dst: Path, check: Path | None, limit: int = 4) -> str:
    """Write `dst` from checkpoint `src`; returns the dtype shipped ("float16" or "float32")."""
    read_meta(src)
    random_parts = [n for n in ("encoder.safetensors", "llm") if (src / "base" / n).exists()]
    if random_parts:
        raise CheckpointError(f"{src}/base/{random_parts[0]}: a randomly initialised part; only checkpoints on "
                              "pretrained (package:) bases ship")
    with atomic_directory(dst) as tmp:
        _copy_trained(src, tmp, torch.float16)
        dtype = "float16"
        if check is not None:
            ref, half = _greedy(src, check, limit), _greedy(tmp, check, limit)
            changed = sum(a != b for a, b in zip(ref, half, strict=True))
            print(f"fp16 vs fp32 on {len(ref)} examples of {check}: {changed} outputs differ")
            if changed:
                shutil.rmtree(tmp)
                tmp.mkdir()
                _copy_trained(src, tmp, torch.float32)
                dtype = "float32"
        (tmp / "shipped.json").write_text(json.dumps({"from": str(src.name), "dtype": dtype}, indent=1) + "\n")
        for name in BESIDE_MODEL:  # not the checkpoint's: they outlive a new ship
            if (dst / name).is_file():
                shutil.copy(dst / name, tmp / name)
    return dtype


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tympan.training.ship", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--check", type=Path, help="manifest whose examples must decode the same in fp16")
    p.add_argument("--limit", type=int, default=4, help="examples per task and language for --check")
    args = p.parse_args(argv)
    dtype = ship(args.checkpoint, args.out, args.check, args.limit)
    print(f"shipped {args.checkpoint} to {args.out} in {dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
