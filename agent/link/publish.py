"""Scores, alarms and status to the broker: paho-mqtt 2.x, QoS 1, every score and alarm through the spool.

- MQTT 5, falling back to 3.1.1 if the broker refuses the protocol; TLS with a CA and optional client
  certificate; username and password (the password from a file, see ``agent.config``).
- paho reconnects with capped exponential backoff; on every (re)connect the agent re-subscribes,
  publishes its retained ``online`` status, and sends the spool oldest first.
- A message leaves the spool only on its PUBACK. At most ``inflight`` are unacknowledged at a time; after
  a reconnect the unacknowledged ones go again (at-least-once: a consumer drops repeats by ``seq``).
  paho's own queue is in memory and unbounded, so nothing is handed to paho while disconnected.
- The last will is a retained ``offline`` status; a clean stop publishes it too.
- A broker that cannot be reached (nothing listening, DNS, TLS refused, credentials refused) is logged
  with its reason at the first failure, then at a capped interval with the count of failed attempts and
  of spooled messages. Messages the full spool drops are logged as they go (rate-limited) and the retained
  status's ``spool_dropped`` is refreshed.
- No exception leaves a paho callback: paho's network thread would die with it, silently, and the agent
  would neither receive nor publish again. A failing callback is logged with its context, counted, and put
  in the retained status (``error``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..config import AgentConfig
from .spool import Spool
from .topics import encode, iso, status_payload, topic

log = logging.getLogger("vibrawatch.publish")
_GATHER_S = 0.01
_SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another connection with this client id
_SHORT_SESSION_S = 5.0
UNREACHABLE_LOG_FIRST_S = 10.0  # after the first failure is logged, the next line after this long...
UNREACHABLE_LOG_MAX_S = 300.0  # ...doubling up to this: a broker down all night costs a few dozen lines
DROPS_LOG_EVERY_S = 60.0  # spool drops: the first at once, then one line (with counts) per minute at most
DROPS_STATUS_EVERY_S = 10.0  # and the retained status's spool_dropped refreshed this often at most
CALLBACK_LOG_EVERY_S = 60.0

F = TypeVar("F", bound=Callable[..., Any])


def connect_failure_reason(exc: BaseException | None, tls: bool = False) -> str:
    """Why a connection attempt failed, in words a user can act on (the exception's own text included);
    with ``tls``, a connection reset while connecting is the TLS handshake failing (e.g. a plain port)."""
    if exc is None:
        return "unknown reason"
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, socket.gaierror):
        return f"the broker's host name does not resolve (DNS: {exc})"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError) or (tls and isinstance(exc, ConnectionResetError)):
        return f"TLS handshake failed ({text}): check ca_file, cert_file/key_file and the broker's certificate"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens on that host and port (wrong port, or the broker is down)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer from the host ({text}): a firewall, or the wrong address"
    return text


def guarded(name: str) -> Callable[[F], F]:
    """Wrap a paho callback so that no exception ever leaves it (see the module docstring)."""

    def wrap(fn: F) -> F:
        @wraps(fn)
        def call(self: Publisher, *args: Any) -> Any:
            try:
                return fn(self, *args)
            except Exception as e:  # the network thread must survive any bug of ours
                self._callback_failed(name, e)
                return None

        return call  # type: ignore[return-value]

    return wrap


class Publisher:
    """Owns the MQTT client; one sender thread does all publishing, paho's callbacks only report events.

    (paho holds its own locks while it runs a callback: a callback that waited for a lock of ours while
    our thread waited inside ``publish`` would deadlock, so callbacks never wait for anything.)
    """

    def __init__(self, cfg: AgentConfig, spool: Spool, birth: dict[str, Any]) -> None:
        self.cfg, self.spool = cfg, spool
        self.status_topic = topic(cfg.agent.site, cfg.agent.device, "status")
        self.birth = birth
        self._status: dict[str, Any] = status_payload("online", **birth)
        self._status_dirty = False
        self._inflight: dict[int, int] = {}  # paho mid -> spool id; touched by the sender thread only
        self._last_sent = 0
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._reconnected = False
        self._resubscribe = False  # a subscription was added while connected: subscribe, nothing else
        self.connected = False
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}
        self._protocol = mqtt.MQTTv5
        self._connack_seen = False  # any CONNACK, a refusal too: the broker reads MQTT 5 CONNECTs
        self._client_id = cfg.mqtt.client_id or f"vibrawatch-{cfg.agent.site}-{cfg.agent.device}"
        self._connected_at = 0.0
        self._short_sessions = 0
        self._failures = 0  # connection attempts failed since the last successful connect
        self._failed_since = 0.0
        self._failure_logged_at = 0.0
        self._failure_log_gap = UNREACHABLE_LOG_FIRST_S
        self._drops_seen = spool.dropped
        self._drops_logged = (0.0, spool.dropped)  # when, and the count then
        self._drops_status_at = 0.0
        self._drops_pending = False  # the status's spool_dropped is behind the spool's count
        self._callback_errors: dict[str, tuple[int, float]] = {}  # callback -> (count, last logged)
        # Which connection a status belongs to: its ``link``, the time this connection was set up (ISO). The
        # last will is composed before the connection exists, so its ``timestamp`` is older than the statuses
        # sent on that connection; a consumer tells a current will by its ``link`` instead (docs/mqtt.md).
        self._link = iso(time.time())
        self._client = self._make_client()
        self._sender = threading.Thread(target=self._send_loop, name="vibrawatch-sender", daemon=True)

    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        client_id = self._client_id
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=self._protocol)
        self._set_will(c)
        if m.username:
            c.username_pw_set(m.username, self.cfg.password())
        if m.tls:
            c.tls_set(ca_certs=m.ca_file, certfile=m.cert_file, keyfile=m.key_file)
        c.reconnect_delay_set(min_delay=1, max_delay=m.max_backoff_s)
        c.on_connect, c.on_disconnect, c.on_publish, c.on_message, c.on_connect_fail = (
            self._on_connect, self._on_disconnect, self._on_publish, self._on_message, self._on_connect_fail)
        return c

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._connect()
        self._sender.start()

    def _set_will(self, c: mqtt.Client) -> None:
        """The retained 'offline' the broker publishes if it loses this connection without a DISCONNECT."""
        will = status_payload("offline", reason="connection lost", link=self._link)
        c.will_set(self.status_topic, encode(will), qos=1, retain=True)

    def _connect(self) -> None:
        m = self.cfg.mqtt
        kwargs = {"clean_start": True} if self._protocol == mqtt.MQTTv5 else {}
        self._client.connect_async(m.host, m.port, keepalive=m.keepalive, **kwargs)
        self._client.loop_start()

    def stop(self, reason: str = "stopped", **fields: Any) -> None:
        """Stop sending, publish a retained 'offline' (a clean disconnect sends no will) and disconnect;
        ``fields`` go into that status (a crash's ``error``)."""
        self._stopping.set()
        self._wake.set()
        if self._sender.is_alive():
            self._sender.join(timeout=5)
        self._take_acks()  # PUBACKs that came while the sender was stopping: those messages were delivered
        if self.connected:
            payload = encode(status_payload("offline", reason=reason, link=self._link, **fields))
            info = self._client.publish(self.status_topic, payload, 1, True)
            with contextlib.suppress(RuntimeError, ValueError):  # best effort: the will covers a failure
                info.wait_for_publish(timeout=2.0)
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, topic_filter: str, handler: Callable[[bytes], None]) -> None:
        """Deliver messages on ``topic_filter`` to ``handler`` (in paho's thread); renewed on every reconnect."""
        # a new dict, not an update: paho's thread may be iterating the old one in _on_message
        self._subscriptions = {**self._subscriptions, topic_filter: handler}
        # the sender (re)subscribes everything; not a reconnect: what is in flight stays in flight (its PUBACK
        # still counts, and a message the full spool dropped meanwhile is not lost until the connection is)
        self._resubscribe = True
        self._wake.set()

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop delivering ``topic_filter`` (a retained deploy bundle must not come again on every reconnect)."""
        self._subscriptions = {t: h for t, h in self._subscriptions.items() if t != topic_filter}
        if self.connected:
            self._client.unsubscribe(topic_filter)

    # -- what the agent loop calls ------------------------------------------------------------------------
    def enqueue(self, kind: str, payload: dict[str, Any]) -> int:
        """Spool a score or alarm message (numbered, and on disk before this returns), wake the sender;
        returns the message's seq."""
        seq = self.spool.put(topic(self.cfg.agent.site, self.cfg.agent.device, kind), payload)
        if self.spool.dropped != self._drops_seen:
            self._report_drops()
        self._wake.set()
        return seq

    def _report_drops(self) -> None:
        """The spool is full and dropping its oldest messages: say so as it happens (rate-limited), and
        refresh the retained status's ``spool_dropped``, whether or not the broker is connected."""
        now, total = time.monotonic(), self.spool.dropped
        self._drops_seen = total
        when, logged = self._drops_logged
        if when == 0.0 or now - when >= DROPS_LOG_EVERY_S:
            log.warning("spool full (%s MB on disk at most): %d oldest message(s) dropped since the last report, %d "
                        "in all; %s", f"{self.spool.max_bytes / 2**20:g}", total - logged, total,
                        "the broker takes messages slower than they come" if self.connected
                        else "the broker is not connected")
            self._drops_logged = (now, total)
        self._drops_pending = True  # the sender refreshes the status (at most every DROPS_STATUS_EVERY_S)

    def set_status(self, state: str, **fields: Any) -> None:
        """The retained status (online / sensor); sent now if connected, else on the next connect."""
        self._status = status_payload(state, **self.birth, **fields)
        self._status_dirty = True
        self._wake.set()

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged everything spooled; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.spool) == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return len(self.spool) == 0

    # -- the sender thread --------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            if self._wake.wait(0.5):
                # Let a burst gather (a replay at speed, the spool draining after an outage, their
                # PUBACKs): one wake-up and one spool transaction then serve many messages. 10 ms is
                # nothing next to a window of a second; it halves the MQTT threads' CPU at 300x real time.
                self._stopping.wait(_GATHER_S)
            self._wake.clear()
            try:
                self._send_once()
            except Exception:  # noqa: BLE001 - the sender must outlive any one bad moment; the spool keeps data
                log.exception("sender error; retrying")
                time.sleep(0.5)

    def _take_acks(self) -> None:
        acked = []
        while True:  # all in one spool transaction: they free room in the spool
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            spool_id = self._inflight.pop(mid, None)
            if spool_id is not None:
                acked.append(spool_id)
        self.spool.ack(acked)

    def _send_once(self) -> None:
        self._take_acks()  # acknowledgements first
        if not self.connected:
            return
        if self._reconnected:
            self._reconnected = False
            self._inflight.clear()
            if self.spool.unsent():  # dropped from the full spool while in flight, and no PUBACK came
                self._report_drops()
            self._last_sent = 0  # resend everything not yet acknowledged, oldest first
            self._status_dirty = True
            self._resubscribe = True
        if self._resubscribe:
            self._resubscribe = False
            for t in self._subscriptions:
                self._client.subscribe(t, qos=1)
        if self._drops_pending and time.monotonic() - self._drops_status_at >= DROPS_STATUS_EVERY_S:
            self._drops_pending, self._drops_status_at, self._status_dirty = False, time.monotonic(), True
        if self._status_dirty:
            self._status_dirty = False
            # Stamped when sent: a status sent again (after a reconnect, with a new spool_dropped) is news, and a
            # consumer keying statuses by (timestamp, state) must not take it for the earlier one.
            payload = {**self._status, "timestamp": iso(time.time()), "spool_dropped": self.spool.dropped,
                       "link": self._link}
            self._client.publish(self.status_topic, encode(payload), qos=1, retain=True)
        room = self.cfg.mqtt.inflight - len(self._inflight)
        if room <= 0:
            return
        sent = []
        for msg in self.spool.peek(room, after_id=self._last_sent):
            info = self._client.publish(msg.topic, msg.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # the connection just went: the next connect starts again from the oldest
            self._inflight[info.mid] = msg.id
            self._last_sent = msg.id
            sent.append(msg.id)
        self.spool.sent(sent)

    # -- paho callbacks (paho's network thread): record and wake, never wait, never raise ------------------
    def _callback_failed(self, name: str, e: Exception, context: str = "") -> None:
        """A bug in a callback: log it with its context (the first with the traceback, then once a minute
        with the count) and put its one line in the retained status; the thread and the agent go on."""
        try:
            count, last = self._callback_errors.get(name, (0, 0.0))
            now = time.monotonic()
            count += 1
            if count == 1:
                log.error("paho callback %s failed%s (the connection goes on): %s: %s", name, context,
                          type(e).__name__, e, exc_info=e)
                last = now
            elif now - last >= CALLBACK_LOG_EVERY_S:
                log.error("paho callback %s failed %d times so far, last%s: %s: %s", name, count, context,
                          type(e).__name__, e)
                last = now
            self._callback_errors[name] = (count, last)
            self._status = {**self._status, "error": f"{name}: {type(e).__name__}: {e}"[:200]}
            self._status_dirty = True
            self._wake.set()
        except Exception:  # nothing may leave the callback, not even a failing log handler
            pass

    def _unreachable(self, reason: str) -> None:
        """A connection attempt failed: log the first failure with its reason, then at a doubling interval
        capped at UNREACHABLE_LOG_MAX_S, with the number of attempts and of messages waiting in the spool."""
        now = time.monotonic()
        self._failures += 1
        if self._failures == 1:
            self._failed_since, self._failure_logged_at, self._failure_log_gap = now, now, UNREACHABLE_LOG_FIRST_S
            log.warning("cannot reach the broker at %s:%d: %s; retrying every %d s at most, %d message(s) spooled",
                        self.cfg.mqtt.host, self.cfg.mqtt.port, reason, self.cfg.mqtt.max_backoff_s, len(self.spool))
        elif now - self._failure_logged_at >= self._failure_log_gap:
            self._failure_logged_at = now
            self._failure_log_gap = min(2 * self._failure_log_gap, UNREACHABLE_LOG_MAX_S)
            log.warning("still cannot reach the broker at %s:%d after %d attempts over %.0f s: %s; %d message(s) "
                        "spooled", self.cfg.mqtt.host, self.cfg.mqtt.port, self._failures, now - self._failed_since,
                        reason, len(self.spool))

    @guarded("on_connect_fail")
    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` around the connection attempt: the exception is
        # the active one here (DNS, refused, TLS handshake, timeout), and the only place its reason exists.
        self._unreachable(connect_failure_reason(sys.exc_info()[1], self.cfg.mqtt.tls))

    @guarded("on_connect")
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connack_seen = True
        if reason_code.is_failure:
            self._unreachable(f"the broker refused the connection: {reason_code}")
            if self._protocol == mqtt.MQTTv5 and "protocol" in str(reason_code).lower():
                log.warning("falling back to MQTT 3.1.1")
                threading.Thread(target=self._fallback_to_311, daemon=True).start()
            return
        after = (f" after {self._failures} failed attempt(s) over {time.monotonic() - self._failed_since:.0f} s"
                 if self._failures else "")
        self._failures = 0
        log.info("connected to %s:%d (MQTT %s)%s", self.cfg.mqtt.host, self.cfg.mqtt.port,
                 "5" if self._protocol == mqtt.MQTTv5 else "3.1.1", after)
        self._reconnected = True
        self._connected_at = time.monotonic()
        self.connected = True
        self._wake.set()

    def _fallback_to_311(self) -> None:
        self._client.loop_stop()
        self._protocol = mqtt.MQTTv311
        self._client = self._make_client()
        self._connect()

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
                      "[mqtt] client_id", reason_code, self._client_id)
        elif self.connected and self._stopping.is_set():  # our own goodbye at stop, not a fault
            log.info("disconnected from the broker (%s)", reason_code)
        elif self.connected:
            log.warning("disconnected from the broker (%s); spooling until it is back", reason_code)
        elif not self._stopping.is_set():  # the connection closed before the broker accepted it
            self._unreachable(f"the connection closed before the broker answered ({reason_code})")
        if self.connected:  # the next connection is another link, and its will says so
            self._link = iso(time.time())
            self._set_will(client)
        self.connected = False
        if (self._protocol == mqtt.MQTTv5 and not self._connack_seen and not self._stopping.is_set()
                and "keep alive" in str(reason_code).lower()):
            # Our MQTT 5 CONNECT got no answer at all, not even a refusal: a 3.1.1-only broker that parses it
            # as 3.1.1 (amqtt) takes the property length for part of the client id and waits for bytes that
            # never come; paho gives up after keepalive seconds.
            log.warning("no answer to an MQTT 5 CONNECT in %d s: falling back to MQTT 3.1.1", self.cfg.mqtt.keepalive)
            threading.Thread(target=self._fallback_to_311, daemon=True).start()
        self._wake.set()

    @guarded("on_publish")
    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._acks.put(mid)
        self._wake.set()

    @guarded("on_message")
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        for t, handler in list(self._subscriptions.items()):
            if mqtt.topic_matches_sub(t, message.topic):
                try:
                    handler(message.payload)
                except Exception as e:  # one handler's bug must not cost the others their message
                    where = f" on {message.topic} ({len(message.payload)} bytes)"
                    self._callback_failed("on_message handler", e, where)
