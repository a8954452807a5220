"""The Wyoming server: speech-to-text for Home Assistant's Assist and Rhasspy 3 on its own TCP port
(`[wyoming] uri = "tcp://HOST:PORT"`, off when empty), as wyoming-faster-whisper's `--uri`.

Each TCP connection is a stream of Wyoming events (wyoming_frames.py). The connection answers `describe`
(with `info`: the model and the languages it writes) and `ping` itself; everything else goes to a session
with the Wyoming codec (wyoming_codec.py), one session per transcription, one after another on the same
connection. A stream that is not Wyoming framing gets an `error` event and is closed; other connections
and sessions go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from ipaddress import IPv6Address, ip_address
from typing import Any

from websockets.exceptions import ConnectionClosed

from tympan.daemon.codec import Closing
from tympan.daemon.host import SessionHost
from tympan.daemon.http11 import linger
from tympan.daemon.protocol import ProtocolError
from tympan.daemon.session import Session
from tympan.daemon.settings import parse_networks, parse_tcp_uri
from tympan.daemon.wyoming_codec import WyomingCodec
from tympan.daemon.wyoming_frames import FramingError, encode, event_type, read_frame

log = logging.getLogger("tympan.wyoming")


def info_data(model_info: dict[str, Any], languages: list[str]) -> dict[str, Any]:
    """The `info` event's data: one ASR program with one model, the bundle, listing the languages it writes."""
    version = str(model_info.get("tympan_version", ""))
    attribution = {"name": "tympan", "url": ""}
    description = "English speech to text; " + (
        f"translation into {', '.join(x for x in languages if x != 'en')} with language set to it"
        if len(languages) > 1 else "no translation in this bundle")
    model = {"name": str(model_info.get("bundle", "tympan")).rstrip("/").rsplit("/", 1)[-1] or "tympan",
             "attribution": attribution, "installed": True, "description": description, "version": version,
             "languages": languages}
    program = {"name": "tympan", "attribution": attribution, "installed": True, "version": version,
               "description": "tympan speech LLM (streaming, with its own segmentation)", "models": [model],
               "supports_transcript_streaming": True, "requires_external_vad": True,
               "prefers_auto_gain_enabled": True, "prefers_noise_reduction_enabled": True}
    return {"asr": [program], "tts": [], "handle": [], "intent": [], "wake": [], "mic": [], "snd": []}


class WyomingConnection:
    """A Wyoming client's TCP stream as a session's connection (session.py's Connection)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: str,
                 max_header: int, max_payload: int) -> None:
        self.reader, self.writer, self.info = reader, writer, info
        self.max_header, self.max_payload = max_header, max_payload
        self.open = True

    async def recv(self) -> str | bytes:
        """The next event for the session; `describe` and `ping` are answered here."""
        while True:
            if not self.open:
                raise ConnectionClosed(None, None)
            try:
                frame = await read_frame(self.reader, self.max_header, self.max_payload)
            except FramingError as e:
                raise Closing(1003, "not Wyoming framing", ProtocolError("bad_request", str(e))) from None
            except ConnectionError:
                frame = None
            if frame is None:
                self.open = False
                raise ConnectionClosed(None, None)
            kind = event_type(frame)
            if kind == "describe":
                await self.send(self.info)
            elif kind == "ping":
                await self.send(encode("pong"))
            else:
                return frame

    async def send(self, message: str) -> None:
        if not self.open:
            raise ConnectionClosed(None, None)
        try:
            self.writer.write(message.encode("utf-8"))
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self.open = False
            raise ConnectionClosed(None, None) from None

    async def close(self, code: int, reason: str) -> None:
        """A transcription that ended normally (1000) leaves the connection open for the next one."""
        if code != 1000 and self.open:
            self.open = False
            await linger(self.reader, self.writer, 1.0)  # the client reads the error before the close
            self.writer.close()


class WyomingServer:
    def __init__(self, host: SessionHost, uri: str, info: dict[str, Any]) -> None:
        self.host, self.info = host, encode("info", info)
        self.address = parse_tcp_uri(uri)
        self.networks = parse_networks(host.cfg.wyoming.allowed_networks)  # checked at start (settings.py)
        self.clients: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.accepting = True

    async def start(self) -> int:
        """Listen; returns the port (useful with port 0)."""
        host, port = self.address
        self.server = await asyncio.start_server(self._client, host, port,
                                                 limit=self.host.cfg.wyoming.max_header_bytes)
        port = self.server.sockets[0].getsockname()[1]
        log.info("Wyoming speech-to-text on tcp://%s:%d", host, port)
        return port

    def allowed(self, peer: Any) -> bool:
        """Whether the client's address is in `[wyoming] allowed_networks` (any, when the list is empty)."""
        if not self.networks:
            return True
        try:
            address = ip_address(str(peer[0]).split("%")[0])  # an IPv6 scope (fe80::1%eth0) is not part of it
        except (TypeError, IndexError, ValueError):
            return False  # not an IP socket
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.host.cfg.limits
        peer = writer.get_extra_info("peername")
        if not self.allowed(peer):
            # Wyoming has no token: the network is its only access control. Nothing is said to the stranger.
            log.warning("Wyoming connection from %s refused: not in wyoming.allowed_networks", peer)
            writer.close()
            return
        if not self.accepting or not self.host.take_connection():  # the budget all entry points share
            with contextlib.suppress(ConnectionError):
                writer.write(encode("error", {"text": "the server is at capacity or shutting down",
                                              "code": "overloaded"}).encode())
                await writer.drain()
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        connection = WyomingConnection(reader, writer, self.info, self.host.cfg.wyoming.max_header_bytes,
                                       limits.max_frame_bytes)
        try:
            while connection.open and self.accepting:  # one session per transcription
                await Session(self.host, connection, WyomingCodec()).run()
        finally:
            self.clients.discard(task)
            self.host.give_connection()
            writer.close()

    async def close(self) -> None:
        """Stop accepting; connections between transcriptions end now, the others once their session closes."""
        self.accepting = False
        if self.server is not None:
            self.server.close()
        for task in list(self.clients):
            task.cancel()
        await asyncio.gather(*self.clients, return_exceptions=True)
