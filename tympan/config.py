"""Configuration as data: TOML files parsed into frozen dataclasses, validated once.

Every error names the file and the dotted key that was wrong, so a user can fix a
config without reading code. Shared by training, export and the daemon.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from tympan.errors import TympanError

T = TypeVar("T")


class ConfigError(TympanError, ValueError):
    """A configuration value is missing, unknown or invalid."""


def tympan_home() -> Path:
    """Where tympan caches data and converted models (`$TYMPAN_HOME`, default ~/.cache/tympan)."""
    home = os.environ.get("TYMPAN_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "tympan"


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """`data` with each `dotted.key=VALUE` of `overrides` set, VALUE read as a TOML value (a bare
    word as a string): one recipe run with other settings without a second copy of the file. Missing
    tables are created; unknown keys and wrong types are left to the validation that follows, which
    names them."""
    out = dict(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source}: override {item!r} is not KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        parts = key.split(".")
        table = out
        for i, part in enumerate(parts[:-1]):
            inner = table.get(part, {})
            if not isinstance(inner, dict):
                raise ConfigError(f"{source}: override {key}: {'.'.join(parts[: i + 1])} is not a table of this config")
            table[part] = inner = dict(inner)
            table = inner
        table[parts[-1]] = value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{source}: {key}: invalid value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{source}: {key}: {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a table, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(v, val_tp, f"{key}.{k}", source) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a table, got {value!r}")
        return from_dict(tp, value, source=source, prefix=key)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: dict[str, Any], *, source: str, prefix: str = "") -> T:
    """Build dataclass `cls` from a TOML table, refusing unknown keys and wrong types.

    Each field's `metadata["check"]`, if present, is called with the converted value and
    returns an error message or None.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: unknown key {where}{unknown[0]} (known keys here: {known})")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key {key}")
            continue
        value = _convert(data[name], hints[name], key, source)
        check = field.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{source}: {key}: {problem}")
        kwargs[name] = value
    return cls(**kwargs)


def check_fields(obj: Any, section: str) -> None:
    """Validate a dataclass built in code the way `from_dict` validates one read from a file:
    each field's type and its `metadata["check"]`, errors naming `section.field`.

    For config classes that are also constructed directly (call it from `__post_init__`).
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{section}.{f.name}"
        value = _convert(getattr(obj, f.name), hints[f.name], key, source=type(obj).__name__)
        check = f.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem:
            raise ConfigError(f"{type(obj).__name__}: {key}: {problem}")


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict that TOML can hold (None values dropped)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return clean(dataclasses.asdict(obj))


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


def probability(value: float) -> str | None:
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value}"


def check(fn: typing.Callable[[Any], str | None]) -> dict[str, Any]:
    """Field metadata that attaches a validator: `field(default=1, metadata=check(positive))`."""
    return {"check": fn}


def dump_toml(data: dict[str, Any]) -> str:
    """Write a nested dict of str/int/float/bool/list as TOML (tables after scalars)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            return f'"{escaped}"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines: list[str] = []

    def table(d: dict[str, Any], path: list[str]) -> None:
        subtables = {k: v for k, v in d.items() if isinstance(v, dict)}
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if path and (scalars or not subtables):
            lines.append(f"[{'.'.join(path)}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {scalar(v)}")
        if scalars:
            lines.append("")
        for k, v in subtables.items():
            table(v, [*path, k])

    table(data, [])
    return "\n".join(lines).rstrip() + "\n"
