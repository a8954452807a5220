"""multipart/form-data (RFC 7578) as the OpenAI SDK, curl and browsers send it: form fields and uploaded files.

The whole body is in memory already (bounded by openai.max_upload_bytes); parts, part heads and text
fields are bounded here too. Anything malformed is a MultipartError naming what was wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

MAX_PARTS = 64
MAX_PART_HEAD = 8192
MAX_FIELD = 65536  # a text field's value
PARAM = re.compile(r';\s*([A-Za-z0-9_*.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class MultipartError(ValueError):
    pass


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        """The field's value (the last, if given more than once)."""
        values = self.fields.get(name)
        return values[-1] if values else None


def params(header: str) -> tuple[str, dict[str, str]]:
    """`value; a=1; b="x y"` -> ("value", {"a": "1", "b": "x y"}) (names lower-case)."""
    value, _, rest = header.partition(";")
    out: dict[str, str] = {}
    for name, raw in PARAM.findall(";" + rest):
        text = raw.strip()
        if text.startswith('"'):
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        key = name.lower()
        if key.endswith("*") and "''" in text:  # RFC 5987: charset''percent-encoded
            charset, _, encoded = text.partition("''")
            try:
                text = unquote(encoded, encoding=charset or "utf-8", errors="replace")
            except LookupError:
                text = unquote(encoded)
            key = key[:-1]
        out[key] = text
    return value.strip().lower(), out


def boundary_of(content_type: str) -> bytes:
    kind, p = params(content_type)
    if kind != "multipart/form-data":
        raise MultipartError(f"the request must be multipart/form-data, got {kind[:60]!r}")
    boundary = p.get("boundary", "")
    if not 1 <= len(boundary) <= 70 or not boundary.isascii():
        raise MultipartError("multipart/form-data needs a boundary of 1-70 ASCII characters")
    return boundary.encode("ascii")


def _part_head(head: bytes) -> tuple[str, str | None, str]:
    """(field name, filename or None, content type) from a part's header lines."""
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            raise MultipartError("a multipart part has a malformed header line")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("utf-8", errors="replace")
    kind, p = params(headers.get("content-disposition", ""))
    if kind != "form-data" or not p.get("name"):
        raise MultipartError("each multipart part needs 'Content-Disposition: form-data; name=...'")
    return p["name"], p.get("filename"), headers.get("content-type", "application/octet-stream")


def parse_form(body: bytes, content_type: str) -> Form:
    delimiter = b"--" + boundary_of(content_type)
    start = body.find(delimiter)
    if start < 0:
        raise MultipartError("the body has no part (its boundary never occurs)")
    form, pos, parts = Form(), start + len(delimiter), 0
    while True:
        if body.startswith(b"--", pos):
            return form  # the closing delimiter; an epilogue after it is ignored
        if not body.startswith(b"\r\n", pos):
            raise MultipartError("a multipart boundary is not followed by CRLF or '--'")
        parts += 1
        if parts > MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts")
        head_end = body.find(b"\r\n\r\n", pos + 2, pos + 2 + MAX_PART_HEAD + 4)
        if head_end < 0:
            raise MultipartError(f"a part's header is missing its end or longer than {MAX_PART_HEAD} bytes")
        name, filename, kind = _part_head(body[pos + 2 : head_end])
        end = body.find(b"\r\n" + delimiter, head_end + 4)
        if end < 0:
            raise MultipartError(f"part {name[:40]!r} is not closed by the boundary (truncated body?)")
        content = body[head_end + 4 : end]
        if filename is not None:
            form.files[name] = Upload(filename, kind, content)
        else:
            if len(content) > MAX_FIELD:
                raise MultipartError(f"field {name[:40]!r} is longer than {MAX_FIELD} bytes")
            try:
                form.fields.setdefault(name, []).append(content.decode("utf-8"))
            except UnicodeDecodeError:
                raise MultipartError(f"field {name[:40]!r} is not valid UTF-8") from None
        pos = end + 2 + len(delimiter)
