"""Commissioning (agent/model/commission*.py): the streaming object equals its batch twin, the state file survives
restarts and reloads, a damaged one falls back to the bundle's thresholds, and the real agent commissions
over MQTT as documented (threshold_source on every score, the status messages, `recalibrate`)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli
from jsonschema import Draft202012Validator
from mosquitto import Broker
from test_agent_e2e import Subscriber, agent_command, gateway_env

from vibrawatch.agent.config import commissioning_section, load_agent_config
from vibrawatch.agent.detect.calibrate import CommissioningSection, commission
from vibrawatch.agent.detect.decide import run_alarms
from vibrawatch.agent.detect.detector import Detector
from vibrawatch.agent.detect.healthy import Evidence, Extremes
from vibrawatch.agent.detect.threshold import fit_channel_thresholds, fit_threshold
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.model.commission import Commissioning
from vibrawatch.agent.model.commission_store import request_recalibration
from vibrawatch.agent.model.commission_windows import read_windows, row_shapes
from vibrawatch.agent.pipeline import Decider


def detector(method: str = "max", channels: int = 3) -> Detector:
    """A detector whose thresholds were fitted on a reference machine (0.5 per channel)."""
    names = "abcd"[:channels]
    return Detector.from_dict({
        "features": {"input": "samples", "fs_hz": 1000.0, "frame_length": 100, "channels": list(names),
                     "features": [{"name": "rms", "params": {}}], "names": [f"{c}:rms" for c in names]},
        "window": {"length": 3, "hop": 1},
        "scaler": {"scale": [1.0] * channels, "offset": [0.0] * channels, "data_min": [0.0] * channels,
                   "data_max": [1.0] * channels},
        "threshold": {"value": 0.5 * channels, "channels": [0.5] * channels, "method": method, "q": 0.99,
                      "margin": 1.1},
        "alarm": {"raise_after": 2, "clear_after": 3, "hysteresis": 0.8},
    })


def machine(level: float, n: int = 300, fault_from: int | None = None, seed: int = 0,
            channels: int = 3) -> tuple[np.ndarray, ...]:
    """Scores of a machine whose healthy level is ``level`` x the reference's, with a fault growing on 'a'."""
    rng = np.random.default_rng(seed)
    contrib = np.abs(rng.normal(0.35, 0.03, size=(n, channels))) * level
    if fault_from is not None:
        contrib[fault_from:, 0] *= np.linspace(1, 6, n - fault_from)
    return contrib.sum(axis=1), contrib, np.arange(n) * 10.0


def stream(comm: Commissioning, scores: np.ndarray, contrib: np.ndarray, times: np.ndarray) -> list:
    """Every window through the pipeline's decider with the commissioning attached, as the agent runs it."""
    decider = Decider(comm.active, comm)
    ev = Evidence(times, scores, contrib)
    return [decider.window(ev.window(slice(i, i + 1))).decision for i in range(len(ev))]


@pytest.mark.parametrize("method", ["max", "quantile", "mean_std"])
def test_streaming_commissioning_equals_its_batch_twin_and_trainings_rule(method: str) -> None:
    det = detector(method)
    scores, contrib, times = machine(1.8, fault_from=200)  # a rougher machine that later fails
    cfg = CommissioningSection(windows=100)
    comm = Commissioning(det, "m1", cfg)
    decisions = stream(comm, scores, contrib, times)
    cal, start = commission(Evidence(times, scores, contrib), det, cfg, "m1")
    assert cal is not None and start == 100 and comm.calibration is not None
    assert comm.calibration.state == cal.state == "commissioned"
    # the same fit as training: the bundle's rule and margin on this machine's healthy windows
    assert cal.threshold == fit_threshold(scores[:100], det.threshold_rule)
    np.testing.assert_array_equal(cal.channel_thresholds, fit_channel_thresholds(contrib[:100], det.threshold_rule))
    assert comm.calibration.threshold == cal.threshold
    np.testing.assert_array_equal(comm.calibration.channel_thresholds, cal.channel_thresholds)
    assert not any(d.event for d in decisions[:100])  # no alarm while commissioning
    # after it: the alarm rule on this machine's thresholds, remembering the last raise_after - 1 windows
    k = det.rule.raise_after - 1
    batch = run_alarms(scores[100 - k:], cal.threshold, det.rule, contrib[100 - k:], cal.channel_thresholds)[k:]
    assert [(d.event, d.active, d.channel) for d in decisions[100:]] == [(d.event, d.active, d.channel) for d in batch]


def test_rougher_machine_false_alarms_with_the_bundle_none_after_commissioning() -> None:
    det = detector()
    scores, contrib, times = machine(1.8, fault_from=200)
    bundle = run_alarms(scores, det.threshold, det.rule, contrib, det.channel_thresholds)
    first_bundle = next(i for i, d in enumerate(bundle) if d.event == "raised")
    assert first_bundle < 200  # the bundle's thresholds alarm on the healthy rougher machine
    comm = Commissioning(det, "m1", CommissioningSection(windows=100))
    decisions = stream(comm, scores, contrib, times)
    raised = [i for i, d in enumerate(decisions) if d.event == "raised"]
    assert raised and raised[0] > 200  # no false alarm, and the fault is still caught
    assert decisions[raised[0]].channel == 0


def test_a_machine_already_faulty_keeps_the_bundle_thresholds() -> None:
    det = detector()
    scores, contrib, times = machine(1.0, fault_from=0)  # the defect is there from the first window
    contrib[:, 0] *= 4
    scores = contrib.sum(axis=1)
    comm = Commissioning(det, "m1", CommissioningSection(windows=50, suspect_factor=3.0))
    decisions = stream(comm, scores, contrib, times)
    assert comm.calibration is not None and comm.calibration.state == "commissioning_suspect"
    assert comm.source == "bundle" and comm.threshold == det.threshold
    assert comm.calibration.median_level > 3.0
    assert decisions[50].event == "raised"  # alarms as before, at the first window after commissioning


def test_one_channel_standing_out_is_a_fault_not_a_rougher_machine() -> None:
    """A defect present at commissioning moves its own bearing; a rougher machine moves every channel alike."""
    det = detector()
    cfg = CommissioningSection(windows=50)  # the documented defaults: suspect_factor 10, channel_factor 3
    scores, contrib, times = machine(1.0)
    contrib[:, 0] *= 5  # bearing 'a' is already damaged: level ~3.5, below suspect_factor
    scores = contrib.sum(axis=1)
    comm = Commissioning(det, "m1", cfg)
    stream(comm, scores, contrib, times)
    assert comm.calibration is not None and comm.calibration.state == "commissioning_suspect"
    assert comm.calibration.median_level < cfg.suspect_factor and comm.calibration.standout > 3
    rough = Commissioning(det, "m1", cfg)
    stream(rough, *machine(5.0))  # 5x rougher everywhere: commissioned
    assert rough.calibration is not None and rough.calibration.state == "commissioned"
    assert rough.calibration.standout < 1.2
    # two channels: no "others" to compare with (an operating condition moves that balance): level only
    two = Commissioning(detector(channels=2), "m1", cfg)
    s2, c2, t2 = machine(1.0, channels=2)
    c2[:, 0] *= 5
    stream(two, c2.sum(axis=1), c2, t2)
    assert two.calibration is not None and two.calibration.state == "commissioned"


def test_hours_count_window_time() -> None:
    det = detector()
    scores, contrib, times = machine(1.0)  # a window every 10 s
    cal, start = commission(Evidence(times, scores, contrib), det, CommissioningSection(hours=0.5), "m1")
    assert cal is not None and times[start - 1] - times[0] >= 1800 and times[start - 2] - times[0] < 1800


def test_state_survives_restarts_a_new_model_restarts_and_a_damaged_file_falls_back(tmp_path: Path) -> None:
    det, state = detector(), tmp_path / "calibration.json"
    cfg = CommissioningSection(windows=100)
    scores, contrib, times = machine(1.5)
    first = Commissioning.open(det, "m1", cfg, state)
    assert "commissioning starts" in (first.note or "")
    stream(first, scores[:60], contrib[:60], times[:60])
    first.save()  # what the agent does on SIGTERM and before a reload
    resumed = Commissioning.open(det, "m1", cfg, state)
    assert len(resumed.log) == 60 and resumed.commissioning
    stream(resumed, scores[60:120], contrib[60:120], times[60:120])
    assert resumed.source == "commissioned"
    # the same thresholds as one uninterrupted commissioning
    whole, _ = commission(Evidence(times, scores, contrib), det, cfg, "m1")
    assert whole is not None and resumed.calibration is not None
    assert resumed.calibration.threshold == whole.threshold
    again = Commissioning.open(det, "m1", cfg, state)
    assert again.source == "commissioned" and again.threshold == whole.threshold
    other = Commissioning.open(det, "m2", cfg, state)  # a new bundle
    assert other.commissioning and "a new commissioning starts" in (other.note or "")
    # recalibrate: the marker starts a new commissioning even for the same model
    stream(other, scores[:100], contrib[:100], times[:100])
    assert other.source == "commissioned"
    request_recalibration(state)
    assert Commissioning.open(det, "m2", cfg, state).commissioning
    # a damaged file: the bundle's thresholds, a message naming the file and what to do, still scoring
    state.write_text('{"schema": "vibrawatch.calibration/1", "model": "m2", "state": "commissioned", "thresh')
    damaged = Commissioning.open(det, "m2", cfg, state)
    assert damaged.source == "bundle" and damaged.threshold == det.threshold
    assert str(state) in (damaged.note or "") and "recalibrate" in (damaged.note or "")
    assert len(stream(damaged, scores, contrib, times)) == len(scores)
    state.write_text(json.dumps({"schema": "vibrawatch.calibration/2", "model": "m2", "state": "commissioned",
                                 "detector": {"threshold": {"value": -1, "channels": [1, 1, 1]}}, "windows": 1,
                                 "median_level": 1, "standout": 1, "bundle_threshold": 1, "started_t": 0,
                                 "finished_t": 1}))
    bad = Commissioning.open(det, "m2", cfg, state)
    assert bad.source == "bundle" and "threshold.value" in (bad.note or "")


def test_a_torn_windows_line_is_skipped_and_the_state_file_stays_small(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The windows go append-only to calibration.windows.jsonl (calibration.json stays a few hundred bytes,
    whatever the count of windows); a
    power cut that tears the last line costs that window only: skipped with one log line naming the file, and
    the commissioning resumes and fits what an uninterrupted one fits on the windows it kept."""
    det, state = detector(), tmp_path / "calibration.json"
    windows = tmp_path / "calibration.windows.jsonl"
    cfg = CommissioningSection(windows=100)
    scores, contrib, times = machine(1.5)
    first = Commissioning.open(det, "m1", cfg, state)
    stream(first, scores[:40], contrib[:40], times[:40])
    first.save()  # what the agent does at stop
    head, *lines = windows.read_text().splitlines()
    assert json.loads(head)["columns"] == [["t", []], ["score", []], ["contributions", [3]]]
    assert [json.loads(x)[1] for x in lines] == scores[:40].tolist()  # one array per window, no keys
    small = len(state.read_bytes())  # the state, the count seen and each number's extremes: not the windows
    assert json.loads(state.read_text())["state"] == "commissioning" and small < 700
    with windows.open("a") as f:
        f.write(lines[-1][:25])  # the next append, cut by a power failure
    with caplog.at_level(logging.WARNING, logger="vibrawatch.commission"):
        resumed = Commissioning.open(det, "m1", cfg, state)
    said = [r.getMessage() for r in caplog.records if "damaged line" in r.getMessage()]
    assert len(said) == 1 and str(windows) in said[0] and "resumes with 40 window(s) seen, 40 kept" in said[0]
    assert resumed.commissioning and len(resumed.log) == 40
    assert windows.read_text().endswith("\n")  # the next append starts a line of its own
    stream(resumed, scores[40:120], contrib[40:120], times[40:120])
    whole, _ = commission(Evidence(times, scores, contrib), det, cfg, "m1")
    assert whole is not None and resumed.calibration is not None and resumed.source == "commissioned"
    assert resumed.calibration.threshold == whole.threshold
    assert not windows.exists()  # commissioned: the windows are in the detector now
    assert set(json.loads(state.read_text())["detector"]) == {"threshold"}


def test_a_long_commissioning_keeps_an_evenly_spaced_subsample_in_memory_and_on_disk(tmp_path: Path) -> None:
    """keep = 128 over 600 windows: the log halves three times (stride 2, 4, 8); at every window it holds at
    most 128 windows (arrays of at most 128 rows) and the windows file at most a header and 128 lines, and
    what it holds is windows 0, s, 2s, ... of all it has seen, in order; the length still counts every window,
    and the fit is ``healthy.fit`` on the kept windows, as the batch twin's."""
    from vibrawatch.agent.detect import healthy

    det, state = detector(), tmp_path / "calibration.json"
    windows = tmp_path / "calibration.windows.jsonl"
    cfg = CommissioningSection(windows=600, keep=128)
    scores, contrib, times = machine(1.5, n=700)
    ev = Evidence(times, scores, contrib)
    comm = Commissioning.open(det, "m1", cfg, state)
    decider = Decider(comm.active, comm)
    strides = set()
    for i in range(599):
        decider.window(ev.window(slice(i, i + 1)))
        if i % 37 == 0:
            comm.save()  # a stop now and then
        n, s = i + 1, comm.log.stride
        assert comm.log.seen == n and len(comm.log) == -(-n // s) <= 128
        assert comm.log.nbytes <= 128 * (1 + 1 + 3) * 8
        np.testing.assert_array_equal(comm.log.evidence().t, times[:n:s])
        assert len(windows.read_bytes().splitlines()) <= 129
        strides.add(s)
    assert strides == {1, 2, 4, 8}
    comm.save()
    head, *lines = windows.read_text().splitlines()
    assert json.loads(head)["stride"] == 8 and len(lines) == 75
    back, stride, dropped, clean = read_windows(windows, row_shapes(det))
    assert stride == 8 and not dropped and clean
    np.testing.assert_array_equal(back.score, scores[:599:8])
    assert json.loads(state.read_text())["seen"] == 599
    decider.window(ev.window(slice(599, 600)))
    cal = comm.calibration
    assert cal is not None and cal.state == "commissioned" and cal.windows == 600 and cal.finished_t == times[599]
    # fitted on the kept windows with every window's extremes: the max rule's thresholds are exactly those of
    # all 600 windows, where the kept ones alone come out lower
    seen = ev.window(slice(0, 600))
    everything = healthy.fit(det, seen)
    assert cal.detector.to_dict() == healthy.fit(det, ev.window(slice(0, 600, 8)), Extremes.of(seen)).to_dict()
    assert cal.detector.threshold == everything.threshold
    np.testing.assert_array_equal(cal.detector.channel_thresholds, everything.channel_thresholds)
    assert healthy.fit(det, ev.window(slice(0, 600, 8))).threshold < everything.threshold
    whole, start = commission(ev, det, cfg, "m1")
    assert whole is not None and start == 600 and whole.detector.to_dict() == cal.detector.to_dict()
    assert not windows.exists()


@pytest.mark.parametrize("keep", [100, 101, 333])
def test_the_log_is_every_stride_th_window_whatever_keep_and_a_lower_keep_halves_at_resume(keep: int) -> None:
    """Odd sizes too: after each window the log holds windows 0, s, 2s, ... with the stride the batch twin
    computes, in arrays of at most ``keep`` rows; resumed with a lower ``keep`` (an edited config) it halves
    until it fits and stays evenly spaced."""
    from vibrawatch.agent.detect.healthy import EvidenceLog, stride_for

    ev = Evidence(np.arange(1000.0), np.arange(1000.0), np.zeros((1000, 2)))
    log = EvidenceLog(keep=keep)
    for i in range(1000):
        log.append(ev.window(slice(i, i + 1)))
        assert log.stride == stride_for(i + 1, keep) and len(log) <= keep
        np.testing.assert_array_equal(log.evidence().t, ev.t[: i + 1: log.stride])
    assert log.nbytes <= keep * 4 * 8
    lower = EvidenceLog.restore(log.evidence(), log.stride, log.seen, 100)
    assert lower.seen == 1000 and len(lower) <= 100 and lower.nbytes <= 100 * 4 * 8
    np.testing.assert_array_equal(lower.evidence().t, ev.t[:: lower.stride])


def test_the_saves_that_count_windows_never_overwrite_a_recalibrate_request(tmp_path: Path) -> None:
    """calibration.json now carries the count of windows seen, so each save rewrites it; a `recalibrate`
    request written meanwhile stays until the next start or reload takes it (and starts over)."""
    det, state = detector(), tmp_path / "calibration.json"
    cfg = CommissioningSection(windows=1000, keep=100)
    scores, contrib, times = machine(1.0, n=300)
    comm = Commissioning.open(det, "m1", cfg, state)
    stream(comm, scores[:150], contrib[:150], times[:150])
    comm.save()
    assert json.loads(state.read_text())["seen"] == 150
    request_recalibration(state, "m1")
    stream(comm, scores[150:], contrib[150:], times[150:])
    comm.save()
    assert json.loads(state.read_text())["state"] == "requested"
    again = Commissioning.open(det, "m1", cfg, state)
    assert again.commissioning and again.log.seen == 0 and "recalibration requested" in (again.note or "")


def test_a_rolled_back_model_takes_its_own_calibration_back(tmp_path: Path) -> None:
    """Model m1 is commissioned; m2 is deployed (its commissioning starts, m1's calibration is put aside) and
    rolled back: m1 decides with its own commissioned detector at once instead of commissioning the machine
    again (a day without alarms). Only the newest few calibrations are kept; a recalibrate still starts over."""
    det, state = detector(), tmp_path / "calibration.json"
    cfg = CommissioningSection(windows=100)
    scores, contrib, times = machine(1.5, n=150)
    m1 = Commissioning.open(det, "m1", cfg, state)
    stream(m1, scores[:100], contrib[:100], times[:100])
    assert m1.source == "commissioned"
    m2 = m1.reopen(det, "m2", cfg, state)  # a deploy applies m2
    assert m2.commissioning and (tmp_path / "calibration.m1.json").exists()
    stream(m2, scores[:30], contrib[:30], times[:30])
    back = m2.reopen(det, "m1", cfg, state)  # ... and rolls back
    assert back.source == "commissioned" and "taken back" in (back.note or "")
    assert back.calibration.detector.threshold == m1.calibration.detector.threshold  # type: ignore[union-attr]
    assert not (tmp_path / "calibration.m1.json").exists()
    assert not (tmp_path / "calibration.windows.jsonl").exists()  # m2's commissioning in progress is gone
    assert Commissioning.open(det, "m1", cfg, state).source == "commissioned"  # and it is the state file now
    # Back and forth between two commissioned models: each takes its own calibration back, none is lost.
    m2 = back.reopen(det, "m2", cfg, state)
    stream(m2, scores[:100], contrib[:100], times[:100])
    assert m2.source == "commissioned"
    for model, want in (("m1", m1), ("m2", m2), ("m1", m1)):
        again = Commissioning.open(det, model, cfg, state)
        assert again.source == "commissioned" and "taken back" in (again.note or ""), (model, again.note)
        assert again.calibration.detector.threshold == want.calibration.detector.threshold  # type: ignore
    for k in range(5):  # models replaced one after another: the newest ARCHIVED calibrations stay
        c = Commissioning.open(det, f"n{k}", cfg, state)
        stream(c, scores[:100], contrib[:100], times[:100])
    assert len(list(tmp_path.glob("calibration.*.json"))) == 3
    request_recalibration(state, "n4")
    assert Commissioning.open(det, "n4", cfg, state).commissioning


def test_a_recalibrate_request_made_during_commissioning_outlives_its_completion(tmp_path: Path) -> None:
    """The operator asked to start over: the commissioning that completes meanwhile does not write over it."""
    det, state = detector(), tmp_path / "calibration.json"
    cfg = CommissioningSection(windows=100)
    scores, contrib, times = machine(1.0, n=150)
    comm = Commissioning.open(det, "m1", cfg, state)
    stream(comm, scores[:50], contrib[:50], times[:50])
    request_recalibration(state, "m1")
    stream(comm, scores[50:], contrib[50:], times[50:])
    assert comm.source == "commissioned"  # it goes on deciding with what it fitted until the reload ...
    assert json.loads(state.read_text())["state"] == "requested"  # ... which starts over
    assert Commissioning.open(det, "m1", cfg, state).commissioning


@pytest.mark.parametrize("damage", [None, 1e999, "drop-t"])
def test_damaged_extremes_in_the_state_file_never_stop_scoring(tmp_path: Path, damage: object,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A non-finite or missing number in calibration.json's extremes: the kept windows' own extremes stand in,
    with one log line; scoring, saving and the fit go on (NaN would have reached the fit and the next save)."""
    det, state = detector(), tmp_path / "calibration.json"
    cfg = CommissioningSection(windows=100)
    scores, contrib, times = machine(1.0, n=150)
    first = Commissioning.open(det, "m1", cfg, state)
    stream(first, scores[:50], contrib[:50], times[:50])
    first.save()
    d = json.loads(state.read_text())
    if damage == "drop-t":
        del d["extremes"]["hi"]["t"]
    else:
        d["extremes"]["hi"]["score"] = damage
    state.write_text(json.dumps(d))  # null / 1e999 as JSON writes them: NaN and Infinity are not JSON
    with caplog.at_level(logging.WARNING, logger="vibrawatch.commission"):
        resumed = Commissioning.open(det, "m1", cfg, state)
        decisions = stream(resumed, scores[50:], contrib[50:], times[50:])
    assert resumed.log.seen == 0 and resumed.source == "commissioned" and len(decisions) == 100
    assert np.isfinite(resumed.calibration.detector.threshold)  # type: ignore[union-attr]
    assert json.loads(state.read_text())["state"] == "commissioned"
    assert any("extremes" in r.getMessage() for r in caplog.records)


def test_an_append_that_fails_part_way_is_written_anew_not_after_a_torn_line(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A full disk tears an append in the middle of the file: the next save rewrites the whole file from memory
    (atomically), so a restart resumes every window kept, and a failing save is one log line, not one per window."""
    det, state = detector(), tmp_path / "calibration.json"
    windows = tmp_path / "calibration.windows.jsonl"
    cfg = CommissioningSection(windows=1000)
    scores, contrib, times = machine(1.0, n=300)
    comm = Commissioning.open(det, "m1", cfg, state)
    stream(comm, scores[:100], contrib[:100], times[:100])
    comm.save()
    stream(comm, scores[100:200], contrib[100:200], times[100:200])
    real_open = Path.open

    def torn(self: Path, mode: str = "r", *a: object, **k: object) -> object:
        if self == windows and mode == "a":
            f = real_open(self, mode, *a, **k)
            f.write('[1.0, 2.')  # part of a line, then the disk is full
            f.close()
            raise OSError(28, "No space left on device", str(windows))
        return real_open(self, mode, *a, **k)

    with caplog.at_level(logging.ERROR, logger="vibrawatch.commission"), \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "open", torn)
        comm.save()
        stream(comm, scores[200:250], contrib[200:250], times[200:250])  # windows go on; no retry per window
    errors = [r for r in caplog.records if "cannot save" in r.getMessage()]
    assert len(errors) == 1 and "No space left" in errors[0].getMessage()
    comm.save()  # the disk has room again
    assert not windows.with_name(windows.name + ".tmp").exists()
    resumed = Commissioning.open(det, "m1", cfg, state)
    assert resumed.log.seen == 250 and len(resumed.log) == 250
    np.testing.assert_array_equal(resumed.log.evidence().score, scores[:250])


def test_a_restart_mid_way_resumes_the_subsample_to_the_same_fit(tiny_bundle: Path, tiny_data: Path,
                                                                 tmp_path: Path) -> None:
    """The default (combined) detector's windows from the gateway's pipeline (the replay twice: 630), keep =
    128, 600 windows: a stop after 303 windows (stride 4, the last three not kept) and a start resume the kept
    windows, the stride and the count seen, and the commissioning ends with exactly (every refitted number,
    float64) the detector of an uninterrupted one, which is the batch twin's on every 8th window."""
    from dataclasses import replace

    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.source import ReplaySource

    bundle = load_bundle(tiny_bundle)
    d = bundle.detector
    pipe = Pipeline(bundle)
    one = Evidence.concat([e.evidence for c in ReplaySource(tiny_data, speed=0).chunks() for e in pipe.process(c)
                           if isinstance(e, Scored) and e.evidence is not None])
    ev = Evidence.concat([one, replace(one, t=one.t + one.t[-1] - one.t[0] + 600.0)])
    assert len(ev) > 600 and ev.floors is not None and ev.means is not None and ev.pca_score is not None
    cfg = CommissioningSection(windows=600, keep=128)

    def run(comm: Commissioning, lo: int, hi: int) -> None:
        decider = Decider(comm.active, comm)
        for i in range(lo, hi):
            decider.window(ev.window(slice(i, i + 1)))

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = Commissioning.open(d, bundle.version, cfg, tmp_path / "a" / "calibration.json")
    run(whole, 0, 600)
    first = Commissioning.open(d, bundle.version, cfg, tmp_path / "b" / "calibration.json")
    run(first, 0, 303)
    first.save()  # a stop
    resumed = Commissioning.open(d, bundle.version, cfg, tmp_path / "b" / "calibration.json")
    assert resumed.log.stride == 4 and resumed.log.seen == 303 and len(resumed.log) == 76
    kept = resumed.log.evidence()
    assert kept.means is not None and kept.floors is not None
    np.testing.assert_array_equal(kept.means, ev.means[:303:4])
    np.testing.assert_array_equal(kept.floors, ev.floors[:303:4])
    run(resumed, 303, 600)
    assert whole.calibration is not None and resumed.calibration is not None
    assert whole.calibration.state == resumed.calibration.state == "commissioned"
    assert resumed.calibration.windows == whole.calibration.windows == 600
    assert resumed.calibration.detector.to_dict() == whole.calibration.detector.to_dict()
    batch, _ = commission(ev, d, cfg, bundle.version)
    assert batch is not None and batch.detector.to_dict() == whole.calibration.detector.to_dict()
    a, b = (json.loads((tmp_path / x / "calibration.json").read_text())["detector"] for x in "ab")
    assert a == b


@pytest.mark.parametrize("settles", [1.0, 1.5])
def test_a_commissioning_on_a_run_in_says_the_machine_was_not_steady(settles: float, tiny_bundle: Path,
                                                                    tiny_data: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The combined detector's windows from the gateway's pipeline, the first ones louder by ``settles`` and
    settling over the first half (a run-in): the commissioning completes, and the agent's log says how far each
    channel's RMS moved from its first fifth to its last and what that costs; steady windows say nothing."""
    from dataclasses import replace

    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.model.commission import status
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.source import ReplaySource

    bundle = load_bundle(tiny_bundle)
    pipe = Pipeline(bundle)
    ev = Evidence.concat([e.evidence for c in ReplaySource(tiny_data, speed=0).chunks() for e in pipe.process(c)
                          if isinstance(e, Scored) and e.evidence is not None])
    ev = ev.window(slice(0, len(ev) // 2))  # the healthy half
    assert ev.floors is not None
    gain = np.ones(len(ev))
    gain[: len(ev) // 2] = np.linspace(settles, 1.0, len(ev) // 2)
    ev = replace(ev, floors=ev.floors * gain[:, None, None])
    comm = Commissioning(bundle.detector, bundle.version, CommissioningSection(windows=len(ev)))
    decider = Decider(comm.active, comm)
    for i in range(len(ev)):
        decider.window(ev.window(slice(i, i + 1)))
    assert comm.calibration is not None and comm.calibration.state == "commissioned"
    with caplog.at_level(logging.INFO, logger="vibrawatch.commission"):
        status(comm, comm.calibration)
    said = [r.getMessage() for r in caplog.records if "steady" in r.getMessage()]
    if settles == 1.0:
        assert said == [] and comm.calibration.drift is not None
        assert all(0.9 < r < 1.1 for r in comm.calibration.drift)
    else:
        (line,) = said
        assert line.startswith("the commissioning windows are not one steady condition: the RMS level went ")
        went = dict(re.findall(r"(\w+) x(\d\.\d\d)", line))  # the first fifth is ~1.4x louder than the last
        assert set(went) == set(bundle.detector.channels) and all(0.65 < float(r) < 0.8 for r in went.values())


def test_a_windows_file_from_before_the_held_pca_score_resumes_and_is_rewritten(tiny_bundle: Path, tiny_data: Path,
                                                                                 tmp_path: Path) -> None:
    """An agent upgraded mid-commissioning finds a windows file (and extremes) without the ``pca_held`` column:
    the commissioning resumes from it (nothing lost), the single PCA score standing in for the held one (never
    lower, so no threshold comes out tighter than it would have), and the file is rewritten in the new layout."""
    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.source import ReplaySource

    bundle = load_bundle(tiny_bundle)
    pipe = Pipeline(bundle)
    ev = Evidence.concat([e.evidence for c in ReplaySource(tiny_data, speed=0).chunks() for e in pipe.process(c)
                          if isinstance(e, Scored) and e.evidence is not None])
    assert ev.pca_held is not None and ev.pca_score is not None and np.any(ev.pca_held < ev.pca_score)
    state = tmp_path / "calibration.json"
    windows = tmp_path / "calibration.windows.jsonl"
    cfg = CommissioningSection(windows=len(ev))
    comm = Commissioning.open(bundle.detector, bundle.version, cfg, state)
    decider = Decider(comm.active, comm)
    for i in range(40):
        decider.window(ev.window(slice(i, i + 1)))
    comm.save()
    # the layout an earlier agent wrote: the same columns without pca_held
    head, *lines = windows.read_text().splitlines()
    header = json.loads(head)
    names = [name for name, _ in header["columns"]]
    at = sum(int(np.prod(shape)) for name, shape in header["columns"][: names.index("pca_held")])
    header["columns"] = [c for c in header["columns"] if c[0] != "pca_held"]
    rows = [json.loads(line) for line in lines]
    windows.write_text("\n".join([json.dumps(header)] + [json.dumps(r[:at] + r[at + 1:]) for r in rows]) + "\n")
    saved = json.loads(state.read_text())
    for row in saved["extremes"].values():
        del row["pca_held"]
    state.write_text(json.dumps(saved))

    resumed = Commissioning.open(bundle.detector, bundle.version, cfg, state)
    kept = resumed.log.evidence()
    assert resumed.log.seen == 40 and len(kept) == 40 and "starts over" not in (resumed.note or "")
    assert kept.pca_held is not None and kept.pca_score is not None
    np.testing.assert_array_equal(kept.pca_held, ev.pca_score[:40])
    assert resumed.log.extremes is not None and resumed.log.extremes.hi.pca_held is not None
    assert json.loads(windows.read_text().splitlines()[0])["columns"] == json.loads(head)["columns"]
    decider = Decider(resumed.active, resumed)
    for i in range(40, 60):
        decider.window(ev.window(slice(i, i + 1)))
    resumed.save()
    back, *_ = read_windows(windows, row_shapes(bundle.detector))  # appended in the new layout
    assert back.pca_held is not None
    np.testing.assert_array_equal(back.pca_held[40:], ev.pca_held[40:60])
    for i in range(60, len(ev)):
        decider.window(ev.window(slice(i, i + 1)))
    assert resumed.calibration is not None and resumed.calibration.state == "commissioned"


def test_training_and_commissioning_fit_the_same_healthy_statistics(tiny_run: Path, tiny_data: Path,
                                                                    tiny_bundle: Path, tmp_path: Path) -> None:
    """agent/detect/healthy.py's fit on the training run's healthy windows gives the numbers training wrote into
    run.json (floors, PCA thresholds, own deviation, autoencoder thresholds; to 1e-9); and the gateway's
    pipeline commissioning the reference machine over the same healthy windows fits them again, the
    autoencoder's thresholds up to TFLite's float32 against Keras. A calibration file whose floors were
    damaged falls back to the bundle's detector, naming the field."""
    from vibrawatch.agent.detect import healthy
    from vibrawatch.agent.detect.calibrate import fitted_parts
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.loaders import load
    from vibrawatch.agent.sources.source import ReplaySource
    from vibrawatch.train.dataset import featurize, make_windows
    from vibrawatch.train.product import frame_floor_values
    from vibrawatch.train.run import Run

    def numbers(d: Detector) -> dict[str, np.ndarray]:
        parts = fitted_parts(d)
        return {f"{k}.{f}": np.asarray(v, float) for k, part in parts.items() for f, v in part.items()
                if f != "features"}

    run = Run.open(tiny_run)
    d = run.detector
    assert d.combined and d.floor is not None and d.pca is not None and d.own is not None
    w = np.load(tiny_run / "windows.npz")
    h = w["healthy"]
    data = load(tiny_data)
    ends = make_windows(featurize(data, d.spec, progress=False), d.window, d.hop).end_frames[h]
    ev = healthy.window_evidence(d, w["end_times"][h], w["x"][h], w["scores"][h], w["contributions"][h],
                                 frame_floor_values(data, d.spec)[ends])
    trained, refit = numbers(d), numbers(healthy.fit(d, ev))
    assert set(trained) == set(refit) and len(trained) == 10
    for k in trained:
        np.testing.assert_allclose(refit[k], trained[k], rtol=1e-9, atol=0, err_msg=k)

    bundle = load_bundle(tiny_bundle)
    comm = Commissioning(bundle.detector, bundle.version, CommissioningSection(windows=int(h.sum())))
    pipe = Pipeline(bundle)
    pipe.attach(comm)
    for chunk in ReplaySource(tiny_data, speed=0).chunks():
        pipe.process(chunk)
    assert comm.calibration is not None and comm.calibration.state == "commissioned"
    assert pipe.detector is comm.calibration.detector  # the pipeline decides with it
    gateway = numbers(comm.calibration.detector)
    for k in trained:
        np.testing.assert_allclose(gateway[k], trained[k], rtol=1e-5 if k.startswith("threshold.") else 1e-9, atol=0,
                                   err_msg=k)

    state = tmp_path / "calibration.json"
    comm.state_file = state
    comm.save()
    back = Commissioning.open(bundle.detector, bundle.version, comm.cfg, state)
    assert back.source == "commissioned" and back.active.to_dict() == comm.calibration.detector.to_dict()
    cal = json.loads(state.read_text())
    cal["detector"]["floor"]["thresholds"] = cal["detector"]["floor"]["thresholds"][:1]
    state.write_text(json.dumps(cal))
    damaged = Commissioning.open(bundle.detector, bundle.version, comm.cfg, state)
    assert damaged.source == "bundle" and damaged.active is bundle.detector
    assert "floor.thresholds" in (damaged.note or "") and "recalibrate" in (damaged.note or "")


def test_a_diagnosing_detector_refits_its_healthy_envelope_energies(tiny_run: Path, tiny_data: Path,
                                                                     tmp_path: Path) -> None:
    """With [diagnosis], each commissioning window keeps its last frame's envelope energies (a restart resumes
    them from the windows file) and the commissioned detector's healthy energies are their median: what
    training fits on its healthy windows' last frames."""
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.loaders import load
    from vibrawatch.agent.sources.source import ReplaySource
    from vibrawatch.train.config import DiagnosisConfig
    from vibrawatch.train.dataset import featurize, make_windows
    from vibrawatch.train.product import diagnosis_from_config, frame_energies

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    meta = json.loads((run / "run.json").read_text())
    dg = diagnosis_from_config(DiagnosisConfig(rpm=2000, n_balls=9, ball_diameter=7.9, pitch_diameter=39.0),
                               20000.0, 1024, 4)
    meta["diagnosis"] = dg.to_dict()
    (run / "run.json").write_text(json.dumps(meta))
    cli("convert", run, "--out", tmp_path / "diag.tar")
    bundle = load_bundle(tmp_path / "diag.tar")
    d = bundle.detector
    assert d.diagnosis is not None
    state, cfg = tmp_path / "calibration.json", CommissioningSection(windows=100)
    first = Commissioning.open(d, bundle.version, cfg, state)
    pipe = Pipeline(bundle)
    pipe.attach(first)
    chunks = iter(ReplaySource(tiny_data, speed=0).chunks())
    while len(first.log) < 50:
        pipe.process(next(chunks))
    first.save()  # a stop
    resumed = Commissioning.open(d, bundle.version, cfg, state)
    assert len(resumed.log) == len(first.log) and resumed.log.evidence().energies is not None
    pipe.attach(resumed)
    for chunk in chunks:
        pipe.process(chunk)
    assert resumed.calibration is not None and resumed.calibration.state == "commissioned"
    data = load(tiny_data)
    ends = make_windows(featurize(data, d.spec, progress=False), d.window, d.hop).end_frames[:100]
    healthy = np.median(frame_energies(data, d.spec, d.diagnosis)[ends], axis=0)
    fitted = resumed.calibration.detector.diagnosis
    assert fitted is not None and fitted.defects_hz == d.diagnosis.defects_hz
    np.testing.assert_allclose(fitted.healthy, healthy, rtol=1e-9)
    back = Commissioning.open(d, bundle.version, cfg, state)  # a restart once commissioned
    assert back.active.diagnosis is not None and np.array_equal(back.active.diagnosis.healthy, fitted.healthy)


@pytest.mark.parametrize("body, named", [
    ("windows = 10\nhours = 2", "exactly one of"),
    ("", "exactly one of"),
    ("windows = 0", "windows = 0"),
    ("windows = 1.5", "windows = 1.5"),
    ("hours = 1\nsuspect_factor = 0.5", "suspect_factor"),
    ("hours = 1\nlenght = 3", "unknown key"),
    ("hours = 1\nkeep = 99", "keep = 99: expected an integer >= 100"),
    ("hours = 1\nkeep = 2e4", "keep = 20000.0: expected an integer >= 100"),
    ("hours = 1\nkeep = true", "keep = True"),
])
def test_a_wrong_commissioning_section_is_one_line_naming_the_file_and_key(tmp_path: Path, body: str,
                                                                           named: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nsite = "s"\ndevice = "d"\nbundle = "b.tar"\n[source]\nkind = "simulator"\n\n'
                   f'[commissioning]\n{body}\n')
    with pytest.raises(ConfigError) as e:
        load_agent_config(cfg)
    assert str(cfg) in str(e.value) and "[commissioning]" in str(e.value) and named in str(e.value)
    assert "\n" not in str(e.value)
    assert commissioning_section(None, cfg) is None


@pytest.fixture(scope="module")
def plain_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_run`` without the combined detector's parts (as ``[product] combined = false`` trains it): the
    autoencoder's thresholds decide. Converted by `vibrawatch convert`."""
    run = tmp_path_factory.mktemp("plain") / "run"
    shutil.copytree(tiny_run, run)
    meta = json.loads((run / "run.json").read_text())
    for key in ("floor", "pca", "own", "events", "diagnosis"):
        meta.pop(key, None)
    (run / "run.json").write_text(json.dumps(meta))
    out = run.parent / "plain.tar"
    cli("convert", run, "--out", out)
    return out


@pytest.fixture(scope="module")
def rougher_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second machine of ``tiny_data``'s type (the same simulator and run to failure), 1.4x rougher when
    healthy: its broadband noise 0.10 against the reference machine's 0.07."""
    from vibrawatch.agent.sources.loaders import save_snapshot_npz
    from vibrawatch.agent.sources.simulate import simulate_bearing_run

    out = tmp_path_factory.mktemp("rougher") / "rougher.npz"
    save_snapshot_npz(simulate_bearing_run(n_snapshots=80, snapshot_samples=4096, fs_hz=20000, onset=0.6, noise=0.10,
                                           seed=5), out)
    return out


ONSET_T = 0.6 * 79 * 600.0  # the simulated defect's onset in tiny_data and rougher_data (s after the start)


def agent_config(tmp_path: Path, bundle: Path, data: Path, port: int, windows: int | None = 60) -> Path:
    """The agent config these tests run: a replay at full speed, the spool (and calibration) in tmp/state."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    cfg = tmp_path / "agent.toml"
    section = "" if windows is None else f"[commissioning]\nwindows = {windows}\n"
    cfg.write_text(f'''[agent]
site = "plant1"
device = "press7"
bundle = "{bundle}"
spool = "{state}/spool.sqlite"
[source]
kind = "replay"
path = "{data}"
speed = 0
anchor = false
[mqtt]
host = "127.0.0.1"
port = {port}
max_backoff_s = 1
{section}''')
    return cfg


VALIDATORS = {k: Draft202012Validator(json.loads((ROOT / "agent" / "link" / "schemas" / f"{k}.json").read_text()))
              for k in ("score", "alarm", "status", "transient", "condition_change", "diagnosis")}


def run_agent(cfg: Path, tmp_path: Path, port: int, windows: int = 315) -> tuple[Subscriber, str]:
    """`vibrawatch-agent run` once over the replay (a subprocess, as systemd runs it): every message it published,
    each valid against its schema, and its log."""
    sub = Subscriber(port, "plant1", "press7")
    res = subprocess.run(agent_command("run", "--config", str(cfg)), env=gateway_env(tmp_path),
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    sub.wait_for("score", windows)
    sub.close()
    for kind, v in VALIDATORS.items():
        for p in sub.of(kind):
            v.validate(p)
    return sub, res.stdout + res.stderr


def agent_check(cfg: Path, tmp_path: Path) -> str:
    """`vibrawatch-agent check`'s output (it must succeed)."""
    res = subprocess.run(agent_command("check", "--config", str(cfg)), env=gateway_env(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def scores_of(sub: Subscriber) -> list[dict]:
    return sorted(sub.of("score"), key=lambda p: p["seq"])


def test_agent_commissions_over_mqtt_survives_a_restart_and_recalibrates(plain_bundle: Path, tiny_data: Path,
                                                                          tmp_path: Path) -> None:
    """The real agent (subprocess, real Mosquitto) on a bundle whose autoencoder decides: commissioning scores
    carry threshold_source and raise no alarm, the status says commissioned with the thresholds, a restart
    keeps them, `recalibrate` starts over, a damaged calibration file falls back to the bundle's thresholds
    and the agent keeps scoring."""
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(plain_bundle, state / "bundle.tar")
    cfg = agent_config(tmp_path, state / "bundle.tar", tiny_data, broker.port)
    try:
        sub, log = run_agent(cfg, tmp_path, broker.port)
        scores = scores_of(sub)
        assert [p["threshold_source"] for p in scores] == ["commissioning"] * 60 + ["commissioned"] * (len(scores) - 60)
        alarms = sub.of("alarm")
        assert alarms and all(a["t"] > scores[59]["t"] for a in alarms)
        done = [p for p in sub.of("status") if p["state"] == "commissioned"]
        assert done and done[0]["windows"] == 60 and done[0]["threshold"] == scores[60]["threshold"]
        cal = json.loads((state / "calibration.json").read_text())
        assert cal["state"] == "commissioned" and cal["detector"]["threshold"]["value"] == done[0]["threshold"]
        assert not (state / "calibration.windows.jsonl").exists()
        assert "thresholds commissioned" in agent_check(cfg, tmp_path)

        sub, log = run_agent(cfg, tmp_path, broker.port)  # a restart: commissioned from the first window
        assert {p["threshold_source"] for p in sub.of("score")} == {"commissioned"}

        rec = subprocess.run(agent_command("recalibrate", "--config", str(cfg)), env=gateway_env(tmp_path),
                             capture_output=True, text=True, timeout=60)
        assert rec.returncode == 0 and "systemctl reload" in rec.stdout, rec.stderr
        sub, log = run_agent(cfg, tmp_path, broker.port)
        assert scores_of(sub)[0]["threshold_source"] == "commissioning"
        assert "recalibration requested" in log

        (state / "calibration.json").write_text("{not json")
        sub, log = run_agent(cfg, tmp_path, broker.port)
        assert {p["threshold_source"] for p in sub.of("score")} == {"bundle"} and len(sub.of("score")) == 315
        assert f"{state / 'calibration.json'}: unreadable calibration" in log and "recalibrate" in log
        assert any(p.get("event") == "calibration_unreadable" for p in sub.of("status"))
        out = agent_check(cfg, tmp_path)
        assert "unreadable" in out and "recalibrate" in out
    finally:
        broker.stop()


def test_a_machine_that_looks_faulty_while_commissioning_keeps_the_bundles_detector_and_says_so(
        tiny_bundle: Path, tmp_path: Path) -> None:
    """The real agent on a machine three times as rough as the reference (2x gives a median window 7.6x the
    bundle's thresholds here, under the default factor 10): its commissioning windows sit far above them, so
    it must not learn them as normal. The status topic says commissioning_suspect (with the numbers that
    decided it), the scores after it carry threshold_source bundle, the bundle's detector alarms as before,
    and a restart keeps the verdict."""
    from vibrawatch.agent.sources.loaders import save_snapshot_npz
    from vibrawatch.agent.sources.simulate import simulate_bearing_run

    data = tmp_path / "much_rougher.npz"
    save_snapshot_npz(simulate_bearing_run(n_snapshots=80, snapshot_samples=4096, fs_hz=20000, onset=0.6, noise=0.21,
                                           seed=5), data)
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    cfg = agent_config(tmp_path, tiny_bundle, data, broker.port, windows=60)
    try:
        sub, log = run_agent(cfg, tmp_path, broker.port)
        scores = scores_of(sub)
        assert [p["threshold_source"] for p in scores] == ["commissioning"] * 60 + ["bundle"] * (len(scores) - 60)
        suspect = [p for p in sub.of("status") if p["state"] == "commissioning_suspect"]
        assert len(suspect) == 1 and suspect[0]["threshold_source"] == "bundle", sub.of("status")
        assert suspect[0]["median_level"] > 10 or suspect[0]["standout"] > 3  # the documented factors
        assert suspect[0]["threshold"] == suspect[0]["bundle_threshold"] == scores[60]["threshold"]
        assert not [p for p in sub.of("status") if p["state"] == "commissioned"]
        assert [a for a in sub.of("alarm") if a["event"] == "raised" and a["t"] > scores[59]["t"]]  # as before
        assert json.loads((tmp_path / "state" / "calibration.json").read_text())["state"] == "commissioning_suspect"
        sub, log = run_agent(cfg, tmp_path, broker.port)  # a restart: the verdict stands, no new commissioning
        assert {p["threshold_source"] for p in sub.of("score")} == {"bundle"}
    finally:
        broker.stop()


def test_the_default_detector_is_commissioned_on_a_rougher_machine(tiny_bundle: Path, rougher_data: Path,
                                                                   tmp_path: Path) -> None:
    """The default (combined) bundle on a machine 1.4x rougher than the one it was trained on: with the bundle's
    numbers it raises false alarms; `vibrawatch-agent run` with [commissioning] raises none while commissioning
    (and publishes no transient, condition change or diagnosis), says commissioning -> commissioned with this
    machine's refitted floors, PCA and own-deviation numbers, raises no false alarm after it and still catches
    the failure; a restart resumes the commissioned detector from the state directory."""
    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.source import ReplaySource

    bundle = load_bundle(tiny_bundle)
    assert bundle.detector.combined
    pipe = Pipeline(bundle)  # the bundle's numbers, as an agent without [commissioning] decides
    plain = [e for c in ReplaySource(rougher_data, speed=0).chunks() for e in pipe.process(c) if isinstance(e, Scored)]
    assert any(e.decision.event == "raised" and e.t < ONSET_T for e in plain)  # false alarms on the healthy machine

    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    cfg = agent_config(tmp_path, tiny_bundle, rougher_data, broker.port, windows=120)
    state = tmp_path / "state"
    try:
        sub, log = run_agent(cfg, tmp_path, broker.port)
        scores = scores_of(sub)
        assert [p["threshold_source"] for p in scores] == ["commissioning"] * 120 + ["commissioned"] * 195
        end_t = scores[119]["t"]
        assert not [p for kind in ("alarm", "transient", "condition_change", "diagnosis") for p in sub.of(kind)
                    if p["t"] <= end_t]
        raised = [a for a in sub.of("alarm") if a["event"] == "raised"]
        assert raised and all(a["t"] >= ONSET_T for a in raised), raised  # no false alarm; the failure caught
        states = [p["state"] for p in sub.of("status")]
        assert states.index("commissioning") < states.index("commissioned")
        done = next(p for p in sub.of("status") if p["state"] == "commissioned")
        fitted = json.loads((state / "calibration.json").read_text())["detector"]
        assert set(fitted) == {"threshold", "floor", "pca", "own"}
        assert done["threshold"] == fitted["threshold"]["value"] == scores[120]["threshold"]
        assert done["floor_thresholds"] == fitted["floor"]["thresholds"]
        assert done["pca_threshold"] == fitted["pca"]["threshold"]
        b = bundle.detector
        assert b.floor is not None and b.pca is not None
        floor = np.asarray(fitted["floor"]["thresholds"])  # this machine's: higher than the reference's
        assert np.all(floor > b.floor.thresholds) and fitted["pca"]["threshold"] > b.pca.threshold
        assert not (state / "calibration.windows.jsonl").exists()
        assert "commissioned" in agent_check(cfg, tmp_path)

        sub, log = run_agent(cfg, tmp_path, broker.port)  # a restart: the commissioned detector from the start
        assert {p["threshold_source"] for p in sub.of("score")} == {"commissioned"}
        assert {p["threshold"] for p in sub.of("score")} == {done["threshold"]}
        again = [a for a in sub.of("alarm") if a["event"] == "raised"]
        assert [(a["t"], a["channel"]) for a in again if a["t"] > end_t] == [(a["t"], a["channel"]) for a in raised]
        assert all(a["t"] >= ONSET_T for a in again)
    finally:
        broker.stop()


def test_the_documented_commissioning_keys_parse(tmp_path: Path) -> None:
    """configs/agent.example.toml's commented [commissioning] section, uncommented, is a valid config."""
    text = (ROOT / "configs" / "agent.example.toml").read_text()
    lines = text.splitlines()
    start = lines.index(next(x for x in lines if x.startswith("# [commissioning]")))
    block = [x[2:] for x in lines[start:] if x.startswith("# ")]
    block = [x for x in block if not x.startswith("windows")]
    cfg = tmp_path / "agent.toml"
    cfg.write_text("\n".join(lines[:start] + block) + "\n")
    c = load_agent_config(cfg).commissioning
    assert c is not None and c.hours == 24 and c.suspect_factor == 10 and c.channel_factor == 3
    assert c.keep == 20000 == CommissioningSection().keep  # the documented default is the default
    assert c.state == "/var/lib/vibrawatch/calibration.json"


def test_every_swap_through_agent_apply_carries_the_commissioning(plain_bundle: Path, tiny_bundle: Path,
                                                                  tiny_data: Path, tmp_path: Path) -> None:
    """Agent.apply is the one swap (SIGHUP, a deploy's apply or rollback): the same bundle resumes the
    commissioning with its progress saved first; another bundle version starts a new one; going back (a
    rollback) starts another (the replaced model's commissioning had not finished: there is nothing to take
    back); a combined-detector bundle is commissioned too, and the pipeline decides with the detector the
    commissioning holds."""
    import dataclasses

    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.service import Agent

    state = tmp_path / "state"
    cfg = agent_config(tmp_path, plain_bundle, tiny_data, 9, windows=1000)
    agent = Agent(cfg)
    windows = state / "calibration.windows.jsonl"
    try:
        agent._commit(agent._first)
        assert agent.commission is not None and agent.commission.commissioning
        while len(agent.commission.log) < 5:
            item = agent.reader.get(5.0)
            assert item is not None
            agent._handle(item)
        seen = agent.commission.log.evidence().rows()
        calibration = state / "calibration.json"

        agent.apply(agent.cfg, agent.bundle)  # a reload, nothing changed: resumed, progress saved first
        assert agent.commission.log.evidence().rows() == seen
        ev, stride, dropped, clean = read_windows(windows, row_shapes(agent.bundle.detector))
        assert ev.rows() == seen and stride == 1 and not dropped and clean

        old = agent.bundle
        new = dataclasses.replace(old, version=old.version + "-new")
        agent.apply(agent.cfg, new)  # a deploy's apply: another model version
        assert agent.commission.commissioning and len(agent.commission.log) == 0 and not windows.exists()
        assert "a new commissioning starts" in (agent.commission.note or "")
        assert json.loads(calibration.read_text())["model"] == new.version

        agent.apply(agent.cfg, old)  # its rollback: the version changed again
        assert agent.commission.commissioning and agent.commission.model == old.version

        combined = load_bundle(tiny_bundle)
        agent.apply(agent.cfg, combined)  # the combined detector: commissioned like any other
        assert agent.commission.commissioning and agent.commission.model == combined.version
        assert agent.pipeline is not None and agent.pipeline.detector is combined.detector
        while len(agent.commission.log) < 3:
            item = agent.reader.get(5.0)
            assert item is not None
            agent._handle(item)
        assert set(agent.commission.log.evidence().rows()[0]) == {
            "t", "score", "contributions", "pca_score", "pca_contributions", "pca_held", "floors", "means"}
    finally:
        if agent.reader is not None:
            agent.reader.close()
        if agent.publisher is not None:
            agent.publisher.stop("stopped")
        agent.spool.close()


@pytest.mark.parametrize("windows", [30, 100])
def test_a_commissioning_on_few_windows_says_how_often_a_healthy_window_will_cross(
        windows: int, caplog: pytest.LogCaptureFixture) -> None:
    """Thresholds at the largest of n healthy windows are crossed by about 1 later healthy window in n + 1: under
    100 windows the agent's log says so when the commissioning completes, and how to do better."""
    from vibrawatch.agent.model.commission import status

    det = detector()
    scores, contrib, times = machine(1.0, n=windows + 5)
    comm = Commissioning(det, "m1", CommissioningSection(windows=windows))
    stream(comm, scores, contrib, times)
    assert comm.calibration is not None and comm.calibration.state == "commissioned"
    with caplog.at_level(logging.INFO, logger="vibrawatch.commission"):
        assert status(comm, comm.calibration)[0] == "commissioned"  # type: ignore[index]
    few = [r.getMessage() for r in caplog.records if "only" in r.getMessage()]
    if windows < 100:
        assert few == [f"commissioned on {windows} windows only: thresholds fitted on so few are crossed by about "
                       f"1 healthy window in {windows + 1}, so expect nuisance alarms; commission longer "
                       "([commissioning] windows >= 100)"]
    else:
        assert few == []
