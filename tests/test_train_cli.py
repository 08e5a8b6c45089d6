"""A tiny train -> evaluate through the CLI, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONFIG, cli


def test_train_writes_a_complete_run(tiny_run: Path) -> None:
    meta = json.loads((tiny_run / "run.json").read_text())
    assert (tiny_run / "model.keras").exists()
    for png in ("loss.png", "healthy_scores.png"):
        assert (tiny_run / png).stat().st_size > 1000
    # the threshold sits above every healthy window: the promise of no false alarm on training data
    assert meta["threshold"]["value"] > meta["threshold"]["healthy_score_max"]
    assert meta["features"]["frame_length"] == 1024
    assert meta["window"] == {"length": 6, "hop": 1}


def test_evaluate_json_reports_the_failing_bearing(tiny_run: Path, tiny_data: Path) -> None:
    report = json.loads(cli("evaluate", tiny_run, "--data", tiny_data, "--failed", "bearing1", "--json", "--quiet"))
    assert report["alarm_channel"] == "bearing1"
    assert report["lead_hours"] > 0
    assert report["false_alarms"] == 0
    assert report["auc"] > 0.8  # the simulator labels every snapshot after the defect's onset
    # the combined detector (the default) reports the bare autoencoder as one of its baselines
    assert set(report["baselines"]) == {"autoencoder", "rms", "mean_abs", "isolation_forest", "pca"}
    assert set(report["per_channel"]) == {"bearing1", "bearing2", "bearing3", "bearing4"}


def _fails(*args: object) -> str:
    from typer.testing import CliRunner

    from vibrawatch.convert.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    return result.output


def _apart(*args: object) -> tuple[str, str]:
    """A command's stdout and stderr apart: the JSON a script reads, and the notes beside it."""
    from typer.testing import CliRunner

    from vibrawatch.convert.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_config_typo_is_an_error_naming_file_and_key(tmp_path: Path, tiny_data: Path) -> None:
    cfg = tmp_path / "typo.toml"
    cfg.write_text("[model]\nwindwo = 5\n")
    out = _fails("train", "--data", tiny_data, "--config", cfg, "--out", tmp_path / "r")
    assert f"{cfg}: [model] unknown key(s) ['windwo']" in out
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_healthy_period_too_short_says_what_to_do(tmp_path: Path, tiny_data: Path) -> None:
    out = _fails("train", "--data", tiny_data, "--healthy-until", "1%", "--config", TINY_CONFIG,
                 "--out", tmp_path / "r")
    assert "healthy windows" in out and "name a later time" in out


def test_healthy_period_past_the_end_of_the_data_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "dated.npz"
    t0 = 1_076_581_959  # 2004-02-12 10:32:39 UTC: a dated run like IMS test 2
    np.savez(data, data=np.zeros((30, 64, 1), np.float32), timestamps=t0 + 600 * np.arange(30),
             fs_hz=20000.0, channels=np.array(["bearing1"]))
    out = _fails("train", "--data", data, "--healthy-until", "2005-02-15 12:52:39", "--out", tmp_path / "r")
    assert "after the data's last time (2004-02-12 15:22:39)" in out
    assert not (tmp_path / "r").exists()


def test_dates_for_relative_data_and_unknown_channels_are_refused(tiny_run: Path, tiny_data: Path) -> None:
    out = _fails("evaluate", tiny_run, "--data", tiny_data, "--failure-at", "2004-02-19 06:22:39")
    assert "this run's times count from its start" in out
    out = _fails("evaluate", tiny_run, "--data", tiny_data, "--failed", "bearing9")
    assert "--failed 'bearing9': no such channel; channels are bearing1, bearing2, bearing3, bearing4" in out


def test_training_is_reproducible(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    cli("train", "--data", tiny_data, "--healthy-until", "50%", "--config", TINY_CONFIG,
        "--out", tmp_path / "again", "--quiet")
    a = json.loads((tiny_run / "run.json").read_text())
    b = json.loads((tmp_path / "again" / "run.json").read_text())
    assert a["threshold"]["value"] == b["threshold"]["value"]
    assert a["training"]["history"] == b["training"]["history"]


def test_workstation_commands_keep_tensorflow_start_up_noise_off_stderr(tiny_data: Path, tmp_path: Path) -> None:
    """What a user reads is vibrawatch's output: no CUDA probing, oneDNN or absl lines (``--verbose`` shows them)."""
    exe = Path(sys.executable).with_name("vibrawatch")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # a user's shell, not this process
    res = subprocess.run([str(exe), "train", "--data", str(tiny_data), "--healthy-until", "50%", "--config",
                          str(TINY_CONFIG), "--out", str(tmp_path / "r"), "--quiet"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["run_dir"] == str(tmp_path / "r")
    assert json.loads(res.stdout)["warnings"] == []  # ~155 healthy windows: enough
    assert res.stderr.strip() == "", res.stderr[:2000]


def test_train_warns_when_the_healthy_period_gives_few_windows(tiny_data: Path, tmp_path: Path) -> None:
    """Enough windows to train (>= 20) but too few for thresholds a healthy machine stays under: trained, and told
    how often a healthy window will cross them."""
    exe = Path(sys.executable).with_name("vibrawatch")
    res = subprocess.run([str(exe), "train", "--data", str(tiny_data), "--healthy-until", "15%", "--config",
                          str(TINY_CONFIG), "--out", str(tmp_path / "r"), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    n = summary["healthy_windows"]
    assert 20 <= n < 100
    assert len(summary["warnings"]) == 1 and f"gives {n} healthy windows" in summary["warnings"][0]
    assert f"about 1 healthy window in {n + 1}" in res.stderr and res.stderr.startswith("warning: --healthy-until")


def test_train_warns_when_the_healthy_period_drifts(tiny_data: Path, tmp_path: Path) -> None:
    """A run-in: the healthy half starts 1.6x louder and settles (as FEMTO Bearing1_1's first two hours fall
    18-19%). Trained, and told which channels moved and what it costs; the same data without the run-in (the
    test above) gives no warning."""
    from vibrawatch.agent.detect.recording import Recording
    from vibrawatch.agent.sources.loaders import load, save_snapshot_npz

    rec = load(tiny_data)
    gain = np.ones(len(rec.data))
    gain[:40] = np.linspace(1.6, 1.0, 40)  # settles over the first 40 of 80 snapshots
    data = tmp_path / "run_in.npz"
    save_snapshot_npz(Recording((rec.data * gain[:, None, None]).astype(np.float32), rec.timestamps, rec.fs_hz,
                                rec.channels, "run_in", relative_time=rec.relative_time, labels=rec.labels), data)
    exe = Path(sys.executable).with_name("vibrawatch")
    res = subprocess.run([str(exe), "train", "--data", str(data), "--healthy-until", "50%", "--config",
                          str(TINY_CONFIG), "--out", str(tmp_path / "r"), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (said,) = json.loads(res.stdout)["warnings"]
    assert said.startswith("the healthy period is not one steady condition")
    moved = dict(re.findall(r"(bearing\d) x(\d\.\d\d)", said))
    assert set(moved) == set(rec.channels) and all(0.6 < float(v) < 0.8 for v in moved.values()), said
    assert "warning: the healthy period is not one steady condition" in res.stderr


def _table(path: Path, shift: bool, time_name: str = "timestamp") -> None:
    """A 3-bearing feature table, 300 rows 10 min apart, the time in the second column: bearing1 wears out over
    the last 20%, bearing2 is a signed feature (a mean near -0.2), and with ``shift`` bearing3 jumps x3 at 10%
    of the run and stays there (a remounted sensor, say: in the part of the run known to be healthy)."""
    rng = np.random.default_rng(5)
    n = 300
    b1 = 1.0 + 0.03 * rng.standard_normal(n)
    b1[240:] *= np.exp(np.linspace(0, 1.5, n - 240))
    b2 = -0.2 + 0.01 * rng.standard_normal(n)
    b3 = 2.0 + 0.05 * rng.standard_normal(n)
    if shift:
        b3[30:] *= 3.0
    t0 = 1_709_251_200  # 2024-03-01 00:00:00 UTC
    from datetime import datetime, timezone

    rows = [f"{b1[i]:.6f},{datetime.fromtimestamp(t0 + 600 * i, tz=timezone.utc):%Y-%m-%d %H:%M:%S},{b2[i]:.6f},"
            f"{b3[i]:.6f}" for i in range(n)]
    path.write_text(f"bearing1,{time_name},bearing2,bearing3\n" + "\n".join(rows) + "\n")


def test_evaluate_scores_episodes_on_a_published_style_table(tmp_path: Path) -> None:
    """Through the CLI: a table whose time is not in column 1, a known-healthy part without --failed, a signed
    column. An alarm that started in the known-healthy part is a nuisance, not a 45 h lead."""
    train_data, data = tmp_path / "a.csv", tmp_path / "b.csv"
    _table(train_data, shift=False)
    _table(data, shift=True)
    cfg = tmp_path / "table.toml"
    cfg.write_text("[model]" + TINY_CONFIG.read_text().split("[model]", 1)[1])  # no [features]: a table's columns
    cli("train", "--data", train_data, "--healthy-until", "60%", "--config", cfg, "--out", tmp_path / "r", "--quiet")

    r = json.loads(cli("evaluate", tmp_path / "r", "--data", data, "--time-column", "timestamp",
                       "--healthy-until", "2024-03-02 01:00:00", "--json", "--quiet"))
    assert r["scoring"]["healthy_from"] == "--healthy-until" and r["scoring"]["failed"] == "any channel"
    assert r["scoring"]["merge_s"] == 4 * 600  # clear_after x the table's 10-minute step
    assert r["warning"]["channel"] == "bearing1" and r["lead_h"] > 0
    assert r["lead_s"] == pytest.approx(r["lead_h"] * 3600, abs=18)
    shifted = [e for e in r["episodes"] if e["channel"] == "bearing3"]
    assert shifted and all(e["kind"] == "nuisance" for e in shifted)
    nz = r["nuisance"]
    assert nz["count"] >= 1 and nz["machine_h"] == pytest.approx(3 * nz["healthy_h"], abs=0.01)  # 3 channels
    assert nz["per_1000_h"] == pytest.approx(1000 * nz["in_healthy"] / nz["machine_h"], abs=1e-3)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", r["warning"]["start"])
    # an AUC for the product and for every baseline, on the healthy part against the rest
    assert "2024-03-02 01:00:00" in r["scoring"]["auc_basis"]
    assert 0 <= r["auc"] <= 1 and all(0 <= b["auc"] <= 1 for b in r["baselines"].values())
    # the signed column (bearing2) read as |deviation from its healthy median|: the table floor never blames it
    assert not [e for e in r["baselines"]["table_value"]["episodes"] if e["channel"] == "bearing2"]
    assert not [e for e in r["episodes"] if e["channel"] == "bearing2"]  # nor do the product's own floors

    # the same alarms with nothing known about the run (and the time column found by its name) read as a warning
    blind = json.loads(cli("evaluate", tmp_path / "r", "--data", data, "--json", "--quiet"))
    assert blind["warning"]["channel"] == "bearing3" and blind["lead_h"] > r["lead_h"]
    assert blind["nuisance"]["count"] == 0 and blind["auc"] is None

    out = _fails("evaluate", tmp_path / "r", "--data", data, "--time-column", "when")
    assert "no column named 'when' for the time" in out and "'timestamp'" in out


def test_train_takes_a_tables_time_column_by_name(tmp_path: Path) -> None:
    """`train --time-column` as `evaluate --time-column`, one rule: a table whose time is in column 2 under a
    header the loader does not guess; the run remembers it, so `evaluate` reads the table the same way."""
    data = tmp_path / "t.csv"
    _table(data, shift=False, time_name="recorded")
    cfg = tmp_path / "table.toml"
    cfg.write_text("[model]" + TINY_CONFIG.read_text().split("[model]", 1)[1])
    out = _fails("train", "--data", data, "--healthy-until", "60%", "--config", cfg, "--out", tmp_path / "guess")
    assert "line 2, column 2" in out and "'2024-03-01 00:00:00' is not a number" in out  # bearing1 taken as time
    assert not (tmp_path / "guess").exists()

    summary = json.loads(cli("train", "--data", data, "--time-column", "RECORDED", "--healthy-until",
                             "2024-03-02 12:00:00", "--config", cfg, "--out", tmp_path / "r", "--quiet"))
    assert summary["healthy_end"] == "2024-03-02 12:00:00"  # the dates were read as the time
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["features"]["channels"] == ["bearing1", "bearing2", "bearing3"]
    assert meta["training"]["time_column"] == "RECORDED"
    out, err = _apart("evaluate", tmp_path / "r", "--data", data, "--json", "--quiet")
    r = json.loads(out)
    assert r["warning"]["channel"] == "bearing1" and r["failure_at"] == "2024-03-03 01:50:00"
    # taken without being asked: said on stderr, so a table read oddly has its likeliest reason in sight
    assert f"note: {data}: time column 'RECORDED' taken from the training run ({tmp_path / 'r' / 'run.json'}); " \
           "give --time-column to choose another" in err.splitlines()
    out, err = _apart("evaluate", tmp_path / "r", "--data", data, "--time-column", "recorded", "--json", "--quiet")
    assert json.loads(out)["warning"]["channel"] == "bearing1" and "time column" not in err

    out = _fails("train", "--data", data, "--time-column", "when", "--config", cfg, "--out", tmp_path / "x")
    assert "no column named 'when' for the time" in out and "'recorded'" in out
