"""The sender thread: the only one that publishes. It drains the spool oldest first and keeps the retained
status current.

A message leaves the spool only on its PUBACK. At most ``inflight`` are unacknowledged at a time; after a
reconnect the unacknowledged ones go again (at-least-once: a consumer drops repeats by ``seq``). paho's own
queue is in memory and unbounded, so nothing is handed to paho while disconnected. Messages the full spool
drops are logged as they go (rate-limited) and the retained status's ``spool_dropped`` is refreshed; the log
states every count the status carries. A spool whose file went read-only (it goes on in memory) is in the
status at once: ``spool_read_only``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from .connection import Connection
from .spool import Spool

log = logging.getLogger("vibrawatch.publish")
_GATHER_S = 0.01
DROPS_STATUS_EVERY_S = 10.0  # spool drops: the retained status's spool_dropped (and its log line) this often at most


class Drops:
    """The full spool dropping its oldest messages: said as it happens, and the retained status's
    ``spool_dropped`` refreshed, whether or not the broker is connected. The log states the count each status
    carries: a status with a count the log has not said yet is sent with a line that says it (so at most one
    line per DROPS_STATUS_EVERY_S in a storm), and a stop says what came after the last status."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.seen = spool.dropped
        self._logged = (0.0, spool.dropped)  # when, and the count then
        self._status_at = 0.0
        self._pending = False  # the status's spool_dropped is behind the spool's count

    def report(self, connected: bool) -> None:
        """New drops: logged at once the first time; later ones with the next status (see ``stamp``)."""
        self.seen = self.spool.dropped
        if self._logged[0] == 0.0:
            self._log(connected)
        self._pending = True  # the sender refreshes the status (at most every DROPS_STATUS_EVERY_S)

    def stamp(self, connected: bool) -> int:
        """The count a status about to be sent carries, logged first when the log has not stated it."""
        total = self.spool.dropped
        if total != self._logged[1]:
            self._log(connected, total)
        return total

    def flush(self, connected: bool) -> None:
        """At a stop: the drops no line has stated yet."""
        if self.spool.dropped != self._logged[1]:
            self._log(connected)

    def _log(self, connected: bool, total: int | None = None) -> None:
        total = self.spool.dropped if total is None else total
        f = self.spool.file
        why = ("the disk under it is full" if f.disk_short
               else f"{f.db_bytes / 2**20:g} MB in memory at most, its file read-only" if f.in_memory
               else f"{self.spool.max_bytes / 2**20:g} MB on disk at most")
        log.warning("spool full (%s): %d oldest message(s) dropped since the last report, %d "
                    "in all; %s", why, total - self._logged[1], total,
                    "the broker takes messages slower than they come" if connected else "the broker is not connected")
        self._logged = (time.monotonic(), total)

    def status_due(self) -> bool:
        """Whether the status's ``spool_dropped`` is behind and may be sent again now (then it counts as sent)."""
        if self._pending and time.monotonic() - self._status_at >= DROPS_STATUS_EVERY_S:
            self._pending, self._status_at = False, time.monotonic()
            return True
        return False


class Sender:
    """The thread that publishes: paho's callbacks only report events to it (see ``agent.link.connection``)."""

    def __init__(self, connection: Connection, spool: Spool, inflight: int) -> None:
        self.connection, self.spool, self.max_inflight = connection, spool, inflight
        self.drops = Drops(spool)
        self.resubscribe = False  # a subscription was added while connected: subscribe, nothing else
        self._inflight: dict[int, int] = {}  # paho mid -> spool id; touched by the sender thread only
        self._last_sent = 0
        self._in_memory = spool.file.in_memory  # as the status said it last (spool_read_only)
        self.thread = threading.Thread(target=self._loop, name="vibrawatch-sender", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Wait for the thread to end (``connection.stopping`` is set), then take the PUBACKs that came
        meanwhile: those messages were delivered."""
        self.connection.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.take_acks()
        self.drops.flush(self.connection.connected)

    def enqueue(self, topic_name: str, payload: dict[str, Any]) -> int | None:
        """Spool a message (numbered, and on disk before this returns) and wake the thread; its seq (None: a full
        disk would not take it, counted as dropped)."""
        seq = self.spool.put(topic_name, payload)
        if self.spool.dropped != self.drops.seen:
            self.drops.report(self.connection.connected)
        if self.spool.file.in_memory != self._in_memory:  # its file went read-only: the status says so at once
            self._in_memory = self.connection.status.dirty = True
        self.connection.wake.set()
        return seq

    def _loop(self) -> None:
        c = self.connection
        while not c.stopping.is_set():
            if c.wake.wait(0.5):
                # Let a burst gather (a replay at speed, the spool draining after an outage, their
                # PUBACKs): one wake-up and one spool transaction then serve many messages. 10 ms is
                # nothing next to a window of a second; it halves the MQTT threads' CPU at 300x real time.
                # Not while a drain or a stop waits on the sender (``hurry``, which also ends a gather):
                # no more messages are coming to gather, and each gather would add 10 ms to every round trip.
                c.hurry.wait(_GATHER_S)
            c.wake.clear()
            try:
                self._send_once()
            except Exception:  # noqa: BLE001 - the sender must outlive any one bad moment; the spool keeps data
                log.exception("sender error; retrying")
                time.sleep(0.5)

    def take_acks(self) -> None:
        """Remove the PUBACKed messages from the spool."""
        acked = []
        while True:  # all in one spool transaction: they free room in the spool
            try:
                mid = self.connection.acks.get_nowait()
            except queue.Empty:
                break
            spool_id = self._inflight.pop(mid, None)
            if spool_id is not None:
                acked.append(spool_id)
        self.spool.ack(acked)

    def _send_once(self) -> None:
        c, status = self.connection, self.connection.status
        self.take_acks()  # acknowledgements first
        if not c.connected:
            return
        if c.reconnected:
            c.reconnected = False
            self._inflight.clear()
            if self.spool.unsent():  # dropped from the full spool while in flight, and no PUBACK came
                self.drops.report(c.connected)
            self._last_sent = 0  # resend everything not yet acknowledged, oldest first
            status.dirty = True
            self.resubscribe = True
        if self.resubscribe:
            self.resubscribe = False
            c.subscribe_all()
        if self.drops.status_due():
            status.dirty = True
        if status.dirty:
            status.dirty = False
            payload = status.stamped(self.drops.stamp(c.connected), spool_read_only=self.spool.file.in_memory)
            c.client.publish(status.topic, payload, qos=1, retain=True)
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        sent = []
        for msg in self.spool.peek(room, after_id=self._last_sent):
            info = c.client.publish(msg.topic, msg.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # the connection just went: the next connect starts again from the oldest
            self._inflight[info.mid] = msg.id
            self._last_sent = msg.id
            sent.append(msg.id)
        self.spool.sent(sent)
