"""Channels that are directions of one bearing (``[product] same_bearing``, ``EventRule.bearings``): attribution
compares bearings, so when the failing bearing's vertical direction overtakes its horizontal one, the horizontal
alarm is not cleared as if it had been another bearing's vibration; a neighbouring bearing still is masked.
Without the layout every channel is a bearing of its own, exactly as before."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONFIG, cli

from vibrawatch.agent.detect.decide import AlarmRule
from vibrawatch.agent.detect.events import EventRule, run_events
from vibrawatch.agent.errors import ConfigError

C = 3  # channels 0 and 1: horizontal and vertical of bearing A; channel 2: bearing B
ALARM = AlarmRule(raise_after=3, clear_after=3)
STEP = np.full(C, math.log(1.2))


def handover(n: int = 40) -> dict[str, np.ndarray]:
    """Bearing A fails from window 5: its horizontal direction moves most until window 15, then the vertical one
    moves a third more than it (beyond the 0.8 share); both stay far above their floors. Bearing B stays quiet
    but carries some of A's vibration (its floor ratio above 1, its own inputs barely moved)."""
    own, cl, z = np.full((n, C), 0.5), np.full((n, C), 0.3), np.full((n, C), 0.3)
    own[5:, :2], own[5:, 2] = 2.0, 1.3
    cl[5:15, 0], cl[5:15, 1], cl[15:, 0], cl[15:, 1] = 3.0, 2.2, 2.2, 3.0
    z[5:, :2] = np.where(cl[5:, :2] == 3.0, 3.0, 2.2)
    return {"t": np.arange(n) * 600.0, "score": np.full(n, 0.5), "cl": cl, "own": own, "z": z,
            "lv": np.zeros((n, C))}


def episodes(bearings: tuple[int, ...] | None) -> dict[int, list[str]]:
    run = handover()
    verdicts = run_events(run["t"], run["score"], run["cl"], run["own"], run["z"], run["lv"],
                          EventRule(transient_s=6 * 600.0, history=4, bearings=bearings), ALARM, STEP)
    out: dict[int, list[str]] = {c: [] for c in range(C)}
    for i, v in enumerate(verdicts):
        for c in v.raised:
            out[c].append(f"raised {i}")
        for c in v.cleared:
            out[c].append(f"cleared {i}")
    return out


def test_one_bearings_directions_do_not_mask_each_other_a_neighbour_still_is() -> None:
    alone = episodes(None)
    assert alone[0] == ["raised 7", "cleared 17"]  # horizontal cleared when the vertical overtook it
    assert alone[1] == ["raised 17"] and alone[2] == []
    grouped = episodes((0, 0, 1))
    assert grouped[0] == ["raised 7"]  # one alarm from the first raise to the end: the warning
    assert grouped[1] == ["raised 7"] and grouped[2] == []  # bearing B: masked, as before


def test_the_layout_is_checked_and_travels_in_the_rule() -> None:
    rule = EventRule(bearings=(0, 0, 1))
    assert EventRule.from_dict(rule.to_dict()) == rule
    assert "bearings" not in EventRule().to_dict()  # no layout: the manifest as before
    for bad in [(0, 3, 1), (), (0, True)]:
        with pytest.raises(ConfigError, match="events.bearings"):
            EventRule(bearings=bad)
    with pytest.raises(ConfigError, match="events.bearings: 2 entries, expected one per channel"):
        run_events(np.zeros(1), np.zeros(1), np.zeros((1, C)), np.zeros((1, C)), np.zeros((1, C)),
                   np.zeros((1, C)), EventRule(bearings=(0, 0)), ALARM, STEP)


def test_train_takes_the_layout_by_channel_name(tiny_data: Path, tmp_path: Path) -> None:
    """Through the CLI: `[product] same_bearing` by channel names, in the run and in the bundle the gateway
    loads; a name that is not a channel is one line naming it and the channels there are."""
    from typer.testing import CliRunner

    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.convert.cli import app

    cfg = tmp_path / "layout.toml"
    cfg.write_text(TINY_CONFIG.read_text().replace("[product]\n",
                                                   '[product]\nsame_bearing = [["bearing2", "bearing4"]]\n'))
    cli("train", "--data", tiny_data, "--healthy-until", "50%", "--config", cfg, "--out", tmp_path / "r", "--quiet")
    assert json.loads((tmp_path / "r" / "run.json").read_text())["events"]["bearings"] == [0, 1, 2, 1]
    cli("convert", tmp_path / "r", "--out", tmp_path / "b.tar")
    detector = load_bundle(tmp_path / "b.tar").detector
    assert detector.events is not None and detector.events.bearings == (0, 1, 2, 1)

    cfg.write_text(TINY_CONFIG.read_text().replace("[product]\n",
                                                   '[product]\nsame_bearing = [["bearing2", "bearing9"]]\n'))
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--config", str(cfg), "--out",
                                   str(tmp_path / "r2"), "--quiet"])
    assert res.exit_code == 2 and "same_bearing: no channel 'bearing9'" in res.output and "bearing4" in res.output


def test_directions_are_read_from_names_only_when_they_say_it() -> None:
    """One direction word each, the rest of the name equal: one measuring point. Anything less plain stays apart."""
    from vibrawatch.train.sensor_layout import bearing_indices, directions_by_name

    assert directions_by_name(("horiz_acc_g", "vert_acc_g")) == (("horiz_acc_g", "vert_acc_g"),)
    assert bearing_indices(None, ("B1_x", "B2_x", "B1_y", "B2_y")) == (0, 1, 0, 1)
    assert bearing_indices(None, ("Horizontal_vibration_signals", "Vertical_vibration_signals")) == (0, 0)
    assert bearing_indices(None, ("b1x", "b1y", "b2x", "b2y")) == (0, 0, 1, 1)  # a direction glued to a number
    assert bearing_indices(None, ("x1", "x2", "x3")) is None  # one direction at three points: three bearings
    for apart in [("bearing1", "bearing2", "bearing3", "bearing4"), ("DE_time", "FE_time", "BA_time"),
                  ("b1_x", "b2_y"), ("b1_x", "b1_x_2"), ("x_h", "y_h")]:
        assert bearing_indices(None, apart) is None, apart
    assert bearing_indices((), ("horiz_acc_g", "vert_acc_g")) is None  # `same_bearing = []`: every channel apart


def test_train_reads_the_directions_from_the_names_and_says_so(tiny_data: Path, tmp_path: Path) -> None:
    """Through the CLI, on an XJTU-SY directory as published (N.csv a minute, a header naming the horizontal and
    vertical columns): the run gets that layout, with a note naming the channels read together; `same_bearing =
    []` in the config keeps them apart, silently."""
    from typer.testing import CliRunner

    from vibrawatch.convert.cli import app

    with np.load(tiny_data) as z:
        acc = z["data"][:, :, :2]  # the simulator's failing bearing and a neighbour, as two columns
    data = tmp_path / "Bearing1_1"
    data.mkdir()
    for i, snap in enumerate(acc, start=1):
        body = "\n".join(f"{h:.6g},{v:.6g}" for h, v in snap.tolist())
        (data / f"{i}.csv").write_text(f"Horizontal_vibration_signals,Vertical_vibration_signals\n{body}\n")
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(data), "--healthy-until", "50%", "--config", str(TINY_CONFIG),
                              "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["events"]["bearings"] == [0, 0]
    assert run["features"]["channels"] == ["Horizontal_vibration_signals", "Vertical_vibration_signals"]
    assert ("channels Horizontal_vibration_signals and Vertical_vibration_signals are read as directions of one "
            "bearing") in res.output
    cfg = tmp_path / "apart.toml"
    cfg.write_text(TINY_CONFIG.read_text().replace("[product]\n", "[product]\nsame_bearing = []\n"))
    res = runner.invoke(app, ["train", "--data", str(data), "--healthy-until", "50%", "--config", str(cfg),
                              "--out", str(tmp_path / "r2"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "bearings" not in json.loads((tmp_path / "r2" / "run.json").read_text())["events"]
    assert "directions of one bearing" not in res.output
