"""The monitor's settings: the example file loads; a mistake is one line naming the file, key or option."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ROOT
from monitor_helpers import vibrawatch_command

from vibrawatch.agent.errors import ConfigError
from vibrawatch.monitor.config import load_monitor_config


def test_example_config_loads_and_the_command_line_overrides_it() -> None:
    cfg = load_monitor_config(ROOT / "configs" / "monitor.example.toml", broker="mqtt://127.0.0.1:1884", group=None)
    assert (cfg.host, cfg.port, cfg.tls, cfg.monitor.group) == ("127.0.0.1", 1884, False, "vibrawatch")
    assert cfg.monitor.db.startswith("sqlite:////") and cfg.retention.raw_days == 30


@pytest.mark.parametrize(("text", "message"), [
    ("[monitor]\nbrokr = 'mqtt://x:1'\n", "[monitor] unknown key(s) ['brokr']"),
    ("[mqtt]\npassword = 'x'\n", "never write a password"),
    ("[monitor]\nbroker = 'http://x'\n", "expected mqtt://HOST:PORT"),
    ("[alerts]\nwebhook = 'ftp://x'\n", "expected an http:// or https:// URL"),
    ("[nope]\n", "unknown section(s) ['nope']"),
    ("[mqtt]\nreceive_maximum = 70000\n", "[mqtt] receive_maximum = 70000: expected an integer from 1 to 65535"),
    ("[mqtt]\nreceive_maximum = 0\n", "[mqtt] receive_maximum = 0: expected an integer from 1 to 65535"),
])
def test_a_bad_setting_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "monitor.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_monitor_config(p)
    assert str(e.value).startswith(str(p)) and message in str(e.value)


def test_the_command_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run(vibrawatch_command("monitor", "--db", "mysql://x/y", "--http", "off"), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: --db mysql://x/y: unknown database")
