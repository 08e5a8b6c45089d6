"""The combined detector's decision layer (agent/detect/events.py, diagnosis.py): who is named, what is a
transient, what is a condition change, and the diagnosis; on synthetic levels first, then on real runs through
the CLI."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, shared

from vibrawatch.agent.detect.decide import AlarmRule
from vibrawatch.agent.detect.detector import Detector
from vibrawatch.agent.detect.diagnosis import Diagnosis
from vibrawatch.agent.detect.events import EventRule, EventState, run_events
from vibrawatch.agent.detect.recording import Recording
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.sources.loaders import load, save_snapshot_npz

C = 4
RULE = EventRule(transient_s=6 * 600.0, history=4)
ALARM = AlarmRule(raise_after=2, clear_after=3)
STEP = np.full(C, np.log(1.2))


def quiet(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n healthy windows 600 s apart: every level well below 1, log levels near 0."""
    rng = np.random.default_rng(seed)
    return {"t": np.arange(n) * 600.0, "score": np.full(n, 0.5), "cl": np.full((n, C), 0.5),
            "own": np.full((n, C), 0.8), "z": rng.uniform(0.2, 0.8, (n, C)), "lv": rng.normal(0, 0.01, (n, C))}


def jump(run: dict[str, np.ndarray], channels: list[int], at: int, factor: np.ndarray) -> None:
    """Every level of ``channels`` multiplied by ``factor`` (one per window from ``at``), as a step would."""
    for c in channels:
        run["own"][at:, c] *= factor
        run["lv"][at:, c] += np.log(factor)
        run["z"][at:, c] = 0.5 + 10 * (factor - 1)
        run["cl"][at:, c] *= factor


def decide(run: dict[str, np.ndarray]) -> list:
    return run_events(run["t"], run["score"], run["cl"], run["own"], run["z"], run["lv"], RULE, ALARM, STEP)


def raised(verdicts: list) -> list[tuple[int, int]]:
    return [(i, c) for i, v in enumerate(verdicts) for c in v.raised]


def test_a_step_that_relaxes_back_is_a_transient_not_an_alarm() -> None:
    run = quiet(40)
    jump(run, [2], 10, np.r_[np.full(3, 1.6), np.full(27, 1.0)])  # up for 3 windows, back within transient_s
    verdicts = decide(run)
    assert raised(verdicts) == []
    events = [e for v in verdicts for e in v.events]
    assert [(e.kind, e.channels, e.t) for e in events] == [("transient", (2,), 6000.0)]
    assert events[0].ratio[0] == pytest.approx(1.6, rel=0.02) and events[0].until == 13 * 600.0


def test_a_step_that_holds_alarms_on_its_own_channel_only_after_the_transient_time() -> None:
    run = quiet(40)
    jump(run, [2], 10, np.full(30, 1.6))
    run["cl"][10:, [0, 1, 3]] = 1.5  # the model's error spreads to every other channel's share
    verdicts = decide(run)
    assert raised(verdicts) == [(17, 2)]  # held 6 windows (transient_s), then raise_after 2
    assert all(set(v.active) <= {2} for v in verdicts)


def test_a_step_that_keeps_growing_alarms_at_once() -> None:
    run = quiet(40)
    jump(run, [1], 10, np.geomspace(1.5, 60, 30))  # twice its first jump (in log) four windows later
    first = raised(decide(run))[0]
    assert first[1] == 1 and first[0] < 16  # before transient_s (window 16) would have released it


def test_every_channel_jumping_together_is_a_condition_change_not_four_failures() -> None:
    run = quiet(40)
    jump(run, list(range(C)), 10, np.full(30, 1.5))
    verdicts = decide(run)
    assert raised(verdicts) == []
    events = [e for v in verdicts for e in v.events]
    assert [(e.kind, e.t) for e in events] == [("condition_change", 6000.0)]
    # a real fault after the change still alarms, read against the new condition
    run2 = copy.deepcopy(run)
    jump(run2, [3], 25, np.geomspace(1.2, 4, 15))
    assert raised(decide(run2))[0][1] == 3


def test_a_gradual_rise_alarms_without_waiting_and_names_only_the_channel_that_moved() -> None:
    run = quiet(40)
    rise = np.linspace(1.0, 1.6, 30)
    jump(run, [0], 10, rise)
    run["cl"][10:, 0] = 0.5 + 3 * (rise - 1)  # its share of the model's error grows with it ...
    run["cl"][10:, 1] = 0.5 + 2 * (rise - 1)  # ... and spreads to channel 1, whose own inputs did not move
    verdicts = decide(run)
    first = raised(verdicts)[0]
    assert first[1] == 0 and first[0] < 25
    assert all(set(v.active) <= {0} for v in verdicts)


def test_an_alarm_stands_while_another_channel_jumps_and_relaxes() -> None:
    """FEMTO Bearing1_1: the failing bearing's horizontal channel is in alarm when its vertical one spikes x4-x7
    and relaxes within a window, four times. A held step is not yet a change at all: it must not out-move the
    channel in alarm and clear it (before, the alarm cleared and came back 2.5 min later, and the warning
    started 32 min late)."""
    run = quiet(60)
    rise = np.linspace(1.0, 1.8, 50)
    jump(run, [0], 10, rise)
    run["cl"][10:, 0] = 0.5 + 3 * (rise - 1)
    first = raised(decide(run))[0]
    assert first[1] == 0
    # a spike on channel 1: its level is back the next window, its window means (z) and error share carry it on
    for at in (first[0] + 3, first[0] + 12):
        jump(run, [1], at, np.r_[6.0, np.ones(59 - at)])
        run["z"][at:at + 6, 1], run["cl"][at:at + 6, 1] = 50.5, 3.0
    verdicts = decide(run)
    assert raised(verdicts) == [first]
    assert all(0 in v.active for v in verdicts[first[0]:]), "channel 0's alarm cleared while channel 1 was held"
    assert [e.kind for v in verdicts for e in v.events] == ["transient", "transient"]


def test_the_whole_window_score_alarms_when_its_blame_moves_between_two_channels() -> None:
    """Two channels moved alike (a fault on one whose vibration reaches the other): the whole-window score is
    above for good, but its blame goes to whichever has the larger share, window by window (0, 3, 0, 0, 3, ...),
    so neither channel's own k-of-k sees 3 windows in a row. The score's own k-of-k raises the alarm, named
    after the channel blamed most over those windows, and only that one."""
    alarm = AlarmRule(raise_after=3, clear_after=3)
    run = quiet(30)
    pattern = [0, 3, 0, 0, 3, 0, 3, 0, 0, 3, 0, 3, 0, 3, 0, 3, 0, 0, 3, 0]
    for i, b in enumerate(pattern, start=10):
        run["score"][i] = 1.4
        run["z"][i, [0, 3]] = 2.0  # both channels' own inputs rose alike ...
        run["cl"][i, [0, 3]] = 0.9  # ... with shares below their thresholds,
        run["cl"][i, b] = 0.95  # the larger one taking the blame
    verdicts = run_events(run["t"], run["score"], run["cl"], run["own"], run["z"], run["lv"], RULE, alarm, STEP)
    assert raised(verdicts) == [(12, 0)]  # the third window above: blamed 0, 3, 0
    assert all(set(v.active) <= {0} for v in verdicts) and verdicts[-1].active == (0,)
    # the same windows with the blame on one channel throughout raise that channel at the same window
    steady = copy.deepcopy(run)
    steady["cl"][10:, 0], steady["cl"][10:, 3] = 0.95, 0.9
    assert raised(run_events(steady["t"], steady["score"], steady["cl"], steady["own"], steady["z"], steady["lv"],
                             RULE, alarm, STEP)) == [(12, 0)]


def test_the_whole_window_score_goes_to_the_moved_channel_with_the_larger_share_of_that_score() -> None:
    """Two channels moved alike; the autoencoder's shares favour channel 3, but the score above is the PCA
    residual's and its own shares favour channel 0: the alarm names channel 0, and without the PCA's shares
    (``blame_level`` left out) channel 3, the same window."""
    alarm = AlarmRule(raise_after=3, clear_after=3)
    run = quiet(30)
    run["score"][10:] = 1.4
    run["z"][10:, [0, 3]] = 2.0
    run["cl"][10:, 0], run["cl"][10:, 3] = 0.9, 0.95
    blame = run["cl"].copy()
    blame[10:, 0], blame[10:, 3] = 1.3, 0.8
    args = (run["t"], run["score"], run["cl"], run["own"], run["z"], run["lv"], RULE, alarm, STEP)
    assert raised(run_events(*args, blame)) == [(12, 0)]
    assert raised(run_events(*args)) == [(12, 3)]


def test_held_scores_set_the_lowest_threshold_that_keeps_the_healthy_period_free_of_alarms() -> None:
    """A k-of-k rule never alarms on one window: a threshold over the healthy windows' scores held for k
    windows (``healthy.held``) ignores a single start-up window that a threshold over single windows would
    be set by. With it the healthy period raises nothing, and a threshold 2% lower would; one window at a
    time (the gateway, ``before``: the windows just before) gives the same held scores as the whole run."""
    from vibrawatch.agent.detect.healthy import held
    from vibrawatch.agent.detect.threshold import ThresholdRule, fit_threshold

    rng = np.random.default_rng(3)
    score = np.r_[2.5, 1.6, rng.uniform(0.8, 1.0, 60)]  # a start-up, then steady
    k = 3
    hs = held(score, k)
    assert hs[0] == 2.5 and hs[1] == 1.6 and np.all(hs[2:] <= 1.0)  # no window before the first: not held lower
    stream = np.concatenate([held(score[i:i + 1], k, score[max(i - 5, 0):i]) for i in range(len(score))])
    np.testing.assert_array_equal(stream, hs)
    rule = ThresholdRule(margin=1.0)
    thr_held, thr_single = fit_threshold(hs[2:], rule), fit_threshold(score, rule)
    assert thr_held < 0.5 * thr_single
    alarm = AlarmRule(raise_after=k, clear_after=3)
    run = quiet(62)
    for thr, alarms in ((thr_held, False), (0.98 * thr_held, True)):
        run["score"] = score / thr  # the start-up's two windows above, then never three in a row
        assert bool(raised(run_events(run["t"], run["score"], run["cl"], run["own"], run["z"], run["lv"], RULE,
                                      alarm, STEP))) == alarms


def test_a_score_above_on_a_held_channel_does_not_count_toward_the_whole_window_alarm() -> None:
    """A one-channel step that relaxes back moves the whole-window score too, and the score is blamed on the
    stepped channel; while that channel is held the score's k-of-k does not count, so no alarm at all."""
    run = quiet(40)
    jump(run, [2], 10, np.r_[np.full(4, 1.6), np.full(26, 1.0)])
    run["score"][10:14] = 1.5
    verdicts = decide(run)
    assert raised(verdicts) == []
    assert [e.kind for v in verdicts for e in v.events] == ["transient"]


def test_streaming_state_and_batch_twin_agree() -> None:
    run = quiet(60, seed=4)
    jump(run, [2], 10, np.r_[np.full(3, 1.6), np.ones(47)])
    jump(run, [0], 30, np.geomspace(1.1, 5, 30))
    state = EventState(RULE, ALARM, C, STEP)
    stream = [state.update(float(run["t"][i]), float(run["score"][i]), run["cl"][i], run["own"][i], run["z"][i],
                           run["lv"][i]) for i in range(60)]
    batch = decide(run)
    assert [(v.raised, v.cleared, v.active, v.events) for v in stream] == \
        [(v.raised, v.cleared, v.active, v.events) for v in batch]


def test_diagnosis_names_the_defect_that_rose_most_or_none() -> None:
    dg = Diagnosis({"bpfo": 236.4, "bpfi": 296.9, "bsf": 139.9, "ftf": 14.8}, (2000.0, 8000.0), 3,
                   np.zeros((2, 4)))
    out = dg.diagnose(np.log10([[3.0, 1.2, 1.1, 1.0], [1.1, 1.0, 1.05, 1.0]]), 0)
    assert out["defect"] == "bpfo" and out["ratio"] == pytest.approx(3.0)
    assert dg.diagnose(np.log10([[3.0, 1.2, 1.1, 1.0], [1.1, 1.0, 1.05, 1.0]]), 1)["defect"] is None
    assert dg.diagnose(np.log10([[2.0, 1.9, 1.0, 1.0]] * 2), 0)["defect"] is None  # two rose alike: none stands out


def _defect_signal(n_frames: int, noise: float, impacts: float, seed: int) -> np.ndarray:
    """(n_frames, N, 1) broadband noise of rms ``noise`` plus a 4 kHz resonance rung at 230.5 Hz: IMS test 2's
    outer-race line, 2.5% below BPFO at the nameplate 2000 rpm (236.4 Hz)."""
    rng = np.random.default_rng(seed)
    fs, n = 20000.0, 20000
    t = np.arange(n) / fs
    ring = np.exp(-0.05 * 2 * np.pi * 4000 * t[:200]) * np.sin(2 * np.pi * 4000 * t[:200])
    out = np.empty((n_frames, n, 1))
    for i in range(n_frames):
        train = np.zeros(n)
        train[(np.arange(rng.uniform(0, 1 / 230.5), t[-1], 1 / 230.5) * fs).astype(int)] = impacts
        out[i, :, 0] = noise * rng.standard_normal(n) + np.convolve(train, ring)[:n]
    return out


def test_the_peak_statistic_sees_a_defect_line_in_broadband_noise_that_rises_with_it() -> None:
    """A failing bearing's broadband level rises with its defect (here 3x), and its line is rarely at the
    nameplate frequency. The energy within 2 bins of BPFO and its harmonics rises like every other defect's
    (the noise's 9x): nothing stands out. The peak statistic (the line, searched within 3% slip, over its local
    background) stays near 1x for louder noise alone and names BPFO when the line is there."""
    from vibrawatch.agent.detect.diagnosis import envelope_energies
    from vibrawatch.agent.detect.features import FeatureSpec

    spec = FeatureSpec(20000.0, 20000, ("b1",), ())
    defects = {"bpfo": 236.4, "bpfi": 296.9, "bsf": 139.9, "ftf": 14.8}
    healthy, louder, failing = (_defect_signal(8, 1.0, 0.0, 1), _defect_signal(8, 3.0, 0.0, 2),
                                _defect_signal(8, 3.0, 3.0, 3))
    out = {}
    for stat in ("energy", "peak"):
        dg = Diagnosis(defects, (2000.0, 8000.0), 3, np.zeros((1, 4)), statistic=stat)
        dg = replace(dg, healthy=np.median(envelope_energies(healthy, spec, dg), axis=0))
        out[stat] = [dg.diagnose(envelope_energies(x, spec, dg).mean(axis=0), 0) for x in (louder, failing)]
    noise_only, defect = out["peak"]
    assert noise_only["defect"] is None and all(0.7 < r < 1.4 for r in noise_only["ratios"].values())
    assert defect["defect"] == "bpfo" and defect["ratio"] > 2
    assert all(r > 5 for r in out["energy"][0]["ratios"].values())  # energy measures the noise's level ...
    assert out["energy"][1]["defect"] is None  # ... and misses the line 2.5% off the nameplate


@pytest.mark.parametrize(("fault", "defect"), [("outer", "bpfo"), ("inner", "bpfi"), ("ball", "bsf")])
def test_the_simulators_defects_are_named_by_the_peak_statistic(fault: str, defect: str) -> None:
    """The bearing simulator's outer-race, inner-race (shaft-modulated) and ball (cage-modulated) defects: the
    failing bearing's last snapshots name their own defect, a healthy bearing names none."""
    from vibrawatch.agent.detect.diagnosis import envelope_energies
    from vibrawatch.agent.detect.features import FeatureSpec
    from vibrawatch.agent.sources.simulate import BearingSimulator

    sim = BearingSimulator(n_snapshots=30, snapshot_samples=10240, onset=0.5, fault=fault, seed=3)
    rec = sim.run()
    spec = FeatureSpec(rec.fs_hz, 10240, rec.channels, ())
    dg = Diagnosis({k: float(v) for k, v in sim.geometry.defect_frequencies(sim.shaft_hz).items()},
                   (2000.0, 8000.0), 3, np.zeros((4, 4)), statistic="peak")
    e = envelope_energies(rec.data, spec, dg)
    dg = replace(dg, healthy=np.median(e[:15], axis=0))
    assert dg.diagnose(e[-3:].mean(axis=0), 0)["defect"] == defect
    assert all(dg.diagnose(e[-3:].mean(axis=0), c)["defect"] is None for c in (1, 2, 3))
    assert all(dg.diagnose(e[i - 2:i + 1].mean(axis=0), c)["defect"] is None for i in range(2, 15) for c in range(4))


def test_a_wrong_diagnosis_statistic_is_named_and_old_bundles_keep_the_energy(tmp_path: Path) -> None:
    """A manifest's diagnosis without ``statistic`` (made before the peak statistic) keeps measuring energy, as
    its healthy numbers were fitted; an unknown statistic is one line naming the field, in a manifest, a
    training config or a feature definition."""
    from vibrawatch.agent.detect.features import FeatureDef, FeatureSpec, extract
    from vibrawatch.train.config import load_config

    d = Diagnosis({"bpfo": 236.4}, (2000.0, 8000.0), 3, np.zeros((2, 1)), statistic="peak").to_dict()
    assert Diagnosis.from_dict(d, 2).statistic == "peak"
    assert Diagnosis.from_dict({k: v for k, v in d.items() if k != "statistic"}, 2).statistic == "energy"
    with pytest.raises(ConfigError, match=r"^diagnosis\.statistic: .*'spiky'$"):
        Diagnosis.from_dict({**d, "statistic": "spiky"}, 2)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[diagnosis]\nrpm = 2000\nn_balls = 16\nball_diameter = 0.33\npitch_diameter = 2.8\n'
                   'statistic = "spiky"\n')
    with pytest.raises(ConfigError, match=r"\[diagnosis\] statistic 'spiky'"):
        load_config(cfg)
    env = {"band_hz": [2000, 8000], "defects_hz": {"bpfo": 236.4}}
    with pytest.raises(ConfigError, match="envelope: statistic 'spiky'"):
        FeatureSpec(20000.0, 2000, ("a",), (FeatureDef("envelope", {**env, "statistic": "spiky"}),))
    with pytest.raises(ConfigError, match="envelope: slip -1"):
        FeatureSpec(20000.0, 2000, ("a",), (FeatureDef("envelope", {**env, "statistic": "peak", "slip": -1}),))
    ok = FeatureSpec(20000.0, 2000, ("a",), (FeatureDef("envelope", {**env, "statistic": "peak"}),))
    assert extract(np.zeros((1, 2000, 1)), ok).shape == (1, 1)


@pytest.mark.parametrize(("path", "value", "named"), [
    (("floor", "thresholds"), [[1.0]], "floor.thresholds"),
    (("floor", "step"), [0.1, -1.0, 0.1, 0.1], "floor.step"),
    (("pca", "components"), "x", "pca.components"),
    (("pca", "threshold"), True, "pca.threshold"),
    (("pca", "weights"), [1.0], "pca.weights"),
    (("own", "spread"), [1.0], "own.spread"),
    (("events", "transient_s"), "12h", "events.transient_s"),
    (("events", "history"), 2.5, "events.history"),
])
def test_a_wrong_combined_field_is_named(tiny_run: Path, path: tuple[str, str], value: object, named: str) -> None:
    d = json.loads((tiny_run / "run.json").read_text())
    assert Detector.from_dict(d).combined
    d[path[0]][path[1]] = value
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        Detector.from_dict(d)


# --- on real runs, through the CLI ------------------------------------------------------------------------

def _copy_run(tiny_run: Path, tmp_path: Path, **events: float) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    meta = json.loads((run / "run.json").read_text())
    meta["events"].update(events)
    (run / "run.json").write_text(json.dumps(meta))
    return run


def _healthy_part(tiny_data: Path, tmp_path: Path, name: str, gains: np.ndarray) -> Path:
    """tiny_data before its fault starts (snapshots 0..47 of 80), each channel scaled per snapshot by ``gains``."""
    rec = load(tiny_data)
    assert isinstance(rec, Recording) and rec.labels is not None and rec.labels[:48].sum() == 0
    out = tmp_path / f"{name}.npz"
    save_snapshot_npz(Recording(rec.data[:48] * gains[:, None, :].astype(np.float32), rec.timestamps[:48],
                                rec.fs_hz, rec.channels, name, relative_time=True), out)
    return out


def _evaluate(run: Path, data: Path) -> dict:
    return json.loads(cli("evaluate", run, "--data", data, "--json", "--quiet"))


def test_a_step_injected_into_one_channel_of_a_healthy_run(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny_run, tmp_path, transient_s=1800.0)  # 3 snapshots 600 s apart
    clean = _evaluate(run, _healthy_part(tiny_data, tmp_path, "clean", np.ones((48, 4))))
    assert clean["alarms"] == [] and clean["transients"] == []
    held = np.ones((48, 4))
    held[41:, 2] = 1.8  # bearing3 steps up at snapshot 41 and stays there
    r = _evaluate(run, _healthy_part(tiny_data, tmp_path, "held", held))
    assert r["alarms"] and {a["channel"] for a in r["alarms"]} == {"bearing3"}
    relaxing = np.ones((48, 4))
    relaxing[41:43, 2] = 1.8  # up for two snapshots, then back
    r = _evaluate(run, _healthy_part(tiny_data, tmp_path, "relaxing", relaxing))
    assert r["alarms"] == []
    assert [(t["channel"], round(t["ratio"], 1)) for t in r["transients"]] == [("bearing3", 1.8)]
    shared_change = np.ones((48, 4))
    shared_change[41:] = 1.5  # every bearing at once: load, speed, remounting
    r = _evaluate(run, _healthy_part(tiny_data, tmp_path, "shared", shared_change))
    assert r["alarms"] == [] and len(r["condition_changes"]) == 1


def test_ims2_bearing1_envelope_says_outer_race() -> None:
    """IMS test 2, bearing 1 (outer-race failure): with configs/ims2.toml's geometry and speed, the defect that
    stands out on the last day against the healthy period is BPFO, and nothing stands out on a healthy day."""
    from vibrawatch.train.config import load_config
    from vibrawatch.train.dataset import build_spec
    from vibrawatch.train.product import diagnosis_from_config, frame_energies

    data = load(shared("ims", "2nd_test_full.npz"))
    assert isinstance(data, Recording)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "ims2.toml")
    spec = build_spec(data, cfg)
    sub = Recording(data.data[::4], data.timestamps[::4], data.fs_hz, data.channels, "ims2 every 4th")
    dg = diagnosis_from_config(cfg.diagnosis, spec.fs_hz, spec.frame_length, 4)
    assert dg.statistic == "peak"
    e = frame_energies(sub, spec, dg)
    healthy = sub.timestamps <= 1076849559  # 2004-02-15 12:52:39, the config's healthy_until
    dg = replace(dg, healthy=np.median(e[healthy], axis=0))
    last_day = sub.timestamps >= sub.timestamps[-1] - 86400
    assert dg.diagnose(e[last_day][:-3].mean(axis=0), 0)["defect"] == "bpfo"  # the last snapshots are zeros
    day2 = (sub.timestamps > 1076849559) & (sub.timestamps <= 1076849559 + 6 * 3600)
    assert all(dg.diagnose(e[day2].mean(axis=0), c)["defect"] is None for c in range(4))
    # the ten snapshots up to 2004-02-16 04:22:39 (the default features' first alarm): outer race stands out
    # (the energy at BPFO is 1.15x healthy there: the line sits at 230.5 Hz, 2.5% below BPFO at 2000 rpm)
    end = int(np.searchsorted(data.timestamps, 1076905359)) + 1
    last = Recording(data.data[end - 10:end], data.timestamps[end - 10:end], data.fs_hz, data.channels, "alarm")
    out = dg.diagnose(frame_energies(last, spec, dg).mean(axis=0), 0)
    assert out["defect"] == "bpfo" and out["ratio"] > 3


def test_the_gateway_pipeline_decides_like_evaluate(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    """Streaming (the gateway's Pipeline on the TFLite bundle) and batch (`vibrawatch evaluate`) give the same
    levels, the same per-channel alarms and the same transients on a run with a transient and a held step."""
    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.link.topics import window_messages
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.source import ReplaySource

    run = _copy_run(tiny_run, tmp_path, transient_s=1800.0)
    gains = np.ones((48, 4))
    gains[38:40, 1] = 1.8  # bearing2: up for two snapshots, then back
    gains[43:, 2] = 1.8  # bearing3: up and stays
    data = _healthy_part(tiny_data, tmp_path, "mixed", gains)
    batch = _evaluate(run, data)
    bundle = tmp_path / "b.tar"
    cli("convert", run, "--out", bundle)
    pipe = Pipeline(load_bundle(bundle))
    scored = [ev for c in ReplaySource(data, chunk=4096).chunks() for ev in pipe.process(c) if isinstance(ev, Scored)]
    assert len(scored) == batch["windows"]
    messages = [m for ev in scored for m in window_messages(ev, pipe.bundle.detector.channels, 0.1, "m")]
    alarms = [(p["t"], p["channel"]) for kind, p in messages if kind == "alarm" and p["event"] == "raised"]
    transients = [(p["channels"], p["ratio"][0]) for kind, p in messages if kind == "transient"]
    assert [ch for _, ch in alarms] == [a["channel"] for a in batch["alarms"]] == ["bearing3"]
    assert [ch for ch, _ in transients] == [[t["channel"]] for t in batch["transients"]] == [["bearing2"]]
    assert transients[0][1] == pytest.approx(batch["transients"][0]["ratio"], rel=1e-3)  # TFLite vs Keras
    assert transients[0][1] == pytest.approx(1.8, rel=0.03)
    for kind in ("alarm", "transient"):
        from jsonschema import Draft202012Validator

        schemas = Path(__file__).resolve().parents[1] / "agent" / "link" / "schemas"
        schema = json.loads((schemas / f"{kind}.json").read_text())
        for k, p in messages:
            if k == kind:
                Draft202012Validator(schema).validate({**p, "seq": 1})


def test_every_new_message_matches_its_schema() -> None:
    """Alarm (with channels and diagnosis), transient, condition_change and diagnosis payloads as the gateway
    builds them validate against agent/link/schemas/ (the documented, versioned MQTT payloads)."""
    from jsonschema import Draft202012Validator

    from vibrawatch.agent.detect.decide import Decision
    from vibrawatch.agent.detect.events import Event, Verdict
    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.link.topics import window_messages

    names = ("bearing1", "bearing2", "bearing3", "bearing4")
    dg = {"defect": None, "ratio": 1.1, "ratios": {"bpfo": 1.1, "bpfi": 1.0, "bsf": 1.0, "ftf": 0.9}}
    found = {"defect": "bpfo", "ratio": 1.6, "ratios": {"bpfo": 1.6, "bpfi": 1.0, "bsf": 1.1, "ftf": 0.9}}
    events = (Event("transient", 100.0, (2,), (1.4,), until=700.0),
              Event("condition_change", 200.0, (0, 1, 2, 3), (1.3, 1.3, 1.31, 1.29)))
    v = Verdict(1.2, True, (0, 1), (0,), (3,), np.array([1.2, 1.1, 0.2, 0.5]), events)
    ev = Scored(1000.0, 0.3, 1.2, np.array([0.1, 0.1, 0.05, 0.05]), Decision(True, True, "raised", 0, 1.2), 1000.0,
                v, {0: dg}, {1: found})
    messages = window_messages(ev, names, 0.25, "m-1")
    kinds = [k for k, _ in messages]
    assert kinds == ["score", "alarm", "alarm", "diagnosis", "transient", "condition_change"]
    root = Path(__file__).resolve().parents[1] / "agent" / "link" / "schemas"
    for kind, payload in messages:
        Draft202012Validator(json.loads((root / f"{kind}.json").read_text())).validate({**payload, "seq": 1})
    raised = messages[1][1]
    assert raised["event"] == "raised" and raised["channel"] == "bearing1" and raised["diagnosis"] == dg
    assert messages[2][1]["event"] == "cleared" and "diagnosis" not in messages[2][1]
