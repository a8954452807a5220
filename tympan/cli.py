"""The `tympan` command: one entry point, subcommands registered by each package.

Registration imports nothing heavy, so `tympan --help` (and later `tympan serve`) does
not pay for torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tympan import __version__
from tympan.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from tympan import evaluate
    from tympan.daemon import cli as daemon_cli
    from tympan.export import cli as export_cli
    from tympan.training import cli as training_cli

    parser = argparse.ArgumentParser(
        prog="tympan", description="Instruction-following speech LLM: ASR, speech translation, spoken QA."
    )
    parser.add_argument("--version", action="version", version=f"tympan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    training_cli.register(sub)
    export_cli.register(sub)
    daemon_cli.register(sub)
    evaluate.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ConfigError, ValueError, RuntimeError, FileNotFoundError) as e:
        # Expected failures (bad config, bad manifest, missing checkpoint): one clear line.
        # TYMPAN_DEBUG=1 shows the traceback instead.
        if os.environ.get("TYMPAN_DEBUG"):
            raise
        print(f"tympan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tympan {args.command}: interrupted", file=sys.stderr)
        return 130
