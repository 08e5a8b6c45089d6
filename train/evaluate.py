"""``vibrawatch evaluate``: replay a run through the trained detector and its baselines, report lead time.

Definitions (the README repeats them):
- an *alarm* is an episode raised by the alarm rule (k consecutive windows above threshold);
- an alarm is *correct* when the channel it names is one of ``--failed`` (any channel if none given);
- ``first_alarm`` / ``lead_hours``: the first correct alarm, and its distance to the failure time
  (``--failure-at``, default the last snapshot);
- ``false_alarms``: alarms raised before the failure time that are not correct (before the first correct
  one, or naming a channel that did not fail);
- every baseline is computed from the same data, healthy period, threshold method and alarm rule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vibrawatch.agent.detect.decide import AlarmRule, Decision, reconstruction_scores, run_alarms
from vibrawatch.agent.detect.diagnosis import DiagnosisState
from vibrawatch.agent.detect.events import EventRule, run_events
from vibrawatch.agent.detect.features import FeatureDef, FeatureSpec, extract
from vibrawatch.agent.detect.frames import iter_frames
from vibrawatch.agent.detect.healthy import event_inputs, window_evidence
from vibrawatch.agent.detect.recording import FeatureTable, Recording
from vibrawatch.agent.detect.scale import MinMaxScaling
from vibrawatch.agent.detect.threshold import ThresholdRule, fit_channel_thresholds, fit_threshold
from vibrawatch.agent.detect.window import sliding_windows
from vibrawatch.agent.errors import ConfigError

from .cwru import load
from .dataset import featurize, format_time, healthy_end_time, make_windows, parse_time
from .naming import data_stem
from .run import Run, score


@dataclass(frozen=True)
class Detection:
    """One detector's view of a run: a score per step and the alarm decisions on it."""

    times: np.ndarray
    scores: np.ndarray
    decisions: list[Decision]
    threshold: float

    def alarm_levels(self) -> np.ndarray:
        """The level each decision was taken on (1 = at a threshold), for the plots."""
        return np.array([d.level for d in self.decisions])


def check_data(run: Run, data: Recording | FeatureTable) -> None:
    """Refuse data the run cannot score, saying what differs."""
    spec = run.detector.spec
    if isinstance(data, FeatureTable):
        if spec.input != "table" or len(data.columns) != len(spec.channels):
            raise ConfigError(
                f"{data.source}: a feature table with {len(data.columns)} columns; the run expects "
                f"{'raw samples' if spec.input == 'samples' else len(spec.channels)} ({', '.join(spec.channels)})"
            )
        return
    if spec.input != "samples":
        raise ConfigError(f"{data.source}: raw samples, but the run was trained on a feature table")
    if data.n_channels != len(spec.channels):
        raise ConfigError(
            f"{data.source}: {data.n_channels} channels, the run expects {len(spec.channels)} "
            f"({', '.join(spec.channels)})"
        )
    if abs(data.fs_hz - spec.fs_hz) > 1e-6 * spec.fs_hz:
        raise ConfigError(f"{data.source}: sampled at {data.fs_hz:g} Hz, the run expects {spec.fs_hz:g} Hz")
    if data.data.shape[1] < spec.frame_length:
        raise ConfigError(
            f"{data.source}: snapshots of {data.data.shape[1]} samples, shorter than a frame ({spec.frame_length})"
        )


def episodes(decisions: Sequence[Decision]) -> list[tuple[int, int | None, int]]:
    """(raised index, cleared index or None, channel named when raised)."""
    out: list[list[Any]] = []
    for i, d in enumerate(decisions):
        if d.event == "raised":
            out.append([i, None, d.channel])
        elif d.event == "cleared" and out:
            out[-1][1] = i
    return [tuple(e) for e in out]  # type: ignore[misc]


def summarize(
    det: Detection,
    channels: Sequence[str],
    failure_t: float,
    failed: Sequence[int],
    relative: bool,
    named: Sequence[tuple[int, ...]] | None = None,
    onset_t: float | None = None,
) -> dict[str, Any]:
    """The report fields of one detector. With ``named`` (the channels each window's alarm names), an alarm is
    correct only when every channel it names failed; with ``onset_t`` (labelled data: the simulators), an
    alarm before the fault existed is false whatever it names."""
    eps = [e for e in episodes(det.decisions) if det.times[e[0]] <= failure_t]

    def correct(e: tuple[int, int | None, int]) -> bool:
        if onset_t is not None and det.times[e[0]] < onset_t:
            return False
        if named is not None and failed:
            return bool(named[e[0]]) and all(c in failed for c in named[e[0]])
        return not failed or e[2] < 0 or e[2] in failed

    first = next((e for e in eps if correct(e)), None)
    false = [e for e in eps if not correct(e) or (first is not None and e[0] < first[0])]
    t_first = float(det.times[first[0]]) if first else None
    return {
        "first_alarm": format_time(t_first, relative) if first else None,
        "first_alarm_s": t_first,
        "first_alarm_index": first[0] if first else None,
        "lead_hours": round((failure_t - t_first) / 3600.0, 3) if first else None,
        "alarm_channel": (channels[first[2]] if first[2] >= 0 else None) if first else None,
        "false_alarms": len(false),
        "false_alarm_times": [format_time(float(det.times[e[0]]), relative) for e in false],
        "alarms_before_failure": len(eps),
        "threshold": det.threshold,
    }


def _per_channel_series_alarms(
    values: np.ndarray,
    times: np.ndarray,
    healthy: np.ndarray,
    tcfg: ThresholdRule,
    rule: AlarmRule,
) -> Detection:
    """Per-channel thresholds on a raw feature (n, C): the simple floor every model must beat."""
    thr = fit_channel_thresholds(values[healthy], tcfg)
    ratio = values / thr[None, :]
    # Each channel has its own alarm state; the detector alarms with the first channel that does.
    per = [run_alarms(values[:, c], float(thr[c]), rule) for c in range(values.shape[1])]
    decisions = []
    active_any = False
    for i in range(len(values)):
        raised = [c for c in range(values.shape[1]) if per[c][i].event == "raised"]
        any_active = any(per[c][i].active for c in range(values.shape[1]))
        lv = float(ratio[i].max())
        if raised and not active_any:
            decisions.append(Decision(True, True, "raised", raised[int(np.argmax(ratio[i, raised]))], lv))
        elif active_any and not any_active:
            decisions.append(Decision(False, False, "cleared", -1, lv))
        else:
            decisions.append(Decision(bool(np.any(ratio[i] > 1)), any_active, None, -1, lv))
        active_any = any_active
    return Detection(times, ratio.max(axis=1), decisions, 1.0)


def evaluate_run(
    run_dir: str,
    data_path: str,
    failure_at: str | None = None,
    failed: Sequence[str] = (),
    normal_data: str | None = None,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Score ``data_path`` with the run and the baselines; return the report (see module docstring)."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import MinMaxScaler

    run = Run.open(run_dir)
    data = load(data_path)
    check_data(run, data)
    spec = run.detector.spec
    channels = list(spec.channels)
    lower = [c.lower() for c in channels]
    failed_idx = []
    for name in failed:
        if name.lower() not in lower:
            raise ConfigError(f"--failed {name!r}: no such channel; channels are {', '.join(channels)}")
        failed_idx.append(lower.index(name.lower()))

    ff = featurize(data, spec, progress=progress)
    wins = make_windows(ff, run.detector.window, run.detector.hop)
    x = run.detector.scaler.transform(wins.x).astype(np.float32)
    model = run.keras_model()
    scores, contrib = score(model, x, len(channels))
    d = run.detector
    T, hop = d.window, d.hop
    decisions = run_alarms(scores, d.threshold, d.rule, contrib, d.channel_thresholds)
    relative = ff.relative_time
    # Default failure time: the end of the data (the last frame of one long stream, the last snapshot of many).
    t_fail = parse_time(failure_at, relative) if failure_at else float(max(data.timestamps[-1], ff.times[-1]))
    ae = Detection(wins.end_times, scores, decisions, run.detector.threshold)
    onset_t = None
    if isinstance(data, Recording) and data.labels is not None and normal_data is None:
        faulty = np.flatnonzero(np.asarray(data.labels)[ff.snapshot[wins.end_frames]] > 0)
        onset_t = float(wins.end_times[faulty[0]]) if faulty.size else None
    ae_report = summarize(ae, channels, t_fail, failed_idx, relative, onset_t=onset_t)
    product, product_report = ae, ae_report
    if d.combined:
        product, product_report = _product(run, data, ff, wins, x, scores, contrib, channels, t_fail, failed_idx,
                                           relative, onset_t)
    report: dict[str, Any] = {
        "data": str(data_path),
        "run": str(run_dir),
        "windows": len(scores),
        "failure_at": format_time(t_fail, relative),
        "failed": [channels[i] for i in failed_idx],
        "detector": "combined" if d.combined else "autoencoder",
        **product_report,
    }
    per_channel = {}
    for c, name in enumerate(channels):
        dc = run_alarms(contrib[:, c], float(run.detector.channel_thresholds[c]), run.detector.rule)
        first = next((i for i, d in enumerate(dc) if d.event == "raised"), None)
        per_channel[name] = {
            "first_alarm": format_time(float(wins.end_times[first]), relative) if first is not None else None,
            "hours_before_failure": round((t_fail - float(wins.end_times[first])) / 3600.0, 3)
            if first is not None
            else None,
        }
    report["per_channel"] = per_channel

    # Labels for AUC: the data's own (simulators), or a known-healthy second data set.
    labels = None
    all_scores = scores
    if isinstance(data, Recording) and data.labels is not None:
        labels = np.asarray(data.labels)[ff.snapshot[wins.end_frames]].astype(int)
    if normal_data is not None:
        nd = load(normal_data)
        check_data(run, nd)
        nff = featurize(nd, spec, progress=progress)
        nw = make_windows(nff, run.detector.window, run.detector.hop)
        n_scores, _ = score(model, run.detector.scaler.transform(nw.x).astype(np.float32), len(channels))
        labels = np.concatenate([np.zeros(len(n_scores), int), np.ones(len(scores), int) if labels is None else labels])
        all_scores = np.concatenate([n_scores, scores])
        report["normal_data"] = str(normal_data)
    if labels is not None and 0 < labels.sum() < len(labels):
        report["auc"] = round(float(roc_auc_score(labels, all_scores)), 4)
        report["auc_windows"] = {"healthy": int((labels == 0).sum()), "faulty": int(labels.sum())}
    else:
        report["auc"] = None

    # Baselines, from the same data and the same healthy period as the run.
    tcfg = run.detector.threshold_rule
    baselines: dict[str, Any] = {}
    t_healthy = None
    if normal_data is not None:
        # The baselines learn 'healthy' from the evaluated run's own healthy period; here that run is faulty.
        report["baselines"] = {"skipped": "with --normal-data the evaluated data has no healthy period to fit on"}
    else:
        try:
            t_healthy = healthy_end_time(run.meta["training"]["healthy_until"], ff.times, relative)
        except ConfigError as e:
            report["baselines"] = {"skipped": str(e)}
    if t_healthy is not None:
        if d.combined:
            baselines["autoencoder"] = ae_report
        h_frames = ff.times <= t_healthy
        h_windows = wins.end_times <= t_healthy
        simple = _simple_features(data, spec, progress)
        for name, vals in simple.items():
            det = _per_channel_series_alarms(vals, ff.times, h_frames, tcfg, run.detector.rule)
            baselines[name] = summarize(det, channels, t_fail, failed_idx, relative, onset_t=onset_t)
        seed = int(run.meta["training"]["config"]["model"]["seed"])
        # The baselines keep min-max scaling (as training fits it) whatever the product's scaler is, so a product
        # variant is compared with the same baselines.
        mm = run.detector.scaler
        if not isinstance(mm, MinMaxScaling):
            sk = MinMaxScaler().fit(ff.values[: int(wins.end_frames[h_windows][-1]) + 1])
            mm = MinMaxScaling(sk.scale_, sk.min_, sk.data_min_, sk.data_max_)
        flat = mm.transform(wins.x).astype(np.float32).reshape(len(x), -1)
        iso = IsolationForest(n_estimators=200, random_state=seed).fit(flat[h_windows])
        iso_scores = -iso.score_samples(flat)
        thr = fit_threshold(iso_scores[h_windows], tcfg)
        det = Detection(wins.end_times, iso_scores, run_alarms(iso_scores, thr, run.detector.rule), thr)
        baselines["isolation_forest"] = summarize(det, channels, t_fail, failed_idx, relative, onset_t=onset_t)
        frames_scaled = mm.transform(ff.values)
        pca = PCA(n_components=0.95, random_state=seed).fit(frames_scaled[h_frames])
        if pca.n_components_ >= frames_scaled.shape[1] > 1:
            # every axis kept (a table of a few columns): the reconstruction is exact and its residual only
            # rounding error, which grows with the values; one axis fewer leaves a residual to score
            pca = PCA(n_components=frames_scaled.shape[1] - 1, random_state=seed).fit(frames_scaled[h_frames])
        recon = pca.inverse_transform(pca.transform(frames_scaled))
        p_scores, p_contrib = reconstruction_scores(
            sliding_windows(frames_scaled, T, hop), sliding_windows(recon, T, hop),
            len(channels),
        )
        thr = fit_threshold(p_scores[h_windows], tcfg)
        cthr = fit_channel_thresholds(p_contrib[h_windows], tcfg)
        det = Detection(wins.end_times, p_scores, run_alarms(p_scores, thr, run.detector.rule, p_contrib, cthr), thr)
        pca_report = summarize(det, channels, t_fail, failed_idx, relative, onset_t=onset_t)
        baselines["pca"] = {**pca_report, "components": int(pca.n_components_)}
        report["baselines"] = baselines
    if plots:
        from . import plots as p

        p.evaluation_plots(run.path, data, spec, product, report, relative, t_healthy)
    (run.path / f"evaluation_{data_stem(data_path)}.json").write_text(json.dumps(report, indent=2))
    return report


def _product(
    run: Run, data: Recording | FeatureTable, ff: Any, wins: Any, x: np.ndarray, scores: np.ndarray,
    contrib: np.ndarray, channels: Sequence[str], t_fail: float, failed_idx: Sequence[int], relative: bool,
    onset_t: float | None = None,
) -> tuple[Detection, dict[str, Any]]:
    """The combined detector over the run (agent/detect/events.py's batch twin) and its report fields, with the
    transients, condition changes and the diagnosis of every alarm."""
    from .product import frame_energies, frame_floor_values

    d = run.detector
    assert d.floor is not None
    fv = frame_floor_values(data, d.spec)[wins.end_frames]
    *inputs, blame = event_inputs(d, window_evidence(d, wins.end_times, x, scores, contrib, fv))
    verdicts = run_events(wins.end_times, *inputs, d.events or EventRule(), d.rule, d.floor.step, blame)
    decisions = [Decision(v.above, bool(v.active), v.event, v.channel, v.level) for v in verdicts]
    det = Detection(wins.end_times, np.array([v.level for v in verdicts]), decisions, 1.0)
    out = summarize(det, channels, t_fail, failed_idx, relative, named=[v.raised for v in verdicts], onset_t=onset_t)
    energies = None
    if d.diagnosis is not None and isinstance(data, Recording):
        energies = frame_energies(data, d.spec, d.diagnosis)
    alarms: list[dict[str, Any]] = []
    open_alarm: dict[int, dict[str, Any]] = {}
    dstate = DiagnosisState(d.diagnosis) if energies is not None and d.diagnosis is not None else None
    for i, v in enumerate(verdicts):
        at_raise: dict[int, dict[str, Any]] = {}
        found: dict[int, dict[str, Any]] = {}
        if dstate is not None and energies is not None:
            e = int(wins.end_frames[i])
            at_raise, found = dstate.update(v, energies[e - d.window + 1: e + 1].mean(axis=0))
        for c, dg in found.items():
            if c in open_alarm:
                open_alarm[c]["diagnosed"] = {"at": format_time(float(wins.end_times[i]), relative), **dg}
        for c in v.raised:
            a: dict[str, Any] = {"at": format_time(float(wins.end_times[i]), relative), "channel": channels[c]}
            if c in at_raise:
                a["diagnosis"] = at_raise[c]
                if at_raise[c]["defect"] is not None:
                    a["diagnosed"] = {"at": a["at"], **at_raise[c]}
            alarms.append(a)
            open_alarm[c] = a
    first = out.get("first_alarm_index")
    out["alarm_channels"] = [channels[c] for c in verdicts[first].raised] if first is not None else None
    first_alarm = next((a for a in alarms if a["at"] == out["first_alarm"] and a["channel"] in
                        (out["alarm_channels"] or [])), None)
    out["diagnosis"] = first_alarm.get("diagnosis") if first_alarm else None
    out["diagnosed"] = first_alarm.get("diagnosed") if first_alarm else None
    out["alarms"] = alarms
    out["transients"] = [{"at": format_time(e.t, relative), "channel": channels[e.channels[0]],
                          "ratio": round(e.ratio[0], 3), "relaxed_by": format_time(float(e.until or e.t), relative)}
                         for v in verdicts for e in v.events if e.kind == "transient"]
    out["condition_changes"] = [{"at": format_time(e.t, relative), "ratios": [round(r, 3) for r in e.ratio]}
                                for v in verdicts for e in v.events if e.kind == "condition_change"]
    return det, out


def _simple_features(data: Recording | FeatureTable, spec: FeatureSpec, progress: bool) -> dict[str, np.ndarray]:
    """Per-frame RMS and mean |x| per channel (or the table's own values) for the floor baselines."""
    if isinstance(data, FeatureTable):
        return {"table_value": data.values.astype(np.float64)}
    out: dict[str, list[np.ndarray]] = {"rms": [], "mean_abs": []}
    for name in out:
        s = FeatureSpec(spec.fs_hz, spec.frame_length, spec.channels, (FeatureDef(name),))
        for b in iter_frames(data, spec.frame_length, batch_snapshots=32):
            out[name].append(extract(b.frames, s))
    return {k: np.concatenate(v) for k, v in out.items()}
