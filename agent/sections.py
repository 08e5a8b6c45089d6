"""One TOML section parser for the three configs (the agent's, training's and the monitor's).

A section is a frozen dataclass: its fields are the keys, their annotations the types a value must have
(``int``, ``float``, ``str``, ``bool``, ``tuple[...]`` from a TOML array, ``X | None``), and a field may carry
a check (``checked``) and be marked as a file name (``path_field``: made relative to the config file).
Whatever is wrong is a ``ConfigError`` naming the file, the section and the key, with what was expected: a
typo must never fall back silently to a default.

It sits beside ``errors`` at the bottom of the agent: every room and every package may import it.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from .errors import ConfigError

T = TypeVar("T")


def read_toml(p: Path, hint: str = "") -> dict[str, Any]:
    """A TOML file as a dict; a missing file or bad syntax is a ConfigError naming the file (and the line)."""
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found{hint}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read it: {e}") from None


def checked(default: Any, ok: Callable[[Any], bool], expected: str) -> Any:
    """A field whose value must pass ``ok`` (after its type check); ``expected`` says what it must be."""
    return field(default=default, metadata={"check": (ok, expected)})


def check_fields(obj: Any, where: str) -> None:
    """Every ``checked`` field of dataclass ``obj`` against its own bound: the one rule for a value from a config
    file (``parse_section`` says it with the file) and one made in code or read from a manifest."""
    for f in fields(obj):
        check = f.metadata.get("check")
        value = getattr(obj, f.name)
        if check is not None and not check[0](value):
            raise ConfigError(f"{where}.{f.name} = {value!r}: expected {check[1]}")


def path_field(default: Any = None) -> Any:
    """A field naming a file: a relative name is taken relative to the config file."""
    return field(default=default, metadata={"path": True})


def positive(v: Any) -> bool:
    """A finite number above zero (None passes: an optional field left out)."""
    return v is None or (math.isfinite(v) and v > 0)


def within(low: float, high: float) -> Callable[[Any], bool]:
    """A finite number from ``low`` to ``high`` (None passes: an optional field left out)."""
    return lambda v: v is None or (math.isfinite(v) and low <= v <= high)


def topic_filter(v: Any) -> bool:
    """An MQTT subscription filter (MQTT 3.1.1 / 5, 4.7): not empty, no NUL, '+' and '#' only as whole levels,
    '#' only last, at most 65,535 bytes."""
    if not v or "\0" in v or len(v.encode()) > 65535:
        return False
    levels = v.split("/")
    return all(("+" not in lv or lv == "+") and ("#" not in lv or (lv == "#" and i == len(levels) - 1))
               for i, lv in enumerate(levels))


def known_sections(raw: Mapping[str, Any], known: typing.Iterable[str], p: Path | str) -> None:
    """Refuse a section name the config does not have, naming the file and the ones it has."""
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(f"{p}: unknown section(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "").replace("NoneType", "None")


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(does ``value`` fit ``hint``, the value as the field holds it: a TOML array as a tuple, an int as a float)."""
    if hint is Any:
        return True, value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args, None
        for a in args:
            if a is not type(None):
                ok, v = _coerce(value, a)
                if ok:
                    return True, v
        return False, value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        each = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(each) != len(value):
            return False, value
        out = [_coerce(v, h) for v, h in zip(value, each, strict=True)]
        return all(ok for ok, _ in out), tuple(v for _, v in out)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(hint, type):
        return isinstance(value, hint), value
    return True, value


def parse_section(cls: type[T], raw: Mapping[str, Any] | None, name: str, p: Path | str,
                  path_keys: typing.Iterable[str] = ()) -> T:
    """``cls(**raw)`` for section ``[name]`` of config ``p``, every key and value checked.

    ``path_keys`` are further file-name keys (besides fields made with ``path_field``)."""
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"{p}: [{name}] expected a table of keys, got {type(raw).__name__}")
    raw = dict(raw or {})
    known: dict[str, Field[Any]] = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    bad = set(raw) - set(known)
    if bad:
        raise ConfigError(f"{p}: [{name}] unknown key(s) {sorted(bad)}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    paths = set(path_keys)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        check = known[key].metadata.get("check")
        ok, held = _coerce(value, hints[key])
        if not ok or (check is not None and not check[0](held)):
            expected = check[1] if check is not None else _describe(hints[key])
            raise ConfigError(f"{p}: [{name}] {key} = {value!r}: expected {expected}")
        value = held
        if isinstance(value, str) and (known[key].metadata.get("path") or key in paths) and str(p)[:1] != "<":
            value = str((Path(p).parent / value).resolve())
        out[key] = value
    missing = [k for k, f in known.items() if k not in out and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{p}: [{name}] missing key(s) {sorted(missing)}")
    try:
        return cls(**out)
    except (TypeError, ValueError, ConfigError) as e:  # the section's own cross-key checks
        raise ConfigError(f"{p}: [{name}] {e}") from None
