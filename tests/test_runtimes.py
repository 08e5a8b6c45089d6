"""A bundle really runs on tflite-runtime 2.14 (numpy<2, its own environment), not only on ai-edge-litert."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

from vibrawatch.agent.detect.infer import find_runtime
from vibrawatch.agent.model.bundle import load_bundle

VAR = "VIBRAWATCH_TFLITE_RUNTIME_PYTHON"


@pytest.fixture(scope="module")
def tflite_python() -> str:
    python = os.environ.get(VAR)
    if not python:
        if os.environ.get("CI"):
            pytest.fail(f"{VAR} is not set: CI must run bundles through tflite-runtime (tests/run.sh sets it)")
        pytest.skip(f"{VAR} not set (tests/run.sh makes .venv-tflite and sets it)")
    return python


def test_gateway_adapter_prefers_ai_edge_litert() -> None:
    assert find_runtime()[0] == "ai-edge-litert"


def test_float32_bundle_runs_on_tflite_runtime(tflite_python: str, tiny_run: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    report = json.loads(cli("convert", tiny_run, "--out", bundle))
    assert report["runtimes"]["tflite-runtime"]["ok"]  # convert ran it there too and recorded it
    x = np.load(tiny_run / "windows.npz")["x"][::7][:12]
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np; from vibrawatch.agent.model.bundle import load_bundle\n"
        f"b = load_bundle({str(bundle)!r}, runtime='tflite-runtime')\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, b.model.reconstruct_batch(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "print(b.model.runtime, np.__version__)"
    )
    res = subprocess.run([tflite_python, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("tflite-runtime 2.14") and " 1." in res.stdout  # numpy 1.x there
    expected = load_bundle(bundle).model.reconstruct_batch(x)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5)
