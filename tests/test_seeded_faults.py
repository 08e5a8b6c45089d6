"""Seeded faults through the CLI, as bench/detection.py --seeded-faults runs them: the CWRU 12 kHz normal record
(brought from 48 kHz) followed by a drive-end fault record as one run, trained with the defaults on the whole
normal record. A several-fold step alarms within one window of the fault's data, with nothing on the normal
record, also when every channel stepped alike (severity before the shared reading, agent/detect/events.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA, cli

from vibrawatch.agent.sources.loaders import load


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    if not (SHARED_DATA / "cwru" / "normal_0_97.mat").exists():
        pytest.skip("real data ../shared/data/cwru not present")
    spec = importlib.util.spec_from_file_location("bench_detection", ROOT / "bench" / "detection.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def normal_run(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The defaults trained on the whole normal record, once for every test here (training is seeded)."""
    out = tmp_path_factory.mktemp("cwru")
    run = out / "run"
    cli("train", "--data", bench.seeded_npz(out, None), "--healthy-until", "100%", "--out", run, "--quiet")
    return run


def fault_start(data: Path) -> float:
    """The time of the fault record's first sample in a normal + fault run."""
    rec = load(data)
    return float(rec.timestamps[int(np.argmax(rec.labels))])


@pytest.mark.parametrize("record", ["12k_Drive_End_IR007_0_105", "12k_Drive_End_OR021@6_0_234",
                                    "12k_Drive_End_B021_0_222"])
def test_a_several_fold_seeded_step_alarms_within_one_window(bench: ModuleType, normal_run: Path, tmp_path: Path,
                                                             record: str) -> None:
    """IR007: drive end x4.1 and fan end x3.0 in one window, alike within their steps, so once read as a load
    change and re-based (2.2 s to the alarm); beyond the drive end's severe level, it is judged as a step.
    OR021@6: x8.0 at the drive end alone. B021: x1.67 at the drive end, a moderate step, held until it was 4.2 s
    into the fault before the shape rule (its crest and kurtosis moved ten times their healthy extreme)."""
    window_s = json.loads((normal_run / "run.json").read_text())["window"]["length"] * bench.SEEDED_SNAPSHOT / 12000.0
    data = bench.seeded_npz(tmp_path, record)
    r = json.loads(cli("evaluate", normal_run, "--data", data, "--json", "--quiet"))
    start = fault_start(data)
    assert [e for e in r["episodes"] if e["raised_s"] < start] == []  # nothing on the normal record
    first = min(e["raised_s"] for e in r["episodes"]) - start
    assert 0 <= first <= window_s, r["episodes"]
    assert r["episodes"][0]["channel"] == "drive_end" and r["condition_changes"] == []


def test_the_gateway_releases_the_ball_fault_s_step_in_the_same_window_as_evaluate(bench: ModuleType, normal_run: Path,
                                                                                    tmp_path: Path) -> None:
    """B021's drive end steps x1.67 (moderate, held) with its crest and kurtosis far beyond their healthy extreme:
    the gateway's Pipeline on the TFLite bundle must read the shape too, and raise the drive end where evaluate
    does (by the level alone it would wait until 4.2 s into the fault)."""
    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.source import ReplaySource

    data = bench.seeded_npz(tmp_path, "12k_Drive_End_B021_0_222")
    r = json.loads(cli("evaluate", normal_run, "--data", data, "--json", "--quiet"))
    bundle = tmp_path / "b.tar"
    cli("convert", normal_run, "--out", bundle)
    pipe = Pipeline(load_bundle(bundle))
    raised = [(ev.t, pipe.bundle.detector.channels[c]) for chunk in ReplaySource(data, chunk=1024).chunks()
              for ev in pipe.process(chunk) if isinstance(ev, Scored) and ev.verdict is not None
              for c in ev.verdict.raised]
    start = fault_start(data)
    assert raised and raised[0][1] == "drive_end" and raised[0][0] - start < 0.85, raised
    assert raised[0][0] == pytest.approx(r["episodes"][0]["raised_s"], abs=1e-6)
