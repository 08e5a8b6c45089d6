"""Which bearing defect an alarm points at: the envelope statistic at each defect frequency against healthy.

``Diagnosis`` holds the defect frequencies and each channel's healthy statistic at them and names the defect
whose statistic rose most on an alarm's channel, when one stands out; ``DiagnosisState`` keeps diagnosing an
active alarm until one does; ``envelope_energies`` measures the statistic on raw frames; ``describe`` is the
one line logs, reports and plots print.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .envelope import envelope_statistics, line_frequencies
from .events import Verdict
from .features import ENVELOPE_STATISTICS, FeatureDef, FeatureSpec, extract, spectrum
from .manifest_fields import array_field, number_field


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
    own_lines: bool = False  # peak: ball at 2 x BSF, lines shared with another defect skipped (envelope.py)

    def to_dict(self) -> dict[str, Any]:
        return {"defects_hz": dict(self.defects_hz), "band_hz": list(self.band_hz), "harmonics": self.harmonics,
                "healthy": self.healthy.tolist(), "min_ratio": self.min_ratio, "margin": self.margin,
                "statistic": self.statistic, **({"own_lines": True} if self.own_lines else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_channels: int) -> Diagnosis:
        w = "diagnosis"
        defects = d.get("defects_hz") if isinstance(d, Mapping) else None
        if not isinstance(defects, Mapping) or not defects or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in defects.values()):
            raise ConfigError(f"{w}.defects_hz: expected {{name: Hz > 0, ...}}, got {str(defects)[:60]}")
        band = array_field(d, "band_hz", w, (2,))
        h = d.get("harmonics")
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise ConfigError(f"{w}.harmonics: expected an integer >= 1, got {h!r}")
        stat = d.get("statistic", "energy")
        if stat not in ENVELOPE_STATISTICS:
            raise ConfigError(f"{w}.statistic: expected one of {', '.join(ENVELOPE_STATISTICS)}, got {stat!r}")
        return cls({str(k): float(v) for k, v in defects.items()}, (float(band[0]), float(band[1])), h,
                   array_field(d, "healthy", w, (n_channels, len(defects))), number_field(d, "min_ratio", w, 1.0, 1.5),
                   number_field(d, "margin", w, 1.0, 1.25), stat, d.get("own_lines") is True)

    def feature(self) -> dict[str, Any]:
        """The ``envelope`` feature definition that measures these statistics (agent/detect/features.py)."""
        f = {"band_hz": list(self.band_hz), "defects_hz": dict(self.defects_hz), "harmonics": self.harmonics}
        if self.own_lines:
            f["own_lines"] = True
        return {**f, "statistic": self.statistic} if self.statistic != "energy" else f

    def diagnose(self, energies: np.ndarray, channel: int) -> dict[str, Any]:
        """Mean log10 energies (C, D) of the alarm's recent frames -> the defect that rose most on ``channel``.

        ``{"defect": "bpfo" or None, "ratio": x, "ratios": {...}}``: None when no defect's energy rose by
        ``min_ratio`` and by ``margin`` more than the next one (nothing stands out), or when the cage (``ftf``)
        rose most but another defect rose by ``min_ratio`` too (a wrong name is worse than none).
        """
        ratios = 10.0 ** (np.asarray(energies)[channel] - self.healthy[channel])
        names = list(self.defects_hz)
        order = np.argsort(-ratios)
        best = int(order[0])
        second = float(ratios[order[1]]) if len(order) > 1 else 1.0
        stands_out = ratios[best] >= self.min_ratio and ratios[best] >= self.margin * max(second, 1.0)
        if names[best] == "ftf" and second >= self.min_ratio:
            # The cage's lines (FTF, ~0.4 x shaft) lie where shaft rate and the FTF and shaft sidebands of a ball's
            # or an inner race's lines lie: named only on evidence of its own, when no other defect rose too.
            stands_out = False
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

    def update(self, verdict: Verdict, energies: np.ndarray | Callable[[list[int]], np.ndarray]
               ) -> tuple[dict[int, dict[str, Any]], dict[int, dict]]:
        """Mean energies (C, D) of the window's frames -> (diagnosis of each channel raised now, diagnosis of
        each active channel whose defect first stood out now). ``energies`` may be a function of the channels
        that need them (rows of others may be NaN): a healthy window asks for none, so its envelope is never
        measured."""
        for c in list(self._open):
            if c not in verdict.active:
                self._open.discard(c)
        needed = sorted(set(verdict.raised) | self._open)
        if not needed:
            return {}, {}
        e = energies(needed) if callable(energies) else energies
        at_raise = {c: self.diagnosis.diagnose(e, c) for c in verdict.raised}
        found: dict[int, dict[str, Any]] = {}
        for c in list(self._open):
            if c not in at_raise:
                d = self.diagnosis.diagnose(e, c)
                if d["defect"] is not None:
                    found[c] = d
                    self._open.discard(c)
        self._open |= {c for c, d in at_raise.items() if d["defect"] is None}
        return at_raise, found


class EnvelopeWindow:
    """The raw frames of the window being decided and their envelope statistics, measured per frame and channel
    only when asked: a healthy machine's frames are never demodulated; an alarm's channel is, over the window's
    frames at the raise and on each new frame while it stays open. A frame pushed with its spectrum (the one
    the features computed, valid until ``release``) needs no transform of its own. Frames are kept, not copied
    (a third of a megabyte a frame at 4 x 20 kHz): the caller hands over a buffer it never writes again, as the
    ``Framer``'s completed frames are."""

    def __init__(self, spec: FeatureSpec, diagnosis: Diagnosis, length: int) -> None:
        n_ch, n_d = len(spec.channels), len(diagnosis.defects_hz)
        self.spec, self.params = spec, diagnosis.feature()
        self._frames: list[np.ndarray] = [np.empty((0, n_ch), np.float32)] * length  # slot -> (N, C) float32
        self._energies = np.full((length, n_ch, n_d), np.nan)
        self._known = np.zeros((length, n_ch), bool)
        self._spectra: dict[int, np.ndarray] = {}  # slot -> its (C, K) spectrum, while the features' is valid
        self._head = self._count = 0
        self.measured = 0  # (frame, channel) envelopes measured, for the benchmark

    def clear(self) -> None:
        self._count = 0
        self._spectra.clear()

    def release(self) -> None:
        """The features' spectra are about to be overwritten: measure from the raw frames from now on."""
        self._spectra.clear()

    def push(self, frame: np.ndarray, spectrum: np.ndarray | None = None) -> None:
        """One frame (N, C) and, optionally, its one-sided spectra (C, K)."""
        slot = self._head
        self._frames[slot] = np.asarray(frame, np.float32)  # float32 as the framer gives it: no copy
        self._known[slot] = False
        self._spectra.pop(slot, None)
        if spectrum is not None:
            self._spectra[slot] = spectrum
        self._head = (slot + 1) % len(self._frames)
        self._count = min(self._count + 1, len(self._frames))

    def _slots(self) -> list[int]:
        L = len(self._frames)
        return [(self._head - self._count + i) % L for i in range(self._count)]  # oldest first

    def _measure(self, slot: int, channels: list[int]) -> None:
        todo = [c for c in channels if not self._known[slot, c]]
        if not todo:
            return
        s = self._spectra.get(slot)  # the features' transform, else the raw frame's own
        s = spectrum(np.ascontiguousarray(self._frames[slot][:, todo].T, dtype=np.float64)) if s is None else s[todo]
        v = envelope_statistics(s[None], self.spec.fs_hz, self.spec.frame_length, self.params)[0]
        self._energies[slot, todo] = v
        self._known[slot, todo] = True
        self.measured += len(todo)

    def mean(self, channels: list[int]) -> np.ndarray:
        """(C, D): the mean over the window's frames for ``channels``, NaN for the others."""
        slots = self._slots()
        for s in slots:
            self._measure(s, channels)
        out = np.full(self._energies.shape[1:], np.nan)
        if slots:
            out[channels] = np.mean(self._energies[slots][:, channels], axis=0)
        return out

    def last(self) -> np.ndarray:
        """(C, D): the newest frame's statistics for every channel (what a commissioning keeps per window)."""
        slot = (self._head - 1) % len(self._frames)
        self._measure(slot, list(range(self._energies.shape[1])))
        return self._energies[slot].copy()


def frame_needed(defects_hz: Mapping[str, float], fs_hz: float) -> int:
    """The shortest frame (samples, a power of two) whose line search, two bins (2 fs/N, the peak statistic's
    width) either side of a line, reaches at most half way to the nearest other defect's first line (BPFO, BPFI,
    2 x BSF, FTF) or, for FTF, to 0 Hz: coarser bins put two defects' lines, or the cage's line and the
    envelope's mean, in one search range, and the larger ratio names a defect the frame cannot tell apart."""
    firsts = np.sort(np.array([0.0] + [float(line_frequencies(k, f, 1)[0]) for k, f in defects_hz.items()]))
    spacing = float(np.diff(firsts).min())
    need = 4.0 * fs_hz / max(spacing, 1e-9)
    return int(2 ** int(np.ceil(np.log2(max(need, 8.0)))))


def resolution_line(defects_hz: Mapping[str, float], fs_hz: float, frame_length: int) -> str | None:
    """One line when frames of ``frame_length`` cannot resolve the defect lines (``frame_needed``), else None."""
    need = frame_needed(defects_hz, fs_hz)
    if frame_length >= need:
        return None
    return (f"diagnosis: frames of {frame_length} samples ({fs_hz / frame_length:.3g} Hz bins) cannot separate the "
            f"defect lines; needs frame_length >= {need} ({fs_hz / need:.3g} Hz bins) in [features]")


DEFECT_NAMES = {"bpfo": "outer race", "bpfi": "inner race", "bsf": "ball", "ftf": "cage"}


def describe(diagnosis: Mapping[str, Any] | None) -> str:
    """One line for logs and plots: 'outer race (BPFO x3.2)' or 'no defect frequency stands out'."""
    if not diagnosis:
        return ""
    d = diagnosis.get("defect")
    if d is None:
        return f"no defect frequency stands out (largest x{diagnosis.get('ratio')})"
    return f"{DEFECT_NAMES.get(d, d)} ({d.upper()} x{diagnosis.get('ratio')})"



def envelope_energies(frames: np.ndarray, spec: FeatureSpec, diagnosis: Diagnosis) -> np.ndarray:
    """Raw frames (n, N, C) -> log10 envelope energy at each defect frequency, (n, C, D)."""
    s = FeatureSpec(spec.fs_hz, spec.frame_length, spec.channels, (FeatureDef("envelope", diagnosis.feature()),))
    v = extract(frames, s)
    return v.reshape(len(v), len(spec.channels), len(diagnosis.defects_hz))
