"""The client's token, wherever its protocol carries it, checked against `auth.token` the same way for every
entry point (websockets, the HTTP API, the realtime websocket)."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

REALTIME_KEY_PREFIX = "openai-insecure-api-key."  # how browsers' realtime clients pass the key (a subprotocol)


def presented_token(authorization: str | None, query: str, subprotocols: str | None = None) -> str:
    """`Authorization: Bearer T`, else a realtime subprotocol `openai-insecure-api-key.T`, else `?token=T`."""
    if authorization and authorization.startswith("Bearer "):
        return authorization[len("Bearer "):]
    for offer in (subprotocols or "").split(","):
        offer = offer.strip()
        if offer.startswith(REALTIME_KEY_PREFIX):
            return offer[len(REALTIME_KEY_PREFIX):]
    return parse_qs(query).get("token", [""])[0]


def authorized(token: str, presented: str) -> bool:
    """True when no token is configured, or the presented one is it (compared in constant time)."""
    return not token or hmac.compare_digest(presented.encode(), token.encode())


def origin_allowed(allowed: list[str], origin: str | None, host: str | None) -> bool:
    """Whether a browser at `origin` may use an entry point: no Origin (not a browser), no list (any), listed,
    or the daemon's own page (the Origin's host and port are the request's Host)."""
    if origin is None or not allowed or origin in allowed:
        return True
    return urlsplit(origin).netloc == host
