"""vibrawatch fleet monitor: the central consumer of what the gateways publish (docs/monitor.md).

The modules, one job each, in the order a message travels:
ingest (MQTT 5 shared subscription, acks after commit) -> batcher (batches, the writer thread) -> decoding
(schema check, dead letters) -> store (SQLite or PostgreSQL, idempotent on (site, device, seq)) -> fleet (the
fleet table, silent devices) -> alerts (webhook) ; retention (hourly aggregates) ; web (JSON API, server-sent
events, the page) ; service (runs them together) ; cli (`vibrawatch monitor|fleet`).
The store's parts, lowest first: rows (what a batch carries), db (connections, dialects), schema (tables,
migration), state (a device's state after its new messages), bulk (multi-row statements per backend), writer
(one batch in one transaction); store.py puts them together.
"""

__version__ = "0.1.0"
