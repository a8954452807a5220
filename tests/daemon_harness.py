"""A real `tympan serve` process on a free loopback port, and real speech to stream at it."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from broker import free_port

from tympan.daemon.metrics import parse_exposition

ALSA = Path("/usr/share/sounds/alsa")


def alsa_speech(name: str, rate: int = 16000) -> np.ndarray:
    """One of Debian alsa-utils' human recordings ("Front, center", ...), mono float32 at `rate`."""
    from tympan.audio import load_audio

    return load_audio(ALSA / f"{name}.wav", rate)


def silence(seconds: float, rate: int = 16000) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.float32)


def as_sent(audio: np.ndarray) -> np.ndarray:
    """What the daemon receives for `audio` sent as PCM16 by tympan's client."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").astype(np.float32) / 32768.0


def write_wav(path: Path, audio: np.ndarray, rate: int = 16000) -> Path:
    from tympan.audio import write_wav as write

    write(path, audio, rate)
    return path


class DaemonProcess:
    """`tympan serve` in a child process. With `tls` (a client context that trusts the daemon's certificate,
    for a daemon configured with `[tls]`), `url` is wss:// and health/metrics go over https://. `launcher`
    replaces the command that runs `tympan` (default: this Python's `-m tympan`)."""

    def __init__(self, bundle: Path, workdir: Path, config: str = "", env: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None, launcher: list[str] | None = None) -> None:
        self.tls = tls
        self.port = free_port()
        self.wyoming_port = 0  # where a test that configures Wyoming puts its port
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "daemon.toml"
        self.config.write_text(config)
        self.log_path = workdir / "daemon.log"
        self.bundle = bundle
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.launcher = launcher or [sys.executable, "-m", "tympan"]

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/v1/stream"

    @property
    def vosk_url(self) -> str:
        return self.url.replace("/v1/stream", "/vosk")

    @property
    def http(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mb(self) -> float:
        """The daemon's resident memory now (from /proc), in MiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024  # type: ignore[union-attr]

    def start(self, timeout: float = 90.0) -> DaemonProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process' lifetime
        self.proc = subprocess.Popen(
            [*self.launcher, "serve", "--config", str(self.config), "--bundle", str(self.bundle),
             "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.health()["ready"]:
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"daemon not ready after {timeout} s:\n{self.log()}")

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.http}/healthz", timeout=2, context=self.tls) as r:
            return json.loads(r.read())

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.http}/metrics", timeout=2, context=self.tls) as r:
            return parse_exposition(r.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_metrics(self, predicate: Callable[[dict[str, float]], bool], timeout: float = 30.0) -> dict[str, float]:
        """Poll /metrics until `predicate` holds; AssertionError with the last reading on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if predicate(m):
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"metrics did not reach the condition within {timeout} s: "
                                     f"{ {k: v for k, v in m.items() if 'bucket' not in k} }")
            time.sleep(0.05)

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until `count` lines of the daemon's log match the regex `pattern`; returns the matching lines."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if re.search(pattern, line)]
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(lines)} of {count} log lines matching {pattern!r} after {timeout} s:\n"
                                     + self.log()[-3000:])
            time.sleep(0.05)

    def tracebacks(self) -> list[str]:
        """Each traceback in the daemon's log (an unexpected exception anywhere), with the line that logged it."""
        lines = self.log().splitlines()
        return ["\n".join(lines[max(0, i - 1) : i + 30]) for i, line in enumerate(lines)
                if line.startswith("Traceback")]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def offline_finals(bundle: Path, audio: np.ndarray, task: str = "st", target_lang: str = "de") -> list[str]:
    """The texts of the finals an offline run gives for `audio` (16 kHz, as sent in PCM16): the daemon's
    segmenter with its default settings and the bundle's model, no daemon, no network."""
    from tympan.daemon.settings import DaemonConfig
    from tympan.daemon.vad import Segmenter, UtteranceEnded
    from tympan.runtime.speech_model import SpeechModel

    model = SpeechModel.load(bundle)
    segmenter = Segmenter(DaemonConfig().vad, 16000)
    events = segmenter.push(as_sent(audio)) + segmenter.finish()
    instruction = model.prompts.instruction(task, target_lang)
    return [model.respond(e.audio, instruction, task=task) for e in events if isinstance(e, UtteranceEnded)]


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def v1_finals(daemon: DaemonProcess, audio: np.ndarray, request: dict | None = None,
                    rate: int = 16000, chunk_s: float = 0.1, token: str | None = None) -> list[dict]:
    """The finals `/v1/stream` gives for `audio` (sent as PCM16 in `chunk_s` frames): the other protocols' reference."""
    from tympan.daemon.client import stream

    data, step = pcm16(audio), int(rate * chunk_s) * 2

    async def chunks():
        for i in range(0, len(data), step):
            yield data[i : i + step], rate

    events = await stream(daemon.url, chunks(), request or {"task": "asr"}, lambda e: None, token=token)
    return [e for e in events if e["type"] == "final"]


def joined(finals: list[dict]) -> str:
    """The finals' texts as one transcript (as the Wyoming and OpenAI endpoints join them)."""
    texts = [f["text"].strip() for f in finals if f["text"].strip()]
    return ("" if finals and finals[0]["target_lang"] == "zh" else " ").join(texts)


def after_fuzzing(daemon: DaemonProcess, runs: dict[str, list[Any]], reference: dict[str, Any]) -> None:
    """What a fuzz run must leave: the well-behaved clients beside it got their reference answers at least twice,
    the daemon is ready and idle, nothing logged a traceback, and the process lives."""
    for name, got in runs.items():
        assert len(got) >= 2, f"the well-behaved {name} client finished only {len(got)} runs beside the fuzzer"
        assert all(r == reference[name] for r in got), (name, reference[name], got)
    assert daemon.health()["ready"]
    m = daemon.wait_metrics(lambda m: m["tympan_sessions_active"] == 0 and m["tympan_sessions_lingering"] == 0)
    assert m["tympan_queue_depth"] == 0
    assert not daemon.tracebacks(), daemon.tracebacks()[0]
    assert daemon.proc is not None and daemon.proc.poll() is None
