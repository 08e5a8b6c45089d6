"""The README's first command: the whole job on built-in data, end to end, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import cli


def test_demo_runs_end_to_end_and_the_edge_agrees_with_the_workstation(tmp_path: Path) -> None:
    out = cli("demo", "--out", tmp_path / "demo", "--quiet", "--for", "120")
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["alarm_channel"] == "bearing1" and report["false_alarms"] == 0 and report["lead_hours"] > 0
    run = json.loads((tmp_path / "demo" / "run" / "run.json").read_text())
    assert "floor" in run and "own" in run and "pca" not in run  # the default: no PCA residual (docs/detection.md)
    assert report["edge"]["windows"] == report["windows"]
    assert report["edge"]["max_abs_score_diff_vs_evaluate"] < 1e-5
    assert report["edge"]["first_alarm_s"] == report["first_alarm_s"]  # the gateway alarms at the same window
    assert (tmp_path / "demo" / "bundle.tar").exists() and "5/5" in out
    assert f"bundle.tar: {(tmp_path / 'demo' / 'bundle.tar').stat().st_size} bytes (model " in out
    # The live path: sensor node -> MQTT -> vibrawatch-agent -> monitor; its alarm is evaluate's window.
    live = report["live"]
    assert "page: http://127.0.0.1:" in out and "ALARM raised on demo/machine1" in out
    # The simulated run has no dates: the sensor node sends it from the demo's start on (the page shows today).
    assert live["anchor"] > 1e9 and live["first_alarm"]["ts"][:4] != "1970"
    assert abs(live["first_alarm"]["t"] - live["anchor"] - report["first_alarm_s"]) < 1e-3  # evaluate's window
    assert live["first_alarm"]["channel"] == "bearing1"
    assert live["lost"] == 0 and live["dead_letters"] == 0 and live["scores"] > 0
