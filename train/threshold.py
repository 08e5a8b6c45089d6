"""Alarm thresholds from the distribution of healthy scores (pure numpy)."""

from __future__ import annotations

import numpy as np

from .config import ThresholdConfig


def fit_threshold(healthy_scores: np.ndarray, cfg: ThresholdConfig) -> float:
    """One threshold from healthy scores: their max, a quantile, or mean + k sigma, times ``margin``.

    ``max`` with a margin is the default because the aim is no false alarm at all: a threshold below the
    worst healthy window is a promise to raise an alarm on a healthy machine.
    """
    s = np.asarray(healthy_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite healthy scores to fit a threshold on")
    if cfg.method == "max":
        base = float(s.max())
    elif cfg.method == "quantile":
        base = float(np.quantile(s, cfg.q))
    else:
        base = float(s.mean() + cfg.k * s.std())
    return base * cfg.margin


def fit_channel_thresholds(healthy_contrib: np.ndarray, cfg: ThresholdConfig) -> np.ndarray:
    """Per-channel thresholds on contributions (n, C) -> (C,), by the same rule as the score."""
    return np.array([fit_threshold(healthy_contrib[:, c], cfg) for c in range(healthy_contrib.shape[1])])
