"""`vibrawatch monitor`: ingest, alerts, the fleet sweep, retention and the page, in one process until stopped.

SIGTERM or Ctrl-C: the writer stores and acknowledges what has arrived, the rest stays queued in the broker's
session for the next start; the process exits within a few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from . import __version__, fleet, retention
from .actions import ActionApi, Recalibrator
from .alerts import SINKS, Dispatcher
from .auth import Operators, Sessions, operators_path
from .config import MonitorConfig
from .ingest import Ingest
from .rows import Written
from .store import Store, open_store
from .web import Changes, make_server

log = logging.getLogger("vibrawatch.monitor")


class Monitor:
    def __init__(self, cfg: MonitorConfig, store: Store | None = None) -> None:
        self.cfg = cfg
        self.store = store or open_store(cfg.monitor.db)
        self.changes = Changes()
        self.started = time.time()
        self.ingest = Ingest(cfg, self.store, on_batch=self._on_batch)
        self.dispatcher = (Dispatcher(self.store, SINKS["webhook"](cfg.alerts), cfg.alerts)
                           if cfg.alerts.webhook else None)
        self.operators = Operators.load(operators_path(cfg.monitor.operators_file))
        if cfg.monitor.http and not self.operators:
            log.warning("no operators file ([monitor] operators_file or $CREDENTIALS_DIRECTORY/operators): the page "
                        "shows alarms, nobody may acknowledge or close them")
        self.actions = ActionApi(self.store.db, self.operators, Sessions(), self._acted, Recalibrator.over_mqtt(
            self.store.db, cfg.remote.signing_key, cfg.remote.expires_s, lambda: self.ingest._client))
        self.server = (make_server(cfg, self.store, self.changes, self.health, actions=self.actions)
                       if cfg.monitor.http else None)
        self.stop_event = threading.Event()

    @property
    def url(self) -> str | None:
        if self.server is None:
            return None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def _on_batch(self, w: Written) -> None:
        if w.scores or w.alarms or w.statuses or w.events or w.dead:
            self.changes.bump()
        if w.alerts and self.dispatcher is not None:
            self.dispatcher.wake.set()

    def _acted(self) -> None:
        """An operator changed an episode: the page hears of it, its webhook alert goes out now."""
        self.changes.bump()
        if self.dispatcher is not None:
            self.dispatcher.wake.set()

    def health(self) -> dict[str, Any]:
        """What is true now, asked of the parts themselves: ``ok`` (served as 200, else 503) when the database
        answers and writes go through; the broker connection; the ingest lag; dead letters in the last hour."""
        now = time.time()
        db = self.store.db
        problem = db.probe()  # a round trip to the database, and whether writes have been failing since
        unwritten, oldest = self.ingest.lag(now)
        dead_hour = None
        if problem is None:
            with contextlib.suppress(Exception):  # the database went away between the two: the probe said enough
                dead_hour = self.store.dead_since(now - 3600.0)
        connected = self.ingest.connected.is_set()
        return {"ok": problem is None, "version": __version__, "uptime_s": round(now - self.started, 1),
                "database": {"url": db.safe_url, "reachable": not (problem or "").startswith("unreachable"),
                             "storing": problem is None, "error": problem,
                             "down_s": None if db.down_since is None else round(now - db.down_since, 1)},
                "broker": {"connected": connected, "subscription": self.ingest.subscription,
                           "mqtt": "3.1.1" if self.ingest.fell_back else "5"},
                "ingest": {"unwritten": unwritten, "oldest_unwritten_s": oldest, **asdict(self.ingest.counters)},
                "dead_letters_last_hour": dead_hour,
                # the flat keys of earlier versions, for scripts that read them
                "connected": connected, "subscription": self.ingest.subscription, "db": db.safe_url,
                "mqtt": "3.1.1" if self.ingest.fell_back else "5", **asdict(self.ingest.counters)}

    def start(self) -> None:
        self.ingest.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        if self.server is not None:
            threading.Thread(target=self.server.serve_forever, name="monitor-web", daemon=True).start()

    def run(self) -> int:
        """Start everything, then sweep for silent devices and roll up old scores until ``stop_event``."""
        self.start()
        f, r = self.cfg.fleet, self.cfg.retention
        next_sweep, next_rollup, marker = 0.0, time.monotonic() + 5.0, None
        try:
            while not self.stop_event.wait(1.0):
                now = time.monotonic()
                try:
                    if self.store.db.down_since is not None and not self.ingest.lag()[0]:
                        self.store.try_write()  # idle in an outage: find out it is over (the backoff paces it)
                    if now >= next_sweep:
                        next_sweep = now + f.sweep_s
                        if fleet.sweep(self.store, time.time(), f.silent_factor, f.min_silent_s):
                            self.changes.bump()
                            if self.dispatcher is not None:
                                self.dispatcher.wake.set()
                        # Another monitor of the group may have written: the page hears of it too.
                        latest = self.store.query("SELECT MAX(last_seen) AS m FROM devices")[0]["m"]
                        if latest != marker:
                            marker = latest
                            self.changes.bump()
                    if now >= next_rollup:
                        next_rollup = now + r.every_s
                        gone = retention.roll_up(self.store, r.raw_days)
                        if gone:
                            log.info("retention: %d raw scores older than %g days rolled up into hourly aggregates",
                                     gone, r.raw_days)
                except Exception as e:  # noqa: BLE001 - e.g. the database restarting: say so, try again next time
                    if not self.store.db.lost(e):  # a lost database is logged once per outage, by the database
                        log.exception("periodic fleet sweep / retention failed; retrying")
        finally:
            self.stop()
        return 0

    def stop(self) -> None:
        if self.server is not None:
            self.server.stopping.set()  # type: ignore[attr-defined]
            self.server.shutdown()
            self.server.server_close()
        self.ingest.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        c = self.ingest.counters
        log.info("stopped: %d messages received, %d stored, %d repeats dropped, %d expired redeliveries dropped, "
                 "%d dead letters, %d lost seen", c.received, c.stored, c.duplicates, c.expired, c.dead, c.lost)
        self.store.close()
