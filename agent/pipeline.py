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
        reason = check_chunk(chunk.samples, self.limits, chunk.fs_hz)
        if reason is None and not chunk.new_segment and not self._table and self._next_t is not None:
            join = continuity(chunk.t_start, self._next_t, self.bundle.detector.spec.fs_hz)
            if join is not None:
                self.framer.reset()  # a frame never spans missing samples
                reason = None if join == "gap" else f"time went backwards by {self._next_t - chunk.t_start:.3f} s"
        if reason is not None:
            self.framer.reset()
            self.windows.reset()
            self._energies.clear()
            self._next_t = None
            if reason != self._fault:
                events.append(SensorStatus(chunk.t_start, reason))
            self._fault = reason
            return events
        if self._fault is not None:
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
                events.append(self._score(window, float(t), None if floors is None else floors[k]))
        return events

    def _score(self, window: np.ndarray, t: float, floor: np.ndarray | None = None) -> Scored:
        b = self.bundle
        t0 = time.perf_counter()
        x = b.detector.scaler.transform(window).astype(np.float32)
        y = b.model.reconstruct(x)
        self.times.inference += time.perf_counter() - t0
        self.times.windows += 1
        s, c = reconstruction_scores(x[None], y[None], len(b.detector.spec.channels))
        if self.events is not None and floor is not None:
            return self._combined(x, float(s[0]), c[0], floor, t)
        decision = self.alarm.update(float(s[0]), c[0])
        if decision.event == "raised":
            self._since = t
        elif decision.event == "cleared":
            self._since = None
        return Scored(t, float(s[0]), decision.level, c[0], decision, self._since)

    def _combined(self, x: np.ndarray, score: float, contrib: np.ndarray, floor: np.ndarray, t: float) -> Scored:
        """The combined detector's verdict on one window (the same steps as ``vibrawatch evaluate``)."""
        d = self.bundle.detector
        assert self.events is not None and d.floor is not None
        sl, cl = d.model_levels(x[None], np.array([score]), contrib[None])
        v = self.events.update(t, float(sl[0]), cl[0], d.floor.ratios(floor), d.own_z(x[None])[0],
                               d.floor.log_level(floor))
        if v.active and self._since is None:
            self._since = t
        elif not v.active:
            self._since = None
        at_raise: dict[int, dict[str, Any]] = {}
        found: dict[int, dict[str, Any]] = {}
        if self._diagnosis is not None and len(self._energies):
            at_raise, found = self._diagnosis.update(v, np.mean(np.stack(self._energies), axis=0))
        decision = Decision(v.above, bool(v.active), v.event, v.channel, v.level)
        return Scored(t, score, v.level, contrib, decision, self._since, v, at_raise, found)
