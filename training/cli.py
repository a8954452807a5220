"""`tympan train` and `tympan data toy|build|real`: argument parsing only; the work is imported lazily."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the projector, the LoRA adapter, or both jointly",
                       description="Train one stage or all three stages; resumes from OUT if interrupted.")
    p.add_argument("--config", required=True, type=Path, help="TOML config (see configs/)")
    p.add_argument("--stage", default="all", choices=["ctc", "projector", "lora", "joint", "all"])
    p.add_argument("--out", required=True, type=Path, help="output directory (checkpoints, logs)")
    p.add_argument("--train", action="append", metavar="MANIFEST", help="training manifest (replaces data.train)")
    p.add_argument("--dev", action="append", metavar="MANIFEST", help="dev manifest (replaces data.dev)")
    p.add_argument("--until-step", type=int, metavar="N", help="checkpoint and stop at step N (resume later)")
    p.add_argument("--projector", type=Path, metavar="CKPT", help="joint stage: projector checkpoint to start from")
    p.add_argument("--lora", type=Path, metavar="CKPT", help="joint stage: LoRA checkpoint to start from")
    p.add_argument("--warm-start", type=Path, metavar="CKPT",
                   help="ctc stage: start a new run from an earlier run's head (OUT/ctc/final), e.g. once the "
                        "corpus has grown; its vocabulary may differ")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value, e.g. --set train.lora.steps=1915 (VALUE as TOML; repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    p.set_defaults(run=_train)

    d = sub.add_parser("data", help="build training data")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="KIND")
    toy = dsub.add_parser("toy", help="the toy corpus (tone-coded number words) used by configs/tiny.toml")
    toy.add_argument("--out", required=True, type=Path)
    toy.set_defaults(run=_toy)

    b = dsub.add_parser("build", help="the synthetic speech corpus: ASR, ST (de, it, zh) and SQA manifests",
                        description="Synthesise the training corpus offline from installed text and voices. "
                                    "Cached and resumable: rerun the same command after an interruption.")
    b.add_argument("--out", required=True, type=Path, help="corpus directory (manifests, audio/)")
    b.add_argument("--size", default="full", choices=["small", "full"],
                   help="small: a sample in under a minute; full: everything (default)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--jobs", type=int, default=2, help="synthesis worker processes (default 2)")
    b.add_argument("--max-hours", type=float, metavar="H",
                   help="stop training synthesis at H hours of audio (run again with more to continue)")
    b.add_argument("--engines", type=_engine_list, metavar="E,E", help="only these engines "
                   "(kokoro, piper, flite, festival, espeak; default all); another selection is another corpus")
    b.add_argument("--mix", type=_mix, metavar="E=SHARE,...",
                   help="share of training utterances per engine (default kokoro=0.35,piper=0.15,flite=0.2,"
                        "festival=0.05,espeak=0.25)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(run=_build)

    real = dsub.add_parser("real", help="the manifest of real human recordings (evaluation only)")
    real.add_argument("--out", required=True, type=Path)
    real.set_defaults(run=_real)


def _train(args: argparse.Namespace) -> int:
    from tympan.training.recipe import DataConfig, load_config, replace
    from tympan.training.trainer import train

    cfg = load_config(args.config, args.overrides)
    if args.train or args.dev:
        train_m = [str(Path(p).resolve()) for p in args.train] if args.train else cfg.data.train
        # New training data without new dev data: the config's dev set may not match it.
        dev_m = [str(Path(p).resolve()) for p in args.dev] if args.dev else ([] if args.train else cfg.data.dev)
        data = replace(cfg.data, train=train_m, dev=dev_m)
        assert isinstance(data, DataConfig)
        cfg = replace(cfg, data=data)
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    init = {"projector": args.projector, "lora": args.lora, "ctc": args.warm_start}
    outcomes = train(cfg, args.stage, args.out, until_step=args.until_step, init=init,
                     show_progress=not args.no_progress)
    for o in outcomes:
        state = f"final checkpoint {o.final}" if o.final else "stopped early (resumable)"
        loss = f", last loss {o.last_loss:.4f}" if o.last_loss is not None else ""
        print(f"{o.stage}: step {o.step}{loss}; {state}")
    return 0


def _toy(args: argparse.Namespace) -> int:
    from tympan.training.toy import build_toy

    out = build_toy(args.out)
    print(f"toy corpus in {out}")
    return 0


def _engine_list(value: str) -> list[str]:
    return [e.strip() for e in value.split(",") if e.strip()]


def _mix(value: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in value.split(","):
        name, sep, share = part.partition("=")
        try:
            mix[name.strip()] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected ENGINE=SHARE, got {part!r}") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"expected ENGINE=SHARE, got {part!r}")
    return mix


def _build(args: argparse.Namespace) -> int:
    from tympan.training.corpus.build import build_corpus
    from tympan.training.corpus.voices import ENGINES

    result = build_corpus(args.out, seed=args.seed, size=args.size, jobs=args.jobs,
                          engines=args.engines or list(ENGINES), progress=not args.no_progress,
                          max_hours=args.max_hours, mix=args.mix)
    hours = ", ".join(f"{s} {h:.2f} h" for s, h in result.hours.items())
    print(f"corpus in {result.out}: {result.done} of {result.planned} utterances ({hours})"
          + (f"; {result.failed} failed" if result.failed else ""))
    if result.interrupted:
        print("interrupted: run the same command again to resume")
        return 130
    if result.budget_reached:
        print(f"stopped at --max-hours {args.max_hours}: run again with more to continue")
    return 0


def _real(args: argparse.Namespace) -> int:
    from tympan.training.corpus.real import build_real_manifest

    print(f"real speech manifest: {build_real_manifest(args.out)}")
    return 0
