"""Fit the product's decision layer (agent/detect/measures.py, events.py, diagnosis.py) on the healthy period:
floors, PCA residual, own deviation, step sizes and the healthy envelope energies for diagnosis. Plain numbers
out, numpy only.

The healthy statistics are fitted by ``vibrawatch.agent.detect.healthy.fit``, the function a gateway's commissioning
calls on its own machine's windows; here only the parts that belong to the model (the PCA's axes, the defect
frequencies) and the whole run's per-frame values are computed."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import numpy as np

from vibrawatch.agent.detect.detector import Detector
from vibrawatch.agent.detect.diagnosis import Diagnosis, envelope_energies, resolution_line
from vibrawatch.agent.detect.events import EventRule
from vibrawatch.agent.detect.features import FeatureSpec
from vibrawatch.agent.detect.frames import iter_frames
from vibrawatch.agent.detect.healthy import fit, window_evidence
from vibrawatch.agent.detect.measures import FLOOR_FEATURES, Floor, OwnDeviation, PcaResidual, floor_values
from vibrawatch.agent.detect.recording import FeatureTable, Recording
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.sources.simulate import BearingGeometry

from .config import DiagnosisConfig, ProductConfig
from .sensor_layout import bearing_indices, directions_by_name


def frame_floor_values(data: Recording | FeatureTable, spec: FeatureSpec) -> np.ndarray:
    """Floor values of every frame of the run, (n_frames, K, C), in the order ``featurize`` gives frames."""
    if isinstance(data, FeatureTable):
        return floor_values(data.values, spec)
    return np.concatenate([floor_values(b.frames, spec) for b in iter_frames(data, spec.frame_length, 32)])


def frame_energies(data: Recording, spec: FeatureSpec, diagnosis: Diagnosis) -> np.ndarray:
    """Envelope energies of every frame, (n_frames, C, D)."""
    return np.concatenate([envelope_energies(b.frames, spec, diagnosis)
                           for b in iter_frames(data, spec.frame_length, 16)])


def fit_pca(frames_scaled: np.ndarray, variance: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the principal axes keeping ``variance`` of the healthy frames' variance (as scikit-learn's
    PCA(n_components=variance) chooses them), but never every axis: with as many axes as features (the IMS
    table's 4 columns need all 4 for 95%) the reconstruction is exact and the residual is rounding error."""
    mean = frames_scaled.mean(axis=0)
    _, s, vt = np.linalg.svd(frames_scaled - mean, full_matrices=False)
    var = s**2
    share = np.cumsum(var) / max(var.sum(), 1e-300)
    k = int(np.searchsorted(share, variance) + 1)
    return mean, vt[: max(1, min(k, len(vt), frames_scaled.shape[1] - 1))]


def pca_weights(frames_scaled: np.ndarray, mean: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Each feature's mean |residual| over the healthy frames (F,): the unit its residual is counted in, so a
    feature the axes reconstruct badly even when healthy does not drown a quiet one's rise. At least 1% of the
    median feature's: one that never moved would otherwise count any rounding as a fault."""
    centred = frames_scaled - mean
    w = np.abs(centred - (centred @ axes.T) @ axes).mean(axis=0)
    return np.maximum(w, 0.01 * max(float(np.median(w)), 1e-12))


def diagnosis_from_config(cfg: DiagnosisConfig, fs_hz: float, frame_length: int, n_channels: int) -> Diagnosis:
    """Defect frequencies from the geometry and speed, with a placeholder healthy level (fitted later)."""
    shaft = cfg.shaft_hz or (cfg.rpm or 0.0) / 60.0
    geo = BearingGeometry(int(cfg.n_balls or 0), float(cfg.ball_diameter or 0), float(cfg.pitch_diameter or 0),
                          float(cfg.contact_angle_deg))
    defects = geo.defect_frequencies(shaft)
    nyq = fs_hz / 2.0
    band = tuple(cfg.band_hz) if cfg.band_hz else (0.2 * nyq, 0.8 * nyq)
    return Diagnosis({k: round(float(v), 4) for k, v in defects.items()}, (float(band[0]), float(band[1])),
                     int(cfg.harmonics), np.zeros((n_channels, len(defects))), float(cfg.min_ratio),
                     float(cfg.margin), str(cfg.statistic), own_lines=bool(cfg.own_lines))


def fit_product(
    data: Recording | FeatureTable,
    base: Detector,
    frames_scaled: np.ndarray,
    x_windows: np.ndarray,
    end_frames: np.ndarray,
    end_times: np.ndarray,
    scores: np.ndarray,
    contributions: np.ndarray,
    healthy: np.ndarray,
    cfg: ProductConfig,
    diagnosis: DiagnosisConfig,
    floors: np.ndarray | None = None,
) -> Detector:
    """``base`` (the autoencoder's detector) with the floor, pca, own, events (and diagnosis) parts, every healthy
    statistic fitted on the healthy windows by ``vibrawatch.agent.detect.healthy.fit``, as a gateway's commissioning
    refits them on its own machine. Floors and diagnosis energies are read on the healthy windows' last frames
    (``floors``: those floor values when the caller has them already)."""
    spec = base.spec
    n_ch = len(spec.channels)
    last_healthy = int(end_frames[healthy][-1]) + 1
    ends = end_frames[healthy]
    names = ("value",) if spec.input == "table" else FLOOR_FEATURES
    k = len(names)
    bearings = bearing_indices(cfg.same_bearing, spec.channels)
    if cfg.same_bearing is None:
        for group in directions_by_name(spec.channels):
            print(f"note: channels {' and '.join(group)} are read as directions of one bearing (their names differ "
                  "only by a direction word); [product] same_bearing = [] keeps them apart", file=sys.stderr)
    parts: dict[str, Any] = {
        "floor": Floor(names, np.ones((k, n_ch)), np.ones((k, n_ch)), np.ones(n_ch)),
        "own": OwnDeviation(np.zeros(spec.n_features), np.ones(spec.n_features)),
        "events": EventRule(cfg.transient_s, cfg.relaxed, cfg.grows, cfg.history, cfg.share, cfg.absolute,
                            bearings),
    }
    if cfg.pca:
        # Axes from the first 80% of the healthy frames (they are the model's; commissioning keeps them);
        # thresholds from every healthy window: residuals of frames the axes were fitted on are optimistic.
        mean, axes = fit_pca(frames_scaled[: max(2, int(0.8 * last_healthy))], cfg.pca_variance)
        parts["pca"] = PcaResidual(mean, axes, 1.0, np.ones(n_ch), pca_weights(frames_scaled[:last_healthy], mean,
                                                                                axes))
    if cfg.absolute is not None and len(cfg.absolute) != n_ch:
        raise ConfigError(f"[product] absolute: {len(cfg.absolute)} levels, expected one per channel "
                          f"({', '.join(spec.channels)})")
    energies = None
    if diagnosis.enabled and isinstance(data, Recording):
        dg = diagnosis_from_config(diagnosis, spec.fs_hz, spec.frame_length, n_ch)
        if (coarse := resolution_line(dg.defects_hz, spec.fs_hz, spec.frame_length)) is not None:
            print(f"warning: {coarse}", file=sys.stderr)
        parts["diagnosis"] = dg
        energies = frame_energies(data, spec, dg)[ends]
    d = replace(base, **parts)
    ev = window_evidence(d, end_times[healthy], x_windows[healthy], scores[healthy], contributions[healthy],
                         frame_floor_values(data, spec)[ends] if floors is None else floors, energies)
    return fit(d, ev)
