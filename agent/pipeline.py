"""source -> frames -> features -> window -> scale -> infer -> decide: one chunk of samples in, events out.

The same functions as ``vibrawatch evaluate`` in the same order (frames within a segment, features per
frame, windows of T frames across segments, min-max scaling, the TFLite model, the alarm state machine),
so a window scores the same here as on the workstation. A chunk that fails the sensor checks is not
scored; frames and window restart after it, so no window mixes good and bad samples.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bundle import Bundle
from .decide import Decision, reconstruction_scores
from .events import DiagnosisState, Verdict, envelope_energies, floor_values
from .features import extract
from .frames import Framer
from .sensor_check import SensorLimits, check_chunk
from .source import Chunk
from .window import WindowBuffer

NON_FINITE = "non-finite score: samples out of any sane range"
SANE_FEATURE = 1e12  # beyond this |value| a feature comes from samples out of any sane range, not from a sensor
CONTINUITY_SAMPLES = 1.5  # a chunk may start this far (in samples) from where the previous one ended


def continuity(t_start: float, expected: float, fs_hz: float) -> str | None:
    """How a chunk that starts at ``t_start`` joins one that ended at ``expected``: None (it continues it),
    "gap" (samples are missing: the frames restart) or "backwards" (a sensor fault)."""
    gap = t_start - expected
    if abs(gap) <= CONTINUITY_SAMPLES / fs_hz:
        return None
    return "gap" if gap > 0 else "backwards"


@dataclass(frozen=True)
class Scored:
    """One window's result."""

    t: float  # time of the window's last frame (as `vibrawatch evaluate` reports windows)
    score: float
    level: float
    contributions: np.ndarray  # (C,)
    decision: Decision
    since: float | None  # when the active alarm was raised
    verdict: Verdict | None = None  # the combined detector's (agent/events.py): channels, transients, ...
    diagnosis: dict[int, dict[str, Any]] = field(default_factory=dict)  # channel raised now -> its diagnosis
    diagnosed: dict[int, dict[str, Any]] = field(default_factory=dict)  # active channel -> defect now standing out


@dataclass(frozen=True)
class SensorStatus:
    """The sensor went bad (``reason``) or came back (``reason`` None)."""

    t: float
    reason: str | None


@dataclass
class StageTimes:
    """Seconds spent per stage, for the benchmark: features (frames + features), inference (scale + model)."""

    features: float = 0.0
    inference: float = 0.0
    windows: int = 0
    non_finite: int = 0  # windows not scored because their score was NaN/inf (a NON_FINITE sensor fault)
    model_non_finite: int = 0  # ... of those, ones whose features were sane: the bundle failed, not the samples


@dataclass
class Pipeline:
    bundle: Bundle
    full_scale: float | None = None
    times: StageTimes = field(default_factory=StageTimes)

    def __post_init__(self) -> None:
        b = self.bundle
        n_ch = len(b.detector.spec.channels)
        self._table = b.detector.spec.input == "table"
        self.framer = Framer(b.detector.spec.frame_length, n_ch, b.detector.spec.fs_hz)
        self.windows = WindowBuffer(b.detector.window, b.detector.hop, b.detector.spec.n_features)
        self.alarm = b.detector.alarm_state()
        self.limits = SensorLimits(n_ch, b.detector.spec.fs_hz, self.full_scale)
        self._fault: str | None = None
        self._since: float | None = None
        self._next_t: float | None = None
        self.events = b.detector.event_state() if b.detector.combined else None
        self._energies: deque[np.ndarray] = deque(maxlen=b.detector.window)  # diagnosis: the window's frames
        self._diagnosis = DiagnosisState(b.detector.diagnosis) if self.events and b.detector.diagnosis else None

    def process(self, chunk: Chunk) -> list[SensorStatus | Scored]:
        """Feed one chunk; returns sensor status changes and one ``Scored`` per window that ends in it."""
        events: list[SensorStatus | Scored] = []
        reason = chunk.fault or check_chunk(chunk.samples, self.limits, chunk.fs_hz)
        if reason is None and not chunk.new_segment and not self._table and self._next_t is not None:
            join = continuity(chunk.t_start, self._next_t, self.bundle.detector.spec.fs_hz)
            if join is not None:
                self.framer.reset()  # a frame never spans missing samples
                reason = None if join == "gap" else f"time went backwards by {self._next_t - chunk.t_start:.3f} s"
        if reason is not None:
            return self._sensor_fault(events, chunk.t_start, reason)
        if self._fault is not None and self._fault != NON_FINITE:  # that one clears with the next finite score
            events.append(SensorStatus(chunk.t_start, None))
            self._fault = None
        self._next_t = chunk.t_start + len(chunk.samples) / self.bundle.detector.spec.fs_hz
        t0 = time.perf_counter()
        det = self.bundle.detector
        if self._table:
            feats, times = chunk.samples.astype(np.float64), np.full(len(chunk.samples), chunk.t_start)
            floors = floor_values(feats, det.spec) if self.events else None
            energies = None
        else:
            if chunk.new_segment:
                self.framer.reset()
            frames, times = self.framer.push(chunk.samples, chunk.t_start)
            if len(frames) == 0:
                return events
            feats = extract(frames, det.spec)
            floors = floor_values(frames, det.spec) if self.events else None
            energies = envelope_energies(frames, det.spec, det.diagnosis) if self.events and det.diagnosis else None
        self.times.features += time.perf_counter() - t0
        for k, (row, t) in enumerate(zip(feats, times, strict=True)):
            if energies is not None:
                self._energies.append(energies[k])
            window = self.windows.push(row)
            if window is not None:
                scored = self._score(window, float(t), None if floors is None else floors[k])
                if scored is None:  # samples so large that the features or the model overflow (e.g. 1e38)
                    return self._sensor_fault(events, float(t), NON_FINITE)
                if self._fault is not None:
                    events.append(SensorStatus(float(t), None))
                    self._fault = None
                events.append(scored)
        return events

    def _sensor_fault(self, events: list[SensorStatus | Scored], t: float, reason: str) -> list[SensorStatus | Scored]:
        """Not scored: restart frames and window (no window mixes good and bad samples), report a new reason."""
        self.framer.reset()
        self.windows.reset()
        self._energies.clear()
        self._next_t = None
        if reason != self._fault:
            events.append(SensorStatus(t, reason))
        self._fault = reason
        return events

    def _score(self, window: np.ndarray, t: float, floor: np.ndarray | None = None) -> Scored | None:
        """The window's score and decision; None when the score (or, with the combined detector, any level
        it decides on) is not a finite number: never published, never fed to the alarm or event state, where
        NaN would compare as 'below threshold'."""
        b = self.bundle
        t0 = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore"):  # absurd samples: inf here is caught below
            x = b.detector.scaler.transform(window).astype(np.float32)
        y = b.model.reconstruct(x)
        self.times.inference += time.perf_counter() - t0
        self.times.windows += 1
        s, c = reconstruction_scores(x[None], y[None], len(b.detector.spec.channels))
        if not (np.isfinite(s[0]) and np.isfinite(c[0]).all()):
            return self._not_finite(window)
        if self.events is not None and floor is not None:
            scored = self._combined(x, float(s[0]), c[0], floor, t)
            return scored if scored is not None else self._not_finite(window)
        decision = self.alarm.update(float(s[0]), c[0])
        if decision.event == "raised":
            self._since = t
        elif decision.event == "cleared":
            self._since = None
        return Scored(t, float(s[0]), decision.level, c[0], decision, self._since)

    def _not_finite(self, window: np.ndarray) -> None:
        """Count a window whose score is not finite. When its features (before the bundle's scaler and model)
        are all within ``SANE_FEATURE``, the samples were sane and the bundle itself failed: a deploy's
        probation rolls such a bundle back (agent.deploy). Absurd samples (±1e38: an RMS of 1e38) stay a
        sensor fault only."""
        self.times.non_finite += 1
        if np.all(np.abs(window) <= SANE_FEATURE):  # NaN compares False: not sane either
            self.times.model_non_finite += 1

    def _combined(self, x: np.ndarray, score: float, contrib: np.ndarray, floor: np.ndarray, t: float
                  ) -> Scored | None:
        """The combined detector's verdict on one window (the same steps as ``vibrawatch evaluate``); None,
        with the event state untouched, when any level it would decide on is not finite."""
        d = self.bundle.detector
        assert self.events is not None and d.floor is not None
        sl, cl = d.model_levels(x[None], np.array([score]), contrib[None])
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            ratios, own, log_level = d.floor.ratios(floor), d.own_z(x[None])[0], d.floor.log_level(floor)
            energy = (np.mean(np.stack(self._energies), axis=0)
                      if self._diagnosis is not None and len(self._energies) else None)
        if not all(np.isfinite(a).all() for a in (sl, cl, ratios, own, log_level)) or (
                energy is not None and not np.isfinite(energy).all()):
            return None
        v = self.events.update(t, float(sl[0]), cl[0], ratios, own, log_level)
        if v.active and self._since is None:
            self._since = t
        elif not v.active:
            self._since = None
        at_raise: dict[int, dict[str, Any]] = {}
        found: dict[int, dict[str, Any]] = {}
        if energy is not None and self._diagnosis is not None:
            at_raise, found = self._diagnosis.update(v, energy)
        decision = Decision(v.above, bool(v.active), v.event, v.channel, v.level)
        return Scored(t, score, v.level, contrib, decision, self._since, v, at_raise, found)
