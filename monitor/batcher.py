"""The writer thread between ingest and the store: messages gather into batches, each batch is one transaction,
and only after its commit are the messages handed back to be acknowledged.

A batch closes at ``batch_max`` messages or once its first has waited ``batch_wait_ms``. A crash before the
commit loses nothing: the broker sends the unacknowledged messages again and the store drops repeats. A
database that is away keeps the batch here, retried with a growing pause, nothing acknowledged meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .config import MonitorSection
from .decoding import Item, to_batch
from .rows import Written
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
        """Decode and store ``items`` in one transaction, then have them acknowledged and counted."""
        written = self.store.write(to_batch(items))
        self.ack(items)
        c = self.counters
        c.received += len(items)
        c.stored += written.scores + written.alarms + written.statuses + written.events
        c.duplicates += written.duplicates
        c.dead += written.dead
        c.lost += written.lost
        c.batches += 1
        if self.on_batch is not None:
            self.on_batch(written)
