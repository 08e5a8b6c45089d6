"""Fit the product's decision layer (agent/events.py) on the healthy period: floors, PCA residual, own
deviation, step sizes and the healthy envelope energies for diagnosis. Plain numbers out, numpy only."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from vibrawatch.agent.decide import reconstruction_scores
from vibrawatch.agent.events import (
    FLOOR_FEATURES,
    Diagnosis,
    EventRule,
    Floor,
    OwnDeviation,
    PcaResidual,
    envelope_energies,
    floor_values,
)
from vibrawatch.agent.features import FeatureSpec
from vibrawatch.agent.frames import iter_frames
from vibrawatch.agent.recording import FeatureTable, Recording
from vibrawatch.agent.simulate import BearingGeometry
from vibrawatch.agent.threshold import ThresholdRule, fit_channel_thresholds, fit_threshold

from .config import DiagnosisConfig, ProductConfig

MIN_STEP = math.log(1.2)  # no level change below 20% is ever called a step


def frame_floor_values(data: Recording | FeatureTable, spec: FeatureSpec) -> np.ndarray:
    """Floor values of every frame of the run, (n_frames, K, C), in the order ``featurize`` gives frames."""
    if isinstance(data, FeatureTable):
        return floor_values(data.values, spec)
    return np.concatenate([floor_values(b.frames, spec) for b in iter_frames(data, spec.frame_length, 32)])


def frame_energies(data: Recording, spec: FeatureSpec, diagnosis: Diagnosis) -> np.ndarray:
    """Envelope energies of every frame, (n_frames, C, D)."""
    return np.concatenate([envelope_energies(b.frames, spec, diagnosis)
                           for b in iter_frames(data, spec.frame_length, 16)])


def step_sizes(log_level: np.ndarray, history: int) -> np.ndarray:
    """(n, C) healthy log levels per window -> (C,) the smallest jump called a step: 1.5x any healthy jump."""
    if len(log_level) <= history:
        return np.full(log_level.shape[1], MIN_STEP * 2)
    base = np.stack([np.median(log_level[i - history:i], axis=0) for i in range(history, len(log_level))])
    jumps = log_level[history:] - base
    return np.maximum(MIN_STEP, 1.5 * jumps.max(axis=0))


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
                     float(cfg.margin), str(cfg.statistic))


def fit_product(
    data: Recording | FeatureTable,
    spec: FeatureSpec,
    frames_scaled: np.ndarray,
    x_windows: np.ndarray,
    end_frames: np.ndarray,
    healthy: np.ndarray,
    rule: ThresholdRule,
    cfg: ProductConfig,
    diagnosis: DiagnosisConfig,
) -> dict[str, object]:
    """The Detector's floor, pca, own, events (and diagnosis) parts, fitted on the healthy windows only."""
    n_ch = len(spec.channels)
    last_healthy = int(end_frames[healthy][-1]) + 1
    fv = frame_floor_values(data, spec)
    hv = fv[:last_healthy]
    thresholds = np.stack([fit_channel_thresholds(hv[:, k, :], rule) for k in range(hv.shape[1])])
    median = np.median(hv, axis=0)
    names = ("value",) if spec.input == "table" else FLOOR_FEATURES
    log_lv = np.log(np.maximum(np.abs(fv[end_frames][healthy, 0, :]), 1e-12) / np.maximum(np.abs(median[0]), 1e-12))
    floor = Floor(names, np.maximum(thresholds, 1e-12), median, step_sizes(log_lv, cfg.history))

    # Axes from the first 80% of the healthy frames, thresholds from every healthy window: residuals of frames
    # the axes were fitted on are optimistic, and a threshold on them alone alarms on the next healthy day.
    mean, axes = fit_pca(frames_scaled[: max(2, int(0.8 * last_healthy))], cfg.pca_variance)
    pca = PcaResidual(mean, axes, 1.0, np.ones(n_ch))
    xh = x_windows[healthy].astype(np.float64)
    ps, pc = reconstruction_scores(xh, pca.reconstruct(xh), n_ch)
    pca = PcaResidual(mean, axes, max(fit_threshold(ps, rule), 1e-12),
                      np.maximum(fit_channel_thresholds(pc, rule), 1e-12))

    means = xh.mean(axis=1)
    center = np.median(means, axis=0)
    spread = np.maximum(np.abs(means - center).max(axis=0), 1e-6)
    parts: dict[str, object] = {
        "floor": floor, "pca": pca, "own": OwnDeviation(center, spread),
        "events": EventRule(cfg.transient_s, cfg.relaxed, cfg.grows, cfg.history, cfg.share),
    }
    if diagnosis.enabled and isinstance(data, Recording):
        dg = diagnosis_from_config(diagnosis, spec.fs_hz, spec.frame_length, n_ch)
        energies = frame_energies(data, spec, dg)[:last_healthy]
        parts["diagnosis"] = replace(dg, healthy=np.median(energies, axis=0))
    return parts
