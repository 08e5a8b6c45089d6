"""The wheel, installed outside the checkout, is the whole product: the working directory cannot hide a
module the wheel forgot, and nothing installs a top-level ``agent``, ``train`` or ``convert``."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT
from test_agent_e2e import write_config


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (whl,) = out.glob("vibrawatch-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed. Its dependencies (numpy, ai-edge-litert, paho-mqtt,
    typer, ...) are borrowed from this test environment through a .pth file, so nothing is downloaded; the
    project itself comes only from the wheel (the test environment has it as an editable install, whose
    finder a .pth-added directory does not activate)."""
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    py = env / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return env


def test_the_wheel_holds_one_package_named_vibrawatch(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("vibrawatch-")}
    assert tops == {"vibrawatch"}
    assert "vibrawatch/agent/link/schemas/score.json" in names and "vibrawatch/agent/cli.py" in names


def test_installed_outside_the_checkout_it_runs_and_agent_is_not_a_top_level_name(
        venv: Path, tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = lambda *a: subprocess.run([str(x) for x in a], cwd=elsewhere, capture_output=True, text=True)  # noqa: E731
    ok = run(venv / "bin" / "python", "-c", "import vibrawatch.agent, vibrawatch.agent.service as s; print(s.__file__)")
    assert ok.returncode == 0, ok.stderr
    assert str(venv) in ok.stdout and str(ROOT) not in ok.stdout  # the wheel's copy, not the checkout's
    for name in ("agent", "train", "convert"):
        gone = run(venv / "bin" / "python", "-c", f"import {name}")
        assert gone.returncode == 1 and f"No module named '{name}'" in gone.stderr
    check = run(venv / "bin" / "vibrawatch-agent", "check", "--config", write_config(tmp_path, 1883, tiny_bundle,
                                                                                      tiny_data))
    assert check.returncode == 0, check.stderr
    assert "golden self-test ok" in check.stdout
    help_ = run(venv / "bin" / "vibrawatch", "--help")
    assert help_.returncode == 0 and "Predictive maintenance at the edge" in help_.stdout
