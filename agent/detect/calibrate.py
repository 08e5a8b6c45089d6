"""Commissioning's arithmetic: this machine's detector from its healthy windows, by the functions training used.

Pure functions over ``Evidence`` (agent/detect/healthy.py): ``calibrate`` fits (or refuses, by the suspect
guard) one set of commissioning windows; ``commission`` is the batch twin of the streaming ``Commissioning``
(agent/model/commission.py) over a whole run, tested equal. ``CommissioningSection`` holds the rule's
numbers; agent/config.py parses it from ``[commissioning]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..sections import checked, path_field, positive
from . import healthy
from .detector import Detector
from .healthy import Evidence, Extremes, levels, stride_for

KEEP = 20000  # [commissioning] keep: windows held in memory and on disk, at most (about 24 MB of windows file)
MIN_KEEP = 100


def _factor(v: Any) -> bool:
    return math.isfinite(v) and v > 1


@dataclass(frozen=True)
class CommissioningSection:
    """``[commissioning]`` of the agent config (configs/agent.example.toml documents it)."""

    windows: int | None = checked(None, lambda v: v is None or v >= 1, "an integer >= 1")  # length in windows ...
    hours: float | None = checked(None, positive, "a number > 0")  # ... or in hours of window time
    # median commissioning level above this x the bundle's thresholds: suspect
    suspect_factor: float = checked(10.0, _factor, "a factor > 1")
    # one channel's median level above this x the others' (and above 1): suspect
    channel_factor: float = checked(3.0, _factor, "a factor > 1")
    # the calibration file; default: calibration.json in $STATE_DIRECTORY or beside the spool
    state: str | None = path_field()
    # the most windows held and written: an evenly spaced subsample of all windows seen
    keep: int = checked(KEEP, lambda v: v >= MIN_KEEP, f"an integer >= {MIN_KEEP} (the most windows kept; "
                                                       f"default {KEEP})")

    @property
    def enabled(self) -> bool:
        return self.windows is not None or self.hours is not None


@dataclass(frozen=True)
class Calibration:
    """The outcome of a commissioning: this machine's detector, or why the bundle's was kept."""

    state: str  # "commissioned" | "commissioning_suspect" | "unreadable" (a damaged file: the bundle's)
    model: str
    detector: Detector  # the detector that decides from now on: this machine's, or the bundle's
    windows: int
    median_level: float  # median commissioning window's level against the bundle's detector
    standout: float  # the most different channel's median level / the other channels' median (1: all alike)
    bundle_threshold: float
    started_t: float
    finished_t: float
    # each channel's RMS over the last fifth of the commissioning windows against the first (``level_drift``);
    # None: not measured (no RMS floor, too few windows, or a calibration read back from its file)
    drift: tuple[float, ...] | None = None

    @property
    def source(self) -> str:
        return "commissioned" if self.state == "commissioned" else "bundle"

    @property
    def threshold(self) -> float:
        return self.detector.threshold

    @property
    def channel_thresholds(self) -> np.ndarray:
        return self.detector.channel_thresholds

    def status_fields(self) -> dict[str, Any]:
        """What the status message says about it."""
        d = self.detector
        out: dict[str, Any] = {
            "threshold_source": self.source, "threshold": self.threshold,
            "channel_thresholds": [float(x) for x in self.channel_thresholds], "windows": self.windows,
            "median_level": self.median_level, "standout": self.standout, "bundle_threshold": self.bundle_threshold}
        if d.floor is not None:
            out["floor_thresholds"] = d.floor.thresholds.tolist()
        if d.pca is not None:
            out["pca_threshold"] = d.pca.threshold
        return out


FITTED = ("threshold", "floor", "pca", "own", "diagnosis")  # the Detector.to_dict() keys a commissioning refits


def fitted_parts(d: Detector) -> dict[str, Any]:
    """What a calibration file keeps of a commissioned detector: its ``to_dict`` keys that commissioning refits
    (the PCA's mean and axes are the model's and stay in the bundle)."""
    out = {k: v for k, v in d.to_dict().items() if k in FITTED}
    out["threshold"] = {k: out["threshold"][k] for k in ("value", "channels")}
    if "pca" in out:
        out["pca"] = {k: out["pca"][k] for k in ("threshold", "channel_thresholds")}
    return out


def with_fitted(bundle: Detector, parts: Any) -> Detector:
    """The bundle's detector with a calibration file's fitted parts, checked by ``Detector.from_dict`` (a damaged
    file is a ConfigError naming the field, never a detector half of one machine's and half of another's)."""
    base = bundle.to_dict()
    if not isinstance(parts, Mapping):
        raise ConfigError(f"detector: expected an object, got {type(parts).__name__}")
    wanted = {k for k in FITTED if k in base}
    if set(parts) != wanted:
        raise ConfigError(f"detector: parts {sorted(parts)}, expected {sorted(wanted)} (the bundle's detector)")
    merged = dict(base)
    for k, v in parts.items():
        if not isinstance(v, Mapping):
            raise ConfigError(f"detector.{k}: expected an object, got {type(v).__name__}")
        merged[k] = {**base[k], **v}
    return Detector.from_dict(merged)


def standout(per_channel: np.ndarray) -> tuple[float, float]:
    """Each window's channel levels (n, C) -> (the highest channel's median level, it / the median of the other
    channels' median levels)."""
    med = np.median(np.asarray(per_channel), axis=0)
    if med.size < 3:  # "the others" would be one channel: an operating condition moves that balance
        return float(med.max()), 1.0
    top = int(np.argmax(med))
    others = float(np.median(np.delete(med, top)))
    return float(med[top]), float(med[top] / max(others, 1e-12))


def calibrate(ev: Evidence, detector: Detector, cfg: CommissioningSection, model: str, windows: int | None = None,
              finished_t: float | None = None, extremes: Extremes | None = None) -> Calibration:
    """This machine's detector from its commissioning windows ``ev`` (those kept of ``windows`` seen, the last
    at ``finished_t``, with the ``extremes`` of all of them; default: every window), by ``healthy.fit``
    (training's functions and rule), or the bundle's when the windows look faulty against it (the suspect guard)."""
    level, per_channel = levels(detector, ev)
    median = float(np.median(level))
    top, ratio = standout(per_channel)
    drift = None
    if detector.floor is not None and detector.floor.features[0] == "rms" and ev.floors is not None:
        d = healthy.level_drift(ev.floors[:, 0, :])  # the kept windows are evenly spaced: their fifths are time's
        drift = None if d is None else tuple(float(x) for x in np.exp(d))
    common = {"model": model, "windows": len(ev) if windows is None else windows, "median_level": median,
              "standout": ratio, "bundle_threshold": detector.threshold, "started_t": float(ev.t[0]),
              "finished_t": float(ev.t[-1]) if finished_t is None else float(finished_t), "drift": drift}
    if median > cfg.suspect_factor or (top > 1.0 and ratio > cfg.channel_factor):
        return Calibration("commissioning_suspect", detector=detector, **common)
    return Calibration("commissioned", detector=healthy.fit(detector, ev, extremes), **common)


def commissioning_done(cfg: CommissioningSection, n: int, t0: float, t: float) -> bool:
    """Has a commissioning that saw ``n`` windows, the first at ``t0``, the last at ``t``, reached its length?"""
    if cfg.windows is not None:
        return n >= cfg.windows
    return n >= 2 and t - t0 >= float(cfg.hours or 0) * 3600.0


def commission(ev: Evidence, detector: Detector, cfg: CommissioningSection, model: str
               ) -> tuple[Calibration | None, int]:
    """Batch twin of ``Commissioning``: the calibration a run's windows give and the index of the first window
    decided with it (None and len(ev) when the run is shorter than the commissioning). Like the streaming
    object it fits on the evenly spaced subsample of at most ``cfg.keep`` windows (``EvidenceLog``)."""
    for i in range(len(ev)):
        if commissioning_done(cfg, i + 1, float(ev.t[0]), float(ev.t[i])):
            kept = ev.window(slice(0, i + 1, stride_for(i + 1, cfg.keep)))
            return calibrate(kept, detector, cfg, model, windows=i + 1, finished_t=float(ev.t[i]),
                             extremes=Extremes.of(ev.window(slice(0, i + 1)))), i + 1
    return None, len(ev)


