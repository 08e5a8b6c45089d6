"""The baselines `vibrawatch evaluate` scores beside the product: per-channel level floors, IsolationForest and a
PCA residual, each fitted on the same healthy part of the data with the run's threshold method and alarm rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vibrawatch.agent.detect.decide import AlarmRule, reconstruction_scores, run_alarms
from vibrawatch.agent.detect.episodes import from_active
from vibrawatch.agent.detect.features import FeatureDef, FeatureSpec, extract
from vibrawatch.agent.detect.frames import iter_frames
from vibrawatch.agent.detect.recording import FeatureTable, Recording
from vibrawatch.agent.detect.scale import MinMaxScaling
from vibrawatch.agent.detect.threshold import ThresholdRule, fit_channel_thresholds, fit_threshold
from vibrawatch.agent.detect.window import sliding_windows

from .outside import outside_baselines
from .run import Run
from .scoring import Detection, abs_if_signed, single_detection


def floor_detection(values: np.ndarray, times: np.ndarray, healthy: np.ndarray, tcfg: ThresholdRule,
                    rule: AlarmRule) -> Detection:
    """Per-channel thresholds on a raw feature (n, C), each channel its own alarm: the floor every model must
    beat. A signed column is read as its |deviation from the healthy median| (``abs_if_signed``)."""
    v = abs_if_signed(values, healthy)
    thr = np.maximum(fit_channel_thresholds(v[healthy], tcfg), 1e-12)
    active = np.column_stack([[d.active for d in run_alarms(v[:, c], float(thr[c]), rule)]
                              for c in range(v.shape[1])])
    return Detection(times, (v / thr[None, :]).max(axis=1), from_active(times, active), 1.0)


def simple_features(data: Recording | FeatureTable, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Per-frame RMS and mean |x| per channel (or the table's own values) for the floor baselines."""
    if isinstance(data, FeatureTable):
        return {"table_value": data.values.astype(np.float64)}
    out: dict[str, list[np.ndarray]] = {"rms": [], "mean_abs": []}
    for name in out:
        s = FeatureSpec(spec.fs_hz, spec.frame_length, spec.channels, (FeatureDef(name),))
        for b in iter_frames(data, spec.frame_length, batch_snapshots=32):
            out[name].append(extract(b.frames, s))
    return {k: np.concatenate(v) for k, v in out.items()}


def baselines(run: Run, data: Recording | FeatureTable, ff: Any, wins: Any, t_healthy: float,
              outside: Sequence[str] = ()) -> dict[str, tuple[Detection, dict[str, Any]]]:
    """Every baseline's detection on the run (and any extra report fields), fitted on frames up to ``t_healthy``;
    ``outside`` names PyOD detectors (train/outside.py) to run on IsolationForest's windows too."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import MinMaxScaler

    d = run.detector
    tcfg, rule, n_ch = d.threshold_rule, d.rule, len(d.spec.channels)
    h_frames = ff.times <= t_healthy
    h_windows = wins.end_times <= t_healthy
    out: dict[str, tuple[Detection, dict[str, Any]]] = {}
    for name, vals in simple_features(data, d.spec).items():
        out[name] = (floor_detection(vals, ff.times, h_frames, tcfg, rule), {})
    seed = int(run.meta["training"]["config"]["model"]["seed"])
    # The baselines keep min-max scaling (as training fits it) whatever the product's scaler is, so a product
    # variant is compared with the same baselines.
    mm = d.scaler
    if not isinstance(mm, MinMaxScaling):
        sk = MinMaxScaler().fit(ff.values[: int(wins.end_frames[h_windows][-1]) + 1])
        mm = MinMaxScaling(sk.scale_, sk.min_, sk.data_min_, sk.data_max_)
    flat = mm.transform(wins.x).astype(np.float32).reshape(len(wins.x), -1)
    iso = IsolationForest(n_estimators=200, random_state=seed).fit(flat[h_windows])
    iso_scores = -iso.score_samples(flat)
    thr = fit_threshold(iso_scores[h_windows], tcfg)
    out["isolation_forest"] = (single_detection(wins.end_times, run_alarms(iso_scores, thr, rule), thr), {})
    frames_scaled = mm.transform(ff.values)
    pca = PCA(n_components=0.95, random_state=seed).fit(frames_scaled[h_frames])
    if pca.n_components_ >= frames_scaled.shape[1] > 1:
        # every axis kept (a table of a few columns): the reconstruction is exact and its residual only
        # rounding error, which grows with the values; one axis fewer leaves a residual to score
        pca = PCA(n_components=frames_scaled.shape[1] - 1, random_state=seed).fit(frames_scaled[h_frames])
    recon = pca.inverse_transform(pca.transform(frames_scaled))
    p_scores, p_contrib = reconstruction_scores(
        sliding_windows(frames_scaled, d.window, d.hop), sliding_windows(recon, d.window, d.hop), n_ch)
    thr = fit_threshold(p_scores[h_windows], tcfg)
    cthr = fit_channel_thresholds(p_contrib[h_windows], tcfg)
    det = single_detection(wins.end_times, run_alarms(p_scores, thr, rule, p_contrib, cthr), thr)
    out["pca"] = (det, {"components": int(pca.n_components_)})
    out.update(outside_baselines(outside, flat, wins.end_times, h_windows, tcfg, rule))
    return out
