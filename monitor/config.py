"""The monitor's settings: command-line options over an optional TOML file (configs/monitor.example.toml).

TLS and credentials work as on the gateway (same [mqtt] keys; the password only from ``password_file`` or
``$CREDENTIALS_DIRECTORY/mqtt-password``). The database password comes from ``[monitor] db_password_file`` or
``$CREDENTIALS_DIRECTORY/db-password`` (systemd's LoadCredential=), so it need not be in the URL (where ``ps``
shows it); it is put into the URL in memory only, and every URL shown has it masked. Unknown sections and keys
are errors naming the file and the key.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.sections import known_sections, parse_section, read_toml


@dataclass(frozen=True)
class MonitorSection:
    broker: str = "mqtt://127.0.0.1:1883"
    db: str = "sqlite:///fleet.db"
    http: str | None = "127.0.0.1:8080"  # None or "off": no web page
    db_password_file: str | None = None  # the PostgreSQL password (mode 0600); else $CREDENTIALS_DIRECTORY/db-password
    operators_file: str | None = None  # who may act on alarms (monitor/auth.py); else $CREDENTIALS_DIRECTORY/operators
    group: str = "vibrawatch"  # the shared-subscription group; monitors in one group split the traffic
    shared: bool = True  # False: a plain subscription (one monitor; survives a Mosquitto restart, see docs)
    client_id: str | None = None  # default vibrawatch-monitor-<group>-<host>; one per monitor process
    session_expiry_s: int = 7 * 24 * 3600  # how long the broker keeps our queue while we are down
    batch_max: int = 10000  # messages per database transaction at most (a backlog drains in big batches)
    batch_wait_ms: int = 50  # how long a batch may gather before it is written


@dataclass(frozen=True)
class MqttSection:
    keepalive: int = 30
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # MQTT 5: unacknowledged messages the broker may send us. Acks follow commits, so this is what arrives while
    # a batch is written: three batches, or receiving stops while the database works (measured: 2x the rate).
    receive_maximum: int = 30000


@dataclass(frozen=True)
class FleetSection:
    silent_factor: float = 5.0  # silent after this many of the device's usual score intervals
    min_silent_s: float = 30.0  # ... and never sooner than this
    sweep_s: float = 5.0  # how often silence is looked for


@dataclass(frozen=True)
class RetentionSection:
    raw_days: float = 30.0  # raw scores kept this long (by arrival), then hourly aggregates only
    every_s: float = 3600.0  # how often the roll-up runs


@dataclass(frozen=True)
class AlertsSection:
    webhook: str | None = None  # http(s)://... receives a POST per alert (docs/monitor.md)
    timeout_s: float = 5.0
    max_attempts: int = 10
    backoff_s: float = 1.0  # first retry after this, doubling, capped at backoff_max_s
    backoff_max_s: float = 300.0


@dataclass(frozen=True)
class RemoteSection:
    """``[remote]``: what the monitor may ask of gateways. With ``signing_key`` (the deploy key's private half,
    mode 0600; else ``$CREDENTIALS_DIRECTORY/signing-key``, systemd's LoadCredential=, when there and not empty)
    closing an alarm with "recalibrate" publishes the signed request itself; without, the page shows the
    `vibrawatch recalibrate` command to run where the key is."""

    signing_key: str | None = None
    expires_s: float = 24 * 3600.0  # how long a request stays valid: a gateway off during the repair gets it later


@dataclass(frozen=True)
class MonitorConfig:
    monitor: MonitorSection = field(default_factory=MonitorSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    fleet: FleetSection = field(default_factory=FleetSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    remote: RemoteSection = field(default_factory=RemoteSection)
    path: Path = Path("<command line>")

    @property
    def host(self) -> str:
        return urlparse(self.monitor.broker).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        u = urlparse(self.monitor.broker)
        return u.port or (8883 if u.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlparse(self.monitor.broker).scheme == "mqtts"

    @property
    def client_id(self) -> str:
        return self.monitor.client_id or f"vibrawatch-monitor-{self.monitor.group}-{socket.gethostname()}"

    def password(self) -> str | None:
        """The MQTT password from its file or systemd's credentials directory, never from the config."""
        if self.mqtt.password_file:
            p = Path(self.mqtt.password_file)
            if not p.is_file():
                raise ConfigError(f"{self.path}: [mqtt] password_file {p} does not exist")
            return p.read_text().strip()
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / "mqtt-password").is_file():
            return (Path(creds) / "mqtt-password").read_text().strip()
        return None


class DbUrl(str):
    """The database URL with the password read from its file: ``repr`` (a logged config) masks the password."""

    def __repr__(self) -> str:
        return repr(masked(self))


def masked(url: str) -> str:
    """``url`` with its password (if any) shown as ***."""
    u = urlparse(url)
    return url.replace(f":{u.password}@", ":***@", 1) if u.password else url


def _secret_file(p: Path, what: str, config: Path) -> str:
    """A password file's content; refused when other users can read it (as ssh refuses such a key)."""
    if not p.is_file():
        raise ConfigError(f"{config}: {what} {p} does not exist: write the password there (mode 0600) or "
                          "hand it over with systemd's LoadCredential=")
    mode = p.stat().st_mode & 0o777
    if mode & 0o007:
        raise ConfigError(f"{config}: {what} {p} has mode {mode:04o}: other users can read it; run chmod 600 {p}")
    text = p.read_text().strip()
    if not text:
        raise ConfigError(f"{config}: {what} {p} is empty: expected the password")
    return text


def _with_db_password(cfg: MonitorConfig) -> MonitorConfig:
    """The config whose db URL carries the password from ``db_password_file`` or the credentials directory."""
    m, where = cfg.monitor, cfg.path
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    cred = Path(creds) / "db-password" if creds else None
    u = urlparse(m.db)
    if m.db_password_file and not m.db.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{where}: [monitor] db_password_file is for a postgresql:// database, not {masked(m.db)}")
    if m.db_password_file:
        source = (Path(m.db_password_file), "[monitor] db_password_file")
    elif cred is not None and cred.is_file() and cred.stat().st_size and m.db.startswith(("postgresql://",
                                                                                          "postgres://")):
        source = (cred, "credential db-password")  # empty: none (the unit loads the file whatever the database)
    else:
        return cfg
    if u.password:
        raise ConfigError(f"{where}: db {masked(m.db)} has a password in the URL and {source[1]} gives one too: "
                          "keep only the file (a URL on the command line is visible in ps)")
    if not u.username:
        raise ConfigError(f"{where}: db {m.db}: a password from {source[1]} needs a user in the URL "
                          "(postgresql://USER@HOST/DB)")
    pw = quote(_secret_file(*source, where), safe="")
    url = m.db.replace(f"//{u.username}@", f"//{u.username}:{pw}@", 1)
    return replace(cfg, monitor=replace(m, db=DbUrl(url)))


_PATH_KEYS = ("password_file", "ca_file", "cert_file", "key_file", "db_password_file", "operators_file",
              "signing_key")
_SECTIONS = {"monitor": MonitorSection, "mqtt": MqttSection, "fleet": FleetSection, "retention": RetentionSection,
             "alerts": AlertsSection, "remote": RemoteSection}


def load_monitor_config(path: str | Path | None = None, **overrides: Any) -> MonitorConfig:
    """The file's settings (if any) with command-line ``overrides`` (``None`` = not given) on top, checked."""
    raw: dict[str, Any] = {}
    p = Path(path) if path else Path("<command line>")
    if path:
        raw = read_toml(p, "; start from configs/monitor.example.toml")
        known_sections(raw, _SECTIONS, p)
        if "password" in raw.get("mqtt", {}):
            raise ConfigError(f"{p}: [mqtt] password: never write a password in the config file; name a file "
                              "with password_file (mode 0600) or use systemd's LoadCredential=mqtt-password")
    parts = {name: parse_section(cls, raw.get(name), name, p, _PATH_KEYS) for name, cls in _SECTIONS.items()}
    cfg = MonitorConfig(path=p, **parts)
    given = {k: v for k, v in overrides.items() if v is not None}
    for name in _SECTIONS:
        section = getattr(cfg, name)
        mine = {k: given.pop(k) for k in list(given) if k in {f.name for f in fields(section)}}
        if mine:
            cfg = replace(cfg, **{name: replace(section, **mine)})
    if given:
        raise ConfigError(f"unknown setting(s) {sorted(given)}")
    if cfg.monitor.http == "off":  # as on the command line (--http off)
        cfg = replace(cfg, monitor=replace(cfg.monitor, http=None))
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    key = Path(creds) / "signing-key" if creds else None
    if not cfg.remote.signing_key and key is not None and key.is_file() and key.stat().st_size:
        cfg = replace(cfg, remote=replace(cfg.remote, signing_key=str(key)))  # empty: none (a unit needs the file)
    _check(cfg)
    return _with_db_password(cfg)


def _check(cfg: MonitorConfig) -> None:
    u = urlparse(cfg.monitor.broker)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ConfigError(f"{cfg.path}: broker {cfg.monitor.broker!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    if cfg.monitor.http:
        host, _, port = cfg.monitor.http.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{cfg.path}: http {cfg.monitor.http!r}: expected HOST:PORT (e.g. 127.0.0.1:8080) "
                              "or \"off\" (no page)")
    if "/" in cfg.monitor.group or "+" in cfg.monitor.group or "#" in cfg.monitor.group:
        raise ConfigError(f"{cfg.path}: group {cfg.monitor.group!r}: no '/', '+' or '#'")
    rm = cfg.mqtt.receive_maximum
    if isinstance(rm, bool) or not isinstance(rm, int) or not 1 <= rm <= 65535:
        raise ConfigError(f"{cfg.path}: [mqtt] receive_maximum = {rm!r}: expected an integer from 1 to 65535 "
                          "(MQTT 5's limit; about 3 x batch_max lets the broker send while a batch is written)")
    if cfg.alerts.webhook and urlparse(cfg.alerts.webhook).scheme not in ("http", "https"):
        raise ConfigError(f"{cfg.path}: [alerts] webhook {cfg.alerts.webhook!r}: expected an http:// or https:// URL")
    if not cfg.remote.expires_s > 0:
        raise ConfigError(f"{cfg.path}: [remote] expires_s = {cfg.remote.expires_s!r}: expected seconds > 0")
    if cfg.remote.signing_key:  # checked at start, not at the first repair: a bad key is one line now
        from vibrawatch.agent.model.signing import load_private_key

        try:
            load_private_key(cfg.remote.signing_key)
        except ConfigError as e:
            raise ConfigError(f"{cfg.path}: [remote] signing_key {e}") from None
