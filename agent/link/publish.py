"""Scores, alarms and status to the broker: paho-mqtt 2.x, QoS 1, every score and alarm through the spool.

- MQTT 5, falling back to 3.1.1 if the broker refuses the protocol; TLS with a CA and optional client
  certificate; username and password (the password from a file, read by ``agent.config``).
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

The parts, one job each: ``broker`` (the ``[mqtt]`` settings), ``connection`` (the paho client and its
callbacks), ``guard`` (a failing callback), ``reach`` (why and how often an unreachable broker is logged),
``sender`` (the thread that drains the spool) and ``status`` (the retained status and the will);
``Publisher`` here puts them together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .broker import MqttSection
from .connection import Connection
from .sender import Sender
from .spool import Spool
from .status import Status
from .topics import topic


def _fixed(password: str | None) -> Callable[[], str | None]:
    return lambda: password


class Publisher:
    """What the service, deploys and the MQTT source use of the broker: start and stop, subscriptions, the
    spooled messages and the retained status. One sender thread does all publishing; paho's callbacks only
    report events to it."""

    def __init__(self, settings: MqttSection, spool: Spool, birth: dict[str, Any], *, site: str, device: str,
                 password: str | Callable[[], str | None] | None = None) -> None:
        """``password``: the string, or a callable read whenever a client is made (at once: a bad password file
        fails here); used only with ``settings.username``."""
        self.site, self.device, self.spool = site, device, spool
        self.status = Status(site, device, birth)
        self.connection = Connection(settings, self.status, spool, settings.client_id_for(site, device),
                                     password if callable(password) else _fixed(password))
        self.sender = Sender(self.connection, spool, settings.inflight)

    @property
    def connected(self) -> bool:
        return self.connection.connected

    @property
    def birth(self) -> dict[str, Any]:
        """The fields every status carries (model, versions); the service replaces them when the model changes."""
        return self.status.birth

    @birth.setter
    def birth(self, fields: dict[str, Any]) -> None:
        self.status.birth = fields

    def start(self) -> None:
        self.connection.connect()
        self.sender.start()

    def stop(self, reason: str = "stopped", **fields: Any) -> None:
        """Stop sending, publish a retained 'offline' (a clean disconnect sends no will) and disconnect;
        ``fields`` go into that status (a crash's ``error``)."""
        self.connection.stopping.set()
        self.connection.hurry.set()
        self.sender.stop()
        self.connection.close(reason, **fields)

    def subscribe(self, topic_filter: str, handler: Callable[[bytes], None]) -> None:
        """Deliver messages on ``topic_filter`` to ``handler`` (in paho's thread); renewed on every reconnect."""
        self.connection.route(topic_filter, handler)
        # the sender (re)subscribes everything; not a reconnect: what is in flight stays in flight (its PUBACK
        # still counts, and a message the full spool dropped meanwhile is not lost until the connection is)
        self.sender.resubscribe = True
        self.connection.wake.set()

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop delivering ``topic_filter`` (a retained deploy bundle must not come again on every reconnect)."""
        self.connection.unroute(topic_filter)

    def enqueue(self, kind: str, payload: dict[str, Any]) -> int | None:
        """Spool a score or alarm message (numbered, and on disk before this returns), wake the sender;
        returns the message's seq (None: a full disk would not take it; counted as dropped)."""
        return self.sender.enqueue(topic(self.site, self.device, kind), payload)

    def set_status(self, state: str, **fields: Any) -> None:
        """The retained status (online / sensor); sent now if connected, else on the next connect."""
        self.status.set(state, **fields)
        self.connection.wake.set()

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged everything spooled; False on timeout. Returns as the last
        PUBACK is taken (the spool says so), not at the next poll, and the sender stops gathering bursts
        meanwhile (every send and every PUBACK served at once): a clean stop waits no longer than it must."""
        self.connection.hurry.set()
        self.connection.wake.set()
        try:
            return self.spool.wait_empty(timeout)
        finally:
            if not self.connection.stopping.is_set():
                self.connection.hurry.clear()
