"""``[mqtt]``: which broker the agent publishes to and how it reaches it (TLS files, user, backoff, in flight).

It lives with the connection that uses it, so the link needs nothing from the config above it;
``agent.config`` parses the section with ``parse_section`` and reads the password (never kept here).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sections import checked


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
    # "5": MQTT 5, falling back to 3.1.1 by itself (after a refusal, or after keepalive seconds without an answer);
    # "3.1.1" from the start, for a broker known to speak nothing else (the demo's embedded amqtt misreads MQTT 5).
    protocol: str = checked("5", lambda v: v in ("5", "3.1.1"), '"5" (falls back to 3.1.1 by itself) or "3.1.1"')

    def client_id_for(self, site: str, device: str) -> str:
        """The configured client id, else one unique per gateway: two gateways sharing an id take each other's
        session on every reconnect."""
        return self.client_id or f"vibrawatch-{site}-{device}"
