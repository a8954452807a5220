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
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
RECORDINGS = ["Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right", "Side_Left",
              "Side_Right"]


def stream_audio(seconds: float, offset: int) -> np.ndarray:
    from daemon_harness import alsa_speech, silence

    parts, total, i = [silence(0.5)], 0.5, offset
    while total < seconds:
        speech = alsa_speech(RECORDINGS[i % len(RECORDINGS)])
        parts += [speech, silence(1.5)]
        total += len(speech) / 16000 + 1.5
        i += 1
    return np.concatenate(parts)


async def client(url: str, audio: np.ndarray, chunk_ms: int = 100) -> list[tuple[float, float]]:
    """(stream time of the final's end, latency seconds) for each final."""
    from websockets.asyncio.client import connect

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = 16000 * chunk_ms // 1000
    sent_at: list[tuple[float, float]] = []  # (stream seconds at the chunk's end, wall time it was sent)
    results: list[tuple[float, float]] = []
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "task": "asr", "sample_rate": 16000, "encoding": "pcm_s16le"}))
        await ws.recv()

        async def receive() -> None:
            async for message in ws:
                ev = json.loads(message)
                if ev["type"] == "final":
                    now = time.monotonic()
                    sent = next(w for s, w in sent_at if s >= ev["end"] - 1e-6)
                    results.append((ev["end"], now - sent))
                elif ev["type"] == "done":
                    return

        receiver = asyncio.create_task(receive())
        t0 = time.monotonic()
        for i in range(0, len(pcm) // 2, step):
            await asyncio.sleep(max(0.0, t0 + i / 16000 - time.monotonic()))
            await ws.send(pcm[2 * i : 2 * (i + step)])
            sent_at.append((min(i + step, len(pcm) // 2) / 16000, time.monotonic()))
        await ws.send(json.dumps({"type": "stop"}))
        await receiver
    return results


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return float("nan")


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
            compute0 = metric(daemon.port, "tympan_model_compute_seconds_total")
            audio0 = metric(daemon.port, "tympan_final_audio_seconds_total")

            async def run(n: int = n) -> list[list[tuple[float, float]]]:
                audios = [stream_audio(args.seconds, k) for k in range(n)]
                return await asyncio.gather(*(client(daemon.url, a) for a in audios))

            per_stream = asyncio.run(run())
            wall = time.monotonic() - t0
            cpu = (cpu_seconds(daemon.proc.pid) - cpu0) / wall
            latencies = sorted(lat * 1000 for s in per_stream for _, lat in s)
            firsts = [s[0][1] * 1000 for s in per_stream if s]
            lasts = [s[-1][1] * 1000 for s in per_stream if s]

            def p(q: float, latencies: list[float] = latencies) -> float:
                return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

            rtf = ((metric(daemon.port, "tympan_model_compute_seconds_total") - compute0)
                   / (metric(daemon.port, "tympan_final_audio_seconds_total") - audio0))
            print(f"| {n} | {len(latencies)} | {statistics.median(latencies):.0f} | {p(0.95):.0f} | "
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
