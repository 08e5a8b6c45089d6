"""The tests pass wherever the checkout is (issue 22): a copy of this repository under /tmp, in folders whose
names hold spaces, runs the sandbox tests, the ones a clone under /tmp broke (the systemd units' PrivateTmp=
gives the sandbox an empty /tmp: ``bwrap: execvp <clone>/.venv/bin/python: No such file or directory``).

The copy gets a virtual environment of its own under /tmp, as a fresh clone would, made without installing
anything: the packages come from this environment's site-packages (a path line, so its editable install of
the original checkout is not loaded), and vibrawatch from the copy, mapped the way this editable install maps
the original (setuptools' finder, its paths rebased onto the copy); the console scripts as pip writes them
for a path with spaces. The agent's own run under the units (test_agent_runs_under_the_units_restrictions)
uses the same launcher but needs a trained bundle, a minute more: it is left to the suite itself.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import venv
from pathlib import Path

import pytest
import unit_sandbox
from conftest import ROOT

SANDBOX_TESTS = [
    "tests/test_systemd.py::test_the_sandbox_really_restricts",
    "tests/test_systemd.py::test_monitor_runs_under_its_units_restrictions",
    "tests/test_systemd.py::test_unit_passes_systemd_analyze_verify",  # 3 units, through the console scripts
    "tests/test_bad_input.py::test_under_the_unit_an_unwritable_state_directory_and_an_unreadable_password_are_named",
]
EXPECTED_PASSED = 6


def checkout_files() -> list[str]:
    """The files a clone would have: tracked ones, and new ones not yet committed (not the ignored ones)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: which files belong to the repository is unknown")
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]  # a tracked file deleted in the tree: gone


def editable_finder() -> Path:
    """setuptools' finder of this environment's editable install of vibrawatch (it maps the folders to the
    package: agent/ is vibrawatch.agent ...), or skip."""
    site = Path(sysconfig.get_path("purelib"))
    found = sorted(site.glob("__editable___vibrawatch_*_finder.py"))
    if not found:
        pytest.skip(f"vibrawatch is not installed editable in {site} (pip install -e .): the copy could not be "
                    "made importable without installing it")
    return found[0]


def rebased_finder(finder: Path, copy: Path) -> str:
    """The finder's source with every mapped folder moved from this checkout to the copy."""
    lines = finder.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("MAPPING"):
            mapping: dict[str, str] = ast.literal_eval(line.split("=", 1)[1].strip())
            moved = {k: str(copy / Path(v).relative_to(ROOT)) for k, v in mapping.items()}
            assert all(Path(v).is_dir() for v in moved.values()), moved
            lines[i] = f"MAPPING: dict[str, str] = {moved!r}\n"
            return "".join(lines)
    raise AssertionError(f"{finder}: no MAPPING line (has setuptools changed its editable finder?)")


def console_script(python: Path, module: str, func: str) -> str:
    """A console script as pip writes it when the interpreter's path holds a space (no shebang can)."""
    return (f"#!/bin/sh\n'''exec' \"{python}\" \"$0\" \"$@\"\n' '''\nimport sys\nfrom {module} import {func}\n"
            f"if __name__ == '__main__':\n    sys.exit({func}())\n")


def make_copy(base: Path) -> Path:
    """This repository copied to ``base``/clone dir, with a virtual environment of its own in .venv."""
    copy = base / "clone dir"
    for name in checkout_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    finder = editable_finder()
    venv.create(copy / ".venv", symlinks=True, with_pip=False)
    python = copy / ".venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / finder.name).write_text(rebased_finder(finder, copy))
    for pth in finder.parent.glob("__editable__.vibrawatch-*.pth"):
        shutil.copy(pth, site / pth.name)
    outer = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "zz-outer-site-packages.pth").write_text("".join(f"{p}\n" for p in outer))  # after the finder's
    entry_points = next(finder.parent.glob("vibrawatch-*.dist-info")) / "entry_points.txt"
    for line in entry_points.read_text().splitlines():
        name, eq, target = line.partition("=")
        if eq:
            module, _, func = target.strip().partition(":")
            script = python.with_name(name.strip())
            script.write_text(console_script(python, module, func))
            script.chmod(0o755)
    return copy


@pytest.mark.skipif(unit_sandbox.available() is not None, reason=str(unit_sandbox.available()))
def test_the_sandbox_tests_pass_from_a_copy_under_tmp_in_a_path_with_spaces() -> None:
    base = Path(tempfile.mkdtemp(prefix="vibrawatch anywhere ", dir="/tmp"))
    try:
        base.chmod(0o755)  # mkdtemp's 0700: the units' dynamic user must reach the copy, as in a clone
        copy = make_copy(base)
        python = copy / ".venv" / "bin" / "python"
        where = subprocess.run([str(python), "-c", "import vibrawatch.agent as a; print(a.__file__)"],
                               capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        assert Path(where) == copy / "agent" / "__init__.py"  # the copy's code, not this checkout's
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        res = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                              "--basetemp", str(base / "pytest tmp"), *SANDBOX_TESTS],
                             cwd=copy, env=env, capture_output=True, text=True, timeout=600)
        tail = res.stdout[-3000:] + res.stderr[-2000:]
        assert res.returncode == 0, tail
        summary = res.stdout.strip().splitlines()[-1]
        assert summary.startswith(f"{EXPECTED_PASSED} passed") and "skipped" not in summary, tail
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_what_the_sandboxs_tmpfs_would_hide_is_bound_back_with_the_way_down_to_it() -> None:
    """Without root or bubblewrap: a checkout under /tmp and an interpreter under /root are bound back
    read-only, their parents made passable (0755) for the dynamic user; /usr, never hidden, is left alone."""
    hidden = [Path("/tmp"), Path("/run"), Path("/home"), Path("/root")]
    needed = [Path("/tmp/a b/clone dir"), Path("/tmp/a b/clone dir/.venv"), Path("/root/.pyenv/versions/3.11"),
              Path("/usr/lib/python3.11"), Path("/tmp")]
    assert unit_sandbox.keep_visible(hidden, needed) == [
        "--perms", "0755", "--dir", "/tmp/a b", "--ro-bind", "/tmp/a b/clone dir", "/tmp/a b/clone dir",
        "--perms", "0755", "--dir", "/root/.pyenv", "--perms", "0755", "--dir", "/root/.pyenv/versions",
        "--ro-bind", "/root/.pyenv/versions/3.11", "/root/.pyenv/versions/3.11"]
    assert unit_sandbox.keep_visible([Path("/tmp"), Path("/run")], [Path("/root/.pyenv/versions/3.11")]) == []


@pytest.mark.skipif(unit_sandbox.available() is not None, reason=str(unit_sandbox.available()))
def test_the_launcher_and_interpreter_of_this_checkout_are_there_inside_the_sandbox(tmp_path: Path) -> None:
    """Wherever this checkout is (the suite run from a clone under /tmp too): inside the sandbox, this
    interpreter runs and reads this launcher."""
    d = {k: tmp_path / k for k in ("state", "etc", "run")}
    for p in d.values():
        p.mkdir()
    unit_sandbox.prepare(d["state"], d["etc"], None, d["run"])
    launcher = str(Path(unit_sandbox.__file__).resolve())
    cmd = unit_sandbox.bwrap_command(ROOT / "systemd" / "vibrawatch-agent.service",
                                     [sys.executable, "-c", f"print(open({launcher!r}).read()[:3])"],
                                     state=d["state"], config=d["etc"], credentials=None, runtime=d["run"], env={})
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == '"""', res.stderr
