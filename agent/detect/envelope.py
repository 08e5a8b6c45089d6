"""Bearing envelope analysis on one-sided spectra: the ``envelope`` feature's statistics (agent/detect/features.py
describes them), measured from the spectrum every spectral feature shares."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

_EPS = 1e-12


def envelope_statistics(spectra: np.ndarray, fs_hz: float, n: int, params: Mapping[str, Any]) -> np.ndarray:
    """One-sided spectra (n_frames, C, n//2+1) of frames of n samples -> the envelope feature (n_frames, C, D).

    The analytic signal of the band-passed frame is the inverse transform of the spectrum's positive
    frequencies within the band, doubled: those bins are the one-sided spectrum's, so the frame's one
    transform serves the envelope too (one inverse and the envelope's own transform remain).
    """
    lo, hi = (float(v) for v in params["band_hz"])
    harmonics = int(params.get("harmonics", 3))
    width = float(params.get("width_hz", 2.0 * fs_hz / n))
    k0, k1 = _analytic_bins(n, float(fs_hz), lo, hi)
    z = np.zeros(spectra.shape[:-1] + (n,), np.complex128)
    np.multiply(spectra[..., k0:k1], 2.0, out=z[..., k0:k1])
    env = np.abs(np.fft.ifft(z, axis=-1))
    env -= env.mean(axis=-1, keepdims=True)
    e = np.fft.rfft(env, axis=-1)
    power = (e.real**2 + e.imag**2) / float(n) ** 2  # (n_frames, C, K)
    if params.get("statistic", "energy") == "peak":
        rf = np.fft.rfftfreq(n, 1.0 / fs_hz)
        return _envelope_peaks(power, rf, params["defects_hz"].items(), harmonics, width,
                               float(params.get("background", 10)) * width, float(params.get("slip", 0.03)),
                               bool(params.get("own_lines", False)))
    plan = _energy_plan(n, float(fs_hz), tuple(float(f) for f in params["defects_hz"].values()), harmonics, width)
    return np.log10(np.stack([power[:, :, bins].sum(axis=2) for bins in plan], axis=2) + _EPS)


@lru_cache(maxsize=32)
def _analytic_bins(n: int, fs_hz: float, lo: float, hi: float) -> tuple[int, int]:
    """The bins [k0, k1) of the positive frequencies f with lo <= f < hi (never the Nyquist bin, which the
    full transform counts as negative)."""
    freqs = np.fft.fftfreq(n, 1.0 / fs_hz)
    k = np.flatnonzero((freqs >= lo) & (freqs < hi))
    return (int(k[0]), int(k[-1]) + 1) if k.size else (0, 0)


@lru_cache(maxsize=32)
def _energy_plan(n: int, fs_hz: float, defects_hz: tuple[float, ...], harmonics: int, width: float
                 ) -> tuple[np.ndarray, ...]:
    """Per defect, the envelope spectrum's bins within ``width`` of any of its harmonics."""
    rf = np.fft.rfftfreq(n, 1.0 / fs_hz)
    plan = []
    for f0 in defects_hz:
        mask = np.zeros(rf.shape, dtype=bool)
        for k in range(1, harmonics + 1):
            mask |= np.abs(rf - k * f0) <= width
        plan.append(np.flatnonzero(mask))
    return tuple(plan)


def _envelope_peaks(power: np.ndarray, rf: np.ndarray, defects_hz: Any, harmonics: int, width: float,
                    background: float, slip: float, own_lines: bool = False) -> np.ndarray:
    """Envelope power spectra (n_frames, C, K) -> log10 line-over-background per defect (n_frames, C, D).

    A line is searched within ``slip`` of k * f (at least ``width``): rolling elements slip and a shaft's real
    speed is rarely the nameplate's (IMS test 2's outer-race line is at 230.5 Hz, its BPFO at 2000 rpm 236.4);
    its background is the ``background`` Hz on either side of that search range. With ``own_lines`` (what
    training sets since bundles diagnose right or silent) a ball's lines are at 2 x BSF and a defect's lines are
    its own evidence only: one whose search range also holds another defect's line is skipped (``_peak_plan``);
    a defect left with none has statistic 0 (it can never stand out).
    """
    named = tuple((str(k), float(f)) for k, f in defects_hz)
    plan = _peak_plan(len(rf), float(rf[1] - rf[0]) if len(rf) > 1 else 1.0, named, harmonics, width, background,
                      slip, own_lines)
    cols = []
    for pairs in plan:
        logs = [np.log10(power[:, :, line].max(axis=2) + _EPS) - np.log10(np.median(power[:, :, near], axis=2) + _EPS)
                for line, near in pairs]
        cols.append(np.mean(logs, axis=0) if logs else np.zeros(power.shape[:2]))
    return np.stack(cols, axis=2)


def line_frequencies(name: str, f0: float, harmonics: int, own_lines: bool = True) -> np.ndarray:
    """The envelope lines a defect puts out: k * f for k = 1..harmonics, but k * 2 * BSF for a ball (``bsf``): a
    ball's defect strikes the inner and the outer race once each per spin revolution, so its impacts come at
    twice the ball spin frequency (the 2 x BSF line of the literature)."""
    step = 2.0 * f0 if own_lines and name == "bsf" else f0
    return step * np.arange(1, harmonics + 1)


@lru_cache(maxsize=32)
def _peak_plan(k_bins: int, df: float, defects: tuple[tuple[str, float], ...], harmonics: int, width: float,
               background: float, slip: float, own_lines: bool
               ) -> tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...]:
    """Per defect, per line: the bins searched for it and the bins of its background (the same for every frame
    of a spec, so worked out once). With ``own_lines``, a line whose search range (slip and one ``width`` wider)
    holds a line of another defect is left out: a peak there is no evidence for either (CWRU's 6205: 2 x BPFI
    324.4 Hz and 3 x BPFO 322.1 Hz)."""
    rf = np.arange(k_bins) * df
    lines = {name: line_frequencies(name, f0, harmonics, own_lines) for name, f0 in defects}
    plan = []
    for name, _ in defects:
        others = np.concatenate([v for n, v in lines.items() if n != name] or [np.zeros(0)])
        pairs = []
        for f in lines[name]:
            d = np.abs(rf - f)
            tol = max(width, slip * f)
            if own_lines and np.any(np.abs(others - f) <= tol + width):
                continue
            line, near = np.flatnonzero(d <= tol), np.flatnonzero((d > tol) & (d <= tol + background))
            if line.size and near.size:
                pairs.append((line, near))
        plan.append(tuple(pairs))
    return tuple(plan)
