"""``vibrawatch evaluate``: replay a run through the trained detector and its baselines, score their alarms.

Scoring (``vibrawatch.agent.detect.episodes``; docs/detection.md, "Scoring"), the same for every detector:
- an *episode* is one alarm on one channel, from the window that raised it to the one that cleared it;
- the *warning* is the first episode on a failed channel (``--failed``; any channel if none given) from which the
  detector stays in alarm on it until the failure (``--failure-at``, default the end of the data), gaps shorter
  than the merge time (the alarm rule's clear time) allowed; *lead* = failure - the warning's start;
- every other episode raised before the failure is a *nuisance alarm*, and so is every episode raised in the
  known-healthy part of the run: ``--healthy-until``, else the data's own labels (simulators), else the
  training's healthy period when the evaluated data is the training data;
- AUC of each detector's alarm level: the known-healthy part against the rest up to the failure (or the data's
  labels, or ``--normal-data``'s windows against the evaluated data's), ``auc_basis`` says which;
- every baseline is computed from the same data, the training's healthy period, threshold method and alarm rule;
  ``--baselines pyod`` adds the outside ones (PyOD's ECOD, COPOD, HBOS, LOF, KNN: train/outside.py).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vibrawatch.agent.detect.decide import run_alarms
from vibrawatch.agent.detect.diagnosis import DiagnosisState
from vibrawatch.agent.detect.episodes import Scoring, auc, cadence, format_time, from_active, merge_time
from vibrawatch.agent.detect.events import EventRule, Verdict, run_events
from vibrawatch.agent.detect.healthy import event_inputs, window_evidence
from vibrawatch.agent.detect.recording import FeatureTable, Recording
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.sources.loaders import detect_format

from .cwru import load
from .dataset import featurize, healthy_end_time, load_data, make_windows, parse_time
from .naming import data_stem
from .run import Run, score
from .scoring import Detection, RunFacts, detector_report, scoring_fields, single_detection


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


def _known_healthy(run: Run, data: Recording | FeatureTable, data_path: str, wins: Any, healthy_until: str | None,
                   normal_data: str | None, relative: bool) -> tuple[float | None, str | None]:
    """The end of the evaluated run's known-healthy part, and what says so."""
    if healthy_until is not None:
        return healthy_end_time(healthy_until, wins.end_times, relative), "--healthy-until"
    if isinstance(data, Recording) and data.labels is not None and normal_data is None:
        faulty = np.flatnonzero(window_labels(data, wins) > 0)
        if faulty.size and faulty[0] > 0:
            return float(wins.end_times[faulty[0] - 1]), "labels in the data"
        return None, None
    training = run.meta.get("training", {})
    same = Path(str(training.get("source", ""))).resolve() == Path(data_path).resolve()
    if same and normal_data is None and training.get("healthy_end_time") is not None:
        return float(training["healthy_end_time"]), "the training's healthy period (the same data)"
    return None, None


def check_failure_at(failure_at: str | None, t_fail: float, t_first: float, t_last: float, t_known: float | None,
                     healthy_from: str | None, relative: bool) -> None:
    """``--failure-at`` must fall within the scored windows and after the known-healthy part."""
    if failure_at is None:
        return
    if t_fail > t_last:
        last = format_time(t_last, relative)
        raise ConfigError(f"--failure-at {failure_at!r} is after the data's last time ({last}); name a time within "
                          "the data, or leave it out for the end of the data")
    if t_fail <= t_first:
        raise ConfigError(f"--failure-at {failure_at!r} is not after the first scored window "
                          f"({format_time(t_first, relative)})")
    if t_known is not None and t_fail <= t_known:
        raise ConfigError(f"--failure-at {failure_at!r} is within the known-healthy part of the run (up to "
                          f"{format_time(t_known, relative)}, from {healthy_from}); a failure comes after it")


def window_labels(data: Recording, wins: Any) -> np.ndarray:
    """The data's label (0 healthy, 1 faulty) of each window's last snapshot."""
    assert data.labels is not None
    snap = np.clip(np.searchsorted(data.timestamps, wins.end_times, "right") - 1, 0, None)
    return np.asarray(data.labels)[snap].astype(int)


def evaluate_run(
    run_dir: str,
    data_path: str,
    failure_at: str | None = None,
    failed: Sequence[str] = (),
    normal_data: str | None = None,
    progress: bool = True,
    plots: bool = True,
    healthy_until: str | None = None,
    time_column: str | None = None,
    outside: str | None = None,
) -> dict[str, Any]:
    """Score ``data_path`` with the run and the baselines; return the report (see module docstring). ``outside``:
    PyOD detectors to score too (``pyod`` or names, train/outside.py)."""
    from .outside import OWN, parse_outside, require_pyod

    outside_names = parse_outside(outside)
    if set(outside_names) - set(OWN):
        require_pyod()  # before the slow part: a missing extra is said at once
    run = Run.open(run_dir)
    data = load_data(data_path, _time_column(run, data_path, time_column))
    check_data(run, data)
    d = run.detector
    spec = d.spec
    channels = list(spec.channels)
    lower = [c.lower() for c in channels]
    failed_idx = []
    for name in failed:
        if name.lower() not in lower:
            raise ConfigError(f"--failed {name!r}: no such channel; channels are {', '.join(channels)}")
        failed_idx.append(lower.index(name.lower()))

    ff = featurize(data, spec, progress=progress)
    wins = make_windows(ff, d.window, d.hop)
    x = d.scaler.transform(wins.x).astype(np.float32)
    model = run.keras_model()
    scores, contrib = score(model, x, len(channels))
    relative = ff.relative_time
    # Default failure time: the end of the data (the last frame of one long stream, the last snapshot of many).
    t_last = float(max(data.timestamps[-1], ff.times[-1]))
    t_fail = parse_time(failure_at, relative) if failure_at else t_last
    t_known, healthy_from = _known_healthy(run, data, data_path, wins, healthy_until, normal_data, relative)
    check_failure_at(failure_at, t_fail, float(wins.end_times[0]), t_last, t_known, healthy_from, relative)
    step = max(cadence(wins.end_times), cadence(data.timestamps))
    scoring = Scoring(float(wins.end_times[0]), float(wins.end_times[-1]), len(channels),
                      merge_time(d.rule.clear_after, step), t_fail,
                      frozenset(failed_idx) if failed_idx else None, t_known)
    facts = RunFacts(scoring, channels, relative, auc_until=t_known)
    auc_basis = None if t_known is None else f"windows up to {format_time(t_known, relative)} ({healthy_from}) " \
        "against those after it up to the failure"
    labelled = isinstance(data, Recording) and data.labels is not None
    if labelled and normal_data is None:
        facts = RunFacts(scoring, channels, relative, label_t=data.timestamps, label_v=data.labels)
        auc_basis = "the data's labels: faulty windows against healthy ones"
    ae = single_detection(wins.end_times, run_alarms(scores, d.threshold, d.rule, contrib, d.channel_thresholds),
                          d.threshold)
    ae_report = detector_report(ae, facts)
    product, product_report = ae, ae_report
    verdicts = None
    if d.combined:
        verdicts = product_verdicts(run, data, wins, x, scores, contrib)
        product = product_detection(wins.end_times, verdicts)
        product_report = {**detector_report(product, facts), **product_extras(run, data, wins, verdicts,
                                                                               channels, relative)}
        product_report.update(_diagnosis_at_warning(product_report, verdicts, channels))
    report: dict[str, Any] = {
        "data": str(data_path),
        "run": str(run_dir),
        "windows": len(scores),
        "failure_at": format_time(t_fail, relative),
        "failed": [channels[i] for i in failed_idx],
        "detector": "combined" if d.combined else "autoencoder",
        "scoring": scoring_fields(facts, healthy_from, auc_basis),
        **product_report,
    }
    per_channel = {}
    for c, name in enumerate(channels):
        dc = run_alarms(contrib[:, c], float(d.channel_thresholds[c]), d.rule)
        first = next((i for i, dd in enumerate(dc) if dd.event == "raised"), None)
        t_first = None if first is None else float(wins.end_times[first])
        per_channel[name] = {"first_alarm": None if t_first is None else format_time(t_first, relative),
                             "hours_before_failure": None if t_first is None else round((t_fail - t_first) / 3600, 3)}
    report["per_channel"] = per_channel
    if normal_data is not None:
        _normal_auc(report, run, model, normal_data, product, ae, verdicts is not None, data, wins, progress)

    # Baselines, from the same data and the same healthy period as the run.
    t_healthy = None
    if normal_data is not None:
        # The baselines learn 'healthy' from the evaluated run's own healthy period; here that run is faulty.
        report["baselines"] = {"skipped": "with --normal-data the evaluated data has no healthy period to fit on"}
    else:
        try:
            t_healthy = healthy_end_time(run.meta["training"]["healthy_until"], ff.times, relative)
            if t_known is not None:
                # never on data known to be faulty: the training's share ("60%") of another run can reach past
                # its healthy part (a normal record followed by a fault record)
                t_healthy = min(t_healthy, t_known)
        except ConfigError as e:
            report["baselines"] = {"skipped": str(e)}
    if t_healthy is not None:
        from .baselines import baselines

        found: dict[str, Any] = {"autoencoder": ae_report} if d.combined else {}
        for name, (det, extra) in baselines(run, data, ff, wins, t_healthy, outside_names).items():
            found[name] = {**detector_report(det, facts), **extra}
        report["baselines"] = found
        report["baselines_fitted_until"] = format_time(t_healthy, relative)
    if plots:
        from . import plots as p

        p.evaluation_plots(run.path, data, spec, product, report, relative, t_healthy)
    write_atomic(run.path / f"evaluation_{data_stem(data_path)}.json", json.dumps(report, indent=2))
    return report


def _time_column(run: Run, data_path: str, time_column: str | None) -> str | None:
    """A table the run was trained on with --time-column is read the same way unless told otherwise; said on
    stderr, since a reused column the user did not name is the likeliest reason a table reads oddly."""
    trained = run.meta.get("training", {}).get("time_column")
    if time_column is not None or trained is None or detect_format(data_path) != "csv":
        return time_column
    print(f"note: {data_path}: time column {str(trained)!r} taken from the training run ({run.path / 'run.json'}); "
          "give --time-column to choose another", file=sys.stderr)
    return str(trained)


def write_atomic(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temporary sibling renamed over it (`convert` ships what is there)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _normal_auc(report: dict[str, Any], run: Run, model: Any, normal_data: str, product: Detection, ae: Detection,
                combined: bool, data: Recording | FeatureTable, wins: Any, progress: bool) -> None:
    """AUC with a known-healthy second data set: its windows are the negatives, the evaluated data's (its
    faulty-labelled ones where it has labels) the positives; for the product and the bare autoencoder."""
    d = run.detector
    nd = load(normal_data)
    check_data(run, nd)
    nff = featurize(nd, d.spec, progress=progress)
    nw = make_windows(nff, d.window, d.hop)
    nx = d.scaler.transform(nw.x).astype(np.float32)
    n_scores, n_contrib = score(model, nx, len(d.spec.channels))
    n_ae = single_detection(nw.end_times, run_alarms(n_scores, d.threshold, d.rule, n_contrib,
                                                     d.channel_thresholds), d.threshold)
    pos = np.ones(len(wins.end_times), bool)
    if isinstance(data, Recording) and data.labels is not None:
        pos = window_labels(data, wins) > 0
    pairs = [("auc", product, n_ae)]
    if combined:
        n_product = product_detection(nw.end_times, product_verdicts(run, nd, nw, nx, n_scores, n_contrib))
        pairs = [("auc", product, n_product), ("autoencoder", ae, n_ae)]
    for key, det, neg in pairs:
        a = auc(neg.levels, det.levels[pos])
        a = None if a is None else round(a, 4)
        if key == "auc":
            report["auc"] = a
        else:
            report["autoencoder_auc"] = a
    report["normal_data"] = str(normal_data)
    report["scoring"]["auc_basis"] = f"{normal_data}'s windows against the evaluated data's" + (
        " faulty-labelled ones" if isinstance(data, Recording) and data.labels is not None else "")


def product_verdicts(run: Run, data: Recording | FeatureTable, wins: Any, x: np.ndarray, scores: np.ndarray,
                     contrib: np.ndarray) -> list[Verdict]:
    """The combined detector over the run: agent/detect/events.py's batch twin, window by window."""
    from .product import frame_floor_values

    d = run.detector
    assert d.floor is not None
    fv = frame_floor_values(data, d.spec)[wins.end_frames]
    *inputs, blame, shape = event_inputs(d, window_evidence(d, wins.end_times, x, scores, contrib, fv))
    return run_events(wins.end_times, *inputs, d.events or EventRule(), d.rule, d.floor.step, blame,
                      *d.event_limits(), shape)


def product_detection(times: np.ndarray, verdicts: Sequence[Verdict]) -> Detection:
    """The product's level per window and its per-channel episodes (every channel has its own alarm)."""
    n_ch = len(verdicts[0].evidence) if verdicts else 0
    active = np.zeros((len(verdicts), n_ch), bool)
    for i, v in enumerate(verdicts):
        active[i, list(v.active)] = True
    return Detection(times, np.array([v.level for v in verdicts]), from_active(times, active), 1.0)


def product_extras(run: Run, data: Recording | FeatureTable, wins: Any, verdicts: Sequence[Verdict],
                   channels: Sequence[str], relative: bool) -> dict[str, Any]:
    """The product's alarms with their diagnosis, its transients and condition changes."""
    from .product import frame_energies

    d = run.detector
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
        at = format_time(float(wins.end_times[i]), relative)
        for c, dg in found.items():
            if c in open_alarm:
                open_alarm[c]["diagnosed"] = {"at": at, **dg}
        for c in v.raised:
            a: dict[str, Any] = {"at": at, "at_s": float(wins.end_times[i]), "channel": channels[c]}
            if c in at_raise:
                a["diagnosis"] = at_raise[c]
                if at_raise[c]["defect"] is not None:
                    a["diagnosed"] = {"at": a["at"], **at_raise[c]}
            alarms.append(a)
            open_alarm[c] = a
    return {
        "alarms": alarms,
        "transients": [{"at": format_time(e.t, relative), "channel": channels[e.channels[0]],
                        "ratio": round(e.ratio[0], 3), "relaxed_by": format_time(float(e.until or e.t), relative)}
                       for v in verdicts for e in v.events if e.kind == "transient"],
        "condition_changes": [{"at": format_time(e.t, relative), "ratios": [round(r, 3) for r in e.ratio]}
                              for v in verdicts for e in v.events if e.kind == "condition_change"],
    }


def _diagnosis_at_warning(r: dict[str, Any], verdicts: Sequence[Verdict], channels: Sequence[str]) -> dict[str, Any]:
    """The channels raised with the warning and the diagnosis of the warning's alarm."""
    i = r.get("first_alarm_index")
    named = [channels[c] for c in verdicts[i].raised] if i is not None else None
    w = r.get("warning")
    first = None if w is None else next((a for a in r["alarms"] if a["at_s"] == w["start_s"]
                                         and a["channel"] == w["channel"]), None)
    return {"alarm_channels": named, "diagnosis": first.get("diagnosis") if first else None,
            "diagnosed": first.get("diagnosed") if first else None}
