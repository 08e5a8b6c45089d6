"""``[mqtt]``: which broker the agent publishes to and how it reaches it (TLS files, user, backoff, in flight).

It lives with the connection that uses it, so the link needs nothing from the config above it;
``agent.config`` parses the section with ``parse_section`` and reads the password (never kept here).
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def client_id_for(self, site: str, device: str) -> str:
        """The configured client id, else one unique per gateway: two gateways sharing an id take each other's
        session on every reconnect."""
        return self.client_id or f"vibrawatch-{site}-{device}"
