"""From the broker to the store: an MQTT 5 shared subscription, a JSON Schema check, batches, acks after commit.

- Subscribes to ``$share/<group>/vibrawatch/v1/+/+/#`` with QoS 1 on a persistent session (clean start off,
  session expiry set): the broker queues what the fleet publishes while the monitor is down, and monitors
  in one group split the traffic. On an MQTT 3.1.1 broker (no shared subscriptions) it subscribes plainly
  on a persistent session and says so: there, a second monitor would receive everything again.
- Every message is checked against its JSON Schema (agent/link/schemas/): a quick check generated from the schema
  (schemacheck.py, ~2 us), fastjsonschema (~5 us; jsonschema ~90) for anything it does not pass; one that
  fails goes to the dead-letter table with fastjsonschema's reason.
- Messages gather into batches (``batch_max`` or ``batch_wait_ms``); each batch is one transaction, and only
  after its commit are the messages acknowledged (PUBACK, paho's manual ack, one write per batch). A crash
  before the commit therefore loses nothing: the broker sends the unacknowledged messages again and the
  store drops repeats. ``receive_maximum`` lets the broker send the next batches while one is written.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from vibrawatch.agent.link.topics import PREFIX

from . import pahofast
from .config import MonitorConfig
from .fastjson import loads
from .schemacheck import Checker
from .store import Alarm, Batch, DeadLetter, Event, Score, Status, Store, Written

Item = tuple[str, bytes, int, int, float, int]  # topic, payload, packet id, QoS, received, connection it came on

log = logging.getLogger("vibrawatch.monitor.ingest")
KINDS = ("score", "alarm", "status")
EVENT_KINDS = ("transient", "condition_change", "diagnosis")  # the combined detector's, numbered like scores
INBOUND = "deploy"  # .../deploy and .../deploy/bundle go to the gateways (signed requests, bundles): not ours
TOPIC_FILTER = f"{PREFIX}/+/+/#"


def _checkers() -> dict[str, Checker]:
    schemas = resources.files("vibrawatch.agent.link") / "schemas"
    return {k: Checker(json.loads((schemas / f"{k}.json").read_text())) for k in (*KINDS, *EVENT_KINDS)}


CHECKERS = _checkers()
pahofast.install()


def decode(topic: str, payload: bytes, received: float) -> Score | Alarm | Status | Event | DeadLetter | None:
    """One MQTT message as a row to store, a dead letter saying what is wrong with it, or None for the deploy
    traffic addressed to the gateways (which the fleet filter also matches)."""
    parts = topic.split("/")
    if len(parts) in (5, 6) and "/".join(parts[:2]) == PREFIX and parts[4] == INBOUND:
        return None
    if len(parts) != 5 or "/".join(parts[:2]) != PREFIX or parts[4] not in (*KINDS, *EVENT_KINDS):
        return DeadLetter(topic, payload, f"topic: expected {PREFIX}/<site>/<device>/"
                          f"{'|'.join((*KINDS, *EVENT_KINDS))}", received)
    site, device, kind = parts[2], parts[3], parts[4]
    try:
        msg = loads(payload)
    except ValueError as e:  # json.JSONDecodeError, orjson.JSONDecodeError and UnicodeDecodeError all are
        return DeadLetter(topic, payload, f"payload: not JSON ({e})", received)
    if (error := CHECKERS[kind].errors(msg)) is not None:
        return DeadLetter(topic, payload, f"payload: {error} (schema agent/link/schemas/{kind}.json)", received)
    if kind == "score":
        return Score(site, device, msg["seq"], float(msg["t"]), msg["timestamp"], float(msg["score"]),
                     float(msg["threshold"]), float(msg["level"]), msg["contributions"], msg["model"], received,
                     msg.get("threshold_source"), msg.get("model_sha256"))
    if kind == "alarm":
        return Alarm(site, device, msg["seq"], float(msg["t"]), msg["timestamp"], msg["event"], msg["channel"],
                     float(msg["score"]), float(msg["level"]), msg["since"], msg["model"], received)
    if kind in EVENT_KINDS:
        return Event(site, device, msg["seq"], float(msg["t"]), msg["timestamp"], kind, msg, received)
    return Status(site, device, msg["timestamp"], msg["state"], msg, received)


@dataclass
class Counters:
    """What ingest has done since it started (logged, and served at /api/health)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead: int = 0
    lost: int = 0
    batches: int = 0
    write_errors: int = 0


class Ingest:
    """Owns the MQTT client and the writer thread; paho's callbacks only queue, the writer stores and acks."""

    def __init__(self, cfg: MonitorConfig, store: Store, on_batch: Callable[[Written], None] | None = None) -> None:
        self.cfg, self.store, self.on_batch = cfg, store, on_batch
        self.counters = Counters()
        self.protocol = mqtt.MQTTv5
        self.shared = cfg.monitor.shared
        self.connected = threading.Event()
        # paho's thread appends, the writer pops from the left (both atomic on a deque); ``_arrived`` wakes the
        # writer, set only when it was clear (an attribute read per message, no lock).
        self._queue: deque[Item] = deque()
        self._link = 0  # counts successful connections: a packet id is acknowledged only on the one it came in on
        self._arrived = threading.Event()
        self._stopping = threading.Event()
        self._connack_seen = False
        self.fell_back = False
        self._client = self._make_client()
        self._writer = threading.Thread(target=self._write_loop, name="monitor-writer", daemon=True)

    @property
    def subscription(self) -> str:
        return f"$share/{self.cfg.monitor.group}/{TOPIC_FILTER}" if self.shared else TOPIC_FILTER

    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        if self.protocol == mqtt.MQTTv5:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id, protocol=mqtt.MQTTv5,
                            manual_ack=True)
        else:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id, protocol=mqtt.MQTTv311,
                            clean_session=False, manual_ack=True)
        if m.username:
            c.username_pw_set(m.username, self.cfg.password())
        if self.cfg.tls:
            c.tls_set(ca_certs=m.ca_file, certfile=m.cert_file, keyfile=m.key_file)
        c.max_inflight_messages_set(m.receive_maximum)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect, c.on_disconnect, c.on_message = self._on_connect, self._on_disconnect, self._on_message
        pahofast.quick_matcher(c)
        return c

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._connect()
        self._writer.start()

    def _connect(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.monitor.session_expiry_s
            props.ReceiveMaximum = self.cfg.mqtt.receive_maximum
            kwargs = {"clean_start": False, "properties": props}
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.mqtt.keepalive, **kwargs)
        self._client.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write and acknowledge what has arrived, then disconnect (the session keeps the rest for next time)."""
        self._stopping.set()
        self._writer.join(timeout=timeout)
        self.connected.clear()  # a disconnect we asked for is not worth a warning
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks: queue and return -----------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connack_seen = True
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            if self.protocol == mqtt.MQTTv5 and "protocol" in str(reason_code).lower():
                threading.Thread(target=self._fallback_to_311, daemon=True).start()
            return
        version = "5" if self.protocol == mqtt.MQTTv5 else "3.1.1"
        log.info("connected to %s:%d (MQTT %s, session %s), subscribing to %s", self.cfg.host, self.cfg.port,
                 version, "resumed" if getattr(flags, "session_present", False) else "new", self.subscription)
        self._link += 1
        client.subscribe(self.subscription, qos=1)
        self.connected.set()

    def _fallback_to_311(self) -> None:
        self._client.loop_stop()
        self.protocol, self.shared = mqtt.MQTTv311, False
        self.fell_back = True
        log.warning("MQTT 3.1.1 broker: no shared subscriptions, subscribing to %s on a persistent session; "
                    "run one monitor per broker (a second one would store every message again, harmlessly but "
                    "for nothing)", TOPIC_FILTER)
        self._client = self._make_client()
        self._connect()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if self.connected.is_set():
            log.warning("disconnected from the broker (%s); reconnecting, the session keeps our messages",
                        reason_code)
        self.connected.clear()
        if (self.protocol == mqtt.MQTTv5 and not self._connack_seen and not self._stopping.is_set()
                and "keep alive" in str(reason_code).lower()):
            # No answer at all to an MQTT 5 CONNECT: a 3.1.1-only broker (amqtt) waiting for bytes (see publish.py).
            threading.Thread(target=self._fallback_to_311, daemon=True).start()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.append((message.topic, message.payload, message.mid, message.qos, time.time(), self._link))
        if not self._arrived.is_set():
            self._arrived.set()

    # -- the writer thread ----------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        pending: list[Item] = []
        failures = 0
        while True:
            stopping = self._stopping.is_set()
            if not pending:
                pending = self._gather(drain=stopping)
            if not pending:
                if stopping:
                    return
                continue
            try:
                self._write(pending)
                pending, failures = [], 0
            except Exception as e:  # noqa: BLE001 - the database may be away; keep the batch and retry
                failures += 1
                self.counters.write_errors += 1
                if failures == 1 or failures % 30 == 0:
                    log.error("cannot write %d messages to %s (%s: %s); retrying, nothing is acknowledged meanwhile",
                              len(pending), self.store.safe_url, type(e).__name__, e)
                if stopping:
                    return  # unacknowledged: the broker sends them again to the next monitor
                self._stopping.wait(min(1.0 * failures, 10.0))

    def _gather(self, drain: bool) -> list[Item]:
        """What has arrived, once the first message has waited ``batch_wait_ms`` or ``batch_max`` are there."""
        batch_max, wait = self.cfg.monitor.batch_max, self.cfg.monitor.batch_wait_ms / 1000
        q = self._queue
        if not q:
            if drain:
                return []
            self._arrived.wait(0.5)
        self._arrived.clear()  # before taking: a message appended after this sets it again
        if not q:
            return []
        if not drain:
            deadline = time.monotonic() + wait
            while len(q) < batch_max and (remaining := deadline - time.monotonic()) > 0:
                time.sleep(min(remaining, 0.005))
        popleft = q.popleft
        return [popleft() for _ in range(min(len(q), batch_max))]

    def _write(self, items: list[Item]) -> None:
        batch = Batch()
        for topic, payload, _mid, _qos, received, _link in items:
            row = decode(topic, payload, received)
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
                log.warning("dead letter: %s: %s", topic, row.reason)
                batch.dead.append(row)
        written = self.store.write(batch)
        # Only packet ids of this connection, each once: a message that came in before a reconnect is sent again by
        # the broker (stored once, acknowledged then); its old id may now name another, not yet committed message.
        link = self._link
        mids = dict.fromkeys(mid for *_, mid, qos, _received, at in items if qos == 1 and at == link)
        pahofast.ack_many(self._client, list(mids))
        for *_, mid, qos, _received, at in items:  # QoS 2 is never granted (we subscribe with QoS 1): paho's own
            if qos == 2 and at == link:  # ack if a broker did anyway
                self._client.ack(mid, qos)
        c = self.counters
        c.received += len(items)
        c.stored += written.scores + written.alarms + written.statuses + written.events
        c.duplicates += written.duplicates
        c.dead += written.dead
        c.lost += written.lost
        c.batches += 1
        if self.on_batch is not None:
            self.on_batch(written)
