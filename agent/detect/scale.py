"""Scaling fitted on healthy data (min-max or robust), carried as plain numbers (no pickled scaler on the gateway)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class MinMaxScaling:
    """x_scaled = x * scale + offset, as scikit-learn's MinMaxScaler computes it (scale_, min_)."""

    scale: np.ndarray  # (F,)
    offset: np.ndarray  # (F,)
    data_min: np.ndarray  # (F,) healthy minimum, for reports
    data_max: np.ndarray  # (F,)

    @property
    def n_features(self) -> int:
        return int(self.scale.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale the last axis; values outside the healthy range fall outside [0, 1], which is the point."""
        return x * self.scale + self.offset

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).tolist() for k in ("scale", "offset", "data_min", "data_max")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MinMaxScaling:
        return cls(**_arrays(d, ("scale", "offset", "data_min", "data_max")))


SCALINGS = ("minmax", "robust")


@dataclass(frozen=True)
class RobustScaling:
    """x_scaled = (x - center) / spread: the healthy median and the width between two healthy quantiles
    (5% and 95% by default), so one healthy outlier cannot stretch the scale that every other value is read on."""

    center: np.ndarray  # (F,) healthy median
    spread: np.ndarray  # (F,) healthy q_high - q_low (1 where that is 0, as a constant feature carries nothing)
    quantiles: tuple[float, float] = (0.05, 0.95)

    @classmethod
    def fit(cls, frames: np.ndarray, quantiles: tuple[float, float] = (0.05, 0.95)) -> RobustScaling:
        """Learn the numbers from healthy frames (n, F) with numpy only."""
        x = np.asarray(frames, dtype=np.float64)
        lo, med, hi = np.quantile(x, [quantiles[0], 0.5, quantiles[1]], axis=0)
        spread = hi - lo
        return cls(med, np.where(spread > 0, spread, 1.0), (float(quantiles[0]), float(quantiles[1])))

    @property
    def n_features(self) -> int:
        return int(self.center.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale the last axis: healthy values mostly within +-0.5 of 0, a fault's rise in units of healthy spread."""
        return (x - self.center) / self.spread

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "robust", "center": self.center.tolist(), "spread": self.spread.tolist(),
                "quantiles": list(self.quantiles)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RobustScaling:
        arrays = _arrays(d, ("center", "spread"))
        if not np.all(arrays["spread"] > 0):
            raise ConfigError("scaler.spread: every value must be > 0")
        q = d.get("quantiles", [0.05, 0.95])
        if (not isinstance(q, list) or len(q) != 2 or not all(isinstance(v, (int, float)) for v in q)
                or not 0 <= q[0] < q[1] <= 1):
            raise ConfigError(f"scaler.quantiles: expected two numbers 0 <= low < high <= 1, got {str(q)[:40]}")
        return cls(arrays["center"], arrays["spread"], (float(q[0]), float(q[1])))


def _arrays(d: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named lists as float arrays: present, 1-D, equally long and finite, or ConfigError naming the problem."""
    arrays = {}
    for k in keys:
        if k not in d:
            raise ConfigError(f"scaler: missing {k!r}")
        v = d[k]
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise ConfigError(f"scaler.{k}: expected a list of numbers, got {str(v)[:40]}")
        arrays[k] = np.asarray(v, dtype=np.float64)
    sizes = {a.shape for a in arrays.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ConfigError(f"scaler: arrays must be 1-D and equally long, got {sorted(sizes)}")
    if not all(np.all(np.isfinite(a)) for a in arrays.values()):
        raise ConfigError("scaler: non-finite number")
    return arrays


Scaling = MinMaxScaling | RobustScaling


def scaling_from_dict(d: Mapping[str, Any]) -> Scaling:
    """A bundle's or run's ``scaler``: ``kind`` says which (bundles made before robust scaling have none: min-max)."""
    kind = d.get("kind", "minmax") if isinstance(d, Mapping) else None
    if kind == "robust":
        return RobustScaling.from_dict(d)
    if kind == "minmax":
        return MinMaxScaling.from_dict(d)
    raise ConfigError(f"scaler.kind: expected one of {', '.join(SCALINGS)}, got {str(kind)[:40]!r}")
