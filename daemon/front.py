"""The daemon's port, shared by websockets and the HTTP API: each connection's first bytes decide who serves it.

websockets' server reads GET requests only (the websocket handshake, /healthz, /metrics, the page) and
refuses request bodies, so an upload (`POST /v1/audio/...`) cannot go through it. Every connection is
therefore first held by a `Door`: a request that starts with `GET ` is handed to the websockets
connection made for it, with the bytes already read; any other goes to the HTTP API (openai_api.py).
`websockets.asyncio.server.serve`'s `create_connection` hook makes the Door (it expects a connection
class, hence the cast where the hook is given).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.server import ServerConnection

log = logging.getLogger("tympan.daemon")
HttpHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]
SNIFF = 8  # enough for "GET " and any HTTP method


class Door(asyncio.Protocol):
    """Holds a new connection until its first bytes show the method, then hands it over."""

    def __init__(self, websocket: ServerConnection, http: HttpHandler, reader_limit: int, timeout: float) -> None:
        self.websocket, self.http, self.reader_limit, self.timeout = websocket, http, reader_limit, timeout
        self.protocol = websocket.protocol  # serve()'s subprotocol hook checks the connection it made by this
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # A client that says nothing (or too little to tell) is closed, as websockets' own handshake timeout would.
        self.timer = asyncio.get_running_loop().call_later(self.timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < SNIFF and b" " not in self.buffer:
            return
        assert self.transport is not None
        if self.timer is not None:
            self.timer.cancel()
        target: asyncio.Protocol
        if self.buffer.startswith(b"GET "):
            target = self.websocket
        else:
            reader = asyncio.StreamReader(limit=self.reader_limit)
            target = asyncio.StreamReaderProtocol(reader, self.http)
        self.transport.set_protocol(target)
        target.connection_made(self.transport)
        target.data_received(self.buffer)
        self.buffer = b""

    def eof_received(self) -> bool | None:
        return None  # closed before saying anything: nothing to hand over

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None


def door_factory(http: HttpHandler, reader_limit: int, timeout: float) -> Callable[..., Door]:
    """For `serve(create_connection=...)`: websockets' connection for the socket, kept behind a Door that waits
    at most `timeout` seconds for the first bytes."""

    def create(*args: Any, **kwargs: Any) -> Door:
        return Door(ServerConnection(*args, **kwargs), http, reader_limit, timeout)

    return create
