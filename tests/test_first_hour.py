"""A newcomer's first mistakes end in one line with the reason, never a traceback (issue 22)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

MISSING = '''
import sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
'''


def vibrawatch(tmp_path: Path, *args: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``vibrawatch ARGS`` as installed, with the ``blocked`` top-level modules missing as an uninstalled extra."""
    env = dict(os.environ)
    if blocked:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(MISSING.replace("{BLOCKED}", repr(set(blocked))))
        env["PYTHONPATH"] = str(site)
    script = Path(sys.executable).with_name("vibrawatch")
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize(("args", "blocked", "extra"), [
    (("train", "--data", "x.npz", "--out", "run"), ("tensorflow", "tf_keras"), "train"),
    (("monitor", "--db", "postgresql://u@127.0.0.1:1/db", "--http", "off"), ("psycopg",), "monitor"),
    (("--help",), ("typer", "click"), "train"),
])
def test_a_missing_extra_names_the_extra_to_install(tmp_path: Path, args: tuple[str, ...], blocked: tuple[str, ...],
                                                     extra: str) -> None:
    res = vibrawatch(tmp_path, *args, blocked=blocked)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and f"vibrawatch[{extra}]" in lines[0], res.stderr


def test_a_second_monitor_on_a_busy_http_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = vibrawatch(tmp_path, "monitor", "--db", f"sqlite:///{tmp_path / 'fleet.db'}", "--http",
                         f"127.0.0.1:{port}", "--broker", "mqtt://127.0.0.1:1")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    errors = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and f"--http 127.0.0.1:{port}: cannot listen there" in errors[0], res.stderr
