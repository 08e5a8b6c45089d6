"""vibrawatch fleet monitor: the central consumer of what the gateways publish (docs/monitor.md).

The modules, one job each, in the order a message travels:
ingest (MQTT 5 shared subscription, schema check, batches) -> store (SQLite or PostgreSQL, idempotent on
(site, device, seq)) -> fleet (per-device state) -> alerts (webhook) ; retention (hourly aggregates) ;
web (JSON API, server-sent events, the page) ; service (runs them together) ; cli (`vibrawatch monitor|fleet`).
"""

__version__ = "0.1.0"
