"""Just enough HTTP/1.1 for the upload routes: one request per connection, read with every size and wait
bounded (head, body, chunk sizes), and answers that close the connection. Errors are OpenAI-shaped:
`{"error": {"message", "type", "code", "param"}}` with the HTTP status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

MAX_HEAD = 16384  # request line and headers
MAX_HEADERS = 100
TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
READ = 65536  # body bytes per read at most (a read returns what has come; each has its own timeout)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 405: "invalid_request_error", 408: "invalid_request_error",
               411: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
               431: "invalid_request_error", 429: "rate_limit_error", 505: "invalid_request_error"}


class HttpError(Exception):
    """An answer other than success: `status` and what the client is told (`code`, `param` as OpenAI's)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> str:
        kind = ERROR_TYPES.get(self.status, "server_error")
        return json.dumps({"error": {"message": self.message, "type": kind, "code": self.code, "param": self.param}},
                          ensure_ascii=False)


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    path: str = field(init=False)
    query: str = field(init=False)

    def __post_init__(self) -> None:
        url = urlsplit(self.target)
        self.path, self.query = url.path, url.query


def response(status: int, body: str | bytes, content_type: str, length: bool = True, request_id: str = "") -> bytes:
    """A whole answer (or, with `length` False, the head of one whose body follows until the close). `request_id`
    (the session's id, as OpenAI's `x-request-id`) ties the answer to the finals published for it."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {content_type}", "Connection: close",
            "Cache-Control: no-cache"]
    if request_id:
        head.append(f"x-request-id: {request_id}")
    if length:
        head.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + data


def error_response(error: HttpError) -> bytes:
    return response(error.status, error.body(), "application/json")


def _head(raw: bytes) -> HttpRequest:
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not TOKEN.match(parts[0]) or not parts[1].startswith(b"/"):
        raise HttpError(400, "malformed HTTP request line", "bad_request")
    if parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here", "http_version_not_supported")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields", "headers_too_large")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.match(name):
            raise HttpError(400, "malformed HTTP header field", "bad_request")
        key = name.decode("ascii").lower()
        text = value.strip().decode("latin-1")
        if key in headers and key in ("content-length", "transfer-encoding", "content-type", "authorization"):
            raise HttpError(400, f"header {key} given twice", "bad_request")
        headers[key] = text
    return HttpRequest(parts[0].decode("ascii"), parts[1].decode("latin-1"), headers)


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float = 2.0) -> None:
    """Before closing after an answer: end our side, then read and drop what the client still sends, for a short
    while. Closing a socket with unread data makes the kernel reset the connection, and the client may lose the
    answer (an error sent before a body it did not wait to finish sending)."""
    with contextlib.suppress(Exception):  # whatever the client did meanwhile, the connection is closed next
        if writer.can_write_eof():
            writer.write_eof()

        async def drop() -> None:
            while await reader.read(READ):
                pass

        await asyncio.wait_for(drop(), seconds)


class BodyClock:
    """How long the body may still take: each read waits at most `timeout`, and after a grace of `timeout` the
    body must have averaged `min_rate` bytes/s (0: no floor), so a client trickling bytes cannot hold an upload
    slot for hours."""

    def __init__(self, timeout: float, min_rate: float) -> None:
        self.timeout, self.min_rate = timeout, min_rate
        self.started = time.monotonic()

    def left(self, received: int) -> float:
        if not self.min_rate:
            return self.timeout
        due = self.started + self.timeout + received / self.min_rate - time.monotonic()
        if due <= 0:
            raise HttpError(408, f"the request body arrives slower than {self.min_rate:g} bytes/s",
                            "timeout")
        return min(self.timeout, due)


async def _read(reader: asyncio.StreamReader, n: int, clock: BodyClock, received: int, exact: bool = True) -> bytes:
    """`n` bytes, or with `exact` False, what has come of them (at least one)."""
    timeout = clock.left(received)
    try:
        data = await asyncio.wait_for(reader.readexactly(n) if exact else reader.read(n), timeout)
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        return data
    except asyncio.IncompleteReadError:
        raise HttpError(400, "the request body ended before its announced length", "incomplete_body") from None
    except TimeoutError:
        clock.left(received)  # the rate floor, if that is what ran out
        raise HttpError(408, f"no request data for {timeout:g} s", "timeout") from None


async def _chunked(reader: asyncio.StreamReader, limit: int, clock: BodyClock) -> bytes:
    body = bytearray()
    while True:
        timeout = clock.left(len(body))
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise HttpError(400, "malformed chunked request body", "bad_request") from None
        except TimeoutError:
            clock.left(len(body))
            raise HttpError(408, f"no request data for {timeout:g} s", "timeout") from None
        size_text = line[:-2].split(b";")[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", size_text):
            raise HttpError(400, "malformed chunk size in a chunked request body", "bad_request")
        size = int(size_text, 16)
        if len(body) + size > limit:
            raise HttpError(413, f"the request body is over the limit of {limit} bytes", "request_too_large")
        if size == 0:
            await _read(reader, 2, clock, len(body))  # the last CRLF (no trailers expected)
            return bytes(body)
        while size:
            part = await _read(reader, min(READ, size), clock, len(body), exact=False)
            body += part
            size -= len(part)
        if await _read(reader, 2, clock, len(body)) != b"\r\n":
            raise HttpError(400, "malformed chunked request body", "bad_request")


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int, timeout: float,
                       check: Callable[[HttpRequest], None], head_timeout: float | None = None,
                       min_rate: float = 0.0) -> HttpRequest | None:
    """One request: its head (within `head_timeout`, default `timeout`), `check`ed (raises HttpError: auth,
    route) before the body is read (or `100 Continue` sent), then its body, at most `limit` bytes, each read
    within `timeout` and the whole at `min_rate` bytes/s after that grace (BodyClock). None when the client
    went away before a whole head."""
    head_timeout = timeout if head_timeout is None else head_timeout
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), head_timeout)
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"the request head is longer than {MAX_HEAD} bytes", "headers_too_large") from None
    except TimeoutError:
        raise HttpError(408, f"no whole request head within {head_timeout:g} s", "timeout") from None
    request = _head(raw)
    check(request)
    chunked = request.headers.get("transfer-encoding", "").lower()
    length = request.headers.get("content-length")
    if chunked and chunked != "chunked":
        raise HttpError(400, f"transfer-encoding {chunked[:40]!r} is not supported (chunked is)", "bad_request")
    if not chunked and length is None:
        raise HttpError(411, "a request body needs a Content-Length (or chunked encoding)", "length_required")
    if length is not None and not chunked:
        if not re.fullmatch(r"[0-9]+", length):
            raise HttpError(400, f"invalid Content-Length {length[:40]!r}", "bad_request")
        if len(length.lstrip("0")) > 15 or int(length) > limit:  # a huge number is over the limit, not invalid
            raise HttpError(413, f"the request body ({length[:40]} bytes) is over the limit of {limit} bytes",
                            "request_too_large")
    if request.headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    clock = BodyClock(timeout, min_rate)
    if chunked:
        request.body = await _chunked(reader, limit, clock)
    else:
        body, left = bytearray(), int(length or 0)
        while left:
            part = await _read(reader, min(READ, left), clock, len(body), exact=False)
            body += part
            left -= len(part)
        request.body = bytes(body)
    return request
