"""The detector's parameters: one object that training writes, conversion ships and the gateway reads.

Everything between raw samples and a decision except the model's weights: the feature spec, the window
(T frames, hop), the scaler's numbers, the thresholds (overall and per channel, with the rule and margin
they were fitted with, so a gateway can refit them the same way on its own machine) and the alarm rule.
``run.json`` and a bundle's ``manifest.json`` both hold it under the same keys (``features``, ``window``,
``scaler``, ``threshold``, ``alarm``), so evaluate, the bundle and the gateway cannot disagree.

``from_dict`` is a boundary: it checks every field's type and names the field that is wrong, so a damaged
or hand-edited manifest is one clear line, never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import ConfigError
from .decide import AlarmRule, AlarmState
from .diagnosis import Diagnosis
from .events import EventRule, EventState
from .features import FeatureSpec
from .measures import Floor, OwnDeviation, PcaResidual
from .scale import Scaling, scaling_from_dict
from .threshold import ThresholdRule


def _field(d: Any, key: str, where: str, kind: type | tuple[type, ...] = dict) -> Any:
    """``d[key]``, which must be of ``kind`` (bool is never a number here)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d:
        raise ConfigError(f"{where}.{key}: missing")
    v = d[key]
    numeric = kind in (int, float) or (isinstance(kind, tuple) and float in kind)
    if (numeric and isinstance(v, bool)) or not isinstance(v, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}.{key}: expected {names}, got {type(v).__name__} {str(v)[:40]!r}")
    return v


def _number(d: Any, key: str, where: str, positive: bool = False) -> float:
    v = float(_field(d, key, where, (int, float)))
    if not math.isfinite(v) or (positive and v <= 0):
        raise ConfigError(f"{where}.{key}: {v} must be a finite number{' > 0' if positive else ''}")
    return v


def _count(d: Any, key: str, where: str) -> int:
    v = _field(d, key, where, int)
    if isinstance(v, bool) or v < 1:
        raise ConfigError(f"{where}.{key}: {v!r} must be an integer >= 1")
    return int(v)


def _vector(d: Any, key: str, where: str, n: int) -> np.ndarray:
    v = _field(d, key, where, list)
    if len(v) != n or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ConfigError(f"{where}.{key}: expected {n} numbers, got {str(v)[:60]}")
    a = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ConfigError(f"{where}.{key}: every value must be a finite number > 0")
    return a


@dataclass(frozen=True)
class Detector:
    """Feature spec, window, scaler, thresholds and alarm rule: what turns samples into decisions."""

    spec: FeatureSpec
    scaler: Scaling  # MinMaxScaling or RobustScaling (agent/detect/scale.py)
    window: int  # T frames per window
    hop: int  # frames between windows
    threshold: float  # on the window's score
    channel_thresholds: np.ndarray  # (C,) on each channel's contribution
    rule: AlarmRule
    threshold_rule: ThresholdRule = ThresholdRule()  # how the thresholds were fitted from healthy scores
    # The product's decision layer (agent/detect/measures.py, events.py, diagnosis.py); without floor and own,
    # decisions are the autoencoder's.
    floor: Floor | None = None
    pca: PcaResidual | None = None
    own: OwnDeviation | None = None
    events: EventRule | None = None
    diagnosis: Diagnosis | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        return self.spec.channels

    @property
    def combined(self) -> bool:
        """True when decisions go through the event layer (floors, PCA, attribution, transients)."""
        return self.floor is not None and self.own is not None

    def event_state(self) -> EventState:
        """A fresh streaming event state (see agent/detect/events.py); only for a ``combined`` detector."""
        assert self.floor is not None
        return EventState(self.events or EventRule(), self.rule, len(self.channels), self.floor.step,
                          *self.event_limits())

    def event_limits(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The event layer's severe levels (from the healthy period) and absolute ones (configured), as log
        levels per channel; None where there are none (a detector fitted before them, or none configured)."""
        assert self.floor is not None
        return self.floor.severe_levels(), self.floor.ceiling((self.events or EventRule()).absolute)

    def own_z(self, x_scaled: np.ndarray) -> np.ndarray:
        """Windows (n, T, F) scaled -> each channel's own deviation (n, C)."""
        assert self.own is not None
        return self.own.z(np.asarray(x_scaled, dtype=np.float64).mean(axis=-2), len(self.channels))

    def alarm_state(self) -> AlarmState:
        """A fresh streaming alarm state for this detector's thresholds and rule."""
        return AlarmState(self.threshold, self.rule, self.channel_thresholds)

    def with_thresholds(self, threshold: float, channel_thresholds: np.ndarray) -> Detector:
        """The same detector with other thresholds (e.g. fitted on the machine itself)."""
        return replace(self, threshold=float(threshold), channel_thresholds=np.asarray(channel_thresholds, float))

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.spec.to_dict(),
            "window": {"length": self.window, "hop": self.hop},
            "scaler": self.scaler.to_dict(),
            "threshold": {"value": self.threshold, "channels": self.channel_thresholds.tolist(),
                          **self.threshold_rule.to_dict()},
            "alarm": self.rule.to_dict(),
            **{k: part.to_dict() for k, part in (("floor", self.floor), ("pca", self.pca), ("own", self.own),
                                                 ("events", self.events), ("diagnosis", self.diagnosis))
               if part is not None},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Detector:
        """Parse and check a run's or a manifest's detector fields; ConfigError names the field."""
        feats = _field(d, "features", "detector")
        _number(feats, "fs_hz", "features", positive=True)
        _count(feats, "frame_length", "features")
        channels = _field(feats, "channels", "features", list)
        if not channels or not all(isinstance(c, str) for c in channels):
            raise ConfigError(f"features.channels: expected a non-empty list of names, got {str(channels)[:60]}")
        for i, f in enumerate(_field(feats, "features", "features", list)):
            _field(f, "name", f"features.features[{i}]", str)
            if "params" in f:
                _field(f, "params", f"features.features[{i}]", dict)
        if "input" in feats:
            _field(feats, "input", "features", str)
        spec = FeatureSpec.from_dict(feats)
        win = _field(d, "window", "detector")
        scaler = scaling_from_dict(_field(d, "scaler", "detector"))
        if scaler.n_features != spec.n_features:
            raise ConfigError(f"scaler: {scaler.n_features} features, the feature spec makes {spec.n_features}")
        thr = _field(d, "threshold", "detector")
        alarm = _field(d, "alarm", "detector")
        for k in ("raise_after", "clear_after"):
            if k in alarm:
                _count(alarm, k, "alarm")
        if "hysteresis" in alarm:
            _number(alarm, "hysteresis", "alarm")
        n_ch = len(spec.channels)
        events = EventRule.from_dict(d["events"]) if "events" in d else None
        if events is not None and events.absolute is not None and len(events.absolute) != n_ch:
            raise ConfigError(f"events.absolute: {len(events.absolute)} levels, expected one per channel ({n_ch})")
        if events is not None and events.bearings is not None and len(events.bearings) != n_ch:
            raise ConfigError(f"events.bearings: {len(events.bearings)} entries, expected one per channel ({n_ch})")
        return cls(
            floor=Floor.from_dict(d["floor"], n_ch) if "floor" in d else None,
            pca=PcaResidual.from_dict(d["pca"], spec.n_features, n_ch) if "pca" in d else None,
            own=OwnDeviation.from_dict(d["own"], spec.n_features) if "own" in d else None,
            events=events,
            diagnosis=Diagnosis.from_dict(d["diagnosis"], n_ch) if "diagnosis" in d else None,
            spec=spec,
            scaler=scaler,
            window=_count(win, "length", "window"),
            hop=_count(win, "hop", "window"),
            threshold=_number(thr, "value", "threshold", positive=True),
            channel_thresholds=_vector(thr, "channels", "threshold", len(spec.channels)),
            rule=AlarmRule.from_dict(alarm),
            threshold_rule=ThresholdRule.from_dict(thr),
        )
