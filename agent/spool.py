"""Store and forward: every score and alarm message goes to disk first and leaves only when the broker
has acknowledged it (QoS 1 PUBACK).

SQLite in WAL mode with synchronous=NORMAL: a message is in the write-ahead log when ``put`` returns,
so neither a broker restart nor ``kill -9`` of the agent loses one. (A power cut may lose the last
commits since the previous checkpoint; FULL would fsync every message, 3 ms each here, and wear an SD
card: a trade-off stated in the README.) The spool is bounded: past
``max_bytes`` the oldest messages are dropped and counted (the count goes out in the status message).
It also keeps the device's message sequence number, so ``seq`` never repeats across restarts.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path


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

    def next_seq(self) -> int:
        """The next message sequence number of this device, persisted."""
        with self._lock:
            self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq'")
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    def put(self, topic: str, payload: bytes) -> None:
        """Append a message; drop the oldest while the spool is over its size bound."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO messages (topic, payload) VALUES (?, ?)", (topic, payload))
            self._bytes += len(payload)
            dropped = 0
            while self._bytes > self.max_bytes:
                oldest = self._db.execute("SELECT id, LENGTH(payload) FROM messages ORDER BY id LIMIT 2").fetchall()
                if len(oldest) < 2:  # never drop the message just written
                    break
                self._db.execute("DELETE FROM messages WHERE id = ?", (oldest[0][0],))
                self._bytes -= int(oldest[0][1])
                dropped += 1
            if dropped:
                self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))
            self._db.execute("COMMIT")

    def peek(self, limit: int, after_id: int = 0) -> list[Spooled]:
        """The oldest messages with id > ``after_id``, in order."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
        return [Spooled(int(i), str(t), bytes(p)) for i, t, p in rows]

    def ack(self, message_id: int) -> None:
        """The broker has the message: forget it."""
        with self._lock:
            row = self._db.execute("SELECT LENGTH(payload) FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is not None:  # a redelivered PUBACK for a message already gone is harmless
                self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                self._bytes -= int(row[0])

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
