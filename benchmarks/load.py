"""Load and soak: N simulated real-time clients stream real recordings at a daemon on loopback for M minutes.

    .venv/bin/python benchmarks/load.py [--bundle DIR | --url ws://127.0.0.1:PORT/v1/stream [--pid PID]]
        [--clients 8] [--minutes 20] [--reconnect] [--manifest JSONL | --recordings DIR] [--json OUT] [--check]
        [--memtrace DIR [--memtrace-every 60] [--frames 25]]

Starts `tympan serve` on a free loopback port (inference threads `--threads`, `limits.max_sessions` raised to
the client count), or attaches to a running daemon with `--url` (loopback only; `--pid` lets it read that
process' RSS and CPU). Each client streams 100 ms chunks at wall-clock pace: the recordings (default: the
Debian alsa-utils and pocketsphinx-testdata human recordings) in random order with 0.8-3 s pauses. Without
`--reconnect` a client keeps one session for the whole run; with it, a client plays a "recording" of 1-4
utterances per session, waits 0.5-5 s, and connects again, like people using a dictation app. At the end
no client starts another utterance: it sends `stop` and waits for its last finals.

Measured at the client: each final's latency (from sending the chunk that holds its end of speech to its
arrival), how far behind the audio partials arrive, whether sending ever backs up (a chunk going out later
than its real-time schedule), the wait from `stop` to `done`, errors and reconnects. Sampled every few
seconds: the daemon's RSS (/proc/PID/status VmRSS) and CPU (/proc/PID/stat), and its /metrics (sessions,
queue depth, compute). The report has latency per time window, so lag growth shows, and RSS drift: the mean
RSS of the last quarter after warm-up against the first quarter. `--check` exits 1 unless RSS stays within
10 %, latency does not grow and nothing failed.

With `--memtrace DIR` the daemon runs under benchmarks/memtrace.py: every `--memtrace-every` seconds and at
the end it writes a tracemalloc snapshot and its memory figures (RSS, glibc heap, garbage collector, live
sessions) to DIR; the report adds them against the sessions started, and the allocation sites that grew most
from the first snapshot after warm-up to the last. Tracing slows the daemon several-fold (latency figures
mean little then); `--frames 0` records the figures without it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import memtrace
import numpy as np
from common import (
    BenchmarkError,
    Final,
    Listener,
    Utterance,
    cpu_seconds,
    directory_utterances,
    http_base,
    manifest_utterances,
    quantile,
    real_utterances,
    require_loopback,
    rss_bytes,
    run_main,
    scrape_metrics,
    silence,
    stream,
)

from tympan.atomic import write_json

MAX_CLIENTS = 64
MAX_MINUTES = 120.0
GAP_S = (0.8, 3.0)  # pause after each utterance
THINK_S = (0.5, 5.0)  # between sessions, with --reconnect
UTTERANCES_PER_RECORDING = (1, 4)
LATE_S = 0.25  # a chunk this late was held up (socket backed up, or the client fell behind)
RSS_LIMIT_PCT = 10.0
METRICS = {"sessions_active": "tympan_sessions_active", "queue_depth": "tympan_queue_depth",
           "finals_total": "tympan_finals_total", "sessions_total": "tympan_sessions_total",
           "compute_s": "tympan_model_compute_seconds_total", "final_audio_s": "tympan_final_audio_seconds_total",
           "lingering": "tympan_sessions_lingering"}


# --- what the clients see, binned by time -----------------------------------------------------


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    partial_lags: array = field(default_factory=lambda: array("f"))  # many: token-by-token partials
    max_send_delay_s: float = 0.0
    late_chunks: int = 0
    chunks: int = 0
    errors: int = 0
    sessions: int = 0
    done_waits: list[float] = field(default_factory=list)


class Timeline:
    """Every client's events, in windows of `width` seconds from the start of the load."""

    def __init__(self, start: float, width: float) -> None:
        self.start, self.width = start, width
        self.windows: dict[int, Window] = {}
        self.finals: list[tuple[float, float]] = []  # (seconds since start, latency)

    def at(self, t: float) -> Window:
        return self.windows.setdefault(int(max(0.0, t - self.start) // self.width), Window())


class ClientRecorder(Listener):
    """One client's events: kept per client (for per-stream lag) and added to the shared timeline."""

    def __init__(self, index: int, timeline: Timeline) -> None:
        super().__init__()
        self.index, self.timeline = index, timeline
        self.sessions = 0
        self.late_chunks = 0

    def final(self, f: Final) -> None:
        self.finals.append(f)
        self.timeline.at(f.at).latencies.append(f.latency_s)
        self.timeline.finals.append((f.at - self.timeline.start, f.latency_s))

    def partial(self, at: float, lag_s: float) -> None:
        self.timeline.at(at).partial_lags.append(lag_s)

    def sent(self, at: float, delay_s: float) -> None:
        super().sent(at, delay_s)
        w = self.timeline.at(at)
        w.chunks += 1
        w.max_send_delay_s = max(w.max_send_delay_s, delay_s)
        if delay_s > LATE_S:
            w.late_chunks += 1
            self.late_chunks += 1

    def error(self, at: float, what: str) -> None:
        super().error(at, what)
        self.timeline.at(at).errors += 1

    def done(self, at: float, wait_s: float) -> None:
        self.timeline.at(at).done_waits.append(wait_s)

    def session(self, at: float) -> None:
        self.sessions += 1
        self.timeline.at(at).sessions += 1

    def report(self) -> dict:
        lat = [f.latency_s for f in self.finals]
        return {"client": self.index, "sessions": self.sessions, "finals": len(lat),
                "latency_p50_ms": ms(quantile(lat, 0.5)) if lat else None,
                "latency_p95_ms": ms(quantile(lat, 0.95)) if lat else None,
                "latency_max_ms": ms(max(lat)) if lat else None,
                "max_send_delay_ms": ms(self.max_send_delay_s), "late_chunks": self.late_chunks,
                "errors": len(self.errors)}


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# --- the simulated users ----------------------------------------------------------------------


def utterance_with_pause(rng: random.Random, utterances: list[Utterance]) -> np.ndarray:
    return np.concatenate([rng.choice(utterances).audio, silence(rng.uniform(*GAP_S))])


def talk(rng: random.Random, utterances: list[Utterance]) -> Iterator[np.ndarray]:
    """An endless stream of speech and pauses, one utterance and its pause a piece."""
    yield silence(rng.uniform(0.2, 1.0))
    while True:
        yield utterance_with_pause(rng, utterances)


def recording(rng: random.Random, utterances: list[Utterance]) -> list[np.ndarray]:
    """What one session of a reconnecting user says: a few utterances, ending in silence."""
    n = rng.randint(*UTTERANCES_PER_RECORDING)
    return [silence(rng.uniform(0.2, 1.0)), *(utterance_with_pause(rng, utterances) for _ in range(n)), silence(0.7)]


async def user(url: str, utterances: list[Utterance], recorder: ClientRecorder, rng: random.Random, until: float,
               reconnect: bool, stagger_s: float) -> None:
    await asyncio.sleep(rng.uniform(0, stagger_s))
    while time.monotonic() < until:
        recorder.session(time.monotonic())
        if reconnect:
            ok = await stream(url, recording(rng, utterances), recorder, until=until)
            pause = rng.uniform(*THINK_S)
        else:
            ok = await stream(url, talk(rng, utterances), recorder, until=until)
            pause = 0.0
        if not ok:
            pause = 2.0  # back off before trying again, as a real client would
        await asyncio.sleep(max(0.0, min(pause, until - time.monotonic())))


async def run_users(url: str, utterances: list[Utterance], recorders: list[ClientRecorder], seed: int,
                    until: float, reconnect: bool, stagger_s: float) -> None:
    await asyncio.gather(*(user(url, utterances, r, random.Random(seed * 1000 + r.index), until, reconnect,
                                stagger_s) for r in recorders))


# --- the daemon, sampled from another thread --------------------------------------------------


class Sampler(threading.Thread):
    """Every `every` seconds: the daemon's RSS and CPU (when its pid is known), its /metrics, and this
    process' own CPU (the load generator must not be the bottleneck)."""

    def __init__(self, http: str, pid: int | None, start_time: float, every: float, timeline: Timeline,
                 progress_every: float, snapshot_every: float | None = None) -> None:
        super().__init__(daemon=True)
        self.http, self.pid, self.start_time, self.every = http, pid, start_time, every
        self.timeline, self.progress_every = timeline, progress_every
        self.snapshot_every, self.snapshots = snapshot_every, 0
        self.samples: list[dict] = []
        self.stopping = threading.Event()
        self.last = (time.monotonic(), cpu_seconds(pid) if pid else 0.0, time.process_time())

    def sample(self) -> dict:
        now = time.monotonic()
        s: dict = {"t": round(now - self.start_time, 2)}
        cpu = self_cpu = 0.0
        if self.pid:
            try:
                cpu = cpu_seconds(self.pid)
                s["rss_mb"] = round(rss_bytes(self.pid) / 2**20, 1)
            except (OSError, BenchmarkError):
                s["rss_mb"] = None  # the daemon is gone: the clients' errors say the rest
        self_cpu = time.process_time()
        t0, cpu0, self0 = self.last
        if now - t0 >= 0.5:  # the first sample, at the start, has no interval to measure over
            if self.pid and s.get("rss_mb") is not None:
                s["cpu_pct"] = round(100 * (cpu - cpu0) / (now - t0), 1)
            s["loadgen_cpu_pct"] = round(100 * (self_cpu - self0) / (now - t0), 1)
            self.last = (now, cpu, self_cpu)
        try:
            metrics = scrape_metrics(self.http)
            s.update({k: metrics.get(name) for k, name in METRICS.items()})
        except OSError as e:
            s["metrics_error"] = str(e)
        return s

    def snapshot(self) -> None:
        """Ask a daemon run under benchmarks/memtrace.py for a snapshot; the sample notes its number."""
        assert self.pid is not None
        self.snapshots += 1
        self.samples[-1]["memtrace"] = self.snapshots
        os.kill(self.pid, signal.SIGUSR2)

    def run(self) -> None:
        next_progress, next_snapshot = self.progress_every, 0.0
        while not self.stopping.wait(max(0.0, self.start_time + len(self.samples) * self.every - time.monotonic())):
            self.samples.append(self.sample())
            if self.snapshot_every and self.samples[-1]["t"] >= next_snapshot:
                self.snapshot()
                next_snapshot += self.snapshot_every
            if self.samples[-1]["t"] >= next_progress:
                progress(self.samples[-1], self.timeline)
                next_progress += self.progress_every

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.samples.append(self.sample())
        if self.snapshot_every:
            self.snapshot()


def progress(s: dict, timeline: Timeline) -> None:
    recent = [lat for t, lat in list(timeline.finals) if t > s["t"] - 60]
    p95 = f"{quantile(recent, 0.95) * 1000:.0f} ms" if recent else "-"
    rss = f"{s['rss_mb']:.0f} MB" if s.get("rss_mb") else "-"
    print(f"[{s['t'] / 60:5.1f} min] finals {len(timeline.finals)}, last minute's latency p95 {p95}, RSS {rss}, "
          f"sessions {s.get('sessions_active')}", file=sys.stderr, flush=True)


# --- the report -------------------------------------------------------------------------------


def latency_stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": ms(quantile(values, 0.5)), "p95_ms": ms(quantile(values, 0.95)),
            "p99_ms": ms(quantile(values, 0.99)), "max_ms": ms(max(values))}


def window_rows(timeline: Timeline, samples: list[dict]) -> list[dict]:
    rows = []
    for i in sorted(timeline.windows):
        w = timeline.windows[i]
        lo, hi = i * timeline.width, (i + 1) * timeline.width
        inside = [s for s in samples if lo <= s["t"] < hi]
        rss = [s["rss_mb"] for s in inside if s.get("rss_mb")]
        cpu = [s["cpu_pct"] for s in inside if s.get("cpu_pct") is not None]
        active = [s["sessions_active"] for s in inside if s.get("sessions_active") is not None]
        lags = list(w.partial_lags)
        rows.append({"from_s": lo, "to_s": hi, "finals": len(w.latencies), **latency_stats(w.latencies),
                     "partial_lag_p95_ms": ms(quantile(lags, 0.95)) if lags else None,
                     "max_send_delay_ms": ms(w.max_send_delay_s), "late_chunks": w.late_chunks, "chunks": w.chunks,
                     "sessions_started": w.sessions, "errors": w.errors,
                     "done_wait_max_ms": ms(max(w.done_waits)) if w.done_waits else None,
                     "sessions_active": max(active) if active else None,
                     "rss_mb": rss[-1] if rss else None, "cpu_pct": round(statistics.mean(cpu), 1) if cpu else None})
    return rows


def summarise(timeline: Timeline, samples: list[dict], recorders: list[ClientRecorder], duration: float,
              warmup: float) -> dict:
    latencies = [lat for _, lat in timeline.finals]
    quarter = (duration - warmup) / 4
    first = (warmup, warmup + quarter)
    last = (duration - quarter, duration + 1e9)  # the stragglers after the end belong to the last quarter

    def within(span: tuple[float, float], t: float) -> bool:
        return span[0] <= t < span[1]

    rss_after = [s["rss_mb"] for s in samples if s["t"] >= warmup and s.get("rss_mb")]
    rss_first = [s["rss_mb"] for s in samples if within(first, s["t"]) and s.get("rss_mb")]
    rss_last = [s["rss_mb"] for s in samples if within(last, s["t"]) and s.get("rss_mb")]
    drift = (100 * (statistics.mean(rss_last) - statistics.mean(rss_first)) / statistics.mean(rss_first)
             if rss_first and rss_last else None)
    lat_first = [lat for t, lat in timeline.finals if within(first, t)]
    lat_last = [lat for t, lat in timeline.finals if within(last, t)]
    send_last = max((w.max_send_delay_s for i, w in timeline.windows.items()
                     if (i + 1) * timeline.width > last[0]), default=0.0)
    growth = None
    if lat_first and lat_last:
        p95_first, p95_last = quantile(lat_first, 0.95), quantile(lat_last, 0.95)
        growth = p95_last > 1.2 * p95_first + 0.05 or send_last > 1.0
    cpu = [s["cpu_pct"] for s in samples if s["t"] >= warmup and s.get("cpu_pct") is not None]
    loadgen = [s["loadgen_cpu_pct"] for s in samples if s["t"] >= warmup and "loadgen_cpu_pct" in s]
    metered = [s for s in samples if s.get("compute_s") is not None]
    rtf = None
    if len(metered) >= 2 and metered[-1]["final_audio_s"] > metered[0]["final_audio_s"]:
        rtf = round((metered[-1]["compute_s"] - metered[0]["compute_s"])
                    / (metered[-1]["final_audio_s"] - metered[0]["final_audio_s"]), 4)
    errors = [e for r in recorders for e in r.errors]
    reports = [r.report() for r in recorders]
    p95s = [c["latency_p95_ms"] for c in reports if c["latency_p95_ms"] is not None]
    worst = max(reports, key=lambda c: (c["latency_p95_ms"] or 0, c["max_send_delay_ms"]))
    per_client = {"finals_min": min(c["finals"] for c in reports), "finals_max": max(c["finals"] for c in reports),
                  "latency_p95_min_ms": min(p95s, default=None), "latency_p95_max_ms": max(p95s, default=None),
                  "max_send_delay_max_ms": max(c["max_send_delay_ms"] for c in reports),
                  "worst_client": worst["client"]}
    sessions = sum(r.sessions for r in recorders)
    return {
        "duration_s": round(duration, 1), "warmup_s": warmup, "clients": len(recorders), "sessions": sessions,
        "reconnects": sessions - len(recorders), "finals": len(latencies), "errors": len(errors),
        "latency": latency_stats(latencies),
        "latency_first_quarter": latency_stats(lat_first), "latency_last_quarter": latency_stats(lat_last),
        "max_send_delay_ms": ms(max((r.max_send_delay_s for r in recorders), default=0.0)),
        "max_send_delay_last_quarter_ms": ms(send_last),
        "late_chunks": sum(r.late_chunks for r in recorders), "per_client": per_client,
        "rss_mb": {"start": next((s["rss_mb"] for s in samples if s.get("rss_mb")), None),
                   "min_after_warmup": min(rss_after, default=None), "max_after_warmup": max(rss_after, default=None),
                   "first_quarter_mean": round(statistics.mean(rss_first), 1) if rss_first else None,
                   "last_quarter_mean": round(statistics.mean(rss_last), 1) if rss_last else None,
                   "drift_pct": round(drift, 2) if drift is not None else None},
        "daemon_cpu_pct": round(statistics.mean(cpu), 1) if cpu else None,
        "loadgen_cpu_pct": round(statistics.mean(loadgen), 1) if loadgen else None,
        "rtf": rtf,
        "verdict": {"rss_flat": abs(drift) <= RSS_LIMIT_PCT if drift is not None else None,
                    "latency_grows": growth, "failures": len(errors)},
        "error_kinds": dict(Counter(errors).most_common(20)),
    }


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def span(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"{lo:.0f}-{hi:.0f}"


def print_report(settings: dict, summary: dict, rows: list[dict]) -> None:
    print(f"load: {settings['clients']} clients, {settings['minutes']:g} min, "
          f"{'reconnecting' if settings['reconnect'] else 'one session each'}; {settings['recordings']} recordings; "
          f"{settings['target']}; {os.cpu_count()} cores")
    print()
    print("| from min | finals | latency p50 ms | p95 ms | p99 ms | max ms | partial lag p95 ms | max send delay ms | "
          "sessions | errors | RSS MB | daemon CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['from_s'] / 60:.1f} | {r['finals']} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p95_ms'))} | "
              f"{fmt(r.get('p99_ms'))} | {fmt(r.get('max_ms'))} | {fmt(r['partial_lag_p95_ms'])} | "
              f"{fmt(r['max_send_delay_ms'])} | {fmt(r['sessions_active'])} | {r['errors']} | {fmt(r['rss_mb'])} | "
              f"{fmt(r['cpu_pct'])} |")
    s, lat, rss = summary, summary["latency"], summary["rss_mb"]
    print()
    print(f"finals {s['finals']}, sessions {s['sessions']} ({s['reconnects']} reconnects), errors {s['errors']}, "
          f"chunks sent late (> {LATE_S * 1000:.0f} ms) {s['late_chunks']}, "
          f"max send delay {s['max_send_delay_ms']:.0f} ms")
    print(f"latency ms: p50 {fmt(lat.get('p50_ms'))}, p95 {fmt(lat.get('p95_ms'))}, p99 {fmt(lat.get('p99_ms'))}, "
          f"max {fmt(lat.get('max_ms'))}; p95 first quarter after warm-up "
          f"{fmt(s['latency_first_quarter'].get('p95_ms'))}, "
          f"last quarter {fmt(s['latency_last_quarter'].get('p95_ms'))}")
    clients = s["per_client"]
    print(f"per client: finals {clients['finals_min']}-{clients['finals_max']}, latency p95 "
          f"{span(clients['latency_p95_min_ms'], clients['latency_p95_max_ms'])} ms, max send delay "
          f"{fmt(clients['max_send_delay_max_ms'])} ms (client {clients['worst_client']})")
    print(f"RSS MB: start {fmt(rss['start'])}, after warm-up ({s['warmup_s']:.0f} s) "
          f"min {fmt(rss['min_after_warmup'])} max {fmt(rss['max_after_warmup'])}; "
          f"mean first quarter {fmt(rss['first_quarter_mean'], '.1f')}, "
          f"last quarter {fmt(rss['last_quarter_mean'], '.1f')}: drift {fmt(rss['drift_pct'], '+.1f')} %")
    print(f"daemon CPU {fmt(s['daemon_cpu_pct'])} % (of {100 * (os.cpu_count() or 1)} %), load generator "
          f"{fmt(s['loadgen_cpu_pct'])} %, RTF {fmt(s['rtf'], '.3f')}")
    v = s["verdict"]
    flat = {True: "yes", False: "NO", None: "not measured"}[v["rss_flat"]]
    grows = {True: "YES", False: "no", None: "not measured"}[v["latency_grows"]]
    print(f"RSS flat (within {RSS_LIMIT_PCT:.0f} %): {flat}; latency grows (last quarter's p95 > 1.2 x first's + "
          f"50 ms, or sending backed up > 1 s): {grows}; failed sessions: {v['failures']}")
    for what, n in s["error_kinds"].items():
        print(f"  {n} x {what}")


def print_memory(out: Path, samples: list[dict], warmup: float) -> None:
    """The daemon's memory figures at each snapshot against the sessions started, and what grew after warm-up."""
    figures = memtrace.read_figures(out)
    snapped = {s["memtrace"]: s for s in samples if "memtrace" in s}
    print()
    print(memtrace.table(figures, {n: s.get("sessions_total") for n, s in snapped.items()}))
    after = [f for f in figures if "snapshot" in f and snapped.get(f["n"], {}).get("t", 0) >= warmup]
    if len(after) >= 2:
        print()
        print(memtrace.growth(out / after[0]["snapshot"], out / after[-1]["snapshot"], top=10))


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--bundle", type=Path, help="start a daemon on this bundle (default: the default bundle)")
    target.add_argument("--url", help="attach to a running daemon instead, ws://127.0.0.1:PORT/v1/stream (loopback)")
    p.add_argument("--pid", type=int, help="with --url: the daemon's process id, to sample its RSS and CPU")
    p.add_argument("--config", type=Path, help="daemon TOML for the daemon started here (used as given)")
    p.add_argument("--threads", type=int, default=2, help="inference threads of the daemon started here")
    p.add_argument("--clients", type=int, default=4, help=f"simulated clients, 1-{MAX_CLIENTS}")
    p.add_argument("--minutes", type=float, default=2.0, help=f"how long, up to {MAX_MINUTES:g}")
    p.add_argument("--reconnect", action="store_true", help="a new session per recording of 1-4 utterances")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--manifest", type=Path, help="a training-format JSONL manifest: its ASR lines' audio")
    source.add_argument("--recordings", type=Path, help="a directory of WAV/FLAC files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-s", type=float, help="left out of the RSS and lag-growth figures "
                   "(default: a fifth of the run, at most 120 s)")
    p.add_argument("--window-s", type=float, help="report window (default: 60 s, less for short runs)")
    p.add_argument("--sample-s", type=float, help="sampling interval (default: 5 s, less for short runs)")
    p.add_argument("--json", type=Path, help="write the settings, summary, windows, samples and clients here")
    p.add_argument("--memtrace", type=Path, help="run the daemon started here under benchmarks/memtrace.py, its "
                   "snapshots and figures in this directory")
    p.add_argument("--memtrace-every", type=float, default=60.0, help="seconds between snapshots (default 60)")
    p.add_argument("--frames", type=int, default=25, help="with --memtrace: traceback depth, 0 for no tracing")
    p.add_argument("--check", action="store_true", help="exit 1 unless RSS is flat, latency does not grow and "
                   "no session failed")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        p.error(f"--clients must be 1-{MAX_CLIENTS}, got {args.clients}")
    if not 0 < args.minutes <= MAX_MINUTES:
        p.error(f"--minutes must be > 0 and <= {MAX_MINUTES:g}, got {args.minutes:g}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.pid is not None and not args.url:
        p.error("--pid goes with --url (a daemon started here is sampled anyway)")
    if args.memtrace and args.url:
        p.error("--memtrace starts its own daemon: not with --url")
    for name in ("warmup_s", "window_s", "sample_s"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (value == 0 and name != "warmup_s")):
            p.error(f"--{name.replace('_', '-')} must be > 0, got {value:g}")
    return args


def load_utterances(args: argparse.Namespace) -> tuple[list[Utterance], str]:
    if args.manifest:
        return manifest_utterances(args.manifest), str(args.manifest)
    if args.recordings:
        return directory_utterances(args.recordings), str(args.recordings)
    return real_utterances(), "Debian alsa-utils + pocketsphinx-testdata"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    duration = args.minutes * 60
    warmup = args.warmup_s if args.warmup_s is not None else min(120.0, duration / 5)
    window = args.window_s or max(5.0, min(60.0, duration / 5))
    every = args.sample_s or max(1.0, min(5.0, duration / 20))
    utterances, source = load_utterances(args)

    daemon = None
    if args.url:
        require_loopback(args.url)
        url, pid, target = args.url, args.pid, f"daemon at {args.url}"
    else:
        from daemon_harness import DaemonProcess

        from tympan.daemon.cli import default_bundle

        bundle = args.bundle or default_bundle()
        config = args.config.read_text() if args.config else (
            f"[server]\nthreads = {args.threads}\n"
            f"[limits]\nmax_sessions = {max(16, args.clients)}\nqueue_size = {max(32, 2 * args.clients)}\n")
        work = Path(tempfile.mkdtemp(prefix="tympan-bench-load-"))
        launcher = [sys.executable, memtrace.__file__, "run", str(args.memtrace), "--frames", str(args.frames),
                    "--"] if args.memtrace else None
        # The host is pinned to loopback whatever the config says: env overrides the file.
        daemon = DaemonProcess(bundle, work, config, env={"TYMPAN_SERVER_HOST": "127.0.0.1"},
                               launcher=launcher).start(timeout=300 if args.memtrace else 90)
        url, pid, target = daemon.url, daemon.proc.pid, f"bundle {bundle}, daemon log {daemon.log_path}"
    settings = {"clients": args.clients, "minutes": args.minutes, "reconnect": args.reconnect, "seed": args.seed,
                "recordings": len(utterances), "source": source, "target": target, "url": url,
                "threads": None if args.url else args.threads, "window_s": window, "sample_s": every,
                "warmup_s": warmup, "cores": os.cpu_count()}
    try:
        start = time.monotonic()
        timeline = Timeline(start, window)
        recorders = [ClientRecorder(k, timeline) for k in range(args.clients)]
        sampler = Sampler(http_base(url), pid, start, every, timeline, progress_every=window,
                          snapshot_every=args.memtrace_every if args.memtrace else None)
        sampler.start()
        try:
            asyncio.run(run_users(url, utterances, recorders, args.seed, start + duration, args.reconnect,
                                  stagger_s=min(5.0, duration / 4)))
        finally:
            sampler.stop()
        elapsed = time.monotonic() - start
        if args.memtrace:
            memtrace.wait_figures(args.memtrace, sampler.snapshots)
    finally:
        exit_code = daemon.stop() if daemon else None
    summary = summarise(timeline, sampler.samples, recorders, elapsed, warmup)
    summary["daemon_exit_code"] = exit_code
    rows = window_rows(timeline, sampler.samples)
    print_report(settings, summary, rows)
    if args.memtrace:
        print_memory(args.memtrace, sampler.samples, warmup)
    if args.json:
        write_json(args.json, {"settings": settings, "summary": summary, "windows": rows, "samples": sampler.samples,
                               "clients": [r.report() for r in recorders]})
    if args.check:
        v = summary["verdict"]
        return 0 if v["rss_flat"] is not False and v["latency_grows"] is not True and not v["failures"] else 1
    return 0


if __name__ == "__main__":
    run_main(main)
