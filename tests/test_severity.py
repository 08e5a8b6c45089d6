"""Severity before patience, and shared shifts across a recording gap (agent/detect/events.py): a several-fold
jump of one channel is not held but judged by the alarm rule's k windows (so it alarms within one model window of
the fault's data, and a one-window spike that falls back raises nothing), while a moderate one is still held to
see whether it relaxes;
every channel moving alike across a gap is one condition change, and a channel that keeps diverging after it
still alarms. On synthetic levels first, then on the simulator through the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

from vibrawatch.agent.detect.decide import AlarmRule
from vibrawatch.agent.detect.detector import Detector
from vibrawatch.agent.detect.events import EventRule, run_events
from vibrawatch.agent.detect.measures import Floor
from vibrawatch.agent.detect.recording import Recording
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.sources.loaders import load, save_snapshot_npz
from vibrawatch.agent.sources.simulate import BearingSimulator

C = 4
RULE = EventRule(transient_s=6 * 600.0, history=4)
ALARM = AlarmRule(raise_after=3, clear_after=3)
STEP = np.full(C, math.log(1.2))
HIGH = np.full(C, math.log(1.08))  # the healthy period never went more than 8% above its median
FLOOR = Floor(("rms",), np.full((1, C), 1.1), np.ones((1, C)), STEP, HIGH)
SEVERE = FLOOR.severe_levels()


def quiet(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n healthy windows 600 s apart: every level well below 1, log levels near 0."""
    rng = np.random.default_rng(seed)
    return {"t": np.arange(n) * 600.0, "score": np.full(n, 0.5), "cl": np.full((n, C), 0.5),
            "own": np.full((n, C), 0.8), "z": rng.uniform(0.2, 0.8, (n, C)), "lv": rng.normal(0, 0.01, (n, C))}


def jump(run: dict[str, np.ndarray], channels: list[int], at: int, factor: np.ndarray | float) -> None:
    """Every level of ``channels`` multiplied by ``factor`` from window ``at``, as a step would."""
    factor = np.broadcast_to(np.asarray(factor, dtype=np.float64), (len(run["t"]) - at,))
    for c in channels:
        run["own"][at:, c] *= factor
        run["lv"][at:, c] += np.log(factor)
        run["z"][at:, c] = 0.5 + 10 * (factor - 1)
        run["cl"][at:, c] *= factor


def decide(run: dict[str, np.ndarray], severe: np.ndarray | None = SEVERE, ceiling: np.ndarray | None = None) -> list:
    return run_events(run["t"], run["score"], run["cl"], run["own"], run["z"], run["lv"], RULE, ALARM, STEP,
                      None, severe, ceiling)


def raised(verdicts: list) -> list[tuple[int, int]]:
    return [(i, c) for i, v in enumerate(verdicts) for c in v.raised]


def kinds(verdicts: list) -> list[str]:
    return [e.kind for v in verdicts for e in v.events]


def test_the_severe_level_is_the_healthy_maximum_exceeded_again_by_the_healthy_range_at_least_a_doubling() -> None:
    """A steady channel (healthy max 1.08x its median) alarms at once beyond 1.08 x 2; one that wandered to 3x
    its median when healthy must reach 3 x 3 = 9x."""
    f = Floor(("rms",), np.ones((1, 2)), np.ones((1, 2)), np.full(2, 0.2), np.log([1.08, 3.0]))
    np.testing.assert_allclose(np.exp(f.severe_levels()), [2.16, 9.0])
    assert Floor(("rms",), np.ones((1, 2)), np.ones((1, 2)), np.full(2, 0.2)).severe_levels() is None


def test_a_severe_step_alarms_after_k_windows_a_moderate_one_is_still_held() -> None:
    run = quiet(40)
    jump(run, [2], 10, 4.0)  # x4 and holds
    v = decide(run)
    assert raised(v) == [(12, 2)] and v[12].active == (2,) and kinds(v) == []  # k = 3 windows beyond it
    assert all(v[i].active == (2,) for i in range(12, 40))  # it stays raised on its own level
    assert raised(decide(run, severe=None)) == [(18, 2)]  # without severity: held transient_s (6 windows), then k
    moderate = quiet(40)
    jump(moderate, [2], 10, np.r_[np.full(3, 1.6), np.full(27, 1.0)])
    v = decide(moderate)
    assert raised(v) == [] and kinds(v) == ["transient"]
    held = quiet(40)
    jump(held, [2], 10, 1.6)  # moderate and holds: still waits transient_s before the alarm
    assert raised(decide(held)) == [(18, 2)]
    spike = quiet(40)  # x6 for one window, then back: severe, but not for the alarm rule's k windows
    jump(spike, [2], 10, np.r_[6.0, np.full(29, 1.0)])
    v = decide(spike)
    assert raised(v) == [] and kinds(v) == ["transient"]


def test_a_moderate_step_that_changed_the_signal_s_shape_alarms_after_k_windows() -> None:
    """The seeded ball fault B021: drive end x1.67 (moderate, held), its crest and kurtosis ten times further from
    their healthy centre than the healthy period ever went. A level transient leaves the shape as it was: held."""
    def with_shape(factor: np.ndarray | float, shape: np.ndarray | float) -> list:
        run = quiet(40)
        jump(run, [2], 10, factor)
        sh = np.full((40, C), 0.5)
        sh[10:, 2] = shape
        return run_events(run["t"], run["score"], run["cl"], run["own"], run["z"], run["lv"], RULE, ALARM, STEP,
                          None, SEVERE, None, sh)

    v = with_shape(1.6, 10.0)
    assert raised(v) == [(12, 2)] and kinds(v) == []  # k = 3 windows, not transient_s
    assert raised(with_shape(1.6, 1.5)) == [(18, 2)]  # within twice the healthy extreme: held as before
    v = with_shape(np.r_[np.full(3, 1.6), np.full(27, 1.0)], 1.5)  # a level transient that relaxes: still one
    assert raised(v) == [] and kinds(v) == ["transient"]
    v = with_shape(1.6, np.r_[10.0, np.full(29, 0.5)])  # one window of impacts: not for k windows
    assert raised(v) == [(18, 2)] and kinds(v) == []


def test_a_held_step_that_goes_on_to_a_severe_level_alarms_then() -> None:
    run = quiet(40)
    jump(run, [1], 10, np.r_[1.5, 1.6, 1.7, np.full(27, 2.5)])  # moderate for 3 windows, then beyond 2.16x
    assert raised(decide(run)) == [(15, 1)]  # severe from window 13, k = 3


def test_a_configured_absolute_level_alarms_at_once_on_a_step_and_on_any_level_beyond_it() -> None:
    ceiling = FLOOR.ceiling((10.0, 10.0, 1.5, 10.0))
    run = quiet(40)
    jump(run, [2], 10, 1.6)  # a moderate step, but beyond bearing3's absolute 1.5
    assert raised(decide(run, ceiling=ceiling)) == [(12, 2)]
    slow = quiet(40)
    jump(slow, [2], 10, np.linspace(1.0, 2.0, 30))  # no step: above 1.5 from window 25 (1.52x)
    slow["own"][10:, 2] = 0.8  # its floor never sees it (a floor fitted on a rough machine): the limit does
    assert raised(decide(slow, ceiling=ceiling)) == [(27, 2)]  # k = 3 windows beyond it
    assert raised(decide(slow)) == []
    assert raised(decide(quiet(40), ceiling=ceiling)) == []


def test_every_channel_moving_alike_across_a_gap_is_one_condition_change() -> None:
    """x1.17-1.27 on every channel after a day's pause: below each channel's step, so within one window it
    would not be a shared jump, but across a gap nothing links the windows on either side."""
    run = quiet(40)
    run["t"][20:] += 86400.0
    jump(run, list(range(C)), 20, 1.0)
    for c, g in enumerate((1.17, 1.21, 1.24, 1.27)):
        jump(run, [c], 20, g)
    run["own"][20:] = 0.8 * 1.4  # every floor above: without the condition change, four alarms
    v = decide(run)
    assert raised(v) == [] and kinds(v) == ["condition_change"]
    assert v[20].events[0].channels == (0, 1, 2, 3)
    no_gap = quiet(40)  # the same shift with no gap: not a shared jump (each below its step) -> the floors alarm
    for c, g in enumerate((1.17, 1.21, 1.24, 1.27)):
        jump(no_gap, [c], 20, g)
    no_gap["own"][20:], no_gap["z"][20:] = 0.8 * 1.4, 2.5
    assert kinds(decide(no_gap)) == [] and {c for _, c in raised(decide(no_gap))} == {0, 1, 2, 3}


def test_a_channel_that_moved_several_fold_more_than_the_others_is_not_re_based_away() -> None:
    """Every channel beyond its step in one window, bearing1 x3 and the others x1.25: with the median jump removed
    bearing1 is left 2.4x, beyond its step, so not one shift of the machine; x3 is beyond its severe level and
    alarms after k windows (without severity: held like the others)."""
    run = quiet(40)
    jump(run, [0], 20, 3.0)
    jump(run, [1, 2, 3], 20, 1.25)
    v = decide(run)
    assert "condition_change" not in kinds(v) and raised(v)[0] == (22, 0)
    assert raised(decide(run, severe=None))[0] != (20, 0)


def test_across_a_gap_channels_that_moved_unlike_are_not_a_condition_change() -> None:
    """bearing1 x1.5 and the others x1.1 across a gap: with the median shift removed bearing1 is left 1.36x, beyond
    its step (1.2x): not alike, not re-based."""
    run = quiet(40)
    run["t"][20:] += 86400.0
    jump(run, [0], 20, 1.5)
    jump(run, [1, 2, 3], 20, 1.1)
    assert "condition_change" not in kinds(decide(run))


def test_a_fault_that_reaches_the_other_channel_attenuated_is_not_a_condition_change() -> None:
    """Two accelerometers on one machine (drive end, fan end), a seeded fault on the drive end: x7.4 there and
    x2.8 on the fan end in one window, both beyond their steps. Not a shared shift (removing the median leaves
    each 1.6x off, beyond its step): the drive end is beyond its severe level and alarms after k windows."""
    two = {k: (v[:, :2] if v.ndim == 2 else v) for k, v in quiet(40).items()}
    jump(two, [0], 20, 7.4)
    jump(two, [1], 20, 2.8)
    v = run_events(two["t"], two["score"], two["cl"], two["own"], two["z"], two["lv"], RULE, ALARM, STEP[:2], None,
                   SEVERE[:2])
    assert kinds(v) == [] and (22, 0) in raised(v)


def test_a_shift_shared_in_one_window_that_takes_a_channel_beyond_its_severe_level_is_a_step() -> None:
    """A seeded inner-race fault (CWRU IR007: drive end x4.1, fan end x3.0 in one window) moves both channels
    alike within their steps (removing the median leaves each 0.15 off in log, the step is 0.18), so it reads as
    one shift of the machine; but x4.1 is beyond the drive end's severe level (2.16x), and severity comes first:
    the drive end alarms after k windows and no condition change is published. Below the severe level the
    same shape is still a condition change."""
    step = np.full(2, math.log(1.2))
    two = {k: (v[:, :2] if v.ndim == 2 else v) for k, v in quiet(40).items()}
    moderate = {k: v.copy() for k, v in two.items()}
    jump(two, [0], 20, 4.1)
    jump(two, [1], 20, 3.0)
    v = run_events(two["t"], two["score"], two["cl"], two["own"], two["z"], two["lv"], RULE, ALARM, step, None,
                   SEVERE[:2])
    assert "condition_change" not in kinds(v) and raised(v)[0] == (22, 0)
    unseverity = run_events(two["t"], two["score"], two["cl"], two["own"], two["z"], two["lv"], RULE, ALARM, step,
                            None, None)
    assert kinds(unseverity) == ["condition_change"]  # the rule's cause: without severity, one shift
    jump(moderate, [0], 20, 1.5)
    jump(moderate, [1], 20, 1.35)
    v = run_events(moderate["t"], moderate["score"], moderate["cl"], moderate["own"], moderate["z"], moderate["lv"],
                   RULE, ALARM, step, None, SEVERE[:2])
    assert kinds(v) == ["condition_change"]


def test_a_channel_that_keeps_diverging_after_a_shared_shift_still_alarms() -> None:
    run = quiet(50)
    run["t"][20:] += 86400.0
    jump(run, list(range(C)), 20, 1.22)
    jump(run, [3], 30, np.geomspace(1.1, 4, 20))  # after the gap bearing4 goes on rising, alone
    v = decide(run)
    assert kinds(v)[0] == "condition_change"
    assert {c for _, c in raised(v)} == {3}


def test_bundles_without_the_new_fields_keep_loading_and_a_wrong_absolute_is_named(tiny_run: Path) -> None:
    d = json.loads((tiny_run / "run.json").read_text())
    assert "high" in d["floor"] and "absolute" not in d["events"]
    det = Detector.from_dict(d)
    assert det.event_limits()[0] is not None and det.event_limits()[1] is None
    old = json.loads(json.dumps(d))
    del old["floor"]["high"]
    assert Detector.from_dict(old).event_limits() == (None, None)  # decides as before: no severity rule
    d["events"]["absolute"] = [0.5, 0.5, 0.5, 0.5]
    det = Detector.from_dict(d)
    assert det.events is not None and det.events.absolute == (0.5, 0.5, 0.5, 0.5)
    assert Detector.from_dict(json.loads(json.dumps(det.to_dict()))).events == det.events
    for bad, named in (([0.5, 0.5], r"events\.absolute: 2 levels, expected one per channel \(4\)"),
                       ([0.5, -1, 0.5, 0.5], r"events\.absolute: expected one finite number > 0"),
                       ("0.5", r"events\.absolute: expected a list")):
        d["events"]["absolute"] = bad
        with pytest.raises(ConfigError, match=named):
            Detector.from_dict(d)


def test_the_product_config_takes_absolute_levels(tmp_path: Path) -> None:
    from vibrawatch.train.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text("[product]\nabsolute = [0.2, 0.2, 0.3, 0.3]\n")
    assert load_config(cfg).product.absolute == (0.2, 0.2, 0.3, 0.3)
    cfg.write_text('[product]\nabsolute = "high"\n')
    with pytest.raises(ConfigError, match=r"\[product\] absolute"):
        load_config(cfg)


def test_the_simulator_pauses_and_comes_back_shifted() -> None:
    sim = BearingSimulator(n_snapshots=21, snapshot_samples=256, gap_at=0.5, gap_s=3600.0, gap_gain=1.2,
                           gap_spread=0.05)
    t = sim.times()
    assert np.all(np.diff(t)[:9] == 600.0) and t[10] - t[9] == 4200.0
    np.testing.assert_allclose(sim.gains(9), 1.0)
    np.testing.assert_allclose(sim.gains(10), 1.2 * np.array([0.95, 0.95 + 0.1 / 3, 0.95 + 0.2 / 3, 1.05]))
    assert np.array_equal(sim.run().timestamps, t)
    with pytest.raises(ConfigError, match="gap_spread"):
        BearingSimulator(gap_at=0.5, gap_spread=1.0)


# --- on the simulator, through the CLI --------------------------------------------------------------------

def _healthy_part(tiny_data: Path, tmp_path: Path, name: str, gains: np.ndarray, gap_at: int | None = None) -> Path:
    """tiny_data before its fault starts (snapshots 0..47 of 80), each channel scaled per snapshot by ``gains``,
    with a day's pause before snapshot ``gap_at``."""
    rec = load(tiny_data)
    assert isinstance(rec, Recording) and rec.labels is not None and rec.labels[:48].sum() == 0
    t = rec.timestamps[:48].copy()
    if gap_at is not None:
        t[gap_at:] += 86400.0
    out = tmp_path / f"{name}.npz"
    save_snapshot_npz(Recording(rec.data[:48] * gains[:, None, :].astype(np.float32), t, rec.fs_hz, rec.channels,
                                name, relative_time=True), out)
    return out


def _evaluate(run: Path, data: Path) -> dict:
    return json.loads(cli("evaluate", run, "--data", data, "--json", "--quiet"))


def test_on_the_simulator_severity_and_gaps(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    """A trained run with the default transient time (12 h, far longer than these 8 h): bearing3 jumping x4 is
    raised within the snapshot the step starts in (k frames); x1.8 for two snapshots is a transient; every bearing x1.17
    to x1.27 after a day's gap is one condition change and nothing else; bearing2 diverging after it alarms."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rec = load(tiny_data)
    assert isinstance(rec, Recording)
    step = np.ones((48, 4))
    step[41:, 2] = 4.0
    r = _evaluate(run, _healthy_part(tiny_data, tmp_path, "severe", step))
    assert [a["channel"] for a in r["alarms"]] == ["bearing3"] and r["transients"] == []
    snapshot_s = rec.data.shape[1] / rec.fs_hz
    raised_at = r["episodes"][0]["raised_s"]  # in the snapshot the step starts in: the first window showing it
    assert rec.timestamps[41] <= raised_at <= rec.timestamps[41] + snapshot_s
    relaxing = np.ones((48, 4))
    relaxing[41:43, 2] = 1.8
    r = _evaluate(run, _healthy_part(tiny_data, tmp_path, "relaxing", relaxing))
    assert r["alarms"] == [] and [t["channel"] for t in r["transients"]] == ["bearing3"]
    shared = np.ones((48, 4))
    shared[30:] = [1.17, 1.21, 1.24, 1.27]
    r = _evaluate(run, _healthy_part(tiny_data, tmp_path, "gap", shared, gap_at=30))
    assert r["alarms"] == [] and len(r["condition_changes"]) == 1 and r["transients"] == []
    diverging = shared.copy()
    diverging[34:, 1] *= np.geomspace(1.3, 4.0, 14)
    r = _evaluate(run, _healthy_part(tiny_data, tmp_path, "diverging", diverging, gap_at=30))
    assert len(r["condition_changes"]) == 1 and {a["channel"] for a in r["alarms"]} == {"bearing2"}


def test_a_severe_step_on_a_channel_that_moved_less_than_another_is_held() -> None:
    """Severity decides when, attribution who: bearing1 x6 and bearing2 x2.5 (beyond its severe 2.16x, but its own
    inputs moved far less: bearing1's vibration reaching it) in one window: bearing1 is raised after k windows, bearing2
    is held like any step and raises nothing while bearing1 explains it."""
    run = quiet(40)
    jump(run, [0], 20, 6.0)
    jump(run, [1], 20, 2.5)
    run["z"][20:, 1] = 1.0
    v = decide(run)
    assert raised(v)[0] == (22, 0)
    assert all(1 not in x.raised for x in v[20:27])  # held for transient_s (6 windows)


def test_evaluate_never_fits_its_baselines_on_data_known_faulty(tiny_run: Path, tiny_data: Path,
                                                                tmp_path: Path) -> None:
    """The training's share ("50%") of another run can reach past that run's healthy part (a normal record
    followed by a fault record): the baselines are then fitted only up to the known-healthy end, so the floors
    do not learn the fault as healthy."""
    rec = load(tiny_data)
    assert isinstance(rec, Recording) and rec.labels is not None
    part = tmp_path / "later.npz"  # snapshots 30..79: the fault (from 48) starts 36% in, before the run's 50%
    save_snapshot_npz(Recording(rec.data[30:], rec.timestamps[30:] - rec.timestamps[30], rec.fs_hz, rec.channels,
                                "later", relative_time=True, labels=rec.labels[30:]), part)
    r = _evaluate(tiny_run, part)

    def seconds(s: str) -> float:
        h, m, sec = s.lstrip("+").split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)

    assert r["scoring"]["healthy_from"] == "labels in the data"
    assert seconds(r["baselines_fitted_until"]) == seconds(r["scoring"]["healthy_until"])
    assert seconds(r["scoring"]["healthy_until"]) < rec.timestamps[48] - rec.timestamps[30]
