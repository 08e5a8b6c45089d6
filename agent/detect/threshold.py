"""Alarm thresholds from the distribution of healthy scores (pure numpy): fitted in training, and again on
each gateway's own machine when it commissions, by the same rule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

METHODS = ("max", "quantile", "mean_std")
# Thresholds fitted on fewer healthy windows than this are worth a warning (training, commissioning): one at the
# largest of n healthy windows is crossed by a later healthy window with probability about 1 / (n + 1) (any of
# n + 1 exchangeable values is the largest equally often), so with 30 windows about one healthy window in 31
# is above it. 100 brings that under 1%; the alarm rule's k windows in a row then make an alarm rarer still.
FEW_HEALTHY_WINDOWS = 100


@dataclass(frozen=True)
class ThresholdRule:
    """How healthy scores become a threshold: their max, a quantile ``q`` or mean + ``k`` sigma, times ``margin``.

    ``max`` with a margin is the default because the aim is no false alarm at all: a threshold below the
    worst healthy window is a promise to raise an alarm on a healthy machine.
    """

    method: str = "max"
    q: float = 0.995  # for quantile
    k: float = 4.0  # for mean_std
    margin: float = 1.1  # headroom over what healthy data ever did

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"threshold.method: {self.method!r} is not one of {', '.join(METHODS)}")
        for name, ok, want in (("q", 0 < self.q < 1, "in (0, 1)"), ("k", self.k > 0, "> 0"),
                               ("margin", self.margin > 0, "> 0")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or not ok:
                raise ConfigError(f"threshold.{name}: {v!r} must be a number {want}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThresholdRule:
        """The rule's keys of a mapping that may hold others (a manifest's ``threshold`` holds the values too)."""
        return cls(**{k: d[k] for k in ("method", "q", "k", "margin") if k in d})


def fit_threshold(healthy_scores: np.ndarray, rule: ThresholdRule) -> float:
    """One threshold from healthy scores by ``rule``."""
    s = np.asarray(healthy_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite healthy scores to fit a threshold on")
    if rule.method == "max":
        base = float(s.max())
    elif rule.method == "quantile":
        base = float(np.quantile(s, rule.q))
    else:
        base = float(s.mean() + rule.k * s.std())
    return base * rule.margin


def fit_channel_thresholds(healthy_contrib: np.ndarray, rule: ThresholdRule) -> np.ndarray:
    """Per-channel thresholds on contributions (n, C) -> (C,), by the same rule as the score."""
    return np.array([fit_threshold(healthy_contrib[:, c], rule) for c in range(healthy_contrib.shape[1])])
