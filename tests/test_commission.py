"""Commissioning (agent/commission.py): the streaming object equals its batch twin, the state file survives
restarts and reloads, a damaged one falls back to the bundle's thresholds, and the real agent commissions
over MQTT as documented (threshold_source on every score, the status messages, `recalibrate`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli
from jsonschema import Draft202012Validator
from mosquitto import Broker
from test_agent_e2e import Subscriber, agent_command, gateway_env

from vibrawatch.agent.commission import (
    Commissioning,
    CommissioningSection,
    commission,
    commissioning_section,
    request_recalibration,
)
from vibrawatch.agent.config import load_agent_config
from vibrawatch.agent.decide import run_alarms
from vibrawatch.agent.detector import Detector
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.threshold import fit_channel_thresholds, fit_threshold


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
    """Every window through the streaming object, as the agent feeds it (pipeline decision on the bundle's)."""
    bundle_state = comm.detector.alarm_state()
    out = []
    for s, c, t in zip(scores, contrib, times, strict=True):
        d, _, _ = comm.update(float(s), c, float(t), bundle_state.update(float(s), c))
        out.append(d)
    return out


@pytest.mark.parametrize("method", ["max", "quantile", "mean_std"])
def test_streaming_commissioning_equals_its_batch_twin_and_trainings_rule(method: str) -> None:
    det = detector(method)
    scores, contrib, times = machine(1.8, fault_from=200)  # a rougher machine that later fails
    cfg = CommissioningSection(windows=100)
    comm = Commissioning(det, "m1", cfg)
    decisions = stream(comm, scores, contrib, times)
    cal, start = commission(scores, contrib, times, det, cfg, "m1")
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
    cal, start = commission(scores, contrib, times, det, CommissioningSection(hours=0.5), "m1")
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
    assert len(resumed.scores) == 60 and resumed.commissioning
    stream(resumed, scores[60:120], contrib[60:120], times[60:120])
    assert resumed.source == "commissioned"
    # the same thresholds as one uninterrupted commissioning
    whole, _ = commission(scores, contrib, times, det, cfg, "m1")
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
    state.write_text(json.dumps({"schema": "vibrawatch.calibration/1", "model": "m2", "state": "commissioned",
                                 "threshold": -1, "channel_thresholds": [1], "windows": 1, "median_level": 1,
                                 "bundle_threshold": 1, "started_t": 0, "finished_t": 1}))
    assert Commissioning.open(det, "m2", cfg, state).source == "bundle"


@pytest.mark.parametrize("body, named", [
    ("windows = 10\nhours = 2", "exactly one of"),
    ("", "exactly one of"),
    ("windows = 0", "windows = 0"),
    ("windows = 1.5", "windows = 1.5"),
    ("hours = 1\nsuspect_factor = 0.5", "suspect_factor"),
    ("hours = 1\nlenght = 3", "unknown key"),
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
    autoencoder's thresholds decide, the bundle kind commissioning refits. Converted by `vibrawatch convert`."""
    run = tmp_path_factory.mktemp("plain") / "run"
    shutil.copytree(tiny_run, run)
    meta = json.loads((run / "run.json").read_text())
    for key in ("floor", "pca", "own", "events", "diagnosis"):
        meta.pop(key, None)
    (run / "run.json").write_text(json.dumps(meta))
    out = run.parent / "plain.tar"
    cli("convert", run, "--out", out)
    return out


def test_agent_commissions_over_mqtt_survives_a_restart_and_recalibrates(plain_bundle: Path, tiny_data: Path,
                                                                          tmp_path: Path) -> None:
    """The real agent (subprocess, real Mosquitto): commissioning scores carry threshold_source and raise no
    alarm, the status says commissioned with the thresholds, a restart keeps them, `recalibrate` starts over,
    a damaged calibration file falls back to the bundle's thresholds and the agent keeps scoring."""
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(plain_bundle, state / "bundle.tar")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'''[agent]
site = "plant1"
device = "press7"
bundle = "{state}/bundle.tar"
spool = "{state}/spool.sqlite"
[source]
kind = "replay"
path = "{tiny_data}"
speed = 0
[mqtt]
host = "127.0.0.1"
port = {broker.port}
max_backoff_s = 1
[commissioning]
windows = 60
''')
    validators = {k: Draft202012Validator(json.loads((ROOT / "agent" / "schemas" / f"{k}.json").read_text()))
                  for k in ("score", "alarm", "status")}

    def run_once() -> tuple[Subscriber, str]:
        sub = Subscriber(broker.port, "plant1", "press7")
        res = subprocess.run(agent_command("run", "--config", str(cfg)), env=gateway_env(tmp_path),
                             capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        sub.wait_for("score", 315)
        sub.close()
        for kind, v in validators.items():
            for p in sub.of(kind):
                v.validate(p)
        return sub, res.stdout + res.stderr

    try:
        sub, log = run_once()
        scores = sorted(sub.of("score"), key=lambda p: p["seq"])
        assert [p["threshold_source"] for p in scores] == ["commissioning"] * 60 + ["commissioned"] * (len(scores) - 60)
        alarms = sub.of("alarm")
        assert alarms and all(a["t"] > scores[59]["t"] for a in alarms)
        done = [p for p in sub.of("status") if p["state"] == "commissioned"]
        assert done and done[0]["windows"] == 60 and done[0]["threshold"] == scores[60]["threshold"]
        cal = json.loads((state / "calibration.json").read_text())
        assert cal["state"] == "commissioned" and cal["threshold"] == done[0]["threshold"]
        check = subprocess.run(agent_command("check", "--config", str(cfg)), env=gateway_env(tmp_path),
                               capture_output=True, text=True, timeout=60)
        assert "thresholds commissioned" in check.stdout

        sub, log = run_once()  # a restart: commissioned from the first window
        assert {p["threshold_source"] for p in sub.of("score")} == {"commissioned"}

        rec = subprocess.run(agent_command("recalibrate", "--config", str(cfg)), env=gateway_env(tmp_path),
                             capture_output=True, text=True, timeout=60)
        assert rec.returncode == 0 and "systemctl reload" in rec.stdout, rec.stderr
        sub, log = run_once()
        assert sorted(sub.of("score"), key=lambda p: p["seq"])[0]["threshold_source"] == "commissioning"
        assert "recalibration requested" in log

        (state / "calibration.json").write_text("{not json")
        sub, log = run_once()
        assert {p["threshold_source"] for p in sub.of("score")} == {"bundle"} and len(sub.of("score")) == 315
        assert f"{state / 'calibration.json'}: unreadable calibration" in log and "recalibrate" in log
        assert any(p.get("event") == "calibration_unreadable" for p in sub.of("status"))
        check = subprocess.run(agent_command("check", "--config", str(cfg)), env=gateway_env(tmp_path),
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and "unreadable" in check.stdout and "recalibrate" in check.stdout
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
    assert c.state == "/var/lib/vibrawatch/calibration.json"


def test_a_combined_detector_bundle_is_not_commissioned_and_says_so(tiny_bundle: Path, tiny_data: Path,
                                                                    tmp_path: Path) -> None:
    """The combined detector also alarms on level floors, a PCA residual and each channel's own deviation,
    which commissioning does not refit: with such a bundle [commissioning] is refused in one log line and one
    status (event commissioning_refused), every score says threshold_source bundle, the calibration file
    is left as it was, and `check` says the same."""
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    state = tmp_path / "state"
    state.mkdir()
    (state / "calibration.json").write_text('{"kept": true}')
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'''[agent]
site = "plant1"
device = "press7"
bundle = "{tiny_bundle}"
spool = "{state}/spool.sqlite"
[source]
kind = "replay"
path = "{tiny_data}"
speed = 0
[mqtt]
host = "127.0.0.1"
port = {broker.port}
max_backoff_s = 1
[commissioning]
windows = 60
''')
    status_schema = Draft202012Validator(json.loads((ROOT / "agent" / "schemas" / "status.json").read_text()))
    try:
        sub = Subscriber(broker.port, "plant1", "press7")
        res = subprocess.run(agent_command("run", "--config", str(cfg)), env=gateway_env(tmp_path),
                             capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        sub.wait_for("score", 315)
        sub.close()
        log = res.stdout + res.stderr
        lines = [x for x in log.splitlines() if "[commissioning] not applied" in x]
        assert len(lines) == 1 and "combined detector" in lines[0] and "combined = false" in lines[0], log
        assert {p["threshold_source"] for p in sub.of("score")} == {"bundle"}
        refused = [p for p in sub.of("status") if p.get("event") == "commissioning_refused"]
        assert len(refused) == 1 and refused[0]["threshold_source"] == "bundle" and "combined" in refused[0]["note"]
        for p in sub.of("status"):
            status_schema.validate(p)
        assert not any(p["state"].startswith("commissioning") for p in sub.of("status"))
        assert (state / "calibration.json").read_text() == '{"kept": true}'
        check = subprocess.run(agent_command("check", "--config", str(cfg)), env=gateway_env(tmp_path),
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and "[commissioning] not applied" in check.stdout, check.stderr
    finally:
        broker.stop()


def test_every_swap_through_agent_apply_carries_the_commissioning(plain_bundle: Path, tiny_bundle: Path,
                                                                  tiny_data: Path, tmp_path: Path) -> None:
    """Agent.apply is the one swap (SIGHUP, a deploy's apply or rollback): the same bundle resumes the
    commissioning with its progress saved first; another bundle version starts a new one; going back (a
    rollback) starts another; a combined-detector bundle is refused and leaves the file alone."""
    import dataclasses

    from vibrawatch.agent.bundle import load_bundle
    from vibrawatch.agent.service import Agent

    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'''[agent]
site = "plant1"
device = "press7"
bundle = "{plain_bundle}"
spool = "{state}/spool.sqlite"
[source]
kind = "replay"
path = "{tiny_data}"
speed = 0
[mqtt]
host = "127.0.0.1"
port = 9
max_backoff_s = 1
[commissioning]
windows = 1000
''')
    agent = Agent(cfg)
    try:
        agent._commit(agent._first)
        assert agent.commission is not None and agent.commission.commissioning
        while len(agent.commission.scores) < 5:
            item = agent.reader.get(5.0)
            assert item is not None
            agent._handle(item)
        seen = len(agent.commission.scores)
        calibration = state / "calibration.json"

        agent.apply(agent.cfg, agent.bundle)  # a reload, nothing changed: resumed, progress saved first
        assert len(agent.commission.scores) == seen
        assert json.loads(calibration.read_text())["scores"] == agent.commission.scores

        old = agent.bundle
        new = dataclasses.replace(old, version=old.version + "-new")
        agent.apply(agent.cfg, new)  # a deploy's apply: another model version
        assert agent.commission.commissioning and agent.commission.scores == []
        assert "a new commissioning starts" in (agent.commission.note or "")
        assert json.loads(calibration.read_text())["model"] == new.version

        agent.apply(agent.cfg, old)  # its rollback: the version changed again
        assert agent.commission.commissioning and agent.commission.model == old.version

        before = calibration.read_text()
        agent.apply(agent.cfg, load_bundle(tiny_bundle))  # the combined detector: refused, the file left alone
        assert agent.commission.refused and agent.commission.source == "bundle"
        assert "[commissioning] not applied" in (agent.commission.note or "")
    finally:
        if agent.reader is not None:
            agent.reader.close()
        if agent.publisher is not None:
            agent.publisher.stop("stopped")
        agent.spool.close()
    after = json.loads(calibration.read_text())  # the running one's progress saved (its time updated), no more
    assert {**json.loads(before), "updated": 0} == {**after, "updated": 0}
