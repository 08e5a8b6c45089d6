"""The one TOML section parser the agent's, training's and the monitor's configs share (agent/sections.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from vibrawatch.agent.config import load_agent_config
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.sections import checked, parse_section, path_field, positive, read_toml
from vibrawatch.monitor.config import load_monitor_config
from vibrawatch.train.config import load_config


@dataclass(frozen=True)
class Section:
    count: int = checked(1, lambda v: v >= 1, "an integer >= 1")
    rate: float | None = checked(None, positive, "a number > 0")
    widths: tuple[int, ...] = (16, 4)
    band: tuple[float, float] | None = None
    name: str = "x"
    file: str | None = path_field()


CONF = Path("/etc/vw/conf.toml")
AGENT = "[agent]\nsite = 's'\ndevice = 'd'\nbundle = 'b.tar'\n[source]\nkind = 'simulator'\n"


@pytest.mark.parametrize(("raw", "message"), [
    ({"cuont": 2}, "/etc/vw/conf.toml: [s] unknown key(s) ['cuont']; known: ['band', 'count', 'file', 'name', "
                   "'rate', 'widths']"),
    ({"count": 0}, "[s] count = 0: expected an integer >= 1"),
    ({"count": 2.0}, "[s] count = 2.0: expected an integer >= 1"),
    ({"count": True}, "[s] count = True: expected an integer >= 1"),
    ({"rate": float("nan")}, "[s] rate = nan: expected a number > 0"),
    ({"rate": "fast"}, "[s] rate = 'fast': expected a number > 0"),
    ({"widths": [16, "4"]}, "[s] widths = [16, '4']: expected tuple[int, ...]"),
    ({"band": [1.0, 2.0, 3.0]}, "[s] band = [1.0, 2.0, 3.0]: expected tuple[float, float] | None"),
    ({"name": 3}, "[s] name = 3: expected str"),
])
def test_a_wrong_key_or_value_names_the_file_the_section_the_key_and_what_was_expected(raw: dict, message: str
                                                                                     ) -> None:
    with pytest.raises(ConfigError) as e:
        parse_section(Section, raw, "s", CONF)
    assert message in str(e.value) and str(e.value).startswith(str(CONF))


def test_values_become_what_the_field_holds() -> None:
    s = parse_section(Section, {"rate": 3, "widths": [8, 2], "band": [1, 2.5], "file": "model.tar"}, "s", CONF)
    assert s == Section(rate=3.0, widths=(8, 2), band=(1.0, 2.5), file="/etc/vw/model.tar")
    assert isinstance(s.rate, float) and isinstance(s.band[0], float)
    assert parse_section(Section, None, "s", CONF) == Section()


def test_a_section_that_is_not_a_table_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[s\] expected a table of keys, got int"):
        parse_section(Section, 3, "s", CONF)  # type: ignore[arg-type]


def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        read_toml(bad)
    bad.write_bytes(b"\xff\xfe[agent]")
    with pytest.raises(ConfigError, match=r"bad\.toml: cannot read it"):
        read_toml(bad)


@pytest.mark.parametrize("which", ["agent", "train", "monitor"])
def test_the_three_configs_name_an_unknown_key_the_same_way(tmp_path: Path, which: str) -> None:
    section = {"agent": "mqtt", "train": "model", "monitor": "fleet"}[which]
    p = tmp_path / f"{which}.toml"
    p.write_text(AGENT * (which == "agent") + f"[{section}]\nkeepalivee = 3\n")
    load = {"agent": load_agent_config, "train": load_config, "monitor": load_monitor_config}[which]
    with pytest.raises(ConfigError) as e:
        load(p)
    assert f"{p}: [{section}] unknown key(s) ['keepalivee']; known: [" in str(e.value)


@pytest.mark.parametrize("which", ["agent", "train", "monitor"])
def test_the_three_configs_check_a_value_s_type_the_same_way(tmp_path: Path, which: str) -> None:
    section, key = {"agent": ("mqtt", "keepalive"), "train": ("model", "epochs"),
                    "monitor": ("fleet", "sweep_s")}[which]
    p = tmp_path / f"{which}.toml"
    p.write_text(AGENT * (which == "agent") + f"[{section}]\n{key} = 'often'\n")
    load = {"agent": load_agent_config, "train": load_config, "monitor": load_monitor_config}[which]
    with pytest.raises(ConfigError) as e:
        load(p)
    assert f"{p}: [{section}] {key} = 'often': expected " in str(e.value)
