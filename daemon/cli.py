"""`tympan infer`: argument parsing only; the work is imported lazily."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tympan.config import tympan_home


def default_bundle() -> Path:
    """The default bundle, built first if missing, in another process: serving never imports training."""
    path = tympan_home() / "bundles" / "default"
    if not (path / "manifest.json").is_file():
        print(f"building the default bundle in {path} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "tympan", "export", "--default"], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def add_bundle_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, help="bundle directory (default: the default bundle, built if missing)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="run the bundle's model on audio files (ASR, ST or SQA)")
    p.add_argument("audio", nargs="+", type=Path, help="WAV/FLAC files, any sample rate")
    add_bundle_argument(p)
    p.add_argument("--task", default="asr", choices=["asr", "st", "sqa"])
    p.add_argument("--lang", default=None, help="target language (default: en for asr, de for st)")
    p.add_argument("--question", help="the question, for sqa")
    p.add_argument("--instruction", help="a free instruction instead of the task's template")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(run=_infer)


def _infer(args: argparse.Namespace) -> int:
    from tympan.audio import load_audio

    from .model import SpeechModel

    model = SpeechModel.load(args.bundle or default_bundle())
    lang = args.lang or {"asr": "en", "st": "de", "sqa": "en"}[args.task]
    instruction = args.instruction or model.prompts.instruction(args.task, lang, args.question)
    for path in args.audio:
        text = model.respond(load_audio(path, model.sample_rate), instruction)
        if args.json:
            print(json.dumps({"file": str(path), "task": args.task, "target_lang": lang, "text": text},
                             ensure_ascii=False))
        else:
            print(f"{path}: {text}")
    return 0
