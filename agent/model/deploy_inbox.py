"""Receive and fetch: the deploy's two topics on the agent's own MQTT connection (docs/deploy.md).

paho's thread only queues what arrives; everything else runs on the agent loop's thread, which takes the
messages at every turn. The bundle topic is subscribed only while an authenticated request waits for its
bundle, so an oversized or unrequested bundle is never downloaded, and unsubscribed as soon as it came (a
retained bundle must not come again on every reconnect).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Protocol

from ..link.topics import topic
from .deploy_request import BUNDLE_KIND, REQUEST_KIND, Request


class Subscriptions(Protocol):
    """What the deploy needs of the agent's MQTT connection (the publisher's ``subscribe``/``unsubscribe``)."""

    def subscribe(self, topic_filter: str, handler: Callable[[bytes], None]) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...


class Inbox:
    """The request topic, always; the bundle topic while a request is ``pending`` (it and when it came)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self.connection: Subscriptions | None = None
        self.pending: tuple[Request, float] | None = None
        self.request_topic = self.bundle_topic = ""

    def use(self, site: str, device: str) -> None:
        """This gateway's topics (at start, and after a reload; a new connection subscribes them)."""
        self.request_topic = topic(site, device, REQUEST_KIND)
        self.bundle_topic = topic(site, device, BUNDLE_KIND)

    def attach(self, connection: Subscriptions) -> None:
        """Listen for requests (retained: one sent while this gateway was offline arrives now); again on
        every new connection (a reload that moved it), with the bundle topic when a fetch is under way."""
        self.connection = connection
        connection.subscribe(self.request_topic, lambda payload: self._queue.put(("request", payload)))
        if self.pending is not None:
            connection.subscribe(self.bundle_topic, lambda payload: self._queue.put(("bundle", payload)))

    def take(self) -> tuple[str, bytes] | None:
        """The next message that arrived ("request" or "bundle", its payload), None when there is none."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def fetch(self, req: Request) -> None:
        """Only now, for an authenticated request, subscribe to the bundle."""
        self.pending = (req, time.monotonic())
        assert self.connection is not None
        self.connection.subscribe(self.bundle_topic, lambda payload: self._queue.put(("bundle", payload)))

    def stop_fetching(self) -> None:
        """The bundle came, or will not: no more of it."""
        self.pending = None
        if self.connection is not None:
            self.connection.unsubscribe(self.bundle_topic)

    def overdue(self, timeout_s: float) -> Request | None:
        """The pending request when its bundle did not come within ``timeout_s`` (fetching stops), else None."""
        if self.pending is None or time.monotonic() - self.pending[1] <= timeout_s:
            return None
        req = self.pending[0]
        self.stop_fetching()
        return req
