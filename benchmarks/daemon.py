"""Daemon benchmark: N concurrent real-time streams, end-of-speech-to-final latency and real-time factor.

    .venv/bin/python benchmarks/daemon.py [--bundle DIR] [--streams 1,4,8] [--seconds 30] [--max-new-tokens 16]

Starts `tympan serve` on a free loopback port (no MQTT), and for each N runs N clients at once,
each streaming human recordings (Debian alsa-utils) with pauses at real-time pace. Latency is
measured at the client: from the moment it sent the last voiced sample of an utterance (the
final's `end`) to the arrival of the final. A stream falls behind when its latency keeps
growing; the table shows the latency of each run's last finals beside its first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import Listener, cpu_seconds, quantile, scrape_metrics, silence, stream

RECORDINGS = ["Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right", "Side_Left",
              "Side_Right"]


def stream_audio(seconds: float, offset: int) -> np.ndarray:
    from daemon_harness import alsa_speech

    parts, total, i = [silence(0.5)], 0.5, offset
    while total < seconds:
        speech = alsa_speech(RECORDINGS[i % len(RECORDINGS)])
        parts += [speech, silence(1.5)]
        total += len(speech) / 16000 + 1.5
        i += 1
    return np.concatenate(parts)


async def client(url: str, audio: np.ndarray) -> list[tuple[float, float]]:
    """(stream time of the final's end, latency seconds) for each final."""
    listener = Listener()
    if not await stream(url, [audio], listener):
        raise RuntimeError(f"stream failed: {listener.errors[0]}")
    return [(f.end, f.latency_s) for f in listener.finals]


def metric(http: str, name: str) -> float:
    return scrape_metrics(http).get(name, float("nan"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="default: the default bundle")
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per stream")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="decode cap per utterance")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from daemon_harness import DaemonProcess

    from tympan.daemon.cli import default_bundle

    bundle = args.bundle or default_bundle()
    work = Path(tempfile.mkdtemp(prefix="tympan-bench-daemon-"))
    config = f"[server]\nthreads = {args.threads}\n[decode]\nmax_new_tokens = {args.max_new_tokens}\n"
    daemon = DaemonProcess(bundle, work, config).start()
    print(f"bundle {bundle}; {os.cpu_count()} cores; {args.threads} inference threads; "
          f"{args.seconds:.0f} s of speech and pauses per stream, real-time pace; decode cap {args.max_new_tokens}")
    print()
    print("| streams | finals | latency p50 ms | p95 ms | max ms | first/last finals' mean ms | RTF | daemon CPU |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for n in [int(x) for x in args.streams.split(",")]:
            cpu0, t0 = cpu_seconds(daemon.proc.pid), time.monotonic()
            compute0 = metric(daemon.http, "tympan_model_compute_seconds_total")
            audio0 = metric(daemon.http, "tympan_final_audio_seconds_total")

            async def run(n: int = n) -> list[list[tuple[float, float]]]:
                audios = [stream_audio(args.seconds, k) for k in range(n)]
                return await asyncio.gather(*(client(daemon.url, a) for a in audios))

            per_stream = asyncio.run(run())
            wall = time.monotonic() - t0
            cpu = (cpu_seconds(daemon.proc.pid) - cpu0) / wall
            latencies = sorted(lat * 1000 for s in per_stream for _, lat in s)
            firsts = [s[0][1] * 1000 for s in per_stream if s]
            lasts = [s[-1][1] * 1000 for s in per_stream if s]

            rtf = ((metric(daemon.http, "tympan_model_compute_seconds_total") - compute0)
                   / (metric(daemon.http, "tympan_final_audio_seconds_total") - audio0))
            print(f"| {n} | {len(latencies)} | {statistics.median(latencies):.0f} | {quantile(latencies, 0.95):.0f} | "
                  f"{latencies[-1]:.0f} | {statistics.mean(firsts):.0f} / {statistics.mean(lasts):.0f} | "
                  f"{rtf:.3f} | {cpu * 100:.0f}% |")
    finally:
        daemon.stop()
    print()
    print("RTF: the daemon's model compute seconds (partial re-decodes included) per second of finalised audio, "
          "in this run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
