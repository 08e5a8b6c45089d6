"""JSON in and out of the hot path: orjson (C, several times faster) when installed, else the standard library.

Both reject NaN and Infinity, so a payload the agent could not have sent is a dead letter either way.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson

    def loads(data: bytes | str) -> Any:
        return orjson.loads(data)

    def dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()

except ImportError:  # pragma: no cover - the monitor extra installs orjson

    def _no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def loads(data: bytes | str) -> Any:
        return json.loads(data, parse_constant=_no_constant)

    def dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
