"""The product's level floors on a signed column (a published table's mean or skewness, <= 0 when healthy): read
as |distance from the healthy median|, like the floor baseline, so a drift either way crosses its threshold and
the healthy period stays under it. Before, a negative healthy maximum became a threshold of 1e-12: the column
could never alarm downwards and any positive value was a 1e11-fold alarm."""

from __future__ import annotations

import numpy as np
import pytest

from vibrawatch.agent.detect.healthy import fit_floor
from vibrawatch.agent.detect.measures import Floor, signed_centers
from vibrawatch.agent.detect.threshold import ThresholdRule, fit_channel_thresholds

RULE = ThresholdRule()  # max x margin
BLANK = Floor(("value",), np.ones((1, 2)), np.ones((1, 2)), np.ones(2))


def healthy(n: int = 400, seed: int = 2) -> np.ndarray:
    """(n, K=1, C=2): channel 0 a level near 1.0 (an RMS), channel 1 a signed mean near -0.2."""
    rng = np.random.default_rng(seed)
    return np.stack([1.0 + 0.03 * rng.standard_normal(n), -0.2 + 0.01 * rng.standard_normal(n)], axis=1)[:, None, :]


def test_a_signed_column_is_centred_on_its_healthy_median_and_a_level_column_is_not() -> None:
    v = healthy()
    c = signed_centers(v)
    assert c is not None and c[0, 0] == 0.0 and c[0, 1] == pytest.approx(np.median(v[:, 0, 1]))
    assert signed_centers(np.abs(v)) is None  # every value > 0: nothing to centre
    # a subsample all above 0, but the smallest of every window (kept or not) reached 0: signed
    assert signed_centers(np.abs(v), lowest=np.array([[[0.5, 0.0]]]))[0, 1] != 0.0


def test_the_healthy_period_stays_under_the_floor_and_a_drift_either_way_crosses_it() -> None:
    v = healthy()
    f = fit_floor(BLANK, v, RULE, history=6)
    assert (f.ratios(v) <= 1.0).all()
    # log levels (steps, condition changes) are the level's too: finite, and the healthy ones at most its high
    assert np.isfinite(f.log_level(v)).all() and (f.log_level(v) <= f.high + 1e-12).all()
    for drifted in (-0.35, -0.05, 0.1):  # down, up towards 0, and across it
        assert f.ratios(np.array([[[1.0, drifted]]]))[0, 1] > 1.0, drifted
    # the level column is what it was: thresholds straight on its values, ratio = value / threshold
    assert f.thresholds[0, 0] == pytest.approx(fit_channel_thresholds(v[:, 0, :], RULE)[0])
    assert f.ratios(np.array([[[1.5, -0.2]]]))[0, 0] == pytest.approx(1.5 / f.thresholds[0, 0])


def test_the_centre_travels_in_the_manifest_and_old_floors_load_without_it() -> None:
    f = fit_floor(BLANK, healthy(), RULE, history=6)
    d = f.to_dict()
    back = Floor.from_dict(d, 2)
    assert back.center is not None and np.array_equal(back.center, f.center)
    assert np.array_equal(back.ratios(healthy()), f.ratios(healthy()))
    level_only = fit_floor(BLANK, np.abs(healthy()), RULE, history=6)
    assert "center" not in level_only.to_dict() and Floor.from_dict(level_only.to_dict(), 2).center is None
