"""Shared fixtures: where the real data sets live, one tiny trained run made through the CLI, and the databases
every monitor storage test runs on (SQLite and a real, throwaway PostgreSQL)."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported when a test asks for a database: it brings the monitor's modules
    from postgres import Postgres

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


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """One throwaway PostgreSQL cluster per test module (tests/postgres.py), removed after it."""
    from postgres import Postgres, postgres_bin

    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql (tests/run.sh)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("runuser not found (PostgreSQL refuses to run as root: as root the tests run it as nobody)")
    pg = Postgres().start()
    yield pg
    pg.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on both backends: a new SQLite file, or a new database of this module's cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    pg = request.getfixturevalue("postgres")
    return pg.fresh_database(f"t_{zlib.crc32(request.node.nodeid.encode()):08x}")
