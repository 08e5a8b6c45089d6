"""Today's features, bit for bit where it matters: the one-transform extraction (agent/detect/features.py,
agent/detect/envelope.py) against the implementation it replaced, kept here as the reference, over a whole
simulated run to failure with every feature kind, and the gateway's lazy diagnosis against computing the
envelope on every frame."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from vibrawatch.agent.detect.bands import band_bins
from vibrawatch.agent.detect.diagnosis import Diagnosis, DiagnosisState, EnvelopeWindow, envelope_energies
from vibrawatch.agent.detect.features import (
    SIMPLE_FEATURES,
    FeatureBuffers,
    FeatureDef,
    FeatureSpec,
    _bands,
    extract,
    extract_spectra,
)
from vibrawatch.agent.sources.simulate import BearingSimulator

_EPS = 1e-12
FS, N, C = 10000.0, 5000, 4  # a frame length that is no power of two, like the default 20,000
ENVELOPE = {"band_hz": [1500, 4500], "defects_hz": {"bpfo": 118.2, "bpfi": 148.5, "bsf": 70.0, "ftf": 7.4}}


# ---- the reference: extract() as it was before one transform was shared (float64, full complex envelope) ----

def reference_extract(frames: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    n_frames, n, n_ch = frames.shape
    x = np.empty((n_frames, n_ch, n))
    np.copyto(x, np.asarray(frames).transpose(0, 2, 1))
    cols: list[np.ndarray] = []
    cache: dict[str, np.ndarray] = {}
    for fdef in spec.features:
        if fdef.name in SIMPLE_FEATURES:
            cols.append(_ref_simple(x, fdef.name, cache)[:, :, None])
        elif fdef.name == "band_energy":
            if "power" not in cache:
                s = np.fft.rfft(x, axis=2)
                cache["power"] = (s.real**2 + s.imag**2) / float(n) ** 2
            lo_idx, hi_idx = band_bins(spec.fs_hz, n, _bands(fdef, spec.fs_hz))
            e = np.stack([cache["power"][:, :, lo:hi].sum(axis=2) for lo, hi in zip(lo_idx, hi_idx, strict=True)], 2)
            cols.append(np.log10(e + _EPS))
        elif fdef.name == "envelope":
            cols.append(_ref_envelope(x.transpose(0, 2, 1), spec.fs_hz, fdef.params))
    out = np.concatenate(cols, axis=2)
    return out.reshape(n_frames, n_ch * out.shape[2])


def _ref_simple(x: np.ndarray, name: str, cache: dict[str, np.ndarray]) -> np.ndarray:
    n = x.shape[2]
    mean = x.mean(axis=2)
    rms = np.sqrt(np.einsum("fcn,fcn->fc", x, x) / n)
    peak = np.maximum(x.max(axis=2), -x.min(axis=2))
    d2 = (x - mean[:, :, None]) ** 2
    m2, m4 = d2.mean(axis=2), np.einsum("fcn,fcn->fc", d2, d2) / n
    return {"mean": mean, "mean_abs": np.abs(x).mean(axis=2), "rms": rms, "peak": peak,
            "crest": peak / np.maximum(rms, _EPS), "kurtosis": m4 / np.maximum(m2**2, _EPS)}[name]


def _ref_envelope(x: np.ndarray, fs_hz: float, params: Mapping[str, Any]) -> np.ndarray:
    n = x.shape[1]
    lo, hi = (float(v) for v in params["band_hz"])
    harmonics = int(params.get("harmonics", 3))
    width = float(params.get("width_hz", 2.0 * fs_hz / n))
    freqs = np.fft.fftfreq(n, 1.0 / fs_hz)
    gain = np.where((freqs >= lo) & (freqs < hi), 2.0, 0.0)
    analytic = np.fft.ifft(np.fft.fft(x, axis=1) * gain[None, :, None], axis=1)
    env = np.abs(analytic)
    env -= env.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(env, axis=1)) ** 2 / float(n) ** 2
    rf = np.fft.rfftfreq(n, 1.0 / fs_hz)
    if params.get("statistic", "energy") == "peak":
        return _ref_peaks(power, rf, params["defects_hz"].values(), harmonics, width,
                          float(params.get("background", 10)) * width, float(params.get("slip", 0.03)))
    cols = []
    for f0 in params["defects_hz"].values():
        mask = np.zeros(rf.shape, dtype=bool)
        for k in range(1, harmonics + 1):
            mask |= np.abs(rf - k * float(f0)) <= width
        cols.append(power[:, mask, :].sum(axis=1))
    return np.log10(np.stack(cols, axis=2) + _EPS)


def _ref_peaks(power: np.ndarray, rf: np.ndarray, defects_hz: Any, harmonics: int, width: float,
               background: float, slip: float) -> np.ndarray:
    cols = []
    for pairs in _ref_plan(len(rf), float(rf[1] - rf[0]), tuple(float(f) for f in defects_hz), harmonics, width,
                           background, slip):
        logs = [np.log10(power[:, line, :].max(axis=1) + _EPS) - np.log10(np.median(power[:, near, :], axis=1) + _EPS)
                for line, near in pairs]
        cols.append(np.mean(logs, axis=0) if logs else np.zeros((power.shape[0], power.shape[2])))
    return np.stack(cols, axis=2)


@lru_cache(maxsize=4)
def _ref_plan(k_bins: int, df: float, defects_hz: tuple[float, ...], harmonics: int, width: float,
              background: float, slip: float) -> tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...]:
    rf = np.arange(k_bins) * df
    plan = []
    for f0 in defects_hz:
        pairs = []
        for k in range(1, harmonics + 1):
            d = np.abs(rf - k * f0)
            tol = max(width, slip * k * f0)
            line, near = np.flatnonzero(d <= tol), np.flatnonzero((d > tol) & (d <= tol + background))
            if line.size and near.size:
                pairs.append((line, near))
        plan.append(tuple(pairs))
    return tuple(plan)


# ---- the run ----

def _run_frames() -> np.ndarray:
    """A whole simulated run to failure on bearing 1 (healthy, onset, spalling), frames (n, N, C) float32."""
    sim = BearingSimulator(n_snapshots=24, snapshot_samples=2 * N, fs_hz=FS, n_channels=C, onset=0.3,
                           severity=4.0, resonance_hz=3000.0, step_channel=2, step_at=0.5, seed=3)
    snaps = np.stack([sim.snapshot(i) for i in range(sim.n_snapshots)]).astype(np.float32)
    return snaps.reshape(-1, N, C)


EVERY_KIND = (*(FeatureDef(n) for n in SIMPLE_FEATURES), FeatureDef("band_energy"),
              FeatureDef("band_energy", {"bands_hz": [[0, 100], [50, 2000], [4000, 5000]]}),
              FeatureDef("envelope", ENVELOPE), FeatureDef("envelope", {**ENVELOPE, "statistic": "peak"}),
              FeatureDef("envelope", {**ENVELOPE, "band_hz": [0, 5000], "harmonics": 2}))
SPEC = FeatureSpec(FS, N, ("b1", "b2", "b3", "b4"), EVERY_KIND)


def _close(new: np.ndarray, ref: np.ndarray) -> None:
    """Within float32 rounding of the value (what the scaler and the model see): |new - ref| <= 2 eps32 |ref|,
    with an absolute floor for values near zero (a log of a ratio near 1)."""
    assert new.shape == ref.shape
    np.testing.assert_allclose(new, ref, rtol=2.4e-7, atol=1e-9)


def test_every_feature_kind_equals_the_reference_over_a_whole_run() -> None:
    frames = _run_frames()
    ref = reference_extract(frames, SPEC)
    assert np.isfinite(ref).all() and ref.shape == (len(frames), C * SPEC.per_channel)
    _close(extract(frames, SPEC), ref)
    # the gateway's way: one frame at a time, every working array reused
    buf = FeatureBuffers()
    one_by_one = np.concatenate([extract_spectra(frames[i:i + 1], SPEC, buf)[0] for i in range(len(frames))])
    _close(one_by_one, ref)
    assert buf.nbytes > 0


@pytest.mark.parametrize("n", [N, N - 1])  # even: a Nyquist bin of its own; odd: none
@pytest.mark.parametrize("features", [
    (*(FeatureDef(k) for k in SIMPLE_FEATURES), FeatureDef("band_energy"),
     FeatureDef("band_energy", {"bands_hz": [[0, 100], [50, 2000], [4000, 5000]]})),  # sum of squares by Parseval
    (FeatureDef("rms"), FeatureDef("kurtosis"), FeatureDef("crest"), FeatureDef("band_energy")),  # peak by max/min
    (*(FeatureDef(k) for k in SIMPLE_FEATURES), FeatureDef("envelope", ENVELOPE)),  # a spectrum but no band powers
    tuple(FeatureDef(k) for k in SIMPLE_FEATURES),  # no spectrum
])
def test_what_the_spectrum_already_holds_loses_no_digits_under_a_large_dc_offset(
        n: int, features: tuple[FeatureDef, ...]) -> None:
    """An accelerometer reads 1 g of gravity under 0.01 g of vibration. The extraction takes the mean from the
    transform's DC bin and the sum of squares from the band powers (Parseval), sums each band from its own
    segments of the spectrum, and centres the samples for m2 and m4: every feature stays within 1e-11 of the
    direct formulas, far inside the float32 rounding the parity allows, at whatever offset."""
    frames = (1.0 + 0.01 * _run_frames()[:12, :n]).astype(np.float32)
    spec = FeatureSpec(FS, n, SPEC.channels, features)
    ref = reference_extract(frames, spec)
    np.testing.assert_allclose(extract(frames, spec), ref, rtol=1e-11, atol=1e-12)
    buf = FeatureBuffers()
    for i in (0, 7):
        np.testing.assert_allclose(extract_spectra(frames[i:i + 1], spec, buf)[0], ref[i:i + 1], rtol=1e-11,
                                   atol=1e-12)


def test_the_shared_spectrum_is_the_frames_rfft() -> None:
    frames = _run_frames()[:3]
    feats, spectra = extract_spectra(frames, SPEC)
    assert spectra is not None
    np.testing.assert_allclose(spectra, np.fft.rfft(frames.transpose(0, 2, 1).astype(np.float64), axis=-1),
                               rtol=1e-12, atol=1e-9)
    assert extract_spectra(frames, FeatureSpec(FS, N, SPEC.channels, (FeatureDef("rms"),)))[1] is None


@pytest.mark.parametrize("statistic", ["energy", "peak"])
def test_lazy_diagnosis_equals_the_envelope_of_every_frame(statistic: str) -> None:
    """The gateway measures the envelope only for the channels an alarm needs, at the raise over the window's
    frames: the window's mean equals the mean of every frame's envelope computed as before."""
    frames = _run_frames()
    spec = FeatureSpec(FS, N, SPEC.channels, (FeatureDef("band_energy"),))
    dg = Diagnosis(ENVELOPE["defects_hz"], (1500.0, 4500.0), 3, np.zeros((C, 4)), statistic=statistic)
    every = reference_extract(frames, FeatureSpec(FS, N, spec.channels, (FeatureDef("envelope", dg.feature()),)))
    every = every.reshape(len(frames), C, 4)
    np.testing.assert_allclose(envelope_energies(frames, spec, dg), every, rtol=2.4e-7, atol=1e-9)
    ring = EnvelopeWindow(spec, dg, length=5)
    buf = FeatureBuffers()
    for i in range(len(frames)):
        ring.release()
        _, spectra = extract_spectra(frames[i:i + 1], spec, buf)
        ring.push(frames[i], spectra[0] if spectra is not None and i % 2 else None)  # both ways to the envelope
        if i in (3, 20, 30, len(frames) - 1):
            got = ring.mean([0, 2])
            want = every[max(0, i - 4): i + 1].mean(axis=0)
            np.testing.assert_allclose(got[[0, 2]], want[[0, 2]], rtol=1e-6, atol=1e-9)
            assert np.isnan(got[[1, 3]]).all()  # never measured: no alarm asked for them
            np.testing.assert_allclose(ring.last(), every[i], rtol=2.4e-7, atol=1e-9)
    ring.clear()
    ring.push(frames[0], None)
    np.testing.assert_allclose(ring.mean([1])[1], every[0, 1], rtol=2.4e-7, atol=1e-9)
    assert ring.measured < len(frames) * C // 2  # most frames of most channels were never demodulated


def test_a_healthy_window_asks_for_no_envelope_and_an_alarm_only_for_its_channel() -> None:
    dg = Diagnosis(ENVELOPE["defects_hz"], (1500.0, 4500.0), 3, np.zeros((C, 4)))
    state = DiagnosisState(dg)
    asked: list[list[int]] = []

    def energies(channels: list[int]) -> np.ndarray:
        asked.append(list(channels))
        e = np.full((C, 4), np.nan)
        e[channels] = np.log10([1.1, 1.0, 1.05, 1.0])  # nothing stands out: the alarm stays open
        return e

    healthy = SimpleNamespace(raised=(), active=())
    assert state.update(healthy, energies) == ({}, {}) and asked == []
    at_raise, _ = state.update(SimpleNamespace(raised=(2,), active=(2,)), energies)
    assert asked == [[2]] and at_raise[2]["defect"] is None
    state.update(SimpleNamespace(raised=(), active=(2,)), energies)  # open: diagnosed again on the next window
    assert asked == [[2], [2]]
    state.update(SimpleNamespace(raised=(), active=()), energies)  # cleared: nothing more
    state.update(healthy, energies)
    assert asked == [[2], [2]]
