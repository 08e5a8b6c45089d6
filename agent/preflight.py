"""What must be in place before the agent starts, checked by ``check`` and ``run`` alike: each problem is one
line naming the file and what to do, and exit status 2, which the systemd units do not restart on
(``RestartPreventExitStatus=2``): a missing file does not appear by restarting every 10 s.

The bundle's content, the config's keys and the broker are checked elsewhere (``load_bundle``,
``load_agent_config``, the publisher); here: the paths the service's user must reach.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import AgentConfig
from .errors import ConfigError
from .files import creatable_dir
from .model.commission_store import state_file_for


def _who() -> str:
    return f"uid {os.geteuid()}"


def check_bundle(cfg: AgentConfig) -> None:
    """The bundle exists and can be read (``load_bundle`` verifies its content)."""
    p = Path(cfg.agent.bundle)
    if not p.exists():
        raise ConfigError(f"{cfg.path}: [agent] bundle {p} does not exist: copy the bundle from `vibrawatch convert` "
                          "there (the state directory, /var/lib/vibrawatch, is the place) or fix the path")
    if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        raise ConfigError(f"{cfg.path}: [agent] bundle {p} is not readable by {_who()}: "
                          "chmod a+r it (it holds no secret), or put it in the state directory")


def _writable_dir(d: Path, what: str, cfg: AgentConfig) -> None:
    ok, anc = creatable_dir(d)
    if ok:
        return  # there and writable, or created by the agent at start (umask 077: owner only)
    if anc.is_dir() and os.statvfs(anc).f_flag & os.ST_RDONLY:  # chown would not help there
        raise ConfigError(f"{cfg.path}: {what}: directory {anc} is on a read-only filesystem: under the unit "
                          "(ProtectSystem=strict) only its StateDirectory= (/var/lib/vibrawatch) is writable, so point "
                          "the path there; if it is there, the card went read-only (after errors?): repair it (fsck, "
                          "or a new card)")
    if anc != d:
        why = "is not a directory" if not anc.is_dir() else f"is not writable by {_who()}"
        raise ConfigError(f"{cfg.path}: {what}: directory {d} does not exist and cannot be created ({anc} {why}): "
                          "create it for the service's user (the units' StateDirectory= does: /var/lib/vibrawatch)")
    raise ConfigError(f"{cfg.path}: {what}: directory {d} is not writable by {_who()}: give it to the "
                      "service's user, or point the path into the state directory (StateDirectory=)")


def check_state(cfg: AgentConfig) -> None:
    """The spool's and the calibration's directories are writable, or can be created; existing files too."""
    spool = Path(cfg.agent.spool)
    _writable_dir(spool.parent, f"[agent] spool {spool}", cfg)
    files = [spool, spool.with_name(spool.name + "-wal")]
    state = state_file_for(cfg.commissioning, spool)
    if state is not None:
        _writable_dir(state.parent, f"[commissioning] state {state}", cfg)
        files.append(state)
    for f in files:
        if f.exists() and not os.access(f, os.R_OK | os.W_OK):
            raise ConfigError(f"{cfg.path}: {f} is not readable and writable by {_who()}: chown it to the service's "
                              "user (or remove it: a spool or calibration is recreated)")


def check_credentials(cfg: AgentConfig) -> None:
    """The MQTT password, where the config or the unit says it is, can be read."""
    m = cfg.mqtt
    if m.password_file:
        p = Path(m.password_file)
        if not p.is_file():
            raise ConfigError(f"{cfg.path}: [mqtt] password_file {p} does not exist: write the password there "
                              "(root-owned, mode 0600, with LoadCredential=) or remove the key")
        if not os.access(p, os.R_OK):
            raise ConfigError(f"{cfg.path}: [mqtt] password_file {p} is not readable by {_who()}: under systemd "
                              "hand it over with LoadCredential=mqtt-password:" + str(p) + " and remove password_file")
    if not m.username or m.password_file:
        return
    creds, unit = os.environ.get("CREDENTIALS_DIRECTORY"), unit_credential(cfg.path)
    if creds and not (Path(creds) / "mqtt-password").is_file():
        raise ConfigError(f"{cfg.path}: [mqtt] username {m.username!r} but no credential 'mqtt-password' in "
                          f"{creds}: add LoadCredential=mqtt-password:{unit} to the unit")
    if not creds and not unit.is_file():
        # Outside systemd (`check` before a restart): the file the shipped unit would hand over must exist, or
        # systemd refuses to start the service (243/CREDENTIALS) with no word of which file.
        raise ConfigError(f"{cfg.path}: [mqtt] username {m.username!r} and no password: the shipped unit loads it "
                          f"from {unit} (LoadCredential=), which does not exist: write the password there (root, "
                          "mode 0600), or name a password_file")


def unit_credential(config: Path) -> Path:
    """The password file the shipped units hand over for this config: ``/etc/vibrawatch/mqtt-password`` for
    ``agent.toml`` (vibrawatch-agent.service), ``/etc/vibrawatch/NAME.mqtt-password`` for ``NAME.toml``
    (vibrawatch-agent@NAME.service)."""
    return config.parent / ("mqtt-password" if config.stem == "agent" else f"{config.stem}.mqtt-password")


def check_device(cfg: AgentConfig) -> None:
    """An ADXL345 source: its I2C bus's device node exists and this user may open it."""
    if cfg.source.kind != "adxl345":
        return
    bus = cfg.source.resolved().i2c_bus
    dev = Path(f"/dev/i2c-{bus}")
    if not dev.exists():
        raise ConfigError(f"{cfg.path}: [source] i2c_bus {bus}: {dev} does not exist: enable I2C "
                          "(raspi-config nonint do_i2c 0, or dtparam=i2c_arm=on in config.txt, then reboot) and "
                          "check the bus number (ls /dev/i2c-*); the units bind /dev/i2c-1 only: add "
                          f"BindPaths={dev} in a drop-in for another bus")
    if not os.access(dev, os.R_OK | os.W_OK):
        raise ConfigError(f"{cfg.path}: [source] {dev} is not readable and writable by {_who()}: the service's "
                          "user needs the group i2c (the units' SupplementaryGroups=i2c; "
                          "`groupadd --system i2c` and a udev rule where the OS has none)")


def preflight(cfg: AgentConfig) -> None:
    """Every check above, in the order a broken install usually fails them."""
    check_bundle(cfg)
    check_state(cfg)
    check_credentials(cfg)
    check_device(cfg)
