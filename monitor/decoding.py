"""What an MQTT message becomes: a row to store, a dead letter saying what is wrong with it, or nothing.

Every message is checked against its JSON Schema (agent/link/schemas/): a quick check generated from the schema
(schemacheck.py, ~2 us), fastjsonschema (~5 us; jsonschema ~90) for anything it does not pass; one that fails
goes to the dead-letter table with fastjsonschema's reason, so one bad gateway never stops the batch it is in.
Then every value is held to the bounds the database and the page can take (bounds.py, docs/mqtt.md): the site
and device names of the topic, the payload's size before it is parsed, every string's length and characters,
every integer's range, the size of every object and list. Nothing that fails them reaches the database.
"""

from __future__ import annotations

import json
import logging
from importlib import resources

from vibrawatch.agent.link.topics import PREFIX

from . import bounds
from .fastjson import loads
from .rows import Alarm, Batch, DeadLetter, Event, Score, Status
from .schemacheck import Checker

Item = tuple[str, bytes, int, int, float, int]  # topic, payload, packet id, QoS, received, connection it came on

log = logging.getLogger("vibrawatch.monitor.ingest")
KINDS = ("score", "alarm", "status")
EVENT_KINDS = ("transient", "condition_change", "diagnosis")  # the combined detector's, numbered like scores
INBOUND = "deploy"  # .../deploy and .../deploy/bundle go to the gateways (signed requests, bundles): not ours


def _checkers() -> dict[str, Checker]:
    schemas = resources.files("vibrawatch.agent.link") / "schemas"
    return {k: Checker(json.loads((schemas / f"{k}.json").read_text())) for k in (*KINDS, *EVENT_KINDS)}


CHECKERS = _checkers()


def decode(topic: str, payload: bytes, received: float) -> Score | Alarm | Status | Event | DeadLetter | None:
    """One MQTT message as a row to store, a dead letter saying what is wrong with it, or None for the deploy
    traffic addressed to the gateways (which the fleet filter also matches)."""
    parts = topic.split("/")
    if len(parts) in (5, 6) and "/".join(parts[:2]) == PREFIX and parts[4] == INBOUND:
        return None
    if len(parts) != 5 or "/".join(parts[:2]) != PREFIX or parts[4] not in (*KINDS, *EVENT_KINDS):
        return DeadLetter.of(topic, payload, f"topic: expected {PREFIX}/<site>/<device>/"
                             f"{'|'.join((*KINDS, *EVENT_KINDS))}", received)
    site, device, kind = parts[2], parts[3], parts[4]
    if (error := bounds.name_error("site", site) or bounds.name_error("device", device)) is not None:
        return DeadLetter.of(topic, payload, error, received)
    if len(payload) > bounds.MAX_PAYLOAD_BYTES:
        return DeadLetter.of(topic, payload, f"payload: {len(payload)} bytes, at most {bounds.MAX_PAYLOAD_BYTES}",
                             received)
    try:
        msg = loads(payload)
    except ValueError as e:  # json.JSONDecodeError, orjson.JSONDecodeError and UnicodeDecodeError all are
        return DeadLetter.of(topic, payload, f"payload: not JSON ({e})", received)
    if (error := CHECKERS[kind].errors(msg)) is not None:
        return DeadLetter.of(topic, payload, f"payload: {error} (schema agent/link/schemas/{kind}.json)", received)
    if (error := bounds.check(msg)) is not None:
        return DeadLetter.of(topic, payload, f"payload: {error} (bounds: docs/mqtt.md)", received)
    if kind == "score":
        return Score(site, device, msg["seq"], float(msg["t"]), msg["timestamp"], float(msg["score"]),
                     float(msg["threshold"]), float(msg["level"]), msg["contributions"], msg["model"], received,
                     msg.get("threshold_source"), msg.get("model_sha256"))
    if kind == "alarm":
        return Alarm(site, device, msg["seq"], float(msg["t"]), msg["timestamp"], msg["event"], msg["channel"],
                     float(msg["score"]), float(msg["level"]), msg["since"], msg["model"], received,
                     msg.get("diagnosis"), msg.get("channels"))
    if kind in EVENT_KINDS:
        return Event(site, device, msg["seq"], float(msg["t"]), msg["timestamp"], kind, msg, received)
    return Status(site, device, msg["timestamp"], msg["state"], msg, received)


def to_batch(items: list[Item]) -> Batch:
    """The messages as one batch to write: rows by kind, dead letters (each logged), the gateways' traffic left out."""
    batch = Batch()
    for topic, payload, _mid, _qos, received, _link in items:
        try:
            row = decode(topic, payload, received)
        except Exception as e:  # noqa: BLE001 - a message the decoder did not foresee must not stop the batch
            row = DeadLetter.of(topic, payload, f"cannot decode: {type(e).__name__}: {e}", received)
        if isinstance(row, Score):
            batch.scores.append(row)
        elif isinstance(row, Alarm):
            batch.alarms.append(row)
        elif isinstance(row, Status):
            batch.statuses.append(row)
        elif isinstance(row, Event):
            batch.events.append(row)
        elif row is None:
            continue
        else:
            log.warning("dead letter: %s: %s", row.topic, row.reason)
            batch.dead.append(row)
    return batch
