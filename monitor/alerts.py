"""Alert sinks: each alert the store queued (an ``alerts`` row) is delivered by a sink, retried with backoff,
and its delivery state kept in the row (pending -> delivered, or failed after ``max_attempts``).

Sinks are plugins keyed by name (``SINKS``); the webhook is the first: an HTTP POST of the alert's JSON
(docs/monitor.md). The row is claimed before it is sent, so two monitors on one database never both send it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any, ClassVar, Protocol

from .config import AlertsSection
from .store import Store

log = logging.getLogger("vibrawatch.monitor.alerts")


class Sink(Protocol):
    name: ClassVar[str]

    def send(self, alert: dict[str, Any]) -> None:
        """Deliver one alert or raise (any exception is a failed attempt, retried later)."""


class WebhookSink:
    """POST the alert as JSON to a URL; any 2xx is delivered, anything else is retried."""

    name: ClassVar[str] = "webhook"
    sample: ClassVar[str] = '[alerts]\nwebhook = "https://hooks.example.net/vibrawatch"\ntimeout_s = 5\n'

    def __init__(self, settings: AlertsSection) -> None:
        if not settings.webhook:
            raise ValueError("[alerts] webhook is not set")
        self.url, self.timeout = settings.webhook, settings.timeout_s

    def send(self, alert: dict[str, Any]) -> None:
        body = json.dumps(alert, separators=(",", ":")).encode()
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "vibrawatch-monitor"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - the operator's own URL
                resp.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"HTTP {e.code} {e.reason}") from None


SINKS: dict[str, type[WebhookSink]] = {"webhook": WebhookSink}


def backoff(attempts: int, settings: AlertsSection) -> float:
    """Seconds before the next try after ``attempts`` failures: doubling from backoff_s, capped."""
    return min(settings.backoff_s * 2 ** max(attempts - 1, 0), settings.backoff_max_s)


def deliver_due(store: Store, sink: Sink, settings: AlertsSection, now: float | None = None, limit: int = 50) -> int:
    """One pass: send every alert that is due, record each outcome; returns how many were delivered."""
    now = time.time() if now is None else now
    due = store.query("SELECT key, payload, attempts, created, next_try FROM alerts WHERE state = 'pending' "
                      "AND next_try <= ? ORDER BY created, key LIMIT ?", (now, limit))
    delivered = 0
    for a in due:
        with store.transaction() as cur:  # claim it: nobody else sends it while we try
            cur.execute("UPDATE alerts SET next_try = ? WHERE key = ? AND state = 'pending' AND next_try = ?",
                        (now + settings.timeout_s * 2 + 1, a["key"], a["next_try"]))
            if cur.rowcount != 1:
                continue
        attempts = a["attempts"] + 1
        body = {**json.loads(a["payload"]), "alert": a["key"], "created": a["created"], "attempt": attempts}
        try:
            sink.send(body)
        except Exception as e:  # noqa: BLE001 - a sink's failure is data: stored, retried, logged
            failed = attempts >= settings.max_attempts
            with store.transaction() as cur:
                cur.execute("UPDATE alerts SET attempts = ?, last_error = ?, next_try = ?, state = ? WHERE key = ?",
                            (attempts, str(e)[:500], now + backoff(attempts, settings),
                             "failed" if failed else "pending", a["key"]))
            log.warning("alert %s: %s attempt %d failed (%s)%s", a["key"], sink.name, attempts, e,
                        "; giving up" if failed else "")
            continue
        with store.transaction() as cur:
            cur.execute("UPDATE alerts SET attempts = ?, state = 'delivered', delivered = ?, last_error = NULL "
                        "WHERE key = ?", (attempts, time.time(), a["key"]))
        delivered += 1
    return delivered


class Dispatcher:
    """A thread that delivers due alerts every ``interval`` seconds (and at once when woken)."""

    def __init__(self, store: Store, sink: Sink, settings: AlertsSection, interval: float = 0.5) -> None:
        self.store, self.sink, self.settings, self.interval = store, sink, settings, interval
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monitor-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout=self.settings.timeout_s + 2)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                deliver_due(self.store, self.sink, self.settings)
            except Exception:  # noqa: BLE001 - e.g. the database restarting; next pass tries again
                log.exception("alert delivery pass failed")
            self.wake.wait(self.interval)
            self.wake.clear()
