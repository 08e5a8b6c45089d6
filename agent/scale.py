"""Min-max scaling fitted on healthy data, carried as plain numbers (no pickled scaler on the gateway)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class MinMaxScaling:
    """x_scaled = x * scale + offset, as scikit-learn's MinMaxScaler computes it (scale_, min_)."""

    scale: np.ndarray  # (F,)
    offset: np.ndarray  # (F,)
    data_min: np.ndarray  # (F,) healthy minimum, for reports
    data_max: np.ndarray  # (F,)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale the last axis; values outside the healthy range fall outside [0, 1], which is the point."""
        return x * self.scale + self.offset

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).tolist() for k in ("scale", "offset", "data_min", "data_max")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MinMaxScaling:
        try:
            arrays = {k: np.asarray(d[k], dtype=np.float64) for k in ("scale", "offset", "data_min", "data_max")}
        except KeyError as e:
            raise ConfigError(f"scaler: missing {e.args[0]!r}") from None
        sizes = {a.shape for a in arrays.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ConfigError(f"scaler: arrays must be 1-D and equally long, got {sorted(sizes)}")
        if not all(np.all(np.isfinite(a)) for a in arrays.values()):
            raise ConfigError("scaler: non-finite number")
        return cls(**arrays)
