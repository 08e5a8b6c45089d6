"""Store and forward: every score and alarm message goes to disk first and leaves only when the broker
has acknowledged it (QoS 1 PUBACK).

SQLite in WAL mode with synchronous=NORMAL: a message is in the write-ahead log when ``put`` returns,
so neither a broker restart nor ``kill -9`` of the agent loses one. (A power cut may lose the last
commits since the previous checkpoint; FULL would fsync every message, 3 ms each here, and wear an SD
card: a trade-off stated in the README.) The spool is bounded: past
``max_bytes`` the oldest messages are dropped and counted (the count goes out in the status message).
It also numbers the messages (``seq``), in the same commit as it stores them, so seq never repeats
across restarts and a gap in it means messages were dropped.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .topics import encode


@dataclass(frozen=True)
class Spooled:
    id: int
    topic: str
    payload: bytes


class Spool:
    """A bounded FIFO of MQTT messages on disk; safe to call from the agent loop and paho's thread."""

    def __init__(self, path: str | Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "topic TEXT NOT NULL, payload BLOB NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('seq', 0), ('dropped', 0)")
        # Recomputed at start (cheap once), then kept up to date, so put() never scans the table.
        self._bytes = int(self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()[0])

    def put(self, topic: str, payload: Mapping[str, Any]) -> int:
        """Number a message with the device's next ``seq``, append it, and return the seq.

        Numbering and storing are one transaction (one commit), so seq is consecutive over what was
        stored and survives restarts: a gap in seq at a consumer means messages the spool had to drop.
        Past ``max_bytes`` the oldest messages go, counted; the message just written always stays.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = int(self._db.execute(
                    "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value").fetchone()[0])
                data = encode({**payload, "seq": seq})
                self._db.execute("INSERT INTO messages (topic, payload) VALUES (?, ?)", (topic, data))
                self._bytes += len(data)
                dropped = 0
                while self._bytes > self.max_bytes:
                    oldest = self._db.execute(
                        "SELECT id, LENGTH(payload) FROM messages ORDER BY id LIMIT 2").fetchall()
                    if len(oldest) < 2:
                        break
                    self._db.execute("DELETE FROM messages WHERE id = ?", (oldest[0][0],))
                    self._bytes -= int(oldest[0][1])
                    dropped += 1
                if dropped:
                    self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return seq

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
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute(f"SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages WHERE id IN ({marks})",
                                    ids).fetchone()[0]
            self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)
            self._db.execute("COMMIT")
            self._bytes -= int(gone)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    @property
    def dropped(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
