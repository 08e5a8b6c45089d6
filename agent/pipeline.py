"""source -> frames -> features -> window -> scale -> infer -> decide: one chunk of samples in, events out.

The same functions as ``vibrawatch evaluate`` in the same order (frames within a segment, features per
frame, windows of T frames across segments, min-max scaling, the TFLite model, the alarm state machine),
so a window scores the same here as on the workstation. A chunk that fails the sensor checks is not
scored; frames and window restart after it, so no window mixes good and bad samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .bundle import Bundle
from .decide import Decision, reconstruction_scores
from .features import extract
from .frames import Framer
from .sensor_check import SensorLimits, check_chunk
from .source import Chunk
from .window import WindowBuffer

NON_FINITE = "non-finite score: samples out of any sane range"


@dataclass(frozen=True)
class Scored:
    """One window's result."""

    t: float  # time of the window's last frame (as `vibrawatch evaluate` reports windows)
    score: float
    level: float
    contributions: np.ndarray  # (C,)
    decision: Decision
    since: float | None  # when the active alarm was raised


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

    def process(self, chunk: Chunk) -> list[SensorStatus | Scored]:
        """Feed one chunk; returns sensor status changes and one ``Scored`` per window that ends in it."""
        events: list[SensorStatus | Scored] = []
        reason = chunk.fault or check_chunk(chunk.samples, self.limits, chunk.fs_hz)
        if reason is None and not chunk.new_segment and not self._table and self._next_t is not None:
            gap = chunk.t_start - self._next_t
            if abs(gap) > 1.5 / self.bundle.detector.spec.fs_hz:
                self.framer.reset()  # a frame never spans missing samples
                reason = None if gap > 0 else f"time went backwards by {-gap:.3f} s"
        if reason is not None:
            return self._sensor_fault(events, chunk.t_start, reason)
        if self._fault is not None and self._fault != NON_FINITE:  # that one clears with the next finite score
            events.append(SensorStatus(chunk.t_start, None))
            self._fault = None
        self._next_t = chunk.t_start + len(chunk.samples) / self.bundle.detector.spec.fs_hz
        t0 = time.perf_counter()
        if self._table:
            feats, times = chunk.samples.astype(np.float64), np.full(len(chunk.samples), chunk.t_start)
        else:
            if chunk.new_segment:
                self.framer.reset()
            frames, times = self.framer.push(chunk.samples, chunk.t_start)
            if len(frames) == 0:
                return events
            feats = extract(frames, self.bundle.detector.spec)
        self.times.features += time.perf_counter() - t0
        for row, t in zip(feats, times, strict=True):
            window = self.windows.push(row)
            if window is not None:
                scored = self._score(window, float(t))
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
        self._next_t = None
        if reason != self._fault:
            events.append(SensorStatus(t, reason))
        self._fault = reason
        return events

    def _score(self, window: np.ndarray, t: float) -> Scored | None:
        """The window's score and decision; None when the score is not a finite number (never published,
        never fed to the alarm state, where NaN would compare as 'below threshold')."""
        b = self.bundle
        t0 = time.perf_counter()
        x = b.detector.scaler.transform(window).astype(np.float32)
        y = b.model.reconstruct(x)
        self.times.inference += time.perf_counter() - t0
        self.times.windows += 1
        s, c = reconstruction_scores(x[None], y[None], len(b.detector.spec.channels))
        if not (np.isfinite(s[0]) and np.isfinite(c[0]).all()):
            return None
        decision = self.alarm.update(float(s[0]), c[0])
        if decision.event == "raised":
            self._since = t
        elif decision.event == "cleared":
            self._since = None
        return Scored(t, float(s[0]), decision.level, c[0], decision, self._since)
