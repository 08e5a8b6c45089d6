"""The combined detector's measures beside the autoencoder: each channel's level, a linear model's residual and
how far each channel's own inputs moved. Plain numbers fitted in training (``healthy.fit``), applied with numpy
here and on the gateway; all optional, so a detector without them decides exactly as the bare autoencoder.

- ``Floor``: each channel's own level (RMS and mean |x| of the window's last frame, or a table's value)
  against its healthy threshold, fitted by the run's threshold rule: the floor every model must beat is
  part of the product, so the product never alarms later than it. Its log level against the healthy median
  is what the event layer (``events``) watches for steps and condition changes.
- ``PcaResidual``: a linear reconstruction of the scaled frames (mean, principal axes); its per-window
  error and per-channel contributions get thresholds like the autoencoder's. It catches what a small LSTM
  smooths over on runs it was not tuned on.
- ``OwnDeviation``: how far each channel's *own* inputs (window means of its scaled features) moved from
  their healthy centre, in units of their largest healthy move. A model's reconstruction error spreads
  across its inputs; the channel whose inputs moved most is the one to name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .decide import reconstruction_scores
from .features import FeatureDef, FeatureSpec, extract
from .manifest_fields import array_field, number_field

FLOOR_FEATURES = ("rms", "mean_abs")
# The least a step must exceed the healthy maximum by to alarm at once: a doubling (6 dB), the smallest change
# condition-monitoring practice calls significant on any machine (two ISO 10816 zone boundaries apart are 2.5x).
SEVERE_MIN = math.log(2.0)

_TINY = 1e-12


@dataclass(frozen=True)
class Floor:
    """Per-channel level floors: ``levels`` of the values (K, C) per frame over ``thresholds`` (K, C); the
    channel's level is the largest ratio.

    A level is a value's distance from ``center``: 0 for what is a level already (RMS, mean |x|, a table's
    positive column), the healthy median for a *signed* column (a table's mean or skewness, with values <= 0
    when healthy), which can drift either way from its centre and has no upper floor of its own.
    """

    features: tuple[str, ...]  # e.g. ("rms", "mean_abs"), or ("value",) for a feature table
    thresholds: np.ndarray  # (K, C) over the levels
    median: np.ndarray  # (K, C) the levels' healthy median, the reference for log levels (steps, condition changes)
    step: np.ndarray  # (C,) smallest jump of log level that counts as a step: above every healthy jump
    high: np.ndarray | None = None  # (C,) the largest healthy log level; None: fitted before it was kept
    center: np.ndarray | None = None  # (K, C) each column's centre (``signed_centers``); None: all 0

    def levels(self, values: np.ndarray) -> np.ndarray:
        """(..., K, C) floor values -> their levels, |value - center| (the values themselves where center is 0
        and they are >= 0, as RMS always is)."""
        v = np.asarray(values, dtype=np.float64)
        return np.abs(v) if self.center is None else np.abs(v - self.center)

    def severe_levels(self) -> np.ndarray | None:
        """(C,) log levels beyond which a step alarms at once instead of being held to see if it relaxes: the
        healthy maximum exceeded again by the healthy range (max over median), and at least by a doubling
        (``SEVERE_MIN``). A channel that wandered far when healthy must go twice as far; a steady one, that
        never went 10% above its median, alarms at twice its healthy maximum. None without ``high``."""
        return None if self.high is None else self.high + np.maximum(self.high, SEVERE_MIN)

    def ceiling(self, absolute: tuple[float, ...] | None) -> np.ndarray | None:
        """(C,) the configured absolute levels (``EventRule.absolute``, the first floor feature's units) as log
        levels against the healthy median, as ``log_level`` reads them; None when none is configured."""
        if absolute is None:
            return None
        return np.log(np.asarray(absolute, dtype=np.float64) / np.maximum(np.abs(self.median[0]), _TINY))

    def ratios(self, values: np.ndarray) -> np.ndarray:
        """(..., K, C) -> (..., C): each channel's own level in units of its healthy threshold."""
        return (self.levels(values) / self.thresholds).max(axis=-2)

    def log_level(self, values: np.ndarray) -> np.ndarray:
        """(..., K, C) -> (..., C): log of the first floor feature against its healthy median."""
        v = self.levels(values)[..., 0, :]
        return np.log(np.maximum(v, _TINY) / np.maximum(np.abs(self.median[0]), _TINY))

    def to_dict(self) -> dict[str, Any]:
        out = {"features": list(self.features), "thresholds": self.thresholds.tolist(),
               "median": self.median.tolist(), "step": self.step.tolist()}
        if self.high is not None:
            out["high"] = self.high.tolist()
        if self.center is not None:
            out["center"] = self.center.tolist()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_channels: int) -> Floor:
        w = "floor"
        feats = d.get("features") if isinstance(d, Mapping) else None
        if not isinstance(feats, list) or not feats or not all(f in ("rms", "mean_abs", "value") for f in feats):
            raise ConfigError(f"{w}.features: expected a list of 'rms', 'mean_abs' or 'value', got {str(feats)[:60]}")
        k = len(feats)
        return cls(tuple(feats), array_field(d, "thresholds", w, (k, n_channels), positive=True),
                   array_field(d, "median", w, (k, n_channels)),
                   array_field(d, "step", w, (n_channels,), positive=True),
                   array_field(d, "high", w, (n_channels,)) if "high" in d else None,
                   array_field(d, "center", w, (k, n_channels)) if "center" in d else None)


@dataclass(frozen=True)
class PcaResidual:
    """x_hat = mean + (x - mean) V^T V on scaled frames; scored per window like the autoencoder, each feature's
    error in units of its healthy mean |error| (``weights``): otherwise the noisiest features, which the axes
    reconstruct worst even when healthy, set the threshold and a quiet feature's rise hides under it."""

    mean: np.ndarray  # (F,)
    components: np.ndarray  # (k, F), orthonormal rows
    threshold: float  # over the window's score held for the alarm rule's k windows (``healthy.held``)
    channel_thresholds: np.ndarray  # (C,)
    weights: np.ndarray | None = None  # (F,) healthy mean |error| per feature; None: 1 (bundle/1 manifests)

    def reconstruct(self, frames: np.ndarray) -> np.ndarray:
        """(..., F) scaled frames -> their reconstruction from the healthy principal axes."""
        centred = np.asarray(frames, dtype=np.float64) - self.mean
        return self.mean + (centred @ self.components.T) @ self.components

    def scores(self, x_scaled: np.ndarray, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows (n, T, F) scaled -> the residual's score (n,) and per-channel contributions (n, C)."""
        x = np.asarray(x_scaled, dtype=np.float64)
        w = 1.0 if self.weights is None else self.weights
        return reconstruction_scores(x / w, self.reconstruct(x) / w, n_channels)

    def to_dict(self) -> dict[str, Any]:
        out = {"mean": self.mean.tolist(), "components": self.components.tolist(), "threshold": self.threshold,
               "channel_thresholds": self.channel_thresholds.tolist()}
        if self.weights is not None:
            out["weights"] = self.weights.tolist()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_features: int, n_channels: int) -> PcaResidual:
        w = "pca"
        comps = d.get("components") if isinstance(d, Mapping) else None
        k = len(comps) if isinstance(comps, list) else 0
        if k < 1:
            raise ConfigError(f"{w}.components: expected a list of k >= 1 axes of {n_features} numbers")
        weights = array_field(d, "weights", w, (n_features,), positive=True) if "weights" in d else None
        return cls(array_field(d, "mean", w, (n_features,)), array_field(d, "components", w, (k, n_features)),
                   number_field(d, "threshold", w, 0.0),
                   array_field(d, "channel_thresholds", w, (n_channels,), positive=True), weights)


@dataclass(frozen=True)
class OwnDeviation:
    """z_c = max over channel c's features of (window mean - centre) / spread, or 0: how far its inputs rose
    (healthy windows stay <= 1). Upward only: a failing bearing's level, impulsiveness and band energies
    rise; a channel that went quieter has not developed a fault of its own."""

    center: np.ndarray  # (F,)
    spread: np.ndarray  # (F,)

    def z(self, window_means: np.ndarray, n_channels: int) -> np.ndarray:
        """(..., F) window means of scaled features -> (..., C)."""
        return self.z_and_shape(window_means, n_channels, ())[0]

    def z_and_shape(self, window_means: np.ndarray, n_channels: int, columns: tuple[int, ...]
                    ) -> tuple[np.ndarray, np.ndarray]:
        """``z``, and the same over only each channel's ``columns`` (its level-free features: crest, kurtosis),
        0 where there are none: how far the signal's shape moved, which a change of level alone does not move."""
        d = (np.asarray(window_means) - self.center) / self.spread
        d = d.reshape(*d.shape[:-1], n_channels, -1)
        z = np.maximum(d.max(axis=-1), 0.0)
        if not columns:
            return z, np.zeros_like(z)
        lo, hi = columns[0], columns[-1] + 1  # the defaults' crest and kurtosis sit side by side: a view, no copy
        shape = (d[..., lo:hi] if hi - lo == len(columns) else d[..., list(columns)]).max(axis=-1)
        return z, np.maximum(shape, 0.0, out=shape)

    def to_dict(self) -> dict[str, Any]:
        return {"center": self.center.tolist(), "spread": self.spread.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_features: int) -> OwnDeviation:
        return cls(array_field(d, "center", "own", (n_features,)), array_field(d, "spread", "own", (n_features,), True))



def signed_centers(values: np.ndarray, lowest: np.ndarray | None = None) -> np.ndarray | None:
    """Healthy floor values (n, K, C) -> each column's centre (K, C): the healthy median of a signed column (one
    with a value <= 0 among ``values`` or ``lowest``, (1, K, C), the smallest of windows not among them), 0 for
    the others; None when no column is signed."""
    v = np.asarray(values, dtype=np.float64)
    signed = (v <= 0).any(axis=0) | (False if lowest is None else (np.asarray(lowest) <= 0).any(axis=0))
    if not signed.any():
        return None
    return np.where(signed, np.median(v, axis=0), 0.0)


def floor_spec(spec: FeatureSpec) -> FeatureSpec:
    """The features of the level floors (RMS, mean |x|) on the same frames as ``spec``."""
    return FeatureSpec(spec.fs_hz, spec.frame_length, spec.channels, tuple(FeatureDef(n) for n in FLOOR_FEATURES))


def floor_values(frames: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Raw frames (n, N, C) -> floor values (n, K, C); a table's rows (n, C) -> (n, 1, C)."""
    if spec.input == "table":
        return np.asarray(frames, dtype=np.float64)[:, None, :]
    v = extract(frames, floor_spec(spec))  # (n, C * K), channel-major
    return v.reshape(len(v), len(spec.channels), len(FLOOR_FEATURES)).transpose(0, 2, 1)
