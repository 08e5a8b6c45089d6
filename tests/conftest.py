"""Shared fixtures: where the real data sets live, and one tiny trained run made through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_CONFIG = ROOT / "tests" / "data" / "tiny.toml"


def shared(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test where a fresh clone has no shared/ beside it."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data {p} not present (CI has ../shared/data)")
    return p


def cli(*args: str) -> str:
    """Run the vibrawatch CLI in-process as a user would; fail with its output if it exits non-zero."""
    from typer.testing import CliRunner

    from vibrawatch.convert.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, f"vibrawatch {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}"
    return result.output


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated bearing run to failure (bearing1, outer race), written by `vibrawatch simulate`."""
    out = tmp_path_factory.mktemp("data") / "bearing.npz"
    cli("simulate", "bearing", "--out", out, "--snapshots", "80", "--samples", "4096", "--fs-hz", "20000",
        "--onset", "0.6", "--seed", "3")
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained for real (tiny tf-keras model) on the healthy first half of ``tiny_data``."""
    out = tmp_path_factory.mktemp("run") / "run"
    cli("train", "--data", tiny_data, "--healthy-until", "50%", "--config", TINY_CONFIG, "--out", out, "--quiet")
    assert json.loads((out / "run.json").read_text())["schema"] == "vibrawatch.run/2"
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_run`` converted by `vibrawatch convert` to a float32 bundle (.tar), unsigned."""
    out = tmp_path_factory.mktemp("bundle") / "tiny.tar"
    cli("convert", tiny_run, "--out", out)
    return out
