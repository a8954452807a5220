"""`tympan train` and `tympan data toy`: argument parsing only; the work is imported lazily."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the projector, the LoRA adapter, or both jointly",
                       description="Train one stage or all three stages; resumes from OUT if interrupted.")
    p.add_argument("--config", required=True, type=Path, help="TOML config (see configs/)")
    p.add_argument("--stage", default="all", choices=["projector", "lora", "joint", "all"])
    p.add_argument("--out", required=True, type=Path, help="output directory (checkpoints, logs)")
    p.add_argument("--train", action="append", metavar="MANIFEST", help="training manifest (replaces data.train)")
    p.add_argument("--dev", action="append", metavar="MANIFEST", help="dev manifest (replaces data.dev)")
    p.add_argument("--until-step", type=int, metavar="N", help="checkpoint and stop at step N (resume later)")
    p.add_argument("--projector", type=Path, metavar="CKPT", help="joint stage: projector checkpoint to start from")
    p.add_argument("--lora", type=Path, metavar="CKPT", help="joint stage: LoRA checkpoint to start from")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    p.set_defaults(run=_train)

    d = sub.add_parser("data", help="build training data")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="KIND")
    toy = dsub.add_parser("toy", help="the toy corpus (tone-coded number words) used by configs/tiny.toml")
    toy.add_argument("--out", required=True, type=Path)
    toy.set_defaults(run=_toy)


def _train(args: argparse.Namespace) -> int:
    from .config import DataConfig, load_config, replace
    from .trainer import train

    cfg = load_config(args.config)
    if args.train or args.dev:
        train_m = [str(Path(p).resolve()) for p in args.train] if args.train else cfg.data.train
        # New training data without new dev data: the config's dev set may not match it.
        dev_m = [str(Path(p).resolve()) for p in args.dev] if args.dev else ([] if args.train else cfg.data.dev)
        data = replace(cfg.data, train=train_m, dev=dev_m)
        assert isinstance(data, DataConfig)
        cfg = replace(cfg, data=data)
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    outcomes = train(cfg, args.stage, args.out, until_step=args.until_step,
                     init={"projector": args.projector, "lora": args.lora}, show_progress=not args.no_progress)
    for o in outcomes:
        state = f"final checkpoint {o.final}" if o.final else "stopped early (resumable)"
        loss = f", last loss {o.last_loss:.4f}" if o.last_loss is not None else ""
        print(f"{o.stage}: step {o.step}{loss}; {state}")
    return 0


def _toy(args: argparse.Namespace) -> int:
    from .toy import build_toy

    out = build_toy(args.out)
    print(f"toy corpus in {out}")
    return 0
