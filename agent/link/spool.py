"""Store and forward: every score and alarm message goes to disk first and leaves only when the broker
has acknowledged it (QoS 1 PUBACK).

SQLite in WAL mode with synchronous=NORMAL: a message is in the write-ahead log when ``put`` returns,
so neither a broker restart nor ``kill -9`` of the agent loses one. (A power cut may lose the last
commits since the previous checkpoint; FULL would fsync every message, 3 ms each here, and wear an SD
card: a trade-off stated in the README.) It also numbers the messages (``seq``), in the same commit as it
stores them, so seq never repeats across restarts and a gap in it means messages were dropped.

The spool is bounded on disk: ``max_bytes`` covers the database file and its write-ahead log. The log gets
an eighth of it (at most 4 MB: SQLite checkpoints it at that size and ``journal_size_limit`` truncates it
back); the database the rest, counted in pages in use (``page_count - freelist_count``, so the rows'
overhead, the index pages and overflow pages all count, and freed pages are reused before the file grows).
Past the bound the oldest messages are dropped. ``dropped`` counts only messages that were never
delivered: one dropped while in flight (sent, PUBACK pending) counts only if its PUBACK never comes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .topics import encode

MIN_BYTES = 128 * 1024  # the log's share (64 KB at least), the schema's 5 pages and room for some messages
MIN_WAL_BYTES, MAX_WAL_BYTES = 64 * 1024, 4 * 1024 * 1024
CACHE_KB = 256  # SQLite's page cache (see Spool.__init__)
COMMIT_PAGES = 12  # what one put's commit may add to the log past the checkpoint mark (message, meta, freelist)


@dataclass(frozen=True)
class Spooled:
    id: int
    topic: str
    payload: bytes


class Spool:
    """A bounded FIFO of MQTT messages on disk; safe to call from the agent loop and paho's thread."""

    def __init__(self, path: str | Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = Path(path)
        if max_bytes < MIN_BYTES:
            raise ConfigError(f"{self.path}: a spool needs at least {MIN_BYTES} bytes on disk "
                              f"([agent] spool_max_mb >= {MIN_BYTES / 2**20:g}), got {max_bytes}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)  # notified when acknowledged messages leave (wait_empty)
        self._in_flight: set[int] = set()  # sent, PUBACK not yet seen
        self._dropped_in_flight: set[int] = set()  # of those, dropped from a full spool: lost unless acked
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # SQLite's page cache, 2 MB by default: a put touches a few pages and a drain after an outage reads each
        # page once, so 256 KB costs nothing in speed and keeps a resident 1.8 MB off the gateway after an outage.
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KB}")
        self._page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        # The log: checkpointed (by SQLite, after a commit) once it holds this many pages, truncated back to
        # wal_bytes when it restarts, so it never passes wal_bytes (a commit beyond COMMIT_PAGES excepted).
        wal_bytes = max(min(self.max_bytes // 8, MAX_WAL_BYTES), MIN_WAL_BYTES)
        self._db.execute(f"PRAGMA journal_size_limit={wal_bytes}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={max(wal_bytes // self._page - COMMIT_PAGES, 1)}")
        # The database file: the rest, less two pages a put may take before it drops (the file's high mark).
        self._db_bytes = self.max_bytes - wal_bytes - 2 * self._page
        self._db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "topic TEXT NOT NULL, payload BLOB NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('seq', 0), ('dropped', 0)")
        self._dropped = int(self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0])
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # start small whatever the last run left

    def _used_bytes(self) -> int:
        """Bytes of the database file in use (free pages are reused before the file grows)."""
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page

    def put(self, topic: str, payload: Mapping[str, Any]) -> int:
        """Number a message with the device's next ``seq``, append it, and return the seq.

        Numbering and storing are one transaction (one commit), so seq is consecutive over what was
        stored and survives restarts: a gap in seq at a consumer means messages the spool had to drop.
        Past ``max_bytes`` the oldest messages go, counted (see the module docstring); the message just
        written always stays.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = int(self._db.execute(
                    "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value").fetchone()[0])
                data = encode({**payload, "seq": seq})
                self._db.execute("INSERT INTO messages (topic, payload) VALUES (?, ?)", (topic, data))
                dropped = 0
                while self._used_bytes() > self._db_bytes:
                    # A page is freed only when all its rows are gone: drop a few at a time, oldest first.
                    ids = [int(r[0]) for r in self._db.execute(
                        "SELECT id FROM messages ORDER BY id LIMIT 8").fetchall()][:-1]  # never the newest
                    if not ids:
                        break
                    self._db.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(ids))})", ids)
                    lost = [i for i in ids if i not in self._in_flight]
                    self._dropped_in_flight.update(i for i in ids if i in self._in_flight)
                    self._in_flight.difference_update(ids)
                    dropped += len(lost)
                if dropped:
                    self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._dropped += dropped
            return seq

    def sent(self, message_ids: Iterable[int]) -> None:
        """These messages are in flight: if the spool must drop one before its PUBACK, it counts as dropped
        only if the PUBACK never comes (``unsent``)."""
        with self._lock:
            self._in_flight.update(message_ids)

    def unsent(self) -> int:
        """The connection went before the pending PUBACKs came: nothing is in flight any more, and what was
        dropped while in flight is lost. Returns how many that were (added to ``dropped``)."""
        with self._lock:
            lost = len(self._dropped_in_flight)
            self._in_flight.clear()
            self._dropped_in_flight.clear()
            if lost:
                self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (lost,))
                self._dropped += lost
            return lost

    def peek(self, limit: int, after_id: int = 0) -> list[Spooled]:
        """The oldest messages with id > ``after_id``, in order."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
        return [Spooled(int(i), str(t), bytes(p)) for i, t, p in rows]

    def ack(self, message_ids: Collection[int]) -> None:
        """The broker has these messages: forget them (one transaction; unknown ids are ignored, since a
        redelivered PUBACK may name a message already gone)."""
        if not message_ids:
            return
        ids = list(message_ids)
        marks = ",".join("?" * len(ids))
        with self._lock:
            self._in_flight.difference_update(ids)
            self._dropped_in_flight.difference_update(ids)  # delivered after all
            self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)
            self._acked.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return self._count()

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def wait_empty(self, timeout: float, poll: float = 0.5) -> bool:
        """Wait until no message is left (woken by each ``ack``, so it returns as the last PUBACK is taken, not
        at the next poll); False on timeout. ``poll`` bounds each wait, for a spool emptied another way."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (left := self._count()) and (remaining := deadline - time.monotonic()) > 0:
                self._acked.wait(min(remaining, poll))
            return left == 0

    @property
    def dropped(self) -> int:
        """Messages dropped undelivered from a full spool, since it was created (kept in the file)."""
        return self._dropped

    def disk_bytes(self) -> int:
        """The database file and its write-ahead log, as they are on disk now."""
        wal = self.path.with_name(self.path.name + "-wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())

    def close(self) -> None:
        """Close; what was dropped while in flight with no PUBACK seen counts as dropped (it may be lost)."""
        self.unsent()
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
