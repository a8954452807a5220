"""A real `tympan serve` process on a free loopback port, and real speech to stream at it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from broker import free_port

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
    def __init__(self, bundle: Path, workdir: Path, config: str = "", env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "daemon.toml"
        self.config.write_text(config)
        self.log_path = workdir / "daemon.log"
        self.bundle = bundle
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> DaemonProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process' lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tympan", "serve", "--config", str(self.config), "--bundle", str(self.bundle),
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
        with urllib.request.urlopen(f"{self.http}/healthz", timeout=2) as r:
            return json.loads(r.read())

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.http}/metrics", timeout=2) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

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
