"""The `tympan` command: one entry point, subcommands registered by each package.

Registration imports nothing heavy, so `tympan --help` (and later `tympan serve`) does
not pay for torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tympan import __version__
from tympan.errors import TympanError

if TYPE_CHECKING:
    from tympan.evaluate import Runner
    from tympan.runtime.decode import DecodeSettings


# The page of the source tree's docs/ that explains each command (named in its --help).
DOCS = {
    "train": "docs/training.md", "data": "docs/training.md", "export": "docs/training.md (bundles: docs/model.md)",
    "serve": "docs/operations.md (clients: docs/protocols.md)", "stream": "docs/protocols.md",
    "infer": "docs/model.md", "eval": "docs/model.md (evaluation: docs/training.md)",
}


def build_parser() -> argparse.ArgumentParser:
    from tympan import evaluate
    from tympan.daemon import cli as daemon_cli
    from tympan.export import cli as export_cli
    from tympan.training import cli as training_cli

    parser = argparse.ArgumentParser(
        prog="tympan", description="Instruction-following speech LLM: ASR, speech translation, spoken QA.",
        epilog="Documentation: README.md, then docs/ in the source tree (model.md, protocols.md, operations.md, "
               "training.md, benchmarks.md, architecture.md).",
    )
    parser.add_argument("--version", action="version", version=f"tympan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    training_cli.register(sub)
    export_cli.register(sub)
    daemon_cli.register(sub)
    evaluate.register(sub, _open_checkpoint)
    for name, command in sub.choices.items():
        command.epilog = f"Documentation: {DOCS[name]}, in the source tree."
    return parser


def _open_checkpoint(path: Path, threads: int | None, settings: DecodeSettings) -> Runner:
    from tympan.training.model.runner import CheckpointRunner

    return CheckpointRunner(path, threads, settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (TympanError, OSError) as e:
        # Expected failures (bad config, bad manifest, missing checkpoint or file): one clear line.
        # Anything else is a bug and keeps its traceback.
        # TYMPAN_DEBUG=1 shows the traceback instead.
        if os.environ.get("TYMPAN_DEBUG"):
            raise
        print(f"tympan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tympan {args.command}: interrupted", file=sys.stderr)
        return 130
