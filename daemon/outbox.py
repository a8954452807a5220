"""Frames on their way to one client, in order; a client that does not read is disconnected, not buffered for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from websockets.exceptions import ConnectionClosed

log = logging.getLogger("tympan.session")


class Connection(Protocol):
    """The client's connection, as a session uses it (a websockets connection is one)."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Outbox:
    """Created on the event loop: its sender task starts at once."""

    def __init__(self, connection: Connection, size: int, spawn: Callable[[Awaitable[None]], None]) -> None:
        self.connection = connection
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=size)  # None: the end
        self.spawn = spawn
        self.connected = True
        self.name = "?"  # the session's id, for the log
        self.sender = asyncio.create_task(self._send())

    def put(self, frames: list[str], droppable: bool = False) -> None:
        """Queue frames for the client. A full queue drops `droppable` ones; otherwise the client is
        not reading: it is disconnected."""
        for frame in frames:
            if not self.connected:
                return
            try:
                self.queue.put_nowait(frame)
            except asyncio.QueueFull:
                if droppable:
                    return
                self.connected = False
                log.warning("session %s: client is not reading; disconnecting", self.name)
                self.spawn(self.connection.close(1008, "client does not read its events"))

    async def _send(self) -> None:
        while True:
            frame = await self.queue.get()
            if frame is None:
                return
            try:
                await self.connection.send(frame)
            except ConnectionClosed:
                self.connected = False
                return

    def _end(self) -> None:
        """Let the sender finish what is queued; if the queue is full (the client is not reading), stop it."""
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            self.sender.cancel()

    async def finish(self, code: int, reason: str) -> None:
        """The session is over: send what is queued (5 s at most), then close the connection."""
        self._end()
        try:
            await asyncio.wait_for(self.sender, timeout=5)
        except (TimeoutError, asyncio.CancelledError):
            self.sender.cancel()
        if self.connected:
            await self.connection.close(code, reason)
        self.connected = False

    async def close(self, code: int, reason: str) -> None:
        """Shutdown: send what is queued (finals included), then close the connection."""
        if self.connected:
            self._end()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.sender), timeout=5)
            self.connected = False
        await self.connection.close(code, reason)
