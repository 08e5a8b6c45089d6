"""A gateway set up wrong: `vibrawatch-agent check` and `run` (as a user or the unit runs them) stop with one
line naming the file and what to do, and exit status 2, which the systemd units do not restart on."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import unit_sandbox
from test_agent_e2e import agent_command, gateway_env
from test_systemd import UNITS


def config(tmp_path: Path, agent: str = "", source: str = 'kind = "replay"\npath = "x.npz"', mqtt: str = "",
           extra: str = "") -> Path:
    (tmp_path / "state").mkdir(exist_ok=True)
    bundle = tmp_path / "state" / "bundle.tar"
    bundle.touch()  # the paths are checked before the bundle's content
    cfg = tmp_path / "etc" / "agent.toml"
    cfg.parent.mkdir(exist_ok=True)
    agent = agent or f'bundle = "{bundle}"\nspool = "{tmp_path / "state" / "spool.sqlite"}"'
    cfg.write_text(f'[agent]\nsite = "s"\ndevice = "d"\n{agent}\n[source]\n{source}\n[mqtt]\n{mqtt}\n{extra}')
    return cfg


def one_line_error(res: subprocess.CompletedProcess[str], *named: str) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in named:
        assert n in lines[0], lines[0]
    return lines[0]


def agent(cfg: Path, tmp_path: Path, command: str = "check", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_command(command, "--config", str(cfg)), env={**gateway_env(tmp_path), **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", ["check", "run"])
def test_missing_bundle(tmp_path: Path, command: str) -> None:
    cfg = config(tmp_path, agent=f'bundle = "{tmp_path}/nowhere/bundle.tar"\nspool = "{tmp_path}/spool.sqlite"')
    one_line_error(agent(cfg, tmp_path, command), str(cfg), f"{tmp_path}/nowhere/bundle.tar", "does not exist",
                   "vibrawatch convert")


def test_missing_state_directory(tmp_path: Path) -> None:
    """A missing state directory the agent can create is created (owner only, tests/test_service.py); one it
    cannot create (here a file stands where its parent should be) is one line, exit 2."""
    (tmp_path / "blocked").write_text("")
    cfg = config(tmp_path, agent=f'bundle = "{tmp_path}/state/bundle.tar"\n'
                                 f'spool = "{tmp_path}/blocked/gone/spool.sqlite"')
    one_line_error(agent(cfg, tmp_path), str(cfg), f"{tmp_path}/blocked/gone", "does not exist", "StateDirectory=")


def test_missing_password_file_and_missing_credential(tmp_path: Path) -> None:
    cfg = config(tmp_path, mqtt=f'username = "press7"\npassword_file = "{tmp_path}/etc/mqtt-password"')
    one_line_error(agent(cfg, tmp_path), str(cfg), f"{tmp_path}/etc/mqtt-password", "does not exist")
    cfg = config(tmp_path, mqtt='username = "press7"')
    (tmp_path / "creds").mkdir()
    one_line_error(agent(cfg, tmp_path, CREDENTIALS_DIRECTORY=str(tmp_path / "creds")), str(cfg), "mqtt-password",
                   "LoadCredential=")
    # `check` by hand before a restart: the file the shipped unit would load for this config is named.
    one_line_error(agent(cfg, tmp_path), str(cfg), f"{cfg.parent}/mqtt-password", "does not exist", "LoadCredential=")
    press9 = cfg.with_name("press9.toml")  # vibrawatch-agent@press9.service
    press9.write_text(cfg.read_text())
    one_line_error(agent(press9, tmp_path), str(press9), f"{cfg.parent}/press9.mqtt-password", "does not exist")
    (cfg.parent / "press9.mqtt-password").write_text("secret\n")
    assert "mqtt-password" not in agent(press9, tmp_path).stderr  # there now: no word of it


def test_missing_i2c_device(tmp_path: Path) -> None:
    cfg = config(tmp_path, source='kind = "adxl345"\ni2c_bus = 97')
    one_line_error(agent(cfg, tmp_path, "run"), str(cfg), "/dev/i2c-97 does not exist", "do_i2c")


def test_bad_commissioning_state_path(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("")
    cfg = config(tmp_path, extra=f'[commissioning]\nwindows = 10\nstate = "{tmp_path}/blocked/nope/calibration.json"')
    one_line_error(agent(cfg, tmp_path), str(cfg), "[commissioning] state", f"{tmp_path}/blocked/nope",
                   "does not exist")


needs_sandbox = pytest.mark.skipif(unit_sandbox.available() is not None, reason=str(unit_sandbox.available()))


@needs_sandbox
def test_under_the_unit_an_unwritable_state_directory_and_an_unreadable_password_are_named(tmp_path: Path) -> None:
    """As the unit's dynamic user: a spool outside the state directory (read-only there), a password file
    only root can read (what LoadCredential= is for)."""
    d = {k: tmp_path / k for k in ("state", "etc", "run")}
    for p in d.values():
        p.mkdir()
    (d["state"] / "bundle.tar").touch()
    secret = d["etc"] / "mqtt-password"
    secret.write_text("s3cret\n")

    def under_unit(cfg_text: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
        cfg = d["etc"] / "agent.toml"
        cfg.write_text(cfg_text)
        unit_sandbox.prepare(d["state"], d["etc"], None, d["run"])
        os.chmod(secret, 0o600)
        cmd = unit_sandbox.bwrap_command(UNITS[0], agent_command("check", "--config", str(cfg)), state=d["state"],
                                         config=d["etc"], credentials=None, runtime=d["run"], env={})
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        res.stderr = "\n".join(x for x in res.stderr.splitlines() if not x.startswith("sandbox: "))
        return cfg, res

    head = f'[agent]\nsite = "s"\ndevice = "d"\nbundle = "{d["state"]}/bundle.tar"\n'
    # /var/lib exists, read-only under ProtectSystem=strict (the unit's StateDirectory is its only writable part)
    cfg, res = under_unit(head + 'spool = "/var/lib/spool.sqlite"\n[source]\nkind = "replay"\npath = "x.npz"\n')
    one_line_error(res, str(cfg), "directory /var/lib is on a read-only filesystem", "StateDirectory=")
    cfg, res = under_unit(head + f'spool = "{d["state"]}/spool.sqlite"\n[source]\nkind = "replay"\npath = "x.npz"\n'
                          f'[mqtt]\nusername = "u"\npassword_file = "{secret}"\n')
    one_line_error(res, str(cfg), str(secret), "not readable by uid 61873", "LoadCredential=")


BAD_VALUES = [  # (section, its lines, what the error names): each of these once started a gateway that then failed
    ("mqtt", "port = -1", "[mqtt] port = -1: expected a TCP port, 1 to 65535"),
    ("mqtt", "port = 70000", "[mqtt] port = 70000"),
    ("mqtt", 'host = ""', "[mqtt] host = '': expected a host name or address"),
    ("mqtt", "keepalive = -5", "[mqtt] keepalive = -5"),
    ("mqtt", "max_backoff_s = 0", "[mqtt] max_backoff_s = 0: expected the longest wait between reconnects"),
    ("mqtt", "max_backoff_s = -3", "[mqtt] max_backoff_s = -3"),
    ("mqtt", "inflight = 0", "[mqtt] inflight = 0: expected messages in flight at once"),
    ("agent", "spool_max_mb = nan", "[agent] spool_max_mb = nan"),
    ("agent", "spool_max_mb = inf", "[agent] spool_max_mb = inf"),
    ("agent", "drain_timeout_s = inf", "[agent] drain_timeout_s = inf: expected seconds, 0 to 3600"),
    ("agent", "drain_timeout_s = -1", "[agent] drain_timeout_s = -1"),
    ("deploy", "probation_windows = 0", "[deploy] probation_windows = 0"),
    ("deploy", "max_bundle_kb = -1", "[deploy] max_bundle_kb = -1"),
    ("source", 'kind = "mqtt"\ntopic = "a/#/b"', "topic = 'a/#/b': expected an MQTT topic filter"),
    ("source", 'kind = "replay"\npath = "x.npz"\nfull_scale = -1', "full_scale = -1.0: expected |x|"),
]


@pytest.mark.parametrize(("section", "lines", "named"), BAD_VALUES, ids=[b[1].split("\n")[-1] for b in BAD_VALUES])
def test_a_value_the_running_agent_cannot_use_is_refused_at_start(tmp_path: Path, section: str, lines: str,
                                                                    named: str) -> None:
    from vibrawatch.agent.config import load_agent_config
    from vibrawatch.agent.errors import ConfigError

    base = f'bundle = "{tmp_path}/b.tar"\nspool = "{tmp_path}/spool.sqlite"'
    cfg = config(tmp_path, agent=base + ("\n" + lines if section == "agent" else ""),
                 source=lines if section == "source" else 'kind = "replay"\npath = "x.npz"',
                 mqtt=lines if section == "mqtt" else "", extra=f"[deploy]\n{lines}" if section == "deploy" else "")
    with pytest.raises(ConfigError) as e:
        load_agent_config(cfg)
    assert str(e.value).startswith(str(cfg)) and named in str(e.value), str(e.value)


def test_a_bad_value_stops_run_with_one_line_too(tmp_path: Path) -> None:
    one_line_error(agent(config(tmp_path, mqtt="port = -1"), tmp_path, "run"), "[mqtt] port = -1")
