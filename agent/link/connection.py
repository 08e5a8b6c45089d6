"""The paho client and its callbacks: connect (TLS, credentials, MQTT 5 falling back to 3.1.1), say why a
connection failed or dropped, route incoming messages to their handlers, and report PUBACKs to the sender.

paho holds its own locks while it runs a callback: a callback that waited for a lock of ours while our thread
waited inside ``publish`` would deadlock, so callbacks only record and wake, never wait. And no exception
leaves a callback (``guard``): paho's network thread would die with it, silently.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .broker import MqttSection
from .guard import CallbackErrors, guarded
from .reach import Reach, connect_failure_reason
from .spool import Spool
from .status import Status

log = logging.getLogger("vibrawatch.publish")
_SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another connection with this client id
_SHORT_SESSION_S = 5.0


class Connection:
    """Owns the paho client; paho's callbacks set ``connected`` / ``reconnected``, queue PUBACKs in ``acks``
    and set ``wake`` for the sender, which does all publishing."""

    def __init__(self, settings: MqttSection, status: Status, spool: Spool, client_id: str,
                 password: Callable[[], str | None]) -> None:
        self.settings, self.status, self.client_id = settings, status, client_id
        self._password = password
        self.reach = Reach(settings.host, settings.port, settings.max_backoff_s,
                           waiting=lambda: f"{len(spool)} message(s) spooled")
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.hurry = threading.Event()  # a drain or a stop waits on the sender: gather no burst, send at once
        self.acks: queue.SimpleQueue[int] = queue.SimpleQueue()  # mids PUBACKed, for the sender to take
        self.connected = False
        self.reconnected = False  # a connection was (re)made: the sender resends what is unacknowledged
        self.routes: dict[str, Callable[[bytes], None]] = {}
        self.protocol = mqtt.MQTTv311 if settings.protocol == "3.1.1" else mqtt.MQTTv5
        self._connack_seen = False  # any CONNACK, a refusal too: the broker reads MQTT 5 CONNECTs
        self._refused = False  # the last CONNACK refused: the disconnect after it is the same failed attempt
        self._connected_at = 0.0
        self._short_sessions = 0
        self.callback_errors = CallbackErrors(status, self.wake)
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        m = self.settings
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self.protocol)
        c.will_set(self.status.topic, self.status.will(), qos=1, retain=True)
        if m.username:
            c.username_pw_set(m.username, self._password())
        if m.tls:
            c.tls_set(ca_certs=m.ca_file, certfile=m.cert_file, keyfile=m.key_file)
        c.reconnect_delay_set(min_delay=1, max_delay=m.max_backoff_s)
        c.on_connect, c.on_disconnect, c.on_publish, c.on_message, c.on_connect_fail = (
            self._on_connect, self._on_disconnect, self._on_publish, self._on_message, self._on_connect_fail)
        return c

    # -- lifecycle ----------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect in paho's own thread; it reconnects with capped exponential backoff from then on."""
        m = self.settings
        kwargs = {"clean_start": True} if self.protocol == mqtt.MQTTv5 else {}
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive, **kwargs)
        self.client.loop_start()

    def close(self, reason: str, **fields: Any) -> None:
        """Publish a retained 'offline' (a clean disconnect sends no will) and disconnect."""
        if self.connected:
            info = self.client.publish(self.status.topic, self.status.offline(reason, **fields), 1, True)
            with contextlib.suppress(RuntimeError, ValueError):  # best effort: the will covers a failure
                info.wait_for_publish(timeout=2.0)
        self.client.disconnect()
        self.client.loop_stop()

    def _fallback_to_311(self) -> None:
        self.client.loop_stop()
        self.protocol = mqtt.MQTTv311
        self.client = self._make_client()
        self.reach.new_client()
        self.connect()

    # -- subscriptions ------------------------------------------------------------------------------------
    def route(self, topic_filter: str, handler: Callable[[bytes], None]) -> None:
        """Deliver messages on ``topic_filter`` to ``handler``; the sender subscribes (again on every connect)."""
        # a new dict, not an update: paho's thread may be iterating the old one in _on_message
        self.routes = {**self.routes, topic_filter: handler}

    def unroute(self, topic_filter: str) -> None:
        """Stop delivering ``topic_filter``, and unsubscribe from it now if connected."""
        self.routes = {t: h for t, h in self.routes.items() if t != topic_filter}
        if self.connected:
            self.client.unsubscribe(topic_filter)

    def subscribe_all(self) -> None:
        """Subscribe every routed filter (the sender's thread: after a connect, or when one was added)."""
        for t in self.routes:
            self.client.subscribe(t, qos=1)

    # -- paho callbacks (paho's network thread): record and wake, never wait, never raise ------------------
    @guarded("on_connect_fail")
    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` around the connection attempt: the exception is
        # the active one here (DNS, refused, TLS handshake, timeout), and the only place its reason exists.
        self.reach.failed(connect_failure_reason(sys.exc_info()[1], self.settings.tls))

    @guarded("on_connect")
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connack_seen = True
        self._refused = reason_code.is_failure
        if reason_code.is_failure:
            self.reach.failed(f"the broker refused the connection: {reason_code}", answered=True)
            if self.protocol == mqtt.MQTTv5 and "protocol" in str(reason_code).lower():
                log.warning("falling back to MQTT 3.1.1")
                threading.Thread(target=self._fallback_to_311, daemon=True).start()
            return
        after = self.reach.reached()
        log.info("connected to %s:%d (MQTT %s)%s", self.settings.host, self.settings.port,
                 "5" if self.protocol == mqtt.MQTTv5 else "3.1.1", after)
        self.reconnected = True
        self._connected_at = time.monotonic()
        self.connected = True
        self.wake.set()

    @guarded("on_disconnect")
    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        # A connection that keeps dropping seconds after it was made is, most often, a second client with
        # this client id taking the session over (a copied config); brokers do not always say so (0x8E).
        short = self.connected and time.monotonic() - self._connected_at < _SHORT_SESSION_S
        self._short_sessions = self._short_sessions + 1 if short else 0
        if getattr(reason_code, "value", None) == _SESSION_TAKEN_OVER or self._short_sessions == 3:
            log.error("the broker keeps dropping this connection within seconds (%s): is another client using "
                      "client id %r? two agents share a config? give each gateway its own [agent] site/device or "
                      "[mqtt] client_id", reason_code, self.client_id)
        elif self.connected and self.stopping.is_set():  # our own goodbye at stop, not a fault
            log.info("disconnected from the broker (%s)", reason_code)
        elif self.connected:
            log.warning("disconnected from the broker (%s); spooling until it is back", reason_code)
        elif not self.stopping.is_set() and not self._refused:  # closed before the broker accepted it
            self.reach.failed(f"the connection closed before the broker answered ({reason_code})", answered=True)
        self._refused = False
        if self.connected:  # the next connection is another link, and its will says so
            self.reach.lost()
            self.status.new_link()
            client.will_set(self.status.topic, self.status.will(), qos=1, retain=True)
        self.connected = False
        if (self.protocol == mqtt.MQTTv5 and not self._connack_seen and not self.stopping.is_set()
                and "keep alive" in str(reason_code).lower()):
            # Our MQTT 5 CONNECT got no answer at all, not even a refusal: a 3.1.1-only broker that parses it
            # as 3.1.1 (amqtt) takes the property length for part of the client id and waits for bytes that
            # never come; paho gives up after keepalive seconds.
            log.warning("no answer to an MQTT 5 CONNECT in %d s: falling back to MQTT 3.1.1", self.settings.keepalive)
            threading.Thread(target=self._fallback_to_311, daemon=True).start()
        self.wake.set()

    @guarded("on_publish")
    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self.acks.put(mid)
        self.wake.set()

    @guarded("on_message")
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        for t, handler in list(self.routes.items()):
            if mqtt.topic_matches_sub(t, message.topic):
                try:
                    handler(message.payload)
                except Exception as e:  # one handler's bug must not cost the others their message
                    where = f" on {message.topic} ({len(message.payload)} bytes)"
                    self.callback_errors.record("on_message handler", e, where)
