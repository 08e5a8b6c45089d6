"""The retained status on ``<site>/<device>/status`` and the last will (docs/mqtt.md).

A status says ``online`` / ``sensor`` / ``offline`` with the birth fields (model, versions). Each carries its
``link``: the time the connection it belongs to was set up. The will is composed before its connection exists,
so its ``timestamp`` is older than the statuses sent on that connection; a consumer tells a current will by
its ``link`` instead.
"""

from __future__ import annotations

import time
from typing import Any

from .topics import encode, iso, status_payload, topic


class Status:
    """What the retained status says now, and whether the sender owes the broker a fresh copy (``dirty``).

    Written by the agent loop and by paho's callbacks (an error), sent by the sender thread only.
    """

    def __init__(self, site: str, device: str, birth: dict[str, Any]) -> None:
        self.topic = topic(site, device, "status")  # a bad site or device is refused here, before any connection
        self.birth = birth
        self.payload: dict[str, Any] = status_payload("online", **birth)
        self.dirty = False
        self.link = iso(time.time())
        self.counts: dict[str, int] = {}  # counters every status carries once set (samples_dropped)

    def set(self, state: str, **fields: Any) -> None:
        """A new state (online / sensor), with the birth fields."""
        self.payload = status_payload(state, **self.birth, **fields)
        self.dirty = True

    def count(self, name: str, n: int) -> None:
        """A counter the agent keeps (``samples_dropped``): in every status from now on, sent again now."""
        self.counts = {**self.counts, name: n}  # a new dict: the sender's thread reads it meanwhile
        self.dirty = True

    def error(self, text: str) -> None:
        """A failing callback's one line, kept in the current status until the next state replaces it."""
        self.payload = {**self.payload, "error": text}
        self.dirty = True

    def new_link(self) -> None:
        """The connection went: the next one is another link, and its will and statuses say so."""
        self.link = iso(time.time())

    def will(self) -> bytes:
        """The retained 'offline' the broker publishes if it loses the connection without a DISCONNECT."""
        return encode(status_payload("offline", reason="connection lost", link=self.link))

    def offline(self, reason: str, **fields: Any) -> bytes:
        """The retained 'offline' a clean stop sends itself (a clean disconnect sends no will)."""
        return encode(status_payload("offline", reason=reason, link=self.link, **fields))

    def stamped(self, spool_dropped: int, spool_read_only: bool = False) -> bytes:
        """The current status as sent now. Stamped when sent: a status sent again (after a reconnect, with a new
        spool_dropped) is news, and a consumer keying statuses by (timestamp, state) must not take it for the
        earlier one. ``spool_read_only``: the spool's file went read-only (it goes on in memory), said from then on."""
        return encode({**self.payload, **self.counts, "timestamp": iso(time.time()), "spool_dropped": spool_dropped,
                       **({"spool_read_only": True} if spool_read_only else {}), "link": self.link})
