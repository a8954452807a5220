"""Wyoming's framing: one event is a JSON header line, then `data_length` bytes of JSON data, then
`payload_length` bytes of payload (audio). Read with every length bounded, before anything is allocated.

A frame, as the Wyoming codec (wyoming.py) receives it, is one whole event exactly as it came over the
wire; `decode` turns it into a WyomingEvent. Written from the protocol's description (the `wyoming`
package's README), not from its code.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

VERSION = "1.10.2"  # the Wyoming version tympan's events say they follow


class FramingError(ValueError):
    """The byte stream is not Wyoming events: the connection cannot go on (its next event cannot be found)."""


@dataclass(frozen=True)
class WyomingEvent:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FramingError(f"'{key}' must be a whole number of bytes >= 0, got {str(value)[:40]!r}")
    if value > limit:
        raise FramingError(f"'{key}' {value} is over the limit of {limit} bytes")
    return value


def _header(line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, invalid UTF-8, absurd nesting
        raise FramingError("an event's header line is not valid JSON") from None
    if not isinstance(header, dict):
        raise FramingError("an event's header line must be a JSON object")
    if not isinstance(header.get("type"), str) or not header["type"]:
        raise FramingError("an event's header has no 'type'")
    if "data" in header and not isinstance(header["data"], dict):
        raise FramingError("an event's 'data' must be a JSON object")
    return header


async def read_frame(reader: asyncio.StreamReader, max_header: int, max_payload: int) -> bytes | None:
    """The next event as raw bytes; None at a clean end of the stream (EOF between events).

    Raises FramingError for a header line over `max_header` bytes, a header that is not a JSON object
    with a type, lengths that are not numbers or over the limits, and a stream that ends inside an event."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise FramingError("the stream ended inside an event's header line") from None
    except asyncio.LimitOverrunError:
        raise FramingError(f"an event's header line is longer than {max_header} bytes") from None
    header = _header(line)
    size = _length(header, "data_length", max_header) + _length(header, "payload_length", max_payload)
    try:
        rest = await reader.readexactly(size) if size else b""
    except asyncio.IncompleteReadError:
        raise FramingError(f"the stream ended inside a {header['type']!r} event (announced {size} bytes)") from None
    return line + rest


def event_type(frame: bytes) -> str:
    """The type of a frame from read_frame (its header was checked there)."""
    return str(_header(frame[: frame.index(b"\n") + 1])["type"])


def decode(frame: bytes) -> WyomingEvent:
    """A frame from read_frame as an event: header data and the data section merged. FramingError if the data
    section is not a JSON object (the stream itself is still in step: its lengths were right)."""
    end = frame.index(b"\n") + 1
    header = _header(frame[:end])
    data: dict[str, Any] = dict(header.get("data") or {})
    data_length = _length(header, "data_length", len(frame))
    if data_length:
        try:
            extra = json.loads(frame[end : end + data_length])
        except (ValueError, RecursionError):
            raise FramingError(f"the data of a {header['type']!r} event is not valid JSON") from None
        if not isinstance(extra, dict):
            raise FramingError(f"the data of a {header['type']!r} event must be a JSON object")
        data.update(extra)
    return WyomingEvent(header["type"], data, frame[end + data_length :])


def encode(kind: str, data: dict[str, Any] | None = None) -> str:
    """An event with no payload, as Wyoming writes one: the header line, then the data section."""
    header: dict[str, Any] = {"type": kind, "version": VERSION}
    if not data:
        return json.dumps(header) + "\n"
    body = json.dumps(data, ensure_ascii=False)
    header["data_length"] = len(body.encode("utf-8"))
    return json.dumps(header) + "\n" + body
