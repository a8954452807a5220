"""The daemon's configuration: one TOML file (configs/daemon.toml documents every key), then
`TYMPAN_<SECTION>_<KEY>` environment variables, then command-line flags; validated once, at start."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from tympan.config import ConfigError, check, from_dict, non_negative, positive, read_toml
from tympan.daemon.mqtt import MqttConfig
from tympan.daemon.turn import TurnConfig
from tympan.daemon.vad import VadConfig
from tympan.runtime.decode import DecodeSettings


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"must be a TCP port (0-65535), got {value}"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = field(default=8765, metadata=check(_port))
    # Bundle directory; "" serves the default bundle (built on first start if missing).
    bundle: str = ""
    # Threads of the inference worker (ONNX Runtime and torch intra-op threads).
    threads: int = field(default=2, metadata=check(positive))
    # On SIGTERM: stop accepting, finish pending utterances for at most this long, then exit.
    drain_timeout_s: float = field(default=10.0, metadata=check(non_negative))


@dataclass(frozen=True)
class DecodeConfig(DecodeSettings):
    """The decode limits and loop guard (`DecodeSettings`, shared with `tympan eval` and `tympan infer`), plus
    how the daemon schedules decoding."""

    # Re-decode a growing utterance this often (ms of new audio) and send partials.
    partial_interval_ms: int = field(default=600, metadata=check(positive))
    partials: bool = True
    # Where partials come from: "ctc", the greedy CTC text of a CTC bridge (what was heard, read from the
    # encoder call, no LLM decode: cheap, so partial_interval_ms can be short); "llm", a decode of the
    # growing utterance; "auto", ctc when the bundle's encoder gives it.
    partials_from: Literal["auto", "ctc", "llm"] = "auto"
    # Utterances encoded together in one encoder call, across sessions.
    max_batch: int = field(default=4, metadata=check(positive))


@dataclass(frozen=True)
class LimitsConfig:
    max_sessions: int = field(default=16, metadata=check(positive))
    max_frame_bytes: int = field(default=1 << 20, metadata=check(positive))
    max_session_s: float = field(default=8 * 3600.0, metadata=check(positive))
    idle_timeout_s: float = field(default=60.0, metadata=check(positive))
    # A connection must send `start` within this time.
    start_timeout_s: float = field(default=10.0, metadata=check(positive))
    # Finals one session may have waiting for the model; past it, its audio is read more slowly.
    session_backlog: int = field(default=4, metadata=check(positive))
    # Utterances waiting for the model, all sessions together; past it new sessions get `overloaded`.
    queue_size: int = field(default=32, metadata=check(positive))
    # Events waiting to be sent to one client; a client that stops reading is disconnected.
    send_queue: int = field(default=256, metadata=check(positive))


def _wyoming_uri(value: str) -> str | None:
    if not value:
        return None
    try:
        parse_tcp_uri(value)
    except ValueError as e:
        return str(e)
    return None


def parse_tcp_uri(uri: str) -> tuple[str, int]:
    """`tcp://HOST:PORT` -> (host, port); ValueError naming what is wrong."""
    url = urlsplit(uri)
    if url.scheme != "tcp" or not url.hostname or url.path not in ("", "/"):
        raise ValueError(f"must be tcp://HOST:PORT, got {uri!r}")
    try:
        port = url.port
    except ValueError:
        port = None
    if port is None:
        raise ValueError(f"needs a port (0-65535): tcp://HOST:PORT, got {uri!r}")
    return url.hostname, port


def parse_networks(value: list[str]) -> list[IPv4Network | IPv6Network]:
    """CIDR strings ("192.168.1.0/24", "::1/128", a bare address) as networks; ValueError naming a bad one."""
    out = []
    for v in value:
        try:
            out.append(ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{v!r} is not a network: give CIDRs such as \"192.168.1.0/24\" or \"::1/128\"") \
                from None
    return out


def _networks(value: list[str]) -> str | None:
    try:
        parse_networks(value)
    except ValueError as e:
        return str(e)
    return None


@dataclass(frozen=True)
class WyomingConfig:
    # Wyoming server (Home Assistant, Rhasspy 3): "tcp://HOST:PORT"; "" = off.
    uri: str = field(default="", metadata=check(_wyoming_uri))
    # Wyoming carries no token: this is its access control. Clients' addresses (CIDRs) allowed; empty = any.
    allowed_networks: list[str] = field(default_factory=list, metadata=check(_networks))
    # Largest JSON header line and data section of one event; audio payloads are bounded by limits.max_frame_bytes.
    max_header_bytes: int = field(default=65536, metadata=check(positive))


@dataclass(frozen=True)
class OpenAiConfig:
    # POST /v1/audio/transcriptions and /translations: the largest upload (OpenAI's own limit is 25 MB) ...
    max_upload_bytes: int = field(default=25 * 1024 * 1024, metadata=check(positive))
    # ... and the longest audio, in seconds.
    max_audio_s: float = field(default=1500.0, metadata=check(positive))
    # After limits.idle_timeout_s of grace, a request body must average at least this many bytes/s (0: no floor),
    # so a slow client cannot hold an upload slot for hours.
    min_upload_bytes_per_s: int = field(default=32768, metadata=check(non_negative))


@dataclass(frozen=True)
class AuthConfig:
    # Bearer token required from clients ("" = none): `Authorization: Bearer T` or `?token=T`.
    token: str = ""
    # Origins browsers may connect from (empty: any). Non-browser clients send no Origin.
    allowed_origins: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TlsConfig:
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class DaemonConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)
    openai: OpenAiConfig = field(default_factory=OpenAiConfig)


def _env_value(raw: str) -> Any:
    """An environment value as TOML would read it (numbers, booleans, lists), else a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _section_keys() -> dict[str, set[str]]:
    defaults = DaemonConfig()
    return {f.name: {g.name for g in fields(getattr(defaults, f.name))} for f in fields(DaemonConfig)}


def load_daemon_config(path: str | Path | None = None, env: dict[str, str] | None = None,
                       overrides: dict[str, dict[str, Any]] | None = None) -> DaemonConfig:
    data: dict[str, Any] = read_toml(Path(path)) if path else {}
    source = str(path) if path else "defaults"
    variables: Mapping[str, str] = os.environ if env is None else env
    sections = _section_keys()
    for name, raw in variables.items():
        if not name.startswith("TYMPAN_") or name in ("TYMPAN_HOME", "TYMPAN_DEBUG", "TYMPAN_MODEL"):
            continue
        rest = name[len("TYMPAN_"):].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None or rest[len(section) + 1:] not in sections[section]:
            raise ConfigError(f"environment variable {name}: no such setting (TYMPAN_<SECTION>_<KEY>)")
        data.setdefault(section, {})[rest[len(section) + 1:]] = _env_value(raw)
        source = f"{source} + environment"
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                data.setdefault(section, {})[key] = value
    cfg = from_dict(DaemonConfig, data, source=source)
    if bool(cfg.tls.cert) != bool(cfg.tls.key):
        raise ConfigError(f"{source}: tls.cert and tls.key go together")
    for key, value in (("tls.cert", cfg.tls.cert), ("tls.key", cfg.tls.key), ("turn.model", cfg.turn.model)):
        if value and not Path(value).is_file():
            raise ConfigError(f"{source}: {key}: file not found: {value}")
    return cfg
