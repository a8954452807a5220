"""Live translation through the daemon: how long after the end of speech a translation is complete, its length,
the daemon's CPU and memory, per target language, in one run.

    .venv/bin/python benchmarks/translation.py [--bundle DIR] [--threads 2] [--langs de,it,zh] [--limit N]
        [--manifest JSONL]

`tympan serve` on a free loopback port with `server.threads` = `--threads`; each real recording is streamed in its
own session at real-time pace (0.5 s of silence, the recording, 1.5 s of silence) with `{"task": "st",
"target_lang": LANG}`. Per language:
  - end of speech -> final: from sending the chunk that holds the end of speech to receiving the final, at the
    client. It includes the endpoint silence (`vad.silence_ms`): the final cannot come before it, though its decode
    starts at the pause (`vad.pause_ms`) and may be done by then.
  - tokens: the finals' length in the bundle's text-LLM tokens, to read the latency per sentence length.
  - RSS: the daemon's resident memory after the language's pass; CPU: its CPU time per second of speech.
The first token after the heard text (the text LLM's prefill) is benchmarks/llm_choice.py's "first token ms".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from common import (
    BenchmarkError,
    Listener,
    Utterance,
    cpu_model,
    cpu_seconds,
    manifest_utterances,
    quantile,
    real_utterances,
    rss_bytes,
    run_main,
    silence,
    stream,
)

LEAD_S, TAIL_S = 0.5, 1.5


async def translate_one(url: str, utt: Utterance, lang: str) -> tuple[float, str]:
    listener = Listener()
    if not await stream(url, [silence(LEAD_S), utt.audio, silence(TAIL_S)], listener,
                        request={"task": "st", "target_lang": lang}):
        raise BenchmarkError(f"{utt.id}: the stream failed: {listener.errors[0]}")
    finals = sorted(listener.finals, key=lambda f: f.end)
    if not finals:
        raise BenchmarkError(f"{utt.id}: no final")
    return finals[-1].latency_s * 1000, " ".join(f.text for f in finals if f.text.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="the bundle to serve (default: the default bundle)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--langs", default="de,it,zh")
    p.add_argument("--manifest", type=Path, help="the ASR lines of this manifest instead of the real recordings")
    p.add_argument("--limit", type=int, default=0, help="only the first N recordings")
    p.add_argument("--show", type=int, default=3, help="print N translations per language")
    args = p.parse_args(argv)
    from daemon_harness import DaemonProcess
    from tokenizers import Tokenizer

    from tympan.daemon.cli import default_bundle
    from tympan.runtime.bundle import load_bundle

    bundle = args.bundle or default_bundle()
    entry = load_bundle(bundle).manifest.text_llm
    tokenizer = Tokenizer.from_file(str(bundle / entry.dir / entry.tokenizer)) if entry is not None else None
    utterances = manifest_utterances(args.manifest) if args.manifest else real_utterances()
    utterances = utterances[: args.limit] if args.limit else utterances
    speech = sum(u.seconds for u in utterances)
    env = {"TYMPAN_SERVER_THREADS": str(args.threads), "TYMPAN_SERVER_HOST": "127.0.0.1"}
    rows = []
    with DaemonProcess(bundle, Path(tempfile.mkdtemp(prefix="tympan-bench-translation-")), "", env=env) as daemon:
        asyncio.run(translate_one(daemon.url, utterances[0], "de"))  # warm-up
        for lang in args.langs.split(","):
            cpu0 = cpu_seconds(daemon.proc.pid)
            results = [asyncio.run(translate_one(daemon.url, u, lang)) for u in utterances]
            cpu = cpu_seconds(daemon.proc.pid) - cpu0
            latencies = [r[0] for r in results]
            tokens = [len(tokenizer.encode(r[1], add_special_tokens=False).ids) if tokenizer else len(r[1].split())
                      for r in results]
            rows.append((lang, quantile(latencies, 0.5), quantile(latencies, 0.95), max(latencies),
                         statistics.mean(tokens), max(tokens), cpu / speech, rss_bytes(daemon.proc.pid) / 1e9))
            for u, (_, text) in list(zip(utterances, results, strict=True))[: args.show]:
                print(f"{lang} | {u.text} -> {text}")
    print()
    what = f"ASR lines of {args.manifest.name}" if args.manifest else "real recordings"
    print(f"{len(utterances)} {what} ({speech:.1f} s of speech) per language; bundle {bundle.name} "
          f"(text LLM: {entry.source if entry else 'none'}); {args.threads} threads; {cpu_model()}, "
          f"{os.cpu_count()} cores")
    print()
    print("| lang | end of speech -> final p50 ms | p95 ms | max ms | tokens mean | tokens max | CPU s per speech s "
          "| daemon RSS GB |")
    print("|---|---|---|---|---|---|---|---|")
    for lang, p50, p95, top, mean_tokens, max_tokens, cpu, rss in rows:
        print(f"| {lang} | {p50:.0f} | {p95:.0f} | {top:.0f} | {mean_tokens:.1f} | {max_tokens} | {cpu:.2f} | "
              f"{rss:.2f} |")
    return 0


if __name__ == "__main__":
    run_main(main)
