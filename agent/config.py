"""The agent's TOML configuration (documented example: configs/agent.example.toml).

Unknown sections and keys are errors that name the file and the key: a typo must not silently fall
back to a default on a machine nobody watches. Secrets never live here: the MQTT password is read from
``password_file`` or from ``$CREDENTIALS_DIRECTORY/mqtt-password`` (systemd's LoadCredential=).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from .errors import ConfigError


@dataclass(frozen=True)
class AgentSection:
    site: str
    device: str
    bundle: str
    public_key: str | None = None  # when set, only bundles signed with its private key are accepted
    spool: str = "/var/lib/vibrawatch/spool.sqlite"
    spool_max_mb: float = 64.0
    drain_timeout_s: float = 10.0  # on SIGTERM, how long to wait for the broker to take the spool


@dataclass(frozen=True)
class SourceSection:
    kind: str = "replay"  # replay | simulator | adxl345 | mqtt
    path: str | None = None  # replay: the data file or IMS directory
    speed: float = 1.0  # replay/simulator: 1 = real time, 100 = 100x faster, 0 = as fast as possible
    chunk: int = 2048  # samples per chunk handed to the pipeline
    full_scale: float | None = None  # |x| at which the sensor clips (saturation check); None = unknown
    snapshots: int = 200  # simulator: run length
    seed: int = 0  # simulator
    i2c_bus: int = 1  # adxl345
    i2c_address: int = 0x53  # adxl345
    range_g: int = 16  # adxl345: 2, 4, 8 or 16
    topic: str | None = None  # mqtt: where a sensor publishes raw samples
    max_message_bytes: int | None = None  # mqtt: larger samples messages are refused; default ~3 s at the model's rate


@dataclass(frozen=True)
class MqttSection:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str | None = None  # default: vibrawatch-<site>-<device>
    keepalive: int = 30
    username: str | None = None
    password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    max_backoff_s: int = 30
    inflight: int = 20


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection
    source: SourceSection = field(default_factory=SourceSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    path: Path = Path("<memory>")

    def password(self) -> str | None:
        """The MQTT password from its file or systemd's credentials directory, never from the config."""
        candidates = []
        if self.mqtt.password_file:
            candidates.append(Path(self.mqtt.password_file))
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / "mqtt-password")
        for p in candidates:
            if p.is_file():
                return p.read_text().strip()
        if self.mqtt.password_file:
            raise ConfigError(f"{self.path}: [mqtt] password_file {self.mqtt.password_file} does not exist")
        return None


_SECTIONS = {"agent": AgentSection, "source": SourceSection, "mqtt": MqttSection}


def read_toml(p: Path, hint: str = "") -> dict[str, Any]:
    """A TOML file as a dict; a missing file or bad syntax is a ConfigError naming the file (and the line)."""
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found{hint}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and check an agent config; relative paths in it are relative to the file."""
    p = Path(path)
    raw = read_toml(p, "; start from configs/agent.example.toml")
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"{p}: unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}")
    if "password" in raw.get("mqtt", {}):
        raise ConfigError(f"{p}: [mqtt] password: never write a password in the config file; put it in a file "
                          "named by password_file (mode 0600) or pass it with systemd's LoadCredential=mqtt-password")
    parts: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        section = dict(raw.get(name, {}))
        known = {f.name for f in fields(cls)}
        bad = set(section) - known
        if bad:
            raise ConfigError(f"{p}: [{name}] unknown key(s) {sorted(bad)}; known: {sorted(known)}")
        for key in ("bundle", "public_key", "spool", "path", "password_file", "ca_file", "cert_file", "key_file"):
            if isinstance(section.get(key), str):
                section[key] = str((p.parent / section[key]).resolve())
        try:
            parts[name] = cls(**section)
        except TypeError as e:
            raise ConfigError(f"{p}: [{name}] {e}") from None
    cfg = AgentConfig(path=p, **parts)
    kinds = ("replay", "simulator", "adxl345", "mqtt")
    if cfg.source.kind not in kinds:
        raise ConfigError(f"{p}: [source] kind {cfg.source.kind!r}; choose one of {', '.join(kinds)}")
    if cfg.source.kind == "replay" and not cfg.source.path:
        raise ConfigError(f"{p}: [source] kind 'replay' needs path = the data to replay")
    if cfg.source.kind == "mqtt" and not cfg.source.topic:
        raise ConfigError(f"{p}: [source] kind 'mqtt' needs topic = where the sensor publishes samples")
    return cfg
