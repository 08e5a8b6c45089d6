"""The bounds every stored value is held to before the database sees it, in one place (docs/mqtt.md, "Bounds
the monitor enforces").

A message the schema accepts can still be one the database refuses (a NUL in a text field for PostgreSQL, a
``seq`` of 2^63 for both) or one that costs far more to keep than it is worth (a 1 MB model name, 50,000
contributions). ``check`` names the first value out of bounds, so the message becomes a dead letter saying why
instead of a batch retried forever; ``excerpt`` and ``escape`` keep the dead letters themselves small.
"""

from __future__ import annotations

import re
from typing import Any

MAX_PAYLOAD_BYTES = 65_536  # a whole message, checked before it is parsed (a score is ~300 bytes, a status ~1 KB)
MAX_NAME_CHARS = 256  # any string or object key but the free-text fields: model, channel, timestamps, keys
MAX_TEXT_CHARS = 4_096  # the free-text fields below (a fault, an error's line, a note, a reason)
TEXT_FIELDS = frozenset({"fault", "error", "note", "reason"})
MAX_ITEMS = 256  # keys of any object (``contributions``, ``ratios``) and items of any list (``channels``)
MAX_DEPTH = 6  # objects and lists inside each other (the deepest the schemas have is 3)
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what BIGINT (PostgreSQL) and INTEGER (SQLite) hold: signed 64-bit
# The schemas' integers. JSON Schema takes 1.0 for an integer, and a JSON integer beyond 64 bits parses as a
# float (2^64 as 1.8446744073709552e19): here an integer must be written as one.
INTEGER_FIELDS = frozenset({"seq", "spool_dropped", "windows", "deployment"})
# Any number's magnitude. No score, level, threshold or time comes near it (a score is a reconstruction error,
# a time is seconds since 1970), yet a sum or a mean of a thousand values stays far from a double's 1.8e308:
# retention's averages and the page's JSON cannot overflow to infinity.
MAX_NUMBER = 1e30
NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # site and device in the topic (docs/mqtt.md, the agent's config)
MAX_EXCERPT_BYTES = 1_024  # of a dead letter's payload; its full size is kept beside it
MAX_TOPIC_CHARS = 256  # a dead letter's topic, escaped
MAX_REASON_CHARS = 512  # a dead letter's reason, escaped

# Control characters (C0, DEL, C1) and lone surrogates: never in stored text (PostgreSQL refuses NUL, drivers
# refuse surrogates, a terminal obeys escapes). Names also refuse the invisible and direction-changing
# characters (zero-width spaces and joiners, bidi overrides, BOM) that make one name look like another.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")


def name_error(what: str, name: str) -> str | None:
    """Why a site or device name from a topic is not one docs/mqtt.md allows, or None."""
    if NAME.fullmatch(name):
        return None
    return f"topic: {what} '{escape(name, 40)}' is not 1-64 of A-Z a-z 0-9 _ - . (docs/mqtt.md)"


def check(msg: dict[str, Any]) -> str | None:
    """The first value of a decoded message out of bounds, as a reason naming the field, or None."""
    return _value(msg, "", "payload", 0)


def _value(v: Any, key: str, path: str, depth: int) -> str | None:
    t = type(v)
    if t is float:  # finite (the JSON parser refuses NaN and Infinity); the commonest value: first
        if key in INTEGER_FIELDS:
            return f"{path}: {v!r} is not an integer within signed 64-bit"
        return None if -MAX_NUMBER <= v <= MAX_NUMBER else f"{path}: {v!r} beyond {MAX_NUMBER:g} in magnitude"
    if t is str:
        return _string(v, key, path)
    if t is int:
        if not INT_MIN <= v <= INT_MAX:
            return f"{path}: integer {_digits(v)} out of range, expected signed 64-bit ({INT_MIN} to {INT_MAX})"
        return None
    if t is dict:
        if depth >= MAX_DEPTH:
            return f"{path}: nested deeper than {MAX_DEPTH}"
        if len(v) > MAX_ITEMS:
            return f"{path}: {len(v)} keys, at most {MAX_ITEMS}"
        for k, item in v.items():
            if not (len(k) <= MAX_NAME_CHARS and k.isascii() and k.isprintable()) \
                    and (error := _string(k, "", f"{path} (a key)")) is not None:
                return error
            if type(item) is float and k not in INTEGER_FIELDS and -MAX_NUMBER <= item <= MAX_NUMBER:
                continue
            if (error := _value(item, k, k if depth == 0 else f"{path}.{k}", depth + 1)) is not None:
                return error
        return None
    if t is list:
        if depth >= MAX_DEPTH:
            return f"{path}: nested deeper than {MAX_DEPTH}"
        if len(v) > MAX_ITEMS:
            return f"{path}: {len(v)} items, at most {MAX_ITEMS}"
        for i, item in enumerate(v):
            if (error := _value(item, key, f"{path}[{i}]", depth + 1)) is not None:
                return error
    return None  # bool, None


def _string(s: str, key: str, path: str) -> str | None:
    text = key in TEXT_FIELDS
    limit = MAX_TEXT_CHARS if text else MAX_NAME_CHARS
    if len(s) > limit:
        return f"{path}: {len(s)} characters, at most {limit}"
    return _characters(s, text, path)


def text_error(path: str, s: str) -> str | None:
    """Why free text (a note, a reason) holds a character stored text never does, or None: the rule of the MQTT
    free-text fields, for what operators write over the web too."""
    return _characters(s, True, path)


def _characters(s: str, text: bool, path: str) -> str | None:
    if s.isascii() and s.isprintable():  # nearly every string: none of the characters below can be in it
        return None
    if (bad := (_CONTROL if text else _INVISIBLE).search(s)) is not None:
        what = "a control character" if _CONTROL.match(bad.group()) else "an invisible or direction character"
        return f"{path}: {what} (U+{ord(bad.group()):04X}) at character {bad.start()}, none allowed"
    return None


def _digits(n: int) -> str:
    return str(n) if abs(n) < 10**40 else f"of {len(str(abs(n)))} digits"


def escape(text: str, limit: int, backslash: bool = True) -> str:
    """``text`` with a backslash escape for every non-printable character (and the backslash itself, unless
    ``backslash`` is False: a reason quoting values escaped already), cut to ``limit`` characters (then ``...``):
    safe to store, to print and to put on a page."""
    out = []
    n = 0
    for c in text:
        if c.isprintable() and (c != "\\" or not backslash):
            piece = c
        elif c == "\\":
            piece = "\\\\"
        else:
            o = ord(c)
            if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
                o -= 0xDC00
            piece = f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"
        n += len(piece)
        if n > limit:
            out.append("...")
            break
        out.append(piece)
    return "".join(out)


def excerpt(payload: bytes) -> str:
    """The first ``MAX_EXCERPT_BYTES`` of a payload as escaped text (bytes that are not UTF-8 as ``\\xNN``)."""
    text = escape(payload[:MAX_EXCERPT_BYTES].decode("utf-8", "surrogateescape"), 4 * MAX_EXCERPT_BYTES)
    return text + ("..." if len(payload) > MAX_EXCERPT_BYTES else "")
