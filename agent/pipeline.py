"""source -> frames -> features -> window -> scale -> infer -> decide: one chunk of samples in, events out.

The same functions as ``vibrawatch evaluate`` in the same order (frames within a segment, features per
frame, windows of T frames across segments, min-max scaling, the TFLite model, the alarm state machine),
so a window scores the same here as on the workstation. A chunk that fails the sensor checks is not
scored; frames and window restart after it, so no window mixes good and bad samples.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .detect.decide import Decision, reconstruction_scores
from .detect.detector import Detector
from .detect.diagnosis import DiagnosisState, EnvelopeWindow
from .detect.features import FeatureBuffers, FeatureSpec, extract_spectra
from .detect.frames import Framer
from .detect.healthy import Evidence, event_inputs, window_evidence
from .detect.measures import floor_spec, floor_values
from .detect.results import Scored, SensorStatus
from .detect.window import WindowBuffer
from .model.bundle import Bundle
from .sources.sensor_check import SensorLimits, check_chunk
from .sources.source import Chunk

if TYPE_CHECKING:
    from .model.commission import Commissioning

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


Energies = np.ndarray | Callable[[list[int]], np.ndarray]  # (C, D), or what gives the rows of the channels asked


@dataclass
class StageTimes:
    """Seconds spent per stage, for the benchmark: features (frames + features), inference (scale + model)."""

    features: float = 0.0
    inference: float = 0.0
    windows: int = 0
    non_finite: int = 0  # windows not scored because their score was NaN/inf (a NON_FINITE sensor fault)
    model_non_finite: int = 0  # ... of those, ones whose features were sane: the bundle failed, not the samples


@dataclass
class Decider:
    """Everything after the score: one window's evidence in, its decision out, by the detector it holds.

    The alarm rule (the autoencoder's thresholds) or, for a combined detector, the event layer and the
    diagnosis (agent/detect/events.py, agent/detect/diagnosis.py). With a ``Commissioning`` attached
    (agent/model/commission.py) each window goes through it: while it runs, nothing alarms; when it completes,
    ``use`` swaps in the detector it fitted (this machine's healthy statistics), its alarm rule warmed with the
    last commissioning windows, so a fault present at the end alarms at the first window after them.
    """

    detector: Detector
    commission: Commissioning | None = None

    def __post_init__(self) -> None:
        self.use(self.detector)

    def use(self, detector: Detector, warm: Evidence | None = None) -> None:
        """Decide with ``detector`` from now on: fresh alarm, event and diagnosis states, fed ``warm``'s windows
        (decisions dropped: they only fill the alarm rule's memory)."""
        self.detector = detector
        self.alarm = detector.alarm_state()
        self.events = detector.event_state() if detector.combined else None
        self.diagnosis = DiagnosisState(detector.diagnosis) if self.events and detector.diagnosis else None
        self._since: float | None = None
        if warm is not None:
            for i in range(len(warm)):
                self._decide(warm.window(slice(i, i + 1)), None)
        self._since = None

    def window(self, ev: Evidence, energy: Energies | None = None) -> Scored | None:
        """One window (``ev`` of length 1; ``energy``: mean envelope energies of its frames, or the function of
        the channels that need them, when diagnosing) -> its result as published; None when any level it would
        decide on is not finite (nothing changed)."""
        scored = self._decide(ev, energy)
        if scored is None or self.commission is None:
            return scored
        scored, cal = self.commission.window(scored)
        if cal is not None:
            self.use(cal.detector, self.commission.warm)
        return scored

    def _decide(self, ev: Evidence, energy: Energies | None) -> Scored | None:
        d = self.detector
        if not ev.finite():  # e.g. a feature mean of -inf: no level would say so, the commissioning would keep it
            return None
        t, score, contrib = float(ev.t[0]), float(ev.score[0]), ev.contributions[0]
        if self.events is None:
            decision = self.alarm.update(score, contrib)
            if decision.event == "raised":
                self._since = t
            elif decision.event == "cleared":
                self._since = None
            return Scored(t, score, decision.level, contrib, decision, self._since, threshold=d.threshold,
                          evidence=ev)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            sl, cl, ratios, own, log_level, blame, shape = event_inputs(d, ev)
        if not all(np.isfinite(a).all() for a in (sl, cl, ratios, own, log_level, blame, shape)) or (
                isinstance(energy, np.ndarray) and not np.isfinite(energy).all()):
            return None
        v = self.events.update(t, float(sl[0]), cl[0], ratios[0], own[0], log_level[0], blame[0], shape[0])
        if v.active and self._since is None:
            self._since = t
        elif not v.active:
            self._since = None
        at_raise: dict[int, dict[str, Any]] = {}
        found: dict[int, dict[str, Any]] = {}
        if energy is not None and self.diagnosis is not None:
            at_raise, found = self.diagnosis.update(v, energy)
        decision = Decision(v.above, bool(v.active), v.event, v.channel, v.level)
        return Scored(t, score, v.level, contrib, decision, self._since, v, at_raise, found, threshold=d.threshold,
                      evidence=ev)


def with_floors(spec: FeatureSpec, combined: bool) -> FeatureSpec:
    """The model's features and, for the combined detector, the floors' after them: one extraction per frame
    computes both, sharing the float64 copy and the RMS."""
    if not combined:
        return spec
    return FeatureSpec(spec.fs_hz, spec.frame_length, spec.channels, spec.features + floor_spec(spec).features)


def split_floors(both: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """``with_floors``' rows (n, C * (P + K)) -> the model's features (n, C * P) and floor values (n, K, C)."""
    per = spec.per_channel
    b = both.reshape(len(both), len(spec.channels), -1)
    return b[:, :, :per].reshape(len(both), -1), b[:, :, per:].transpose(0, 2, 1)


def commissioning(decider: Decider) -> bool:
    """Is a commissioning collecting this machine's healthy windows now?"""
    return decider.commission is not None and decider.commission.commissioning


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
        self.decider = Decider(b.detector)
        self.limits = SensorLimits(n_ch, b.detector.spec.fs_hz, self.full_scale)
        self._fault: str | None = None
        self._next_t: float | None = None
        self._combined = b.detector.combined
        self._buffers = FeatureBuffers()  # the features' working arrays, the same shapes every frame
        self._spec_all = None if self._table else with_floors(b.detector.spec, b.detector.combined)
        self._envelope: EnvelopeWindow | None = None  # diagnosis: the window's frames, demodulated when asked
        self._diagnosing = False
        self._diagnose(b.detector)
        self._pca_before: deque[float] = deque(maxlen=max(b.detector.rule.raise_after - 1, 1))  # healthy.held

    @property
    def detector(self) -> Detector:
        """The detector deciding now: the bundle's, or the one a commissioning fitted on this machine."""
        return self.decider.detector

    def use(self, detector: Detector, warm: Evidence | None = None) -> None:
        """Decide with ``detector`` from the next window on (see ``Decider.use``)."""
        self.decider.use(detector, warm)
        self._diagnose(detector)

    def _diagnose(self, detector: Detector) -> None:
        """Keep the window's raw frames for the envelope when ``detector`` diagnoses (3.2 MB at 4 x 20 kHz,
        T = 10), else none."""
        dg = detector.diagnosis if detector.combined and not self._table else None
        self._diagnosing = dg is not None
        if dg is None:
            self._envelope = None
        elif self._envelope is None or self._envelope.params != dg.feature():
            self._envelope = EnvelopeWindow(detector.spec, dg, detector.window)

    def attach(self, commission: Commissioning | None) -> None:
        """Send every window through ``commission`` and decide with the detector it holds now; a detector equal
        to the one deciding keeps the running alarm and event states (a reload changes nothing)."""
        self.decider.commission = commission
        active = self.bundle.detector if commission is None else commission.active
        if active is not self.detector and active.to_dict() != self.detector.to_dict():
            self.use(active)

    def process(self, chunk: Chunk) -> list[SensorStatus | Scored]:
        """Feed one chunk (about 10 a second, most only extending the partial frame: attributes read once);
        returns sensor status changes and one ``Scored`` per window that ends in it."""
        events: list[SensorStatus | Scored] = []
        samples, t_start, new_segment = chunk.samples, chunk.t_start, chunk.new_segment
        reason = chunk.fault or check_chunk(samples, self.limits, chunk.fs_hz)
        det = self.bundle.detector
        fs, next_t, table = det.spec.fs_hz, self._next_t, self._table
        if reason is None and not new_segment and not table and next_t is not None:
            join = continuity(t_start, next_t, fs)
            if join is not None:
                self.framer.reset()  # a frame never spans missing samples
                reason = None if join == "gap" else f"time went backwards by {next_t - t_start:.3f} s"
        if reason is not None:
            return self._sensor_fault(events, t_start, reason)
        if self._fault is not None and self._fault != NON_FINITE:  # that one clears with the next finite score
            events.append(SensorStatus(t_start, None))
            self._fault = None
        self._next_t = t_start + len(samples) / fs
        t0 = time.perf_counter()
        spectra = None
        if table:
            feats, times = samples.astype(np.float64), np.full(len(samples), t_start)
            floors = floor_values(feats, det.spec) if self._combined else None
        else:
            framer = self.framer
            if new_segment:
                framer.reset()
            frames, times = framer.push(samples, t_start)
            if not len(frames):
                return events
            if self._envelope is not None:
                self._envelope.release()  # the spectra it holds are overwritten now
            assert self._spec_all is not None
            feats, spectra = extract_spectra(frames, self._spec_all, self._buffers)
            feats, floors = split_floors(feats, det.spec) if self._combined else (feats, None)
        self.times.features += time.perf_counter() - t0
        for k, (row, t) in enumerate(zip(feats, times, strict=True)):
            if self._envelope is not None:
                self._envelope.push(frames[k], None if spectra is None else spectra[k])
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
        if self._envelope is not None:
            self._envelope.clear()
        self._pca_before.clear()
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
        env = self._envelope if self._diagnosing else None
        # a commissioning keeps each window's last-frame envelope (all channels); otherwise only an alarm asks
        last = env.last()[None] if env is not None and commissioning(self.decider) else None
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            ev = window_evidence(self.detector, np.array([t]), x[None], s, c,
                                 None if floor is None else floor[None], last, tuple(self._pca_before))
        scored = self.decider.window(ev, None if env is None else env.mean)
        if scored is None:
            return self._not_finite(window)
        if ev.pca_score is not None:
            self._pca_before.append(float(ev.pca_score[0]))
        return scored

    def _not_finite(self, window: np.ndarray) -> None:
        """Count a window whose score is not finite. When its features (before the bundle's scaler and model)
        are all within ``SANE_FEATURE``, the samples were sane and the bundle itself failed: a deploy's
        probation rolls such a bundle back (agent.deploy). Absurd samples (±1e38: an RMS of 1e38) stay a
        sensor fault only."""
        self.times.non_finite += 1
        if np.all(np.abs(window) <= SANE_FEATURE):  # NaN compares False: not sane either
            self.times.model_non_finite += 1
