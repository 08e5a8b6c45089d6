"""The writer thread between ingest and the store: messages gather into batches, each batch is one transaction,
and only after its commit are the messages handed back to be acknowledged.

A batch closes at ``batch_max`` messages or once its first has waited ``batch_wait_ms``. A crash before the
commit loses nothing: the broker sends the unacknowledged messages again and the store drops repeats. A
database that is away keeps the batch here, retried with a growing pause, nothing acknowledged meanwhile.

A batch the database refuses for what it holds (a value decoding's bounds did not foresee, a bug) is not
retried whole: it is split in halves, each written on its own, down to the one message that is refused, which
becomes a dead letter; every other message is stored and acknowledged. Only connection trouble is retried
(``connection_trouble``): no message, valid or not, can stop ingestion.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .config import MonitorSection
from .db import StoreError
from .decoding import Item, to_batch
from .rows import Batch, DeadLetter, Written
from .store import Store

log = logging.getLogger("vibrawatch.monitor.ingest")


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
    refused: int = 0  # messages the database refused, stored as dead letters after their batch was split
    expired: int = 0  # scores redelivered after retention rolled them up: dropped (rows.Written.expired)


class Unfinished(Exception):
    """Connection trouble in the middle of a split batch: what is not yet stored (and not acknowledged)."""

    def __init__(self, rest: list[Item], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.rest, self.cause = rest, cause


def connection_trouble(exc: BaseException, db: object = None) -> bool:
    """Is this the database being away (retry the same batch later) rather than it refusing what a batch holds
    (split it)? The DB-API's classes tell: OperationalError and InterfaceError are the connection, the server or
    its disk; DataError, IntegrityError, ProgrammingError and a driver's ValueError or OverflowError are a value.
    ``Database.lost`` (db.py) has the last word (it also knows a connection the server closed)."""
    if isinstance(exc, (StoreError, OSError)):  # db.Unavailable is a StoreError: the database's fault
        return True
    lost = getattr(db, "lost", None)
    if callable(lost):
        return bool(lost(exc))
    kinds: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        kinds += (psycopg.OperationalError, psycopg.InterfaceError)
    return isinstance(exc, kinds)


class Batcher:
    """Owns the queue and the writer thread; ``ack`` is told which messages a committed batch held."""

    def __init__(self, settings: MonitorSection, store: Store, ack: Callable[[list[Item]], None],
                 on_batch: Callable[[Written], None] | None = None) -> None:
        self.settings, self.store, self.ack, self.on_batch = settings, store, ack, on_batch
        self.counters = Counters()
        # The MQTT thread appends, the writer pops from the left (both atomic on a deque); ``arrived`` wakes the
        # writer, set only when it was clear (an attribute read per message, no lock).
        self.queue: deque[Item] = deque()
        self.arrived = threading.Event()
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monitor-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Write and hand back what has arrived (within ``timeout``); what is left stays unacknowledged."""
        self.stopping.set()
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        pending: list[Item] = []
        failures = 0
        while True:
            stopping = self.stopping.is_set()
            if not pending:
                pending = self._gather(drain=stopping)
            if not pending:
                if stopping:
                    return
                continue
            try:
                self.write(pending)
                pending, failures = [], 0
            except Exception as e:  # noqa: BLE001 - the database may be away; keep the batch and retry
                if isinstance(e, Unfinished):
                    pending, e = e.rest, e.cause  # type: ignore[assignment]
                failures += 1
                self.counters.write_errors += 1
                if failures == 1 or failures % 30 == 0:
                    log.error("cannot write %d messages to %s (%s: %s); retrying, nothing is acknowledged meanwhile",
                              len(pending), self.store.safe_url, type(e).__name__, e)
                if stopping:
                    return  # unacknowledged: the broker sends them again to the next monitor
                self.stopping.wait(min(1.0 * failures, 10.0))

    def _gather(self, drain: bool) -> list[Item]:
        """What has arrived, once the first message has waited ``batch_wait_ms`` or ``batch_max`` are there."""
        batch_max, wait = self.settings.batch_max, self.settings.batch_wait_ms / 1000
        q = self.queue
        if not q:
            if drain:
                return []
            self.arrived.wait(0.5)
        self.arrived.clear()  # before taking: a message appended after this sets it again
        if not q:
            return []
        if not drain:
            deadline = time.monotonic() + wait
            while len(q) < batch_max and (remaining := deadline - time.monotonic()) > 0:
                time.sleep(min(remaining, 0.005))
        popleft = q.popleft
        return [popleft() for _ in range(min(len(q), batch_max))]

    def write(self, items: list[Item]) -> None:
        """Store ``items`` and have them acknowledged: in one transaction, or, when the database refuses the
        batch for what it holds, in halves split down to the refused message (a dead letter). Connection trouble
        raises (``Unfinished`` with what is left once a split has begun), for the batch to be retried."""
        try:
            self._write(items)
            return
        except Exception as e:
            if connection_trouble(e, self.store.db):
                raise
            log.warning("%s refused a batch of %d messages (%s: %s): splitting it to find the one refused",
                        self.store.safe_url, len(items), type(e).__name__, _line(e))
            first = e
        todo = [items[len(items) // 2:], items[:len(items) // 2]] if len(items) > 1 else []
        if len(items) == 1:
            self._refuse(items[0], first)
        while todo:
            part = todo.pop()
            try:
                self._write(part)
            except Exception as e:  # noqa: BLE001 - sorted below: the connection is retried, a value is split
                if connection_trouble(e, self.store.db):
                    raise Unfinished(part + [i for p in reversed(todo) for i in p], e) from e
                if len(part) == 1:
                    try:
                        self._refuse(part[0], e)
                    except Exception as again:  # only connection trouble leaves _refuse
                        raise Unfinished(part + [i for p in reversed(todo) for i in p], again) from again
                else:
                    todo += [part[len(part) // 2:], part[:len(part) // 2]]

    def _write(self, items: list[Item]) -> None:
        """Decode and store ``items`` in one transaction, then have them acknowledged and counted."""
        written = self.store.write(to_batch(items))
        self.ack(items)
        self._count(items, written)

    def _refuse(self, item: Item, error: BaseException) -> None:
        """The one message the database refused, as a dead letter saying so (then acknowledged)."""
        topic, payload, _mid, _qos, received, _link = item
        reason = f"database refused it: {type(error).__name__}: {_line(error)}"
        log.warning("dead letter: %s: %s", topic[:200], reason)
        try:
            written = self.store.write(Batch(dead=[DeadLetter.of(topic, payload, reason, received)]))
        except Exception as e:
            if connection_trouble(e, self.store.db):
                raise
            # Not even its bounded, escaped dead letter goes in: it cannot be kept, and must not stop the rest.
            log.error("cannot store the dead letter of a message on %s either (%s: %s); dropping it",
                      topic[:200], type(e).__name__, _line(e))
            written = Written()
        self.ack([item])
        self.counters.refused += 1
        self._count([item], written)

    def _count(self, items: list[Item], written: Written) -> None:
        c = self.counters
        c.received += len(items)
        c.stored += written.scores + written.alarms + written.statuses + written.events
        c.duplicates += written.duplicates
        c.dead += written.dead
        c.lost += written.lost
        c.expired += written.expired
        c.batches += 1
        if self.on_batch is not None:
            self.on_batch(written)


def _line(error: BaseException) -> str:
    """An error's first line, cut short (a driver may quote the whole refused value)."""
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""
