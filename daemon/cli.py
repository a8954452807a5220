"""`tympan infer`: argument parsing only; the work is imported lazily."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tympan.errors import TympanError
from tympan.runtime.bundle import default_bundle


def add_bundle_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, help="bundle directory (default: the default bundle, built if missing)")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="run the streaming daemon (websocket, HTTP health/metrics, MQTT)")
    s.add_argument("--config", type=Path, help="daemon TOML config (see configs/daemon.toml)")
    add_bundle_argument(s)
    s.add_argument("--host", help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port (default 8765; 0 picks a free one)")
    s.add_argument("--wyoming-uri", help="also serve Wyoming speech-to-text at tcp://HOST:PORT (wyoming.uri)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(run=_serve)

    c = sub.add_parser("stream", help="stream a recording or the microphone to a daemon, print the results")
    c.add_argument("file", nargs="?", type=Path, help="WAV/FLAC file (any rate, mono or stereo)")
    c.add_argument("--mic", action="store_true", help="stream the microphone until Ctrl-C")
    c.add_argument("--url", default="ws://127.0.0.1:8765/v1/stream")
    c.add_argument("--token", help="bearer token, if the daemon requires one")
    c.add_argument("--task", default="asr", choices=["asr", "st", "sqa"])
    c.add_argument("--lang", help="target language (en, de, it, zh)")
    c.add_argument("--question", help="the question, for sqa")
    c.add_argument("--instruction", help="a free instruction instead of the task's")
    c.add_argument("--realtime", action="store_true", help="send at the pace of a live microphone")
    c.add_argument("--chunk-ms", type=int, default=100)
    c.add_argument("--json", action="store_true", help="print every event as a JSON line")
    c.set_defaults(run=_stream)

    p = sub.add_parser("infer", help="run the bundle's model on audio files (ASR, ST or SQA)")
    p.add_argument("audio", nargs="+", type=Path, help="WAV/FLAC files, any sample rate")
    add_bundle_argument(p)
    p.add_argument("--task", default="asr", choices=["asr", "st", "sqa"])
    p.add_argument("--lang", default=None, help="target language (default: en for asr, de for st)")
    p.add_argument("--question", help="the question, for sqa")
    p.add_argument("--instruction", help="a free instruction instead of the task's template")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(run=_infer)


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from tympan.daemon.server import run_daemon
    from tympan.daemon.settings import load_daemon_config

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_daemon_config(args.config, overrides={"server": {"host": args.host, "port": args.port,
                                                                 "bundle": str(args.bundle) if args.bundle else None},
                                                      "wyoming": {"uri": args.wyoming_uri}})
    bundle = Path(cfg.server.bundle) if cfg.server.bundle else default_bundle()
    return asyncio.run(run_daemon(cfg, bundle))


def _stream(args: argparse.Namespace) -> int:
    import asyncio

    from tympan.daemon.client import file_chunks, mic_chunks, printer, stream

    if bool(args.file) == bool(args.mic):
        raise TympanError("give a FILE or --mic")
    request: dict = {"task": args.task}
    if args.lang:
        request["target_lang"] = args.lang
    for key in ("question", "instruction"):
        if getattr(args, key):
            request[key] = getattr(args, key)
    chunks = mic_chunks(16000, args.chunk_ms) if args.mic else file_chunks(args.file, args.chunk_ms, args.realtime)
    events = asyncio.run(stream(args.url, chunks, request, printer(args.json), token=args.token))
    return 1 if any(e["type"] == "error" for e in events) else 0


def _infer(args: argparse.Namespace) -> int:
    from tympan.audio import load_audio
    from tympan.runtime.speech_model import SpeechModel

    model = SpeechModel.load(args.bundle or default_bundle())
    lang = args.lang or {"asr": "en", "st": "de", "sqa": "en"}[args.task]
    instruction = args.instruction or model.instruction(args.task, lang, args.question)
    for path in args.audio:
        text = model.respond(load_audio(path, model.sample_rate), instruction,
                             task=None if args.instruction else args.task)
        if args.json:
            print(json.dumps({"file": str(path), "task": args.task, "target_lang": lang, "text": text},
                             ensure_ascii=False))
        else:
            print(f"{path}: {text}")
    return 0
