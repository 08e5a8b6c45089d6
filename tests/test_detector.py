"""The one detector-parameter object: training writes it, the bundle ships it, the gateway reads it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from vibrawatch.agent.detect.detector import Detector
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.model.bundle import load_bundle


def test_run_bundle_and_gateway_read_the_same_detector(tiny_run: Path, tiny_bundle: Path) -> None:
    from vibrawatch.train.run import Run

    run = Run.open(tiny_run).detector
    edge = load_bundle(tiny_bundle).detector
    assert run.to_dict() == edge.to_dict()
    assert Detector.from_dict(json.loads(json.dumps(edge.to_dict()))).to_dict() == edge.to_dict()
    assert np.array_equal(run.channel_thresholds, edge.channel_thresholds)


@pytest.mark.parametrize(("path", "value", "named"), [
    (("threshold", "value"), "0.1", "threshold.value"),
    (("threshold", "channels"), None, "threshold.channels"),
    (("threshold", "channels"), [1.0], "threshold.channels"),
    (("alarm", "raise_after"), "3", "alarm.raise_after"),
    (("alarm", "raise_after"), True, "alarm.raise_after"),
    (("window", "length"), 0, "window.length"),
    (("threshold", "method"), "median", "threshold.method"),
    (("threshold", "value"), float("nan"), "threshold.value"),
])
def test_a_wrong_field_is_named(tiny_bundle: Path, path: tuple[str, str], value: object, named: str) -> None:
    d = copy.deepcopy(load_bundle(tiny_bundle).detector.to_dict())
    d[path[0]][path[1]] = value
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        Detector.from_dict(d)
