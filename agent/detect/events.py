"""The product's decision layer on top of the autoencoder: what is combined, who is named, what is not a failure.

Parts (plain numbers fitted in training, applied with numpy here and on the gateway; all optional, so a
detector without them decides exactly as before):
- ``Floor``: each channel's own level (RMS and mean |x| of the window's last frame, or a table's value)
  against its healthy threshold, fitted by the run's threshold rule: the floor every model must beat is
  part of the product, so the product never alarms later than it.
- ``PcaResidual``: a linear reconstruction of the scaled frames (mean, principal axes); its per-window
  error and per-channel contributions get thresholds like the autoencoder's. It catches what a small LSTM
  smooths over on runs it was not tuned on.
- ``OwnDeviation``: how far each channel's *own* inputs (window means of its scaled features) moved from
  their healthy centre, in units of their largest healthy move. A model's reconstruction error spreads
  across its inputs; the channel whose inputs moved most is the one to name.
- ``EventRule``: an abrupt jump of one channel's level (a step larger than any healthy one) holds that
  channel's alarm for ``transient_s``: if the level relaxes back, a ``transient`` event says when, which
  channel and how large; if it holds or keeps growing, the alarm is raised. The same jump on every channel
  in one window is a ``condition_change`` (load, speed, remounting): published once, after which levels
  are read relative to the new condition and the models' scores (trained on the old one) are not used.
- ``Diagnosis``: see ``diagnose``: which bearing defect frequency's envelope energy rose most.

``EventState`` is the streaming object (one window at a time, the gateway); ``run_events`` its batch twin.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .decide import AlarmRule, AlarmState, reconstruction_scores
from .features import ENVELOPE_STATISTICS, FeatureDef, FeatureSpec, extract

FLOOR_FEATURES = ("rms", "mean_abs")

_TINY = 1e-12


def _array(d: Mapping[str, Any], key: str, where: str, shape: tuple[int, ...], positive: bool = False) -> np.ndarray:
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


def _num(d: Mapping[str, Any], key: str, where: str, lo: float = -math.inf, default: float | None = None) -> float:
    if key not in d and default is not None:
        return default
    if key not in d:
        raise ConfigError(f"{where}.{key}: missing")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= lo:
        raise ConfigError(f"{where}.{key}: {v!r} must be a finite number > {lo:g}")
    return float(v)


@dataclass(frozen=True)
class Floor:
    """Per-channel level floors: ``values`` (K, C) per frame over ``thresholds`` (K, C); level = the max."""

    features: tuple[str, ...]  # e.g. ("rms", "mean_abs"), or ("value",) for a feature table
    thresholds: np.ndarray  # (K, C)
    median: np.ndarray  # (K, C) healthy median, the reference for log levels (steps, condition changes)
    step: np.ndarray  # (C,) smallest jump of log level that counts as a step: above every healthy jump

    def ratios(self, values: np.ndarray) -> np.ndarray:
        """(..., K, C) -> (..., C): each channel's own level in units of its healthy threshold."""
        return (np.asarray(values) / self.thresholds).max(axis=-2)

    def log_level(self, values: np.ndarray) -> np.ndarray:
        """(..., K, C) -> (..., C): log of the first floor feature against its healthy median."""
        v = np.asarray(values)[..., 0, :]
        return np.log(np.maximum(np.abs(v), _TINY) / np.maximum(np.abs(self.median[0]), _TINY))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "thresholds": self.thresholds.tolist(),
                "median": self.median.tolist(), "step": self.step.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_channels: int) -> Floor:
        w = "floor"
        feats = d.get("features") if isinstance(d, Mapping) else None
        if not isinstance(feats, list) or not feats or not all(f in ("rms", "mean_abs", "value") for f in feats):
            raise ConfigError(f"{w}.features: expected a list of 'rms', 'mean_abs' or 'value', got {str(feats)[:60]}")
        k = len(feats)
        return cls(tuple(feats), _array(d, "thresholds", w, (k, n_channels), positive=True),
                   _array(d, "median", w, (k, n_channels)), _array(d, "step", w, (n_channels,), positive=True))


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
        weights = _array(d, "weights", w, (n_features,), positive=True) if "weights" in d else None
        return cls(_array(d, "mean", w, (n_features,)), _array(d, "components", w, (k, n_features)),
                   _num(d, "threshold", w, 0.0), _array(d, "channel_thresholds", w, (n_channels,), positive=True),
                   weights)


@dataclass(frozen=True)
class OwnDeviation:
    """z_c = max over channel c's features of (window mean - centre) / spread, or 0: how far its inputs rose
    (healthy windows stay <= 1). Upward only: a failing bearing's level, impulsiveness and band energies
    rise; a channel that went quieter has not developed a fault of its own."""

    center: np.ndarray  # (F,)
    spread: np.ndarray  # (F,)

    def z(self, window_means: np.ndarray, n_channels: int) -> np.ndarray:
        """(..., F) window means of scaled features -> (..., C)."""
        d = (np.asarray(window_means) - self.center) / self.spread
        return np.maximum(d.reshape(*d.shape[:-1], n_channels, -1).max(axis=-1), 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"center": self.center.tolist(), "spread": self.spread.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_features: int) -> OwnDeviation:
        return cls(_array(d, "center", "own", (n_features,)), _array(d, "spread", "own", (n_features,), True))


@dataclass(frozen=True)
class EventRule:
    """When a jump is a transient and when every channel moving at once is a condition change."""

    transient_s: float = 12 * 3600.0  # a step that relaxes back within this is a transient, not a failure
    relaxed: float = 0.5  # ... relaxed back = less than this share of the step left
    grows: float = 2.0  # a step whose log level reaches this many times its size is growing: alarm at once
    history: int = 6  # windows before a jump that give the level it jumped from
    share: float = 0.8  # a channel counts if it moved at least this share of the most-moved one

    def __post_init__(self) -> None:
        if not (self.transient_s > 0 and 0 < self.relaxed < 1 and self.grows > 1 and self.history >= 1
                and 0 < self.share <= 1):
            raise ConfigError("events: need transient_s > 0, 0 < relaxed < 1, grows > 1, history >= 1, "
                              "0 < share <= 1")

    def to_dict(self) -> dict[str, Any]:
        return {"transient_s": self.transient_s, "relaxed": self.relaxed, "grows": self.grows,
                "history": self.history, "share": self.share}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EventRule:
        if not isinstance(d, Mapping):
            raise ConfigError(f"events: expected an object, got {type(d).__name__}")
        extra = set(d) - {"transient_s", "relaxed", "grows", "history", "share"}
        if extra:
            raise ConfigError(f"events: unknown key(s) {sorted(extra)}")
        h = d.get("history", 6)
        if isinstance(h, bool) or not isinstance(h, int):
            raise ConfigError(f"events.history: expected int, got {h!r}")
        return cls(_num(d, "transient_s", "events", 0.0, 12 * 3600.0), _num(d, "relaxed", "events", 0.0, 0.5),
                   _num(d, "grows", "events", 1.0, 2.0), h, _num(d, "share", "events", 0.0, 0.8))


@dataclass(frozen=True)
class Event:
    """Something to publish besides the alarm state: a transient or a condition change."""

    kind: str  # "transient" or "condition_change"
    t: float  # when the jump happened (the window it was seen in)
    channels: tuple[int, ...]
    ratio: tuple[float, ...]  # level after / before the jump, per channel
    until: float | None = None  # transient: when it was seen to have relaxed back


@dataclass(frozen=True)
class Step:
    """A pending jump on one channel."""

    t: float
    base: float  # log level before the jump
    size: float  # log jump


@dataclass(frozen=True)
class Verdict:
    """The product's decision about one window. Every channel has its own alarm (k-of-k with hysteresis on
    its own evidence), so an alarm names only channels whose own behaviour changed."""

    level: float  # the largest channel evidence (> 1: above), after masking transients and condition changes
    above: bool
    active: tuple[int, ...]  # channels in alarm after this window
    raised: tuple[int, ...]  # channels whose alarm was raised in this window, strongest first
    cleared: tuple[int, ...]  # channels whose alarm cleared in this window
    evidence: np.ndarray  # (C,) each channel's own evidence in threshold units
    events: tuple[Event, ...]  # transients and condition changes decided in this window

    @property
    def event(self) -> str | None:
        """"raised" when any channel raised, else "cleared" when any cleared (the single-alarm view)."""
        return "raised" if self.raised else "cleared" if self.cleared else None

    @property
    def channel(self) -> int:
        """The channel of ``event`` (strongest raised, or first cleared), -1 if none."""
        return self.raised[0] if self.raised else self.cleared[0] if self.cleared else -1


@dataclass
class EventState:
    """Streaming: feed ``update`` one window at a time; masks transients, names channels, finds shared changes."""

    rule: EventRule
    alarm: AlarmRule
    n_channels: int
    step: np.ndarray  # (C,) from Floor.step
    _alarms: list[AlarmState] = field(init=False)
    _history: deque[np.ndarray] = field(init=False)
    _pending: dict[int, Step] = field(default_factory=dict, init=False)
    _offset: np.ndarray | None = field(default=None, init=False)  # log level of the current condition
    _relaxing: dict[int, tuple[float, float]] = field(default_factory=dict, init=False)  # c -> (log level, size)
    _blamed: deque[int] = field(init=False)  # the channel the whole-window score went to, consecutive windows above

    def __post_init__(self) -> None:
        self._alarms = [AlarmState(1.0, self.alarm) for _ in range(self.n_channels)]
        self._history = deque(maxlen=self.rule.history)
        self._blamed = deque(maxlen=self.alarm.raise_after)

    def update(self, t: float, score_level: float, channel_level: np.ndarray, own: np.ndarray, z: np.ndarray,
               log_level: np.ndarray, blame_level: np.ndarray | None = None) -> Verdict:
        """One window. ``score_level``: the models' whole-window score over its threshold; ``channel_level``
        (C,): each channel's share of the models' error over its own threshold; ``own``: each channel's floor
        ratio; ``z``: own deviation; ``log_level``: log level against healthy; ``blame_level`` (C,): each
        channel's share of the score that set ``score_level`` (default ``channel_level``). Levels > 1 are above."""
        own = np.asarray(own, dtype=np.float64)
        lv = np.asarray(log_level, dtype=np.float64)
        events: list[Event] = []
        if self._offset is not None:
            own = own / np.exp(self._offset)  # read relative to the condition the machine is in now
            lv = lv - self._offset
        if len(self._history) == self._history.maxlen:
            base = np.median(np.stack(self._history), axis=0)
            jump = lv - base
            # abrupt: above every healthy jump against the recent level, and most of it since the last window
            # (a fault that grows fast but steadily is not a step and is never held)
            abrupt = (jump > self.step) & (lv - self._history[-1] > 0.75 * self.step)
            # a channel already in alarm is not held: its alarm stands until its own evidence clears it
            new = [c for c in range(self.n_channels)
                   if c not in self._pending and abrupt[c] and not self._alarms[c].active]
            if self.n_channels > 1 and bool(abrupt.all()):
                shared = float(np.median(jump))
                events.append(Event("condition_change", t, tuple(range(self.n_channels)),
                                    tuple(float(np.exp(j)) for j in jump)))
                self._offset = (self._offset if self._offset is not None else 0.0) + np.full(self.n_channels, shared)
                own, lv = own / math.exp(shared), lv - shared
                self._history.clear()
                new = []
            for c in new:
                self._pending[c] = Step(t, float(base[c]), float(jump[c]))
        for c, s in list(self._pending.items()):
            left = (lv[c] - s.base) / s.size
            if left < self.rule.relaxed:
                events.append(Event("transient", s.t, (c,), (float(math.exp(s.size)),), until=t))
                del self._pending[c]
                self._relaxing[c] = (float(lv[c]), s.size)  # its tail stays masked while it keeps relaxing
            elif left >= self.rule.grows or t - s.t >= self.rule.transient_s:
                del self._pending[c]  # it holds or grows: a real change, alarm as usual
        self._history.append(lv)
        # Each channel's own evidence: its floor ratio and its share of the models' error, counted only where the
        # channel moved at least ``share`` as much as the most-moved one, "moved" being the geometric mean of
        # how far its own inputs rose (z) and its share of the models' error: a fault's vibration and a model's
        # error both spread to the other channels, which then move much less on both counts. The whole-window
        # score goes to the moved channel with the largest share of that score (the PCA residual's own shares
        # when it is the larger: the autoencoder's may favour a channel the residual does not).
        zz = np.asarray(z, dtype=np.float64)
        cl = np.asarray(channel_level, dtype=np.float64)
        m = np.sqrt(np.maximum(zz, 0.0) * np.maximum(cl, 0.0)) if self._offset is None else zz
        moved = m >= self.rule.share * m.max() if self.n_channels else np.zeros(0, bool)
        evidence = np.where(moved, own, 0.0)
        blame = -1
        if self._offset is None and self.n_channels:
            evidence = np.maximum(evidence, np.where(moved, cl, 0.0))
            bl = cl if blame_level is None else np.asarray(blame_level, dtype=np.float64)
            blame = int(np.argmax(np.where(moved, bl, -np.inf)))
            evidence[blame] = max(evidence[blame], float(score_level))
        for c, (at, size) in list(self._relaxing.items()):
            if evidence[c] <= 1.0 or lv[c] > at + 0.5 * size:
                del self._relaxing[c]  # back within its limits, or rising again: judged as usual from now on
            else:
                evidence[c] = 0.0
        for c in self._pending:
            evidence[c] = 0.0  # held: a jump is not a failure until it has shown it does not relax
        decisions = [a.update(float(e)) for a, e in zip(self._alarms, evidence, strict=True)]
        raised = [c for c, d in enumerate(decisions) if d.event == "raised"]
        # The whole-window score has one alarm rule across channels: the window's blame can move between two
        # channels that moved alike (window by window, whichever has the larger share), and then neither
        # channel's own k-of-k sees k windows in a row although the score did. k consecutive windows above on
        # the score raise the alarm of the channel blamed most often over them (the latest on a tie), unless
        # one of the channels blamed over them is already in alarm (the score is then already explained).
        # Windows whose blamed channel is held (a step, a relaxing transient) or that come after a condition
        # change do not count.
        if blame >= 0 and score_level > 1.0 and evidence[blame] >= score_level:
            self._blamed.append(blame)
        else:
            self._blamed.clear()
        if len(self._blamed) == self._blamed.maxlen and not any(self._alarms[b].active for b in self._blamed):
            counts = np.bincount(np.asarray(self._blamed), minlength=self.n_channels)
            c = next(b for b in reversed(self._blamed) if counts[b] == counts.max())
            self._alarms[c].raise_now()
            raised.append(c)
        raised.sort(key=lambda c: -evidence[c])
        return Verdict(
            level=float(evidence.max()) if len(evidence) else 0.0,
            above=bool(np.any(evidence > 1.0)),
            active=tuple(c for c, a in enumerate(self._alarms) if a.active),
            raised=tuple(raised),
            cleared=tuple(c for c, d in enumerate(decisions) if d.event == "cleared"),
            evidence=evidence,
            events=tuple(events),
        )


def run_events(
    times: np.ndarray, score_level: np.ndarray, channel_level: np.ndarray, own: np.ndarray, z: np.ndarray,
    log_level: np.ndarray, rule: EventRule, alarm: AlarmRule, step: np.ndarray, blame_level: np.ndarray | None = None,
) -> list[Verdict]:
    """The batch twin of ``EventState``: a whole run, window by window, exactly as the gateway decides it."""
    state = EventState(rule, alarm, own.shape[1], step)
    return [state.update(float(times[i]), float(score_level[i]), channel_level[i], own[i], z[i], log_level[i],
                         None if blame_level is None else blame_level[i])
            for i in range(len(times))]


@dataclass(frozen=True)
class Diagnosis:
    """Bearing defect frequencies and each channel's healthy envelope statistic at them (log10, the median over
    healthy frames). ``statistic``: "peak" (how far each defect's lines stand above the envelope spectrum's
    local background, agent/detect/features.py) or "energy" (the energy at the lines; what bundles made before the
    peak statistic hold): a failing bearing's broadband rise lifts the energy at every defect frequency alike,
    its defect's lines stand out of their background."""

    defects_hz: Mapping[str, float]  # e.g. {"bpfo": 236.4, "bpfi": 296.9, "bsf": 139.9, "ftf": 14.8}
    band_hz: tuple[float, float]  # demodulation band
    harmonics: int
    healthy: np.ndarray  # (C, D) log10 statistic, median over the healthy frames
    min_ratio: float = 1.5  # a defect stands out when its statistic rose at least this much ...
    margin: float = 1.25  # ... and this much more than the next defect's
    statistic: str = "energy"

    def to_dict(self) -> dict[str, Any]:
        return {"defects_hz": dict(self.defects_hz), "band_hz": list(self.band_hz), "harmonics": self.harmonics,
                "healthy": self.healthy.tolist(), "min_ratio": self.min_ratio, "margin": self.margin,
                "statistic": self.statistic}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_channels: int) -> Diagnosis:
        w = "diagnosis"
        defects = d.get("defects_hz") if isinstance(d, Mapping) else None
        if not isinstance(defects, Mapping) or not defects or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in defects.values()):
            raise ConfigError(f"{w}.defects_hz: expected {{name: Hz > 0, ...}}, got {str(defects)[:60]}")
        band = _array(d, "band_hz", w, (2,))
        h = d.get("harmonics")
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise ConfigError(f"{w}.harmonics: expected an integer >= 1, got {h!r}")
        stat = d.get("statistic", "energy")
        if stat not in ENVELOPE_STATISTICS:
            raise ConfigError(f"{w}.statistic: expected one of {', '.join(ENVELOPE_STATISTICS)}, got {stat!r}")
        return cls({str(k): float(v) for k, v in defects.items()}, (float(band[0]), float(band[1])), h,
                   _array(d, "healthy", w, (n_channels, len(defects))), _num(d, "min_ratio", w, 1.0, 1.5),
                   _num(d, "margin", w, 1.0, 1.25), stat)

    def feature(self) -> dict[str, Any]:
        """The ``envelope`` feature definition that measures these statistics (agent/detect/features.py)."""
        f = {"band_hz": list(self.band_hz), "defects_hz": dict(self.defects_hz), "harmonics": self.harmonics}
        return {**f, "statistic": self.statistic} if self.statistic != "energy" else f

    def diagnose(self, energies: np.ndarray, channel: int) -> dict[str, Any]:
        """Mean log10 energies (C, D) of the alarm's recent frames -> the defect that rose most on ``channel``.

        ``{"defect": "bpfo" or None, "ratio": x, "ratios": {...}}``: None when no defect's energy rose by
        ``min_ratio`` and by ``margin`` more than the next one (nothing stands out).
        """
        ratios = 10.0 ** (np.asarray(energies)[channel] - self.healthy[channel])
        names = list(self.defects_hz)
        order = np.argsort(-ratios)
        best = int(order[0])
        second = float(ratios[order[1]]) if len(order) > 1 else 1.0
        stands_out = ratios[best] >= self.min_ratio and ratios[best] >= self.margin * max(second, 1.0)
        return {"defect": names[best] if stands_out else None, "ratio": round(float(ratios[best]), 3),
                "ratios": {n: round(float(r), 3) for n, r in zip(names, ratios, strict=True)}}


@dataclass
class DiagnosisState:
    """Streaming: the diagnosis of every raised alarm, and the moment an active alarm's diagnosis first stands out.

    A defect often shows in the envelope spectrum hours after the alarm (IMS test 2: bearing 1's BPFO energy
    is 1.1x healthy at the first alarm, 1.7x twelve hours later), so an alarm raised with no defect standing
    out keeps being diagnosed on every window while it is active, and says so once when one does.
    """

    diagnosis: Diagnosis
    _open: set[int] = field(default_factory=set, init=False)  # active channels still without a defect

    def update(self, verdict: Verdict, energies: np.ndarray) -> tuple[dict[int, dict[str, Any]], dict[int, dict]]:
        """Mean energies (C, D) of the window's frames -> (diagnosis of each channel raised now, diagnosis of
        each active channel whose defect first stood out now)."""
        at_raise = {c: self.diagnosis.diagnose(energies, c) for c in verdict.raised}
        found: dict[int, dict[str, Any]] = {}
        for c in list(self._open):
            if c not in verdict.active:
                self._open.discard(c)
            elif c not in at_raise:
                d = self.diagnosis.diagnose(energies, c)
                if d["defect"] is not None:
                    found[c] = d
                    self._open.discard(c)
        self._open |= {c for c, d in at_raise.items() if d["defect"] is None}
        return at_raise, found


DEFECT_NAMES = {"bpfo": "outer race", "bpfi": "inner race", "bsf": "ball", "ftf": "cage"}


def describe(diagnosis: Mapping[str, Any] | None) -> str:
    """One line for logs and plots: 'outer race (BPFO x3.2)' or 'no defect frequency stands out'."""
    if not diagnosis:
        return ""
    d = diagnosis.get("defect")
    if d is None:
        return f"no defect frequency stands out (largest x{diagnosis.get('ratio')})"
    return f"{DEFECT_NAMES.get(d, d)} ({d.upper()} x{diagnosis.get('ratio')})"



def floor_spec(spec: FeatureSpec) -> FeatureSpec:
    """The features of the level floors (RMS, mean |x|) on the same frames as ``spec``."""
    return FeatureSpec(spec.fs_hz, spec.frame_length, spec.channels, tuple(FeatureDef(n) for n in FLOOR_FEATURES))


def floor_values(frames: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Raw frames (n, N, C) -> floor values (n, K, C); a table's rows (n, C) -> (n, 1, C)."""
    if spec.input == "table":
        return np.asarray(frames, dtype=np.float64)[:, None, :]
    v = extract(frames, floor_spec(spec))  # (n, C * K), channel-major
    return v.reshape(len(v), len(spec.channels), len(FLOOR_FEATURES)).transpose(0, 2, 1)


def envelope_energies(frames: np.ndarray, spec: FeatureSpec, diagnosis: Diagnosis) -> np.ndarray:
    """Raw frames (n, N, C) -> log10 envelope energy at each defect frequency, (n, C, D)."""
    s = FeatureSpec(spec.fs_hz, spec.frame_length, spec.channels, (FeatureDef("envelope", diagnosis.feature()),))
    v = extract(frames, s)
    return v.reshape(len(v), len(spec.channels), len(diagnosis.defects_hz))
