"""One learning curve across many training runs: a checkpoint's figures appended as a JSONL row.

Each row: when, stage and step, the total steps behind it (all stages), hours of distinct
training audio in the manifests it was trained on, and `tympan eval` figures on the dev set
(a fixed subset) and on the real recordings; with a CTC bridge, ASR's `ctc_wer` (the greedy CTC
text alone) beside the full model's `wer`. A ctc-stage checkpoint (RUN/ctc/step-N, no LLM
trained yet) gives `ctc_wer` alone and needs `--config`. Run after every training session:

  python -m tympan.training.curve --checkpoint RUN/joint/step-000400 \
      --dev $TYMPAN_HOME/data/default/dev.jsonl --real $TYMPAN_HOME/data/real/real.jsonl \
      --limit 40 --out models/default/curve.jsonl

With `--bundle DIR` (the checkpoint exported, e.g. the default bundle), the figures are the bundle's as the daemon
serves them, its second pass of hearing included; the checkpoint gives the stage and steps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import soundfile as sf

from tympan.evaluate import BundleRunner, Runner, evaluate
from tympan.manifest import load_manifest
from tympan.training.ctc_stage import score_checkpoint
from tympan.training.model.checkpoint import read_config, read_meta
from tympan.training.model.runner import CheckpointRunner
from tympan.training.recipe import load_config
from tympan.training.resume import STEP_PREFIX

STAGE_ORDER = ("ctc", "projector", "lora", "joint")


def audio_hours(manifests: list[Path]) -> float:
    seen: set[Path] = set()
    seconds = 0.0
    for manifest in manifests:
        for ex in load_manifest(manifest):
            if ex.audio is not None and ex.audio not in seen:
                seen.add(ex.audio)
                seconds += sf.info(str(ex.audio)).duration
    return seconds / 3600


def total_steps(checkpoint: Path, stage: str, step: int) -> int:
    """Steps of this stage plus the finished stages before it in the same run directory."""
    run = checkpoint.parent.parent
    total = step
    for earlier in STAGE_ORDER[: STAGE_ORDER.index(stage)] if stage in STAGE_ORDER else ():
        final = run / earlier / "final"
        if (final / "checkpoint.json").is_file():
            total += int(read_meta(final).get("step", 0))
        elif earlier == "ctc" and (final / "projector.safetensors").is_file():
            total += max((_step_of(d, 0) for d in (run / "ctc").glob(f"{STEP_PREFIX}*")), default=0)
    return total


def is_ctc_stage(checkpoint: Path) -> bool:
    return checkpoint.parent.name == "ctc" and not (checkpoint / "checkpoint.json").is_file()


def curve_row(checkpoint: Path, dev: Path | None, real: Path | None, limit: int | None,
              threads: int | None, config: Path | None = None,
              train_hours: float | None = None, bundle: Path | None = None) -> dict[str, Any]:
    if is_ctc_stage(checkpoint):
        assert config is not None, "a ctc-stage checkpoint carries no recipe"
        cfg = load_config(config)
        stage, step = "ctc", _step_of(checkpoint, cfg.train.ctc.steps)
    else:
        meta = read_meta(checkpoint)
        cfg = read_config(checkpoint)
        stage, step = str(meta.get("stage", "?")), int(meta.get("step", 0))
    train_manifests = [cfg.resolve(m) for m in cfg.data.train if not m.startswith("toy:")]
    row: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "checkpoint": checkpoint.name,
        "stage": stage,
        "step": step,
        "total_steps": total_steps(checkpoint, stage, step),
        "train_audio_hours": round(train_hours if train_hours is not None
                                   else audio_hours([m for m in train_manifests if m.is_file()]), 2),
    }
    if stage == "ctc":
        manifests = {name: m for name, m in (("dev", dev), ("real", real)) if m is not None}
        scored = score_checkpoint(cfg, checkpoint, list(manifests.values()))
        for name, (_, examples, _, wer) in zip(manifests, scored, strict=True):
            row[name] = {"asr": {"en": {"ctc_wer": round(wer, 2), "n": len(examples)}}}
        return row
    runner: Runner = CheckpointRunner(checkpoint, threads=threads)
    if bundle is not None:
        served = BundleRunner(bundle, threads=threads)
        hearing = served.model.bundle.manifest.hearing
        row["served"] = f"bundle, hearing {hearing.source if hearing is not None else 'ctc'}"
        runner = served
    for name, manifest in (("dev", dev), ("real", real)):
        if manifest is None:
            continue
        # The real recordings are few (14): always all of them, so rows compare.
        report = evaluate(runner, load_manifest(manifest), limit=limit if name == "dev" else None)
        row[name] = report.to_json()
    return row


def _step_of(checkpoint: Path, final_step: int) -> int:
    """step-000400 -> 400; final -> the stage's configured steps."""
    name = checkpoint.name
    return int(name[len(STEP_PREFIX) :]) if name.startswith(STEP_PREFIX) else final_step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tympan.training.curve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--dev", type=Path, help="dev manifest (synthetic, held-out voices)")
    p.add_argument("--real", type=Path, help="real-recordings manifest (tympan data real)")
    p.add_argument("--limit", type=int, default=40, help="dev examples per task and language (all the real recordings)")
    p.add_argument("--threads", type=int)
    p.add_argument("--config", type=Path, help="the run's recipe (ctc-stage checkpoints carry none)")
    p.add_argument("--train-hours", type=float, metavar="H",
                   help="hours of training audio the checkpoint saw, where its manifests have grown since "
                        "(default: measured from the recipe's manifests as they are now)")
    p.add_argument("--bundle", type=Path, help="score the checkpoint's bundle as the daemon serves it instead")
    p.add_argument("--out", type=Path, required=True, help="JSONL file to append the row to")
    args = p.parse_args(argv)
    if is_ctc_stage(args.checkpoint) and args.config is None:
        p.error(f"{args.checkpoint} is a ctc-stage checkpoint: pass --config (the run's recipe)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.train_hours is not None and args.train_hours < 0:
        p.error(f"--train-hours must be >= 0, got {args.train_hours}")
    row = curve_row(args.checkpoint, args.dev, args.real, args.limit, args.threads, args.config, args.train_hours,
                    args.bundle)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(json.dumps(row, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
