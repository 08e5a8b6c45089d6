"""A tiny train -> evaluate through the CLI, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import cli


def test_train_writes_a_complete_run(tiny_run: Path) -> None:
    meta = json.loads((tiny_run / "run.json").read_text())
    assert (tiny_run / "model.keras").exists()
    for png in ("loss.png", "healthy_scores.png"):
        assert (tiny_run / png).stat().st_size > 1000
    # the threshold sits above every healthy window: the promise of no false alarm on training data
    assert meta["threshold"]["value"] > meta["threshold"]["healthy_score_max"]
    assert meta["feature_spec"]["frame_length"] == 1024
    assert meta["window"] == {"length": 6, "hop": 1}


def test_evaluate_json_reports_the_failing_bearing(tiny_run: Path, tiny_data: Path) -> None:
    report = json.loads(cli("evaluate", tiny_run, "--data", tiny_data, "--failed", "bearing1", "--json", "--quiet"))
    assert report["alarm_channel"] == "bearing1"
    assert report["lead_hours"] > 0
    assert report["false_alarms"] == 0
    assert report["auc"] > 0.8  # the simulator labels every snapshot after the defect's onset
    assert set(report["baselines"]) == {"rms", "mean_abs", "isolation_forest", "pca"}
    assert set(report["per_channel"]) == {"bearing1", "bearing2", "bearing3", "bearing4"}
