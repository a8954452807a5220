"""tympan against faster-whisper on the same real recordings, the same machine and thread count, in one run.

    .venv/bin/python benchmarks/peer.py [--bundle DIR] [--threads 2] [--whisper base,tiny.en]
        [--compute-type int8] [--repeat 1] [--manifest JSONL] [--json OUT]

faster-whisper is the engine behind WhisperLive, WhisperLiveKit and speaches; it loads the Whisper
CTranslate2 files that tympan's default encoder comes from (`tympan.training.model.base_models.whisper_ct2_dir`).

- tympan: `tympan serve` on a free loopback port with `server.threads` = `--threads`; each utterance is
  streamed in its own session at real-time pace (0.5 s of silence, the recording, 1.5 s of silence).
  Latency: from sending the chunk that holds the end of speech to receiving the final, at the client (it
  includes the wait for the end of turn: the end-of-turn model's, or `vad.silence_ms` with `[turn] detection =
  "silence"`). With the silence endpoint, after the endpoint: that latency less `vad.silence_ms`, what the final's
  decode adds once the endpoint has come (0 where the speculative decode at the pause was done).
  RTF: the daemon's model compute (partials included)
  per second of finalised audio, from /metrics. CPU: the daemon process' CPU time over the pass.
- faster-whisper: `WhisperModel(dir, device="cpu", compute_type, cpu_threads=--threads)`, each utterance
  transcribed whole, greedy (`beam_size=1, language="en", vad_filter=False,
  condition_on_previous_text=False`). Latency: the wall time of the call, i.e. its latency if called at the
  end of speech with no endpointing at all. RTF: that time per audio second. CPU: this process' CPU time.
- CPU is per second of recorded speech (the utterances, not the silences around them) for both, so the
  columns compare. One warm-up utterance per system is not counted. WER: `tympan.scoring.wer` (Whisper's
  English normalisation) over all utterances.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from common import (
    BenchmarkError,
    Listener,
    Utterance,
    cpu_model,
    cpu_seconds,
    manifest_utterances,
    quantile,
    real_utterances,
    run_main,
    scrape_metrics,
    silence,
    stream,
)

from tympan.atomic import write_json

LEAD_S, TAIL_S = 0.5, 1.5
JOIN_GAP_S = 0.35  # longer than the segmenter's pause (speculation), shorter than its endpoint
WHISPER_NAMES = {"base": "whisper-base", "tiny.en": "whisper-tiny.en"}


@dataclass
class Result:
    id: str
    reference: str
    hypothesis: str
    audio_s: float
    latency_ms: float | None  # None: no final came back for it
    stable: list[tuple[str, str]] | None = None  # tympan: (last stable prefix shown, final) per utterance part


@dataclass
class SystemRun:
    system: str
    results: list[Result]
    rtf: float
    cpu_per_audio_s: float
    notes: str = ""
    endpoint_ms: float | None = None  # a streaming system's endpoint silence, included in its latency

    def row(self) -> dict:
        from tympan.scoring import wer

        lat = [r.latency_ms for r in self.results if r.latency_ms is not None]
        return {"system": self.system,
                "wer_pct": round(wer([r.reference for r in self.results], [r.hypothesis for r in self.results]), 2),
                "latency_p50_ms": round(quantile(lat, 0.5), 1) if lat else None,
                "latency_p95_ms": round(quantile(lat, 0.95), 1) if lat else None,
                **self.after_endpoint(lat),
                "rtf": round(self.rtf, 4), "cpu_s_per_audio_s": round(self.cpu_per_audio_s, 4),
                "utterances": len(self.results), "missed": sum(r.latency_ms is None for r in self.results),
                **taken_back([pair for r in self.results for pair in (r.stable or [])]), "notes": self.notes}


    def after_endpoint(self, lat: list[float]) -> dict:
        if self.endpoint_ms is None or not lat:
            return {}
        after = [max(0.0, x - self.endpoint_ms) for x in lat]
        return {"after_endpoint_p50_ms": round(quantile(after, 0.5), 1),
                "after_endpoint_p95_ms": round(quantile(after, 0.95), 1)}


def taken_back(pairs: list[tuple[str, str]]) -> dict:
    """How much of what partials showed as stable the final contradicts: stable words (after Whisper's English
    normalisation) that are not the final's words at the same places. Only for streams with partials."""
    if not pairs:
        return {}
    from tympan.scoring import normalize_english

    shown = wrong = parts = 0
    for stable, final in pairs:
        s, f = normalize_english(stable).split(), normalize_english(final).split()
        shown += len(s)
        bad = sum(a != b for a, b in zip(s, f, strict=False)) + max(0, len(s) - len(f))
        wrong += bad
        parts += bad > 0
    return {"stable_words": shown, "stable_taken_back_pct": round(100 * wrong / shown, 1) if shown else 0.0,
            "parts_with_a_take_back": parts, "parts": len(pairs)}


def joined(utterances: list[Utterance], n: int) -> list[Utterance]:
    """Every `n` utterances as one, with short pauses between them."""
    gap = silence(JOIN_GAP_S)
    out = []
    for i in range(0, len(utterances), n):
        group = utterances[i : i + n]
        audio = np.concatenate([x for u in group for x in (u.audio, gap)][:-1])
        out.append(Utterance("+".join(u.id for u in group), audio, " ".join(u.text for u in group)))
    return out


# --- tympan -----------------------------------------------------------------------------------


async def stream_one(url: str, utt: Utterance) -> Result:
    listener = Listener()
    if not await stream(url, [silence(LEAD_S), utt.audio, silence(TAIL_S)], listener):
        raise BenchmarkError(f"{utt.id}: the stream failed: {listener.errors[0]}")
    finals = sorted(listener.finals, key=lambda f: f.end)
    text = " ".join(f.text for f in finals if f.text.strip())
    # The utterance's last final closes it: its latency is what a user waits for after speaking.
    latency = finals[-1].latency_s * 1000 if finals else None
    return Result(utt.id, utt.text, text, utt.seconds, latency, [(f.stable, f.text) for f in finals])


def run_tympan(bundle: Path, utterances: list[Utterance], threads: int, repeat: int) -> SystemRun:
    from daemon_harness import DaemonProcess

    work = Path(tempfile.mkdtemp(prefix="tympan-bench-peer-"))
    env = {"TYMPAN_SERVER_THREADS": str(threads), "TYMPAN_SERVER_HOST": "127.0.0.1"}
    with DaemonProcess(bundle, work, "", env=env) as daemon:
        asyncio.run(stream_one(daemon.url, utterances[0]))  # warm-up
        before, cpu0 = scrape_metrics(daemon.http), cpu_seconds(daemon.proc.pid)
        results = [asyncio.run(stream_one(daemon.url, u)) for _ in range(repeat) for u in utterances]
        after, cpu1 = scrape_metrics(daemon.http), cpu_seconds(daemon.proc.pid)
    compute = after["tympan_model_compute_seconds_total"] - before["tympan_model_compute_seconds_total"]
    finalised = after["tympan_final_audio_seconds_total"] - before["tympan_final_audio_seconds_total"]
    audio = sum(r.audio_s for r in results)
    from tympan.daemon.settings import DaemonConfig

    cfg = DaemonConfig()
    # With the silence endpoint the wait is known, and what the decode adds after it can be told apart; the
    # end-of-turn model waits as long as it judges, so only the whole latency means something.
    silence = cfg.turn.detection == "silence"
    wait = f"the {cfg.vad.silence_ms} ms endpoint silence" if silence else f"the end of turn ({cfg.turn.preset})"
    return SystemRun(f"tympan ({bundle.name}, {threads} threads)", results,
                     rtf=compute / finalised if finalised else float("nan"), cpu_per_audio_s=(cpu1 - cpu0) / audio,
                     notes=f"latency: end of speech to final over a real-time stream ({wait} included)",
                     endpoint_ms=float(cfg.vad.silence_ms) if silence else None)


# --- faster-whisper ---------------------------------------------------------------------------


def run_faster_whisper(name: str, utterances: list[Utterance], threads: int, compute_type: str,
                       repeat: int) -> SystemRun:
    from faster_whisper import WhisperModel

    from tympan.training.model.base_models import whisper_ct2_dir

    model = WhisperModel(str(whisper_ct2_dir(WHISPER_NAMES[name])), device="cpu", compute_type=compute_type,
                         cpu_threads=threads)

    def transcribe(utt: Utterance) -> str:
        segments, _ = model.transcribe(utt.audio, beam_size=1, language="en", vad_filter=False,
                                       condition_on_previous_text=False)
        return "".join(s.text for s in segments)  # segments is lazy: decoding happens here

    transcribe(utterances[0])  # warm-up
    results, wall_total, cpu_total = [], 0.0, 0.0
    for _ in range(repeat):
        for u in utterances:
            t0, c0 = time.perf_counter(), time.process_time()
            text = transcribe(u)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            wall_total, cpu_total = wall_total + wall, cpu_total + cpu
            results.append(Result(u.id, u.text, text.strip(), u.seconds, wall * 1000))
    audio = sum(r.audio_s for r in results)
    return SystemRun(f"faster-whisper {name} ({compute_type}, {threads} threads)", results,
                     rtf=wall_total / audio, cpu_per_audio_s=cpu_total / audio,
                     notes="latency: transcription time of the whole utterance, called at its end")


# --- report -----------------------------------------------------------------------------------


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print()
    print("| system | WER % | latency p50 ms | latency p95 ms | RTF | CPU s per audio s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        missed = f" ({r['missed']} of {r['utterances']} without a final)" if r["missed"] else ""
        print(f"| {r['system']}{missed} | {r['wer_pct']:.1f} | {fmt(r['latency_p50_ms'], '.0f')} | "
              f"{fmt(r['latency_p95_ms'], '.0f')} | {r['rtf']:.3f} | {r['cpu_s_per_audio_s']:.3f} |")
    print()
    for r in rows:
        print(f"{r['system']}: {r['notes']}")
        if "after_endpoint_p50_ms" in r:
            print(f"  after the endpoint: p50 {r['after_endpoint_p50_ms']:.0f} ms, "
                  f"p95 {r['after_endpoint_p95_ms']:.0f} ms")
        if "stable_words" in r:
            print(f"  partials: {r['stable_taken_back_pct']:.1f} % of the {r['stable_words']} words they showed as "
                  f"stable were not the final's ({r['parts_with_a_take_back']} of {r['parts']} finals)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="tympan bundle (default: the default bundle, built if missing)")
    p.add_argument("--threads", type=int, default=2, help="inference threads for both systems")
    p.add_argument("--whisper", default="base,tiny.en", help=f"faster-whisper models: {', '.join(WHISPER_NAMES)}")
    p.add_argument("--compute-type", default="int8", help="faster-whisper compute type (int8, float32, ...)")
    p.add_argument("--repeat", type=int, default=1, help="passes over the utterances (more latency samples)")
    p.add_argument("--limit", type=int, help="only the first N utterances (a quick check)")
    p.add_argument("--manifest", type=Path, help="a training-format JSONL manifest instead of the real recordings")
    p.add_argument("--joined", type=int, metavar="N", help="N recordings at a time joined into one utterance, with "
                   f"{JOIN_GAP_S:g} s pauses inside it (longer speech, pauses shorter than the endpoint)")
    p.add_argument("--json", type=Path, help="write the table rows and every utterance's result here")
    args = p.parse_args(argv)
    args.whisper = [w for w in args.whisper.split(",") if w]
    unknown = [w for w in args.whisper if w not in WHISPER_NAMES]
    if unknown:
        p.error(f"--whisper: unknown model {unknown[0]!r} (known: {', '.join(WHISPER_NAMES)})")
    for name in ("threads", "repeat", "limit", "joined"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be >= 1, got {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    utterances = manifest_utterances(args.manifest) if args.manifest else real_utterances()
    utterances = utterances[: args.limit] if args.limit else utterances
    if args.joined:
        utterances = joined(utterances, args.joined)
    from tympan.daemon.cli import default_bundle

    bundle = args.bundle or default_bundle()
    runs = [run_tympan(bundle, utterances, args.threads, args.repeat)]
    runs += [run_faster_whisper(w, utterances, args.threads, args.compute_type, args.repeat) for w in args.whisper]
    rows = [r.row() for r in runs]
    audio = sum(u.seconds for u in utterances)
    header = (f"{len(utterances)} real recordings ({audio:.1f} s of speech, "
              f"{statistics.mean(u.seconds for u in utterances):.1f} s each) x {args.repeat}; "
              f"{args.threads} threads each; {cpu_model()}, {os.cpu_count()} cores")
    print_table(rows, header)
    if args.json:
        data = {"header": header, "bundle": str(bundle), "threads": args.threads, "compute_type": args.compute_type,
                "rows": rows, "utterances": {r.system: [asdict(x) for x in r.results] for r in runs}}
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    run_main(main)
