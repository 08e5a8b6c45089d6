"""``[mqtt]``: which broker the agent publishes to and how it reaches it (TLS files, user, backoff, in flight).

It lives with the connection that uses it, so the link needs nothing from the config above it;
``agent.config`` parses the section with ``parse_section`` and reads the password (never kept here).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sections import checked, within


@dataclass(frozen=True)
class MqttSection:
    host: str = checked("127.0.0.1", lambda v: bool(v.strip()) and v == v.strip(), "a host name or address")
    port: int = checked(1883, within(1, 65535), "a TCP port, 1 to 65535")
    client_id: str | None = None  # default: vibrawatch-<site>-<device>
    keepalive: int = checked(30, within(5, 65535), "seconds between pings, 5 to 65535")
    username: str | None = None
    password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    max_backoff_s: int = checked(30, within(1, 3600), "the longest wait between reconnects, 1 to 3600 s")
    inflight: int = checked(20, within(1, 65535), "messages in flight at once, 1 to 65535")
    # "5": MQTT 5, falling back to 3.1.1 by itself (after a refusal, or after keepalive seconds without an answer);
    # "3.1.1" from the start, for a broker known to speak nothing else (the demo's embedded amqtt misreads MQTT 5).
    protocol: str = checked("5", lambda v: v in ("5", "3.1.1"), '"5" (falls back to 3.1.1 by itself) or "3.1.1"')

    def client_id_for(self, site: str, device: str) -> str:
        """The configured client id, else one unique per gateway: two gateways sharing an id take each other's
        session on every reconnect."""
        return self.client_id or f"vibrawatch-{site}-{device}"
