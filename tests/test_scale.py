"""Robust scaling: its numbers, its way from training through the bundle to the gateway, and its config errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONFIG, cli

from vibrawatch.agent.detect.detector import Detector
from vibrawatch.agent.detect.scale import MinMaxScaling, RobustScaling
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.model.bundle import load_bundle


def test_one_healthy_outlier_does_not_stretch_the_robust_scale() -> None:
    # 101 healthy values 0.00..1.00 in feature 0 plus one outlier at 10; feature 1 constant
    healthy = np.column_stack([np.r_[np.linspace(0.0, 1.0, 101), 10.0], np.full(102, 3.0)])
    s = RobustScaling.fit(healthy)
    lo, med, hi = np.quantile(healthy[:, 0], [0.05, 0.5, 0.95])
    assert s.center == pytest.approx([med, 3.0])
    assert s.spread == pytest.approx([hi - lo, 1.0])  # a constant feature keeps spread 1, never a division by 0
    # a fault's rise of 0.5 over the healthy top: 0.55 healthy spreads robustly, 0.05 of the min-max range
    fault = np.array([[1.5, 3.0]])
    assert s.transform(fault)[0] == pytest.approx([(1.5 - med) / (hi - lo), 0.0])
    mm = MinMaxScaling(1 / np.array([10.0, 1.0]), np.zeros(2), np.zeros(2), np.array([10.0, 3.0]))
    assert mm.transform(fault)[0, 0] - mm.transform(np.array([[1.0, 3.0]]))[0, 0] == pytest.approx(0.05)
    assert s.transform(fault)[0, 0] - s.transform(np.array([[1.0, 3.0]]))[0, 0] == pytest.approx(0.5 / (hi - lo))


@pytest.fixture(scope="module")
def robust_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run trained through the CLI with ``[features] scaling = "robust"``, and its bundle."""
    tmp = tmp_path_factory.mktemp("robust")
    cfg = tmp / "robust.toml"
    cfg.write_text(TINY_CONFIG.read_text().replace("[features]\n", '[features]\nscaling = "robust"\n', 1))
    run = tmp / "run"
    cli("train", "--data", tiny_data, "--healthy-until", "50%", "--config", cfg, "--out", run, "--quiet")
    cli("convert", run, "--out", tmp / "robust.tar")
    return run, tmp / "robust.tar"


def test_robust_scaler_goes_from_training_through_the_bundle_to_the_gateway(
        robust_run: tuple[Path, Path], tiny_data: Path, tiny_run: Path) -> None:
    from vibrawatch.train.cwru import load
    from vibrawatch.train.dataset import featurize
    from vibrawatch.train.run import Run

    run_dir, bundle = robust_run
    run = Run.open(run_dir)
    edge = load_bundle(bundle).detector
    assert isinstance(run.detector.scaler, RobustScaling) and isinstance(edge.scaler, RobustScaling)
    assert json.loads((run_dir / "run.json").read_text())["scaler"]["kind"] == "robust"
    assert edge.to_dict() == run.detector.to_dict()
    # the numbers are the healthy frames' median and 5-95% spread, the same on the gateway
    ff = featurize(load(tiny_data), edge.spec, progress=False)
    healthy = ff.values[ff.times <= run.meta["training"]["healthy_end_time"]]
    lo, med, hi = np.quantile(healthy, [0.05, 0.5, 0.95], axis=0)
    assert edge.scaler.center == pytest.approx(med)
    assert edge.scaler.spread == pytest.approx(np.where(hi - lo > 0, hi - lo, 1.0))
    assert np.median(edge.scaler.transform(healthy), axis=0) == pytest.approx(np.zeros(edge.spec.n_features),
                                                                             abs=1e-9)
    # evaluate scores with it and still finds the failing bearing without a false alarm
    report = json.loads(cli("evaluate", run_dir, "--data", tiny_data, "--failed", "bearing1", "--json", "--quiet"))
    assert report["false_alarms"] == 0 and report["lead_hours"] > 0
    # the baselines keep min-max: a scaling variant meets the same PCA and IsolationForest as the default run
    default = json.loads(cli("evaluate", tiny_run, "--data", tiny_data, "--failed", "bearing1", "--json", "--quiet"))
    for name in ("pca", "isolation_forest"):
        assert report["baselines"][name] == default["baselines"][name]


def test_a_bundle_without_a_scaler_kind_reads_as_min_max(tiny_bundle: Path) -> None:
    d = load_bundle(tiny_bundle).detector.to_dict()
    assert "kind" not in d["scaler"]  # what every bundle made before robust scaling carries
    assert isinstance(Detector.from_dict(d).scaler, MinMaxScaling)


@pytest.mark.parametrize(("change", "named"), [
    ({"kind": "zscore"}, "scaler.kind: expected one of minmax, robust, got 'zscore'"),
    ({"spread": None}, "scaler.spread: expected a list of numbers, got None"),
    ({"spread": [0.0]}, "scaler: arrays must be 1-D and equally long"),
    ({"quantiles": [0.9, 0.1]}, "scaler.quantiles: expected two numbers"),
])
def test_a_wrong_robust_scaler_field_is_named(robust_run: tuple[Path, Path], change: dict, named: str) -> None:
    d = copy.deepcopy(load_bundle(robust_run[1]).detector.to_dict())
    d["scaler"].update(change)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("(", r"\(")):
        Detector.from_dict(d)


def test_a_wrong_scaling_in_the_training_config_is_named(tmp_path: Path, tiny_data: Path) -> None:
    from typer.testing import CliRunner

    from vibrawatch.convert.cli import app

    cfg = tmp_path / "bad.toml"
    cfg.write_text('[features]\nscaling = "zscore"\n')
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--config", str(cfg),
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert f"{cfg}: [features] scaling must be one of 'minmax', 'robust', got 'zscore'" in result.output
    assert not (tmp_path / "r").exists()
