"""The agent's TOML configuration (documented example: configs/agent.example.toml).

Unknown sections and keys are errors that name the file and the key: a typo must not silently fall
back to a default on a machine nobody watches. Secrets never live here: the MQTT password is read from
``password_file`` or from ``$CREDENTIALS_DIRECTORY/mqtt-password`` (systemd's LoadCredential=).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .detect.calibrate import CommissioningSection
from .errors import ConfigError
from .link.broker import MqttSection
from .model.command import RemoteSection
from .model.deploy_state import DeploySection
from .sections import checked, known_sections, parse_section, read_toml, within

log = logging.getLogger("vibrawatch.agent")


@dataclass(frozen=True)
class AgentSection:
    site: str
    device: str
    bundle: str
    public_key: str | None = None  # when set, only bundles signed with its private key are accepted
    spool: str = "/var/lib/vibrawatch/spool.sqlite"
    spool_max_mb: float = checked(64.0, within(0.125, 1e6), "a size in MB, 0.125 to 1e6")
    drain_timeout_s: float = checked(10.0, within(0, 3600), "seconds, 0 to 3600")  # on SIGTERM, how long to wait
    # for the broker to take the spool


@dataclass(frozen=True)
class SourceConfig:
    """``[source]``: the kind, and that kind's own settings (its ``Settings`` dataclass, see agent.sources)."""

    kind: str = "simulator"
    settings: Any = None  # None: the kind's defaults

    def resolved(self) -> Any:
        """The settings object, the kind's defaults when none were given."""
        from .sources.registry import source_class

        return self.settings if self.settings is not None else source_class(self.kind).Settings()


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection
    source: SourceConfig = field(default_factory=SourceConfig)
    mqtt: MqttSection = field(default_factory=MqttSection)
    deploy: DeploySection = field(default_factory=DeploySection)
    remote: RemoteSection = field(default_factory=RemoteSection)
    path: Path = Path("<memory>")
    commissioning: CommissioningSection | None = None  # [commissioning]: parsed by agent.commission

    def password(self) -> str | None:
        """The MQTT password from its file or systemd's credentials directory, never from the config."""
        candidates = []
        if self.mqtt.password_file:
            candidates.append(Path(self.mqtt.password_file))
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / "mqtt-password")
        for p in candidates:
            if p.is_file():
                _check_secret_mode(p, self.path)
                return p.read_text().strip()
        if self.mqtt.password_file:
            raise ConfigError(f"{self.path}: [mqtt] password_file {self.mqtt.password_file} does not exist")
        return None


def _check_secret_mode(p: Path, config: Path) -> None:
    """As ssh treats a private key: a password file others can read is refused; one its group can read is
    used with a warning (a service group may need it), so a leaked-by-mode secret never passes silently."""
    mode = p.stat().st_mode & 0o777
    if mode & 0o007:
        raise ConfigError(f"{config}: [mqtt] password_file {p} has mode {mode:04o}: other users can read it; "
                          f"run chmod 600 {p} (the agent refuses it, as ssh refuses such a key)")
    if mode & 0o070:
        log.warning("%s has mode %04o: its group can read the MQTT password; chmod 600 it unless that group "
                    "needs it", p, mode)


_SECTIONS = {"agent": AgentSection, "mqtt": MqttSection, "deploy": DeploySection, "remote": RemoteSection}
_PATH_KEYS = ("bundle", "public_key", "spool", "password_file", "ca_file", "cert_file", "key_file", "state_dir")


def _source(raw: dict[str, Any], p: Path) -> SourceConfig:
    """``[source]``: ``kind`` picks a registered source; only that kind's settings are accepted."""
    from .sources.registry import SOURCES

    section = dict(raw)
    kind = section.pop("kind", None)
    if kind not in SOURCES:
        raise ConfigError(f"{p}: [source] kind = {kind!r}: choose one of {', '.join(SOURCES)} "
                          "(vibrawatch-agent sources KIND prints a commented sample)")
    cls = SOURCES[kind]
    known = {f.name for f in fields(cls.Settings)}
    bad = set(section) - known
    if bad:
        raise ConfigError(f"{p}: [source] unknown key(s) {sorted(bad)} for kind = {kind!r}; it takes "
                          f"{', '.join(sorted(known))} (vibrawatch-agent sources {kind} prints a commented sample)")
    settings = parse_section(cls.Settings, section, "source", p, _PATH_KEYS)
    return SourceConfig(kind, settings)


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and check an agent config; relative paths in it are relative to the file."""
    p = Path(path)
    raw = read_toml(p, "; start from configs/agent.example.toml")
    known_sections(raw, {*_SECTIONS, "source", "commissioning"}, p)
    if "password" in raw.get("mqtt", {}):
        raise ConfigError(f"{p}: [mqtt] password: never write a password in the config file; put it in a file "
                          "named by password_file (mode 0600) or pass it with systemd's LoadCredential=mqtt-password")
    parts: dict[str, Any] = {name: parse_section(cls, raw.get(name), name, p, _PATH_KEYS)
                             for name, cls in _SECTIONS.items()}
    if "source" not in raw:
        raise ConfigError(f"{p}: no [source] section; kind = one of the source kinds (see configs/agent.example.toml)")
    cfg = AgentConfig(path=p, source=_source(raw["source"], p),
                      commissioning=commissioning_section(raw.get("commissioning"), p), **parts)
    if cfg.source.kind == "replay" and not cfg.source.settings.path:
        raise ConfigError(f"{p}: [source] kind 'replay' needs path = the data to replay")
    if cfg.source.kind == "mqtt" and not cfg.source.settings.topic:
        raise ConfigError(f"{p}: [source] kind 'mqtt' needs topic = where the sensor publishes samples")
    if cfg.deploy.enabled and not cfg.agent.public_key:
        raise ConfigError(f"{p}: [deploy] enabled needs [agent] public_key: only signed deploys are accepted")
    if cfg.remote.recalibrate and (not cfg.agent.public_key or cfg.commissioning is None):
        raise ConfigError(f"{p}: [remote] recalibrate needs [agent] public_key (only signed requests are accepted) "
                          "and a [commissioning] section (what it starts again)")
    return cfg


def commissioning_section(raw: Mapping[str, Any] | None, path: Path) -> CommissioningSection | None:
    """Parse ``[commissioning]`` (None when the config has none); ConfigError names the file and key."""
    if raw is None:
        return None
    section = parse_section(CommissioningSection, raw, "commissioning", path)
    if (section.windows is None) == (section.hours is None):
        raise ConfigError(f"{path}: [commissioning] give its length as exactly one of windows = N or hours = H")
    return section
