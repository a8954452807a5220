"""The contract between a session and the daemon that serves it, both ways, so neither imports the other.

A session needs from its host (SessionHost) the engine's queue, admission, request checking,
what to tell a client about the model and the limits, the daemon's sinks, a way to run
background work, the config and a metrics hook; the daemon needs from a session it admitted
(AdmittedSession) what shutdown and lingering finals take.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from tympan.daemon.engine import Job
from tympan.daemon.protocol import Request
from tympan.daemon.settings import DaemonConfig
from tympan.daemon.sinks import Sink
from tympan.runtime.turn import TurnModel


class JobQueue(Protocol):
    """The inference engine, as sessions use it."""

    def submit(self, job: Job) -> None: ...

    def cancel_session(self, session_key: str) -> None: ...


class AdmittedSession(Protocol):
    id: str
    idle: asyncio.Event  # set while none of its finals is being decoded

    @property
    def protocol(self) -> str:
        """Its codec's name (v1, vosk, wyoming, openai, realtime): the metrics' label."""
        ...

    @property
    def pending(self) -> int:
        """Utterances whose final is being decoded or waits to go out."""
        ...

    def drain(self) -> None:
        """End the open utterance now; its final still goes out."""

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued for the client, then close its connection."""


class SessionHost(Protocol):
    cfg: DaemonConfig

    @property
    def engine(self) -> JobQueue: ...

    @property
    def sample_rate(self) -> int:
        """The model's sample rate: audio is resampled to it."""
        ...

    @property
    def model_info(self) -> dict[str, Any]: ...

    @property
    def turn_model(self) -> TurnModel:
        """The end-of-turn model (turn.py)."""
        ...

    @property
    def limits_info(self) -> dict[str, Any]: ...

    @property
    def sinks(self) -> Sequence[Sink]:
        """The daemon's sinks, after each session's own client."""
        ...

    def check_request(self, request: Request) -> None:
        """Raise ProtocolError for a request the model cannot serve."""

    def admit(self, session: AdmittedSession) -> bool:
        """Take a session (False: at capacity or shutting down)."""
        ...

    def release(self, session: AdmittedSession) -> None: ...

    def take_connection(self) -> bool:
        """Count a client connection against the budget all entry points share (False: none left, or shutting
        down); each True is paired with a give_connection()."""
        ...

    def give_connection(self) -> None: ...

    def spawn(self, work: Awaitable[None]) -> None:
        """Run `work` in the background, kept until done."""

    def count_utterance(self) -> None: ...
