"""A real mosquitto broker and a collecting subscriber, for tests that need MQTT.

    from broker import Broker, Subscriber

    def test_x(tmp_path):
        with Broker(tmp_path) as broker:            # started on a free loopback port
            ...  broker.url, broker.port
            broker.kill()                           # SIGKILL: no clean shutdown, clients see EOF
            broker.start()                          # again, on the same port
            broker.freeze(); broker.thaw()           # SIGSTOP / SIGCONT: a hung broker
            broker.allow_anonymous(False)           # rewrite the config and reload it (SIGHUP)
            broker.stop()                           # SIGTERM, waits for exit

    async with Subscriber(broker.port, "tympan/#") as sub:   # aiomqtt, QoS 1 by default
        await sub.wait_for(lambda msgs: len(msgs) >= 3)      # polls sub.messages (a list of Received)

The subscriber reconnects (every 50 ms) when the broker restarts; `sub.sessions` counts its successful
subscriptions, so `await sub.wait_sessions(2)` waits until it is back after a restart. Messages published
while it was disconnected are lost to it (the broker runs without persistence).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import aiomqtt

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One mosquitto process on 127.0.0.1:`port` (fixed for the object's life, so restarts reuse it).

    `extra_config` lines are appended to the config (e.g. a TLS listener, a password_file). Output goes
    to `log_path` (read it with `.log`).
    """

    def __init__(self, workdir: Path, port: int | None = None, extra_config: str = "",
                 allow_anonymous: bool = True) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed (bin/setup installs Debian's mosquitto)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_path = self.workdir / f"mosquitto-{self.port}.conf"
        self.log_path = self.workdir / f"mosquitto-{self.port}.log"
        self.extra_config = extra_config
        self._write_config(allow_anonymous)
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_config(self, allow_anonymous: bool) -> None:
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous {str(allow_anonymous).lower()}\n"
            "log_dest stdout\npersistence false\n"
            # As root, mosquitto drops to user `mosquitto`, who cannot read pytest's private tmp dirs.
            + ("user root\n" if os.geteuid() == 0 else "")
            + self.extra_config
        )

    def allow_anonymous(self, allowed: bool) -> None:
        """Let clients without a username in, or not, from the next connection on (SIGHUP reloads the config;
        connected clients stay). With a `password_file` in `extra_config`, a test can let its own subscriber in
        first after a restart, then open the gate for the daemons, so none of their messages is missed."""
        self._write_config(allowed)
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGHUP)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 5.0) -> Broker:
        """Start mosquitto and wait until it accepts TCP connections."""
        if self.running:
            return self
        assert MOSQUITTO is not None
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)], stdout=out,
                                          stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}:\n{self.log}")
            try:
                # A bare TCP connect (no CONNECT packet) is enough to know the listener is up.
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"mosquitto did not listen on {self.port} within {timeout} s:\n{self.log}") from None
                time.sleep(0.02)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            self._proc.send_signal(signal.SIGCONT)  # in case it was frozen
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """Clean shutdown (SIGTERM)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Abrupt death (SIGKILL): clients see their connections drop, nothing is sent to them."""
        self._signal(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (a hung broker)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def restart(self, down_for: float = 0.0) -> Broker:
        self.kill()
        time.sleep(down_for)
        return self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()


class Received(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Collects every message matching `topics` into `messages`, reconnecting across broker restarts."""

    def __init__(self, port: int, *topics: str, qos: int = 1, **client_kwargs: Any) -> None:
        self.port = port
        self.client_kwargs = client_kwargs  # passed to aiomqtt.Client (username=, password=, ...)
        self.topics = topics or ("#",)
        self.qos = qos
        self.messages: list[Received] = []
        self.sessions = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        await self.wait_sessions(1)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, timeout=2.0, **self.client_kwargs) as client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=self.qos)
                    self.sessions += 1
                    async for m in client.messages:
                        self.messages.append(Received(str(m.topic), bytes(m.payload), m.qos, m.retain))  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    def on(self, suffix: str) -> list[Received]:
        """Messages whose topic ends with `suffix` (e.g. "/final", "/status")."""
        return [m for m in self.messages if m.topic.endswith(suffix)]

    async def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 5.0) -> list[Received]:
        """Wait until `predicate(self.messages)` holds; AssertionError (with what arrived) on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self.messages):
            if asyncio.get_running_loop().time() > deadline:
                got = [(m.topic, m.payload[:60]) for m in self.messages[-5:]]
                raise AssertionError(f"timed out after {timeout} s; {len(self.messages)} messages, last: {got}")
            await asyncio.sleep(0.01)
        return self.messages

    async def wait_sessions(self, n: int, timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.sessions < n:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"subscriber not (re)connected within {timeout} s")
            await asyncio.sleep(0.01)
