"""Outside baselines: PyOD's ECOD, COPOD, HBOS, LOF and KNN scored beside the product by `vibrawatch evaluate
--baselines pyod`, fitted on the same healthy windows with the same threshold rule and alarm rule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

from vibrawatch.train.outside import OUTSIDE, OWN, outside_scores

NAMES = [f"pyod_{n}" for n in OUTSIDE]


def test_evaluate_scores_the_five_pyod_detectors_like_the_others(tiny_run: Path, tiny_data: Path) -> None:
    r = json.loads(cli("evaluate", tiny_run, "--data", tiny_data, "--failed", "bearing1", "--baselines", "pyod",
                       "--json", "--quiet"))
    base = r["baselines"]
    assert [k for k in base if k.startswith("pyod_")] == NAMES
    assert base["ecod_upper"]["library"].startswith("numpy") and base["ecod_upper"]["warning"] is not None
    assert {"autoencoder", "isolation_forest", "pca", "rms", "mean_abs"} <= set(base)  # the project's own stay
    for name in NAMES:
        b = base[name]
        assert b["library"].startswith("pyod ")
        # each catches the simulated outer-race fault with an alarm that lasts until the failure ...
        assert b["warning"] is not None and b["lead_h"] > 0, (name, b["episodes"])
        # ... and none alarms on the healthy part: its threshold sits above every healthy window's score
        assert b["nuisance"]["in_healthy"] == 0 and b["nuisance"]["count"] == 0, (name, b["episodes"])
        assert 0.5 < b["auc"] <= 1.0
        # one alarm state for the machine, as IsolationForest: no channel named
        assert {e["channel"] for e in b["episodes"]} == {None}


def test_default_evaluate_runs_no_outside_baseline(tiny_run: Path, tiny_data: Path) -> None:
    r = json.loads(cli("evaluate", tiny_run, "--data", tiny_data, "--baselines", "ecod,KNN", "--json", "--quiet"))
    assert [k for k in r["baselines"] if k.startswith("pyod_")] == ["pyod_ecod", "pyod_knn"]


def test_a_missing_pyod_or_an_unknown_name_is_one_line(tiny_run: Path, tiny_data: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from vibrawatch.convert.cli import app

    def fails(*args: object) -> str:
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        return res.output

    out = fails("evaluate", tiny_run, "--data", tiny_data, "--baselines", "ecod,abod")
    assert "'abod' is not one of pyod, ecod, copod, hbos, lof, knn, ecod_upper" in out
    monkeypatch.setitem(sys.modules, "pyod", None)  # as on a machine without the [baselines] extra
    out = fails("evaluate", tiny_run, "--data", tiny_data, "--baselines", "pyod")
    assert 'pip install "vibrawatch[baselines]"' in out and len(out.strip().splitlines()) == 1
    # ECOD's upper-tail twin is numpy: it needs no extra
    r = json.loads(cli("evaluate", tiny_run, "--data", tiny_data, "--baselines", "ecod_upper", "--json", "--quiet"))
    assert "ecod_upper" in r["baselines"] and not any(k.startswith("pyod_") for k in r["baselines"])


@pytest.mark.parametrize("name", OUTSIDE + OWN)
def test_a_window_is_scored_without_the_windows_after_it(name: str) -> None:
    """What a detector calls normal comes from the healthy windows only: a window's score does not change when
    the data goes on (ECOD and COPOD would otherwise refit their distributions on everything scored at once)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 6))
    x[120:] += np.linspace(0, 4, 40)[:, None]  # a drift after the healthy part
    healthy = np.arange(160) < 80
    full = outside_scores(name, x, healthy)
    cut = outside_scores(name, x[:100], healthy[:100])
    np.testing.assert_allclose(cut, full[:100], rtol=1e-9)
    assert full[150:].min() > full[healthy].max()  # the drift is seen


def test_ecod_counts_vibration_that_fell_ecod_upper_only_what_rose() -> None:
    """ECOD adds the improbability of either tail, so windows whose values all fell below the healthy ones score as
    high as windows whose values rose; its upper-tail twin scores only the rise, and equals ECOD's own upper-tail
    part (PyOD's ``O`` is the largest of the left, right and skewness-chosen sums)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 6))
    healthy = np.arange(200) < 100
    x[120:150] -= 3.0  # quieter than ever when healthy
    x[170:] += 3.0  # louder
    ecod, upper = outside_scores("ecod", x, healthy), outside_scores("ecod_upper", x, healthy)
    assert ecod[120:150].min() > ecod[healthy].max() and ecod[170:].min() > ecod[healthy].max()
    assert upper[120:150].max() < upper[healthy].max() < upper[170:].min()
    from pyod.models.ecod import ECOD

    ref = ECOD().fit(x[healthy])
    np.testing.assert_allclose(upper[healthy], ref.U_r.sum(axis=1), rtol=1e-9)
