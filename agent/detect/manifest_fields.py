"""Reading the decision layer's numbers from a manifest (``run.json``, a bundle's ``manifest.json``) as a boundary:
every field is checked for type, shape and range, and a wrong one is named, so a damaged or hand-edited manifest
is one clear line, never a traceback. Shared by the measures, the event rule and the diagnosis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError


def array_field(d: Mapping[str, Any], key: str, where: str, shape: tuple[int, ...],
                positive: bool = False) -> np.ndarray:
    """``d[key]`` as a float array of ``shape`` (nested lists), finite (and > 0 if asked); names the field."""
    if not isinstance(d, Mapping) or key not in d:
        raise ConfigError(f"{where}.{key}: missing")
    v = d[key]

    def numeric(x: Any) -> bool:
        if isinstance(x, list):
            return all(numeric(y) for y in x)
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not isinstance(v, list) or not numeric(v):
        raise ConfigError(f"{where}.{key}: expected a list of numbers, got {str(v)[:60]}")
    try:
        a = np.asarray(v, dtype=np.float64)
    except ValueError:
        raise ConfigError(f"{where}.{key}: ragged list, expected shape {shape}") from None
    if a.shape != shape:
        raise ConfigError(f"{where}.{key}: shape {a.shape}, expected {shape}")
    if not np.all(np.isfinite(a)) or (positive and np.any(a <= 0)):
        raise ConfigError(f"{where}.{key}: every value must be a finite number{' > 0' if positive else ''}")
    return a


def number_field(d: Mapping[str, Any], key: str, where: str, lo: float = -math.inf,
                 default: float | None = None) -> float:
    """``d[key]`` as a finite number > ``lo`` (``default`` when absent, if given); names the field."""
    if key not in d and default is not None:
        return default
    if key not in d:
        raise ConfigError(f"{where}.{key}: missing")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= lo:
        raise ConfigError(f"{where}.{key}: {v!r} must be a finite number > {lo:g}")
    return float(v)
