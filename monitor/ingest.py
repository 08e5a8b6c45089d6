"""From the broker to the store: an MQTT 5 shared subscription, batches written by the batcher, acks after commit.

- Subscribes to ``$share/<group>/vibrawatch/v1/+/+/#`` with QoS 1 on a persistent session (clean start off,
  session expiry set): the broker queues what the fleet publishes while the monitor is down, and monitors
  in one group split the traffic. On an MQTT 3.1.1 broker (no shared subscriptions) it subscribes plainly
  on a persistent session and says so: there, a second monitor would receive everything again.
- paho's callbacks only queue; the batcher (batcher.py) decodes and checks each message (decoding.py), writes a
  batch in one transaction, and only after its commit are the messages acknowledged here (PUBACK, paho's manual
  ack, one write per batch). ``receive_maximum`` lets the broker send the next batches while one is written.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from vibrawatch.agent.link.reach import Reach, connect_failure_reason
from vibrawatch.agent.link.topics import PREFIX

from . import pahofast
from .batcher import Batcher
from .config import MonitorConfig
from .decoding import Item
from .rows import Written
from .store import Store

log = logging.getLogger("vibrawatch.monitor.ingest")
TOPIC_FILTER = f"{PREFIX}/+/+/#"
MAX_BACKOFF_S = 30  # paho retries an unreachable broker after 1 s, doubling up to this
SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another connection with this client id
SHORT_SESSION_S = 5.0  # connections dropped this soon after they were made, three times in a row: a clash

pahofast.install()


class ClashWatch:
    """As the agent's link does: a connection that keeps dropping seconds after it was made is, most often, another
    client with this client id taking the session over (two monitors on one host with the default id); brokers do
    not always say so (0x8E). Said once (an error) until a connection lasts again."""

    def __init__(self) -> None:
        self._connected_at = 0.0  # monotonic, of the last accepted connection
        self._short = 0  # connections in a row dropped within SHORT_SESSION_S
        self._told = False

    def connected(self) -> None:
        self._connected_at = time.monotonic()

    def dropped(self, reason_code: Any, client_id: str) -> bool:
        """A connection dropped; whether it looks like a clash (then it is logged)."""
        short = time.monotonic() - self._connected_at < SHORT_SESSION_S
        self._short = self._short + 1 if short else 0
        if not short:
            self._told = False
        if getattr(reason_code, "value", None) != SESSION_TAKEN_OVER and self._short < 3:
            return False
        (log.info if self._told else log.error)(
            "the broker keeps dropping this connection within seconds (%s): is another client using client id %r? "
            "a second monitor on this host? give each monitor its own --client-id ([monitor] client_id)",
            reason_code, client_id)
        self._told = True
        return True


class Ingest:
    """Owns the MQTT client: connects, subscribes, falls back to 3.1.1, queues what arrives, acks what is stored."""

    def __init__(self, cfg: MonitorConfig, store: Store, on_batch: Callable[[Written], None] | None = None) -> None:
        self.cfg, self.store = cfg, store
        self.batcher = Batcher(cfg.monitor, store, self._ack, on_batch)
        self.counters = self.batcher.counters
        self.protocol, self.shared, self.connected = mqtt.MQTTv5, cfg.monitor.shared, threading.Event()
        self._queue, self._arrived = self.batcher.queue, self.batcher.arrived  # paho's thread feeds the batcher
        self._link = 0  # counts successful connections: a packet id is acknowledged only on the one it came in on
        # Arrival times of the messages not yet written (appended by paho's thread, taken from the left as batches
        # commit, oldest first as the batcher takes them): the ingest lag /api/health reports.
        self._unwritten: deque[float] = deque()
        self._connack_seen = False
        self._refused = False  # the last CONNACK refused: the disconnect after it is the same failed attempt
        self._clash = ClashWatch()
        self.fell_back = False
        # Says why the broker cannot be reached and when the next attempt comes, as the agent does (the same code).
        self.reach = Reach(cfg.host, cfg.port, MAX_BACKOFF_S, logger=log,
                           waiting=lambda: "the monitor keeps running and ingests once the broker answers")
        self._client = self._make_client()

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
        c.reconnect_delay_set(min_delay=1, max_delay=MAX_BACKOFF_S)
        c.on_connect, c.on_disconnect, c.on_message = self._on_connect, self._on_disconnect, self._on_message
        c.on_connect_fail = self._on_connect_fail
        pahofast.quick_matcher(c)
        return c

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._connect()
        self.batcher.start()

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
        self.batcher.stop(timeout)
        self.connected.clear()  # a disconnect we asked for is not worth a warning
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks: queue and return -----------------------------------------------------------------
    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` around the attempt: the active exception is the reason.
        self.reach.failed(connect_failure_reason(sys.exc_info()[1], self.cfg.tls))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connack_seen = True
        self._refused = reason_code.is_failure
        if reason_code.is_failure:
            self.reach.failed(f"the broker refused the connection: {reason_code}", answered=True)
            if self.protocol == mqtt.MQTTv5 and "protocol" in str(reason_code).lower():
                threading.Thread(target=self._fallback_to_311, daemon=True).start()
            return
        version = "5" if self.protocol == mqtt.MQTTv5 else "3.1.1"
        log.info("connected to %s:%d (MQTT %s, session %s)%s, subscribing to %s", self.cfg.host, self.cfg.port,
                 version, "resumed" if getattr(flags, "session_present", False) else "new", self.reach.reached(),
                 self.subscription)
        self._link += 1
        self._clash.connected()
        client.subscribe(self.subscription, qos=1)
        self.connected.set()

    def _fallback_to_311(self) -> None:
        self._client.loop_stop()
        self.speak_311()
        log.warning("MQTT 3.1.1 broker: no shared subscriptions, subscribing to %s on a persistent session; "
                    "run one monitor per broker (a second one would store every message again, harmlessly but "
                    "for nothing)", TOPIC_FILTER)
        self._connect()

    def speak_311(self) -> None:
        """A new client for MQTT 3.1.1: after MQTT 5 failed, or before ``start`` for a broker known to speak nothing
        else (the demo's embedded amqtt, which misreads an MQTT 5 CONNECT and leaves it unanswered)."""
        self.protocol, self.shared, self.fell_back = mqtt.MQTTv311, False, True
        self._client = self._make_client()
        self.reach.new_client()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if self.connected.is_set():  # a clash is said in its own line (ClashWatch), any other drop in this one
            self._clash.dropped(reason_code, self.cfg.client_id) or log.warning(
                "disconnected from the broker (%s); reconnecting, the session keeps our messages", reason_code)
            self.reach.lost()
        elif not self.batcher.stopping.is_set() and not self._refused:  # closed before the broker accepted it
            self.reach.failed(f"the connection closed before the broker answered ({reason_code})", answered=True)
        self._refused = False
        self.connected.clear()
        if (self.protocol == mqtt.MQTTv5 and not self._connack_seen and not self.batcher.stopping.is_set()
                and "keep alive" in str(reason_code).lower()):
            # No answer at all to an MQTT 5 CONNECT: a 3.1.1-only broker (amqtt) waiting for bytes (see publish.py).
            threading.Thread(target=self._fallback_to_311, daemon=True).start()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        self._unwritten.append(now)
        self._queue.append((message.topic, message.payload, message.mid, message.qos, now, self._link))
        if not self._arrived.is_set():
            self._arrived.set()

    def lag(self, now: float | None = None) -> tuple[int, float]:
        """Messages received but not yet written, and the age in seconds of the oldest of them (0 when none)."""
        times, now = self._unwritten, time.time() if now is None else now
        try:
            oldest = times[0]
        except IndexError:  # empty, or emptied meanwhile by the writer thread
            return 0, 0.0
        return len(times), round(max(now - oldest, 0.0), 1)

    # -- after the commit (the writer thread) -------------------------------------------------------------
    def _ack(self, items: list[Item]) -> None:
        """Acknowledge a committed batch's messages to the broker."""
        times = self._unwritten
        for _ in range(min(len(items), len(times))):
            times.popleft()
        # Only packet ids of this connection, each once: a message that came in before a reconnect is sent again by
        # the broker (stored once, acknowledged then); its old id may now name another, not yet committed message.
        link = self._link
        mids = dict.fromkeys(mid for *_, mid, qos, _received, at in items if qos == 1 and at == link)
        pahofast.ack_many(self._client, list(mids))
        for *_, mid, qos, _received, at in items:  # QoS 2 is never granted (we subscribe with QoS 1): paho's own
            if qos == 2 and at == link:  # ack if a broker did anyway
                self._client.ack(mid, qos)
