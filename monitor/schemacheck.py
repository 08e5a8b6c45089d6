"""A quick JSON Schema check for the messages agents send, with fastjsonschema as the authority.

fastjsonschema's generated code is general: two ``isinstance`` calls with a tuple of three types per number,
a set copied per object, ~45 checks for a score message, about half of what the monitor spends on a message
outside paho and SQLite. The messages a monitor sees are nearly all valid and shaped exactly as the agent
builds them (orjson's ``int``, ``float``, ``str``, ``list``, ``dict``), so ``compile_quick`` turns a schema into
plain type tests (``type(x) is float``) for the keywords the vibrawatch schemas use, and ``Checker`` answers:

- the quick check passes: valid. It is built to be at least as strict as the schema (it refuses ``1.0`` for an
  integer, a ``Decimal`` for a number: the full validator decides those), and a keyword it does not know is
  handed to fastjsonschema compiled for that part of the schema. The tests compare both on valid and broken
  messages of every kind;
- it fails: fastjsonschema runs on the message and its error is the dead letter's reason (or, where the
  quick check was only stricter than the schema, the message is valid after all).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import fastjsonschema
from fastjsonschema.draft04 import CodeGeneratorDraft04

Check = Callable[[Any], bool]
_DATE_TIME = re.compile(CodeGeneratorDraft04.FORMAT_REGEXS["date-time"])  # the very pattern fastjsonschema uses
_NOTES = {"description", "title", "$schema", "$id", "$comment", "examples", "default"}
_TYPES = {"string": "type({v}) is str", "number": "(type({v}) is float or type({v}) is int)",
          "integer": "type({v}) is int", "boolean": "type({v}) is bool", "null": "{v} is None"}
_MISSING = object()


def _authority(schema: dict[str, Any] | bool) -> Check:
    """fastjsonschema on this part of the schema, as a yes/no."""
    full = fastjsonschema.compile(schema)

    def check(x: Any) -> bool:
        try:
            full(x)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    return check


class _Compiler:
    """Python source for a schema: expressions for leaves, one function per object, names for constants."""

    def __init__(self) -> None:
        self.names: dict[str, Any] = {"_DT": _DATE_TIME.match, "_M": _MISSING}
        self.defs: list[str] = []

    def name(self, value: Any) -> str:
        n = f"_c{len(self.names)}"
        self.names[n] = value
        return n

    def expr(self, schema: dict[str, Any] | bool, v: str, depth: int = 0) -> str:
        """A Python expression that is True only for values the schema accepts (False for some it accepts too)."""
        if schema is True or schema == {}:
            return "True"
        if not isinstance(schema, dict):
            return f"{self.name(_authority(schema))}({v})"
        keys = set(schema) - _NOTES
        kind = schema.get("type")
        if kind == "object" and keys <= {"type", "properties", "required", "additionalProperties"}:
            return f"{self.object(schema)}({v})"
        if kind == "array" and keys <= {"type", "items", "minItems"}:
            y = f"_y{depth}"
            item = self.expr(schema.get("items", True), y, depth + 1)
            return f"(type({v}) is list and len({v}) >= {int(schema.get('minItems', 0))} and " \
                   f"all({item} for {y} in {v}))"
        parts = []
        if isinstance(kind, str) and kind in _TYPES:
            parts.append(_TYPES[kind].format(v=v))
        elif isinstance(kind, list) and kind and all(k in _TYPES for k in kind):
            parts.append("(" + " or ".join(_TYPES[k].format(v=v) for k in kind) + ")")
        elif kind is not None or len(keys) != 1:
            return f"{self.name(_authority(schema))}({v})"
        numeric = kind in ("number", "integer")
        for key in sorted(keys - {"type"}):
            value = schema[key]
            if key == "const" and (value is None or type(value) in (int, str, bool)):
                parts.append(f"(type({v}) is {type(value).__name__ if value is not None else 'type(None)'} "
                             f"and {v} == {value!r})")
            elif key == "enum" and all(type(x) is str or x is None for x in value):
                strings = self.name(frozenset(x for x in value if x is not None))
                parts.append(f"({v} is None or type({v}) is str and {v} in {strings})" if None in value
                             else f"(type({v}) is str and {v} in {strings})")
            elif key in ("minimum", "exclusiveMinimum", "maximum") and numeric and type(value) in (int, float):
                parts.append(f"{v} {({'minimum': '>=', 'exclusiveMinimum': '>', 'maximum': '<='})[key]} {value!r}")
            elif key == "format" and value == "date-time":  # a format applies to strings only
                parts.append(f"_DT({v}) is not None" if kind == "string"
                             else f"(type({v}) is not str or _DT({v}) is not None)")
            elif kind is None:
                return f"{self.name(_authority(schema))}({v})"
            else:
                parts.append(f"{self.name(_authority({'type': kind, key: value}))}({v})")
        return "(" + " and ".join(parts) + ")"

    def object(self, schema: dict[str, Any]) -> str:
        fn = f"_o{len(self.defs)}"
        self.defs.append("")  # reserve the name; nested objects add theirs after
        props: dict[str, Any] = schema.get("properties", {})
        required = [k for k in schema.get("required", ()) if k in props]
        extra = schema.get("additionalProperties", True)
        lines = [f"def {fn}(d):", "    if type(d) is not dict: return False"]
        if schema.get("required"):
            lines.append(f"    if not {self.name(frozenset(schema['required']))} <= d.keys(): return False")
        if extra is False:
            lines.append(f"    if not d.keys() <= {self.name(frozenset(props))}: return False")
        for k in required:
            lines += [f"    x = d[{k!r}]", f"    if not {self.expr(props[k], 'x')}: return False"]
        for k in props:
            if k not in required:
                lines += [f"    x = d.get({k!r}, _M)",
                          f"    if x is not _M and not {self.expr(props[k], 'x')}: return False"]
        if extra is not True and extra is not False:
            known = self.name(frozenset(props))
            lines += ["    for k, x in d.items():",
                      f"        if k not in {known} and not {self.expr(extra, 'x')}: return False"]
        lines.append("    return True")
        self.defs[int(fn[2:])] = "\n".join(lines)
        return fn


def compile_quick(schema: dict[str, Any] | bool) -> Check:
    """A check that passes only values the schema accepts (and fails some it accepts: then ask fastjsonschema)."""
    c = _Compiler()
    top = c.expr(schema, "value")
    source = "\n\n".join([*c.defs, f"def check(value):\n    return {top}"])
    scope = dict(c.names)
    exec(compile(source, "<vibrawatch quick schema check>", "exec"), scope)  # noqa: S102 - our own generated code
    check: Check = scope["check"]
    check.source = source  # type: ignore[attr-defined]
    return check


class Checker:
    """One message kind's schema: ``errors(msg)`` is None for a valid message, else fastjsonschema's reason."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.full = fastjsonschema.compile(schema)
        self.quick = compile_quick(schema)

    def errors(self, msg: Any) -> str | None:
        if self.quick(msg):
            return None
        try:
            self.full(msg)
        except fastjsonschema.JsonSchemaException as e:
            return str(e.message)
        return None
