"""What the benchmark scripts share: the real recordings, a real-time streaming client, /proc and /metrics readings.

Not a test helper: the scripts in benchmarks/ import it as a sibling module.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from tympan.daemon.metrics import parse_exposition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the daemon harness the tests use (DaemonProcess, free ports)

RATE = 16000


class BenchmarkError(RuntimeError):
    """A benchmark cannot run as asked (bad option, missing recordings, a non-loopback target)."""


def run_main(main: Callable[[], int]) -> None:
    """A benchmark's entry point: its exit status, or a BenchmarkError as one line and status 2."""
    try:
        sys.exit(main())
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def cpu_model() -> str:
    """The CPU's name, for the header of a table of timings."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


# --- recordings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: np.ndarray  # mono float32 at RATE
    text: str  # reference transcript

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def manifest_utterances(path: Path) -> list[Utterance]:
    """The ASR speech lines of a training-format JSONL manifest, audio read at RATE."""
    from tympan.audio import load_audio
    from tympan.manifest import load_manifest

    out = [Utterance(ex.id, load_audio(ex.audio, RATE), ex.target)
           for ex in load_manifest(path) if ex.audio is not None and ex.task == "asr"]
    if not out:
        raise BenchmarkError(f"{path}: no ASR lines with audio")
    return out


def directory_utterances(path: Path) -> list[Utterance]:
    """Every WAV/FLAC in a directory (no transcripts: the file name stands in)."""
    from tympan.audio import load_audio

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".wav", ".flac"))
    if not files:
        raise BenchmarkError(f"{path}: no .wav or .flac files")
    return [Utterance(p.stem, load_audio(p, RATE), p.stem.replace("_", " ")) for p in files]


def real_utterances() -> list[Utterance]:
    """The real recordings (Debian alsa-utils and pocketsphinx-testdata), as the evaluation manifest has them."""
    from tympan.training.corpus.real import build_real_manifest

    with tempfile.TemporaryDirectory(prefix="tympan-bench-real-") as tmp:
        return manifest_utterances(build_real_manifest(Path(tmp)))


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


# --- the streaming client --------------------------------------------------------------------


@dataclass(frozen=True)
class Final:
    end: float  # stream seconds: the end of speech
    latency_s: float  # from sending the chunk that holds `end` to receiving the final, at the client
    text: str
    at: float  # time.monotonic() of its arrival
    stable: str = ""  # the stable prefix its utterance's last partial showed


@dataclass
class Listener:
    """What one stream reports as it goes. The load script subclasses it to bin by time instead of keeping all."""

    finals: list[Final] = field(default_factory=list)
    partial_lags: list[float] = field(default_factory=list)
    max_send_delay_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    done_waits: list[float] = field(default_factory=list)

    def final(self, f: Final) -> None:
        self.finals.append(f)

    def partial(self, at: float, lag_s: float) -> None:
        self.partial_lags.append(lag_s)

    def sent(self, at: float, delay_s: float) -> None:
        self.max_send_delay_s = max(self.max_send_delay_s, delay_s)

    def error(self, at: float, what: str) -> None:
        self.errors.append(what)

    def done(self, at: float, wait_s: float) -> None:
        self.done_waits.append(wait_s)


class _Refused(Exception):
    """The daemon answered `start` with an error (e.g. overloaded)."""


class _SendLog:
    """When each stretch of the stream went out, to date a final's `end`; the oldest entries are dropped
    past `keep` so a two-hour stream stays small (an answer ten minutes late is lost either way)."""

    def __init__(self, keep: int = 6000) -> None:
        self.ends: list[float] = []  # stream seconds at the end of each chunk sent
        self.times: list[float] = []  # monotonic time it was sent
        self.keep = keep

    def add(self, end: float, at: float) -> None:
        self.ends.append(end)
        self.times.append(at)
        if len(self.ends) > 2 * self.keep:
            del self.ends[: self.keep], self.times[: self.keep]

    def sent_at(self, stream_s: float) -> float:
        i = bisect.bisect_left(self.ends, stream_s - 1e-6)
        return self.times[min(i, len(self.times) - 1)]


async def stream(url: str, pieces: Iterable[np.ndarray], listener: Listener, *, until: float | None = None,
                 chunk_ms: int = 100, request: dict | None = None, done_timeout_s: float = 120.0) -> bool:
    """Stream `pieces` (16 kHz float32) at real-time pace, then `stop`, and wait for `done`.

    Each chunk goes out once its audio would exist for a microphone; a chunk that goes out late (the socket
    backed up, or the client fell behind) is reported to `listener.sent` with its delay, and the stream
    catches up without sleeping. With `until` (monotonic time) no new piece starts after it. Returns True when
    the session ended with `done`; any failure is reported once to `listener.error`.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, WebSocketException

    step = RATE * chunk_ms // 1000
    log = _SendLog()
    problems: list[str] = []
    receiver: asyncio.Task[bool] | None = None
    try:
        async with connect(url, max_size=None, open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "start", "task": "asr", "sample_rate": RATE, "encoding": "pcm_s16le",
                                      **(request or {})}))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if ready["type"] != "ready":
                raise _Refused(f"{ready.get('code')}: {ready.get('message')}")

            stable: dict[int, str] = {}  # segment -> its last partial's stable prefix

            async def receive() -> bool:
                async for message in ws:
                    ev = json.loads(message)
                    now = time.monotonic()
                    if ev["type"] == "final" and log.ends:
                        listener.final(Final(ev["end"], now - log.sent_at(ev["end"]), ev["text"], now,
                                             stable.pop(ev["segment_id"], "")))
                    elif ev["type"] == "partial" and log.ends:
                        stable[ev["segment_id"]] = ev["text"][: ev["stable_len"]]
                        listener.partial(now, now - log.sent_at(ev["end"]))
                    elif ev["type"] == "error":
                        problems.append(f"{ev['code']}: {ev['message']}")
                    elif ev["type"] == "done":
                        return True
                problems.append(f"closed before done ({ws.close_code}: {ws.close_reason or 'no reason'})")
                return False

            receiver = asyncio.create_task(receive())
            t0, sent = time.monotonic(), 0
            for piece in pieces:
                pcm = pcm16(piece)
                for i in range(0, len(piece), step):
                    chunk = pcm[2 * i : 2 * (i + step)]
                    due = t0 + (sent + len(chunk) // 2) / RATE
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    if receiver.done():
                        break
                    await ws.send(chunk)
                    now = time.monotonic()
                    sent += len(chunk) // 2
                    log.add(sent / RATE, now)
                    listener.sent(now, now - due)
                if receiver.done() or (until is not None and time.monotonic() >= until):
                    break
            stopped = time.monotonic()
            if not receiver.done():
                await ws.send(json.dumps({"type": "stop"}))
            if await asyncio.wait_for(receiver, done_timeout_s):
                listener.done(time.monotonic(), time.monotonic() - stopped)
                return True
    except _Refused as e:
        problems.append(str(e))
    except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as e:
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        if receiver is not None:
            receiver.cancel()
    listener.error(time.monotonic(), problems[0] if problems else "session ended without done")
    return False


# --- the daemon, seen from outside -----------------------------------------------------------


def require_loopback(url: str) -> str:
    """The host of `url`, if every address it names is loopback: the load tools never aim at another machine."""
    host = urlsplit(url).hostname
    if not host:
        raise BenchmarkError(f"{url}: no host in the URL")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        raise BenchmarkError(f"{url}: cannot resolve {host}: {e}") from None
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise BenchmarkError(f"{url}: {host} resolves to non-loopback {', '.join(outside)}; only loopback targets "
                             "are allowed")
    return host


def http_base(ws_url: str) -> str:
    """http(s)://host:port of a ws(s):// stream URL: where /metrics and /healthz are."""
    parts = urlsplit(ws_url)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


def scrape_metrics(http: str) -> dict[str, float]:
    """The daemon's /metrics as {sample name (labels included): value}."""
    with urllib.request.urlopen(f"{http}/metrics", timeout=5) as r:
        return parse_exposition(r.read().decode())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchmarkError(f"process {pid} has no VmRSS (a zombie?)")


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of a non-empty list (sorted here)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
