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

A disk that fills before the bound does (a small partition, another program's files) is not a reason to stop
scoring either: the database may use only what its file holds plus the disk's free space beyond a reserve for
the log (``RESERVE_PAGES``), so the oldest messages go before the disk is full and deletes can still be written.
A write the disk refuses all the same (another program took the space, a failing card): the log is
checkpointed and truncated to win room back and the write tried once more; a message that still cannot be
written is lost, counted in ``dropped``, and the next one stored takes a seq past it, so consumers see the gap
as for any drop.

A filesystem that goes read-only under the spool (an SD card's ext4 after an error) is not a reason to stop either:
the spool goes on in memory, bounded, with the seq and the counts it had (agent.link.spool_memory); ``file`` says so.
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
from .spool_file import SpoolFile
from .topics import encode

MIN_BYTES = 128 * 1024  # the log's share (64 KB at least), the schema's 5 pages and room for some messages


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
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)  # notified when acknowledged messages leave (wait_empty)
        self._in_flight: set[int] = set()  # sent, PUBACK not yet seen
        self._dropped_in_flight: set[int] = set()  # of those, dropped from a full spool: lost unless acked
        self._unwritten = 0  # lost to a full disk since the last message stored: the next seq skips them
        self._unrecorded = 0  # dropped, counted here, not yet in the file (a full disk): with the next message
        self._undeleted: list[int] = []  # acknowledged, but a full disk refused their delete: the next ack's too
        self.file = SpoolFile(self.path, self.max_bytes)  # this agent's only: a second copy stops here
        self._dropped = int(self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0])

    @property
    def _db(self) -> sqlite3.Connection:
        return self.file.db  # in memory once the filesystem went read-only

    def put(self, topic: str, payload: Mapping[str, Any]) -> int | None:
        """Number a message with the device's next ``seq``, append it, and return the seq.

        Numbering and storing are one transaction (one commit), so seq is consecutive over what was
        stored and survives restarts: a gap in seq at a consumer means messages the spool had to drop.
        Past ``max_bytes`` the oldest messages go, counted (see the module docstring); the message just
        written always stays. None: the disk would not take it (full, or failing), even after the log was
        truncated; it is counted in ``dropped`` and the next seq skips it.
        """
        with self._lock:
            if self.file.log_short:
                self.file.truncate_log()
            done, seq = self.file.write(lambda: self._put(topic, payload))
            if not done and self.file.gone_read_only():  # the message goes into memory, with what the file held
                self._dropped += self.file.to_memory(self._in_flight, self._undeleted)
                done, seq = self.file.write(lambda: self._put(topic, payload))
            if not done:
                self._unwritten += 1
                self._dropped += 1
            return seq

    def _put(self, topic: str, payload: Mapping[str, Any]) -> int:
        """``put``'s one transaction; the in-memory bookkeeping follows only once it has committed."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            seq = int(self._db.execute("UPDATE meta SET value = value + 1 + ? WHERE key = 'seq' RETURNING value",
                                       (self._unwritten,)).fetchone()[0])
            data = encode({**payload, "seq": seq})
            self._db.execute("INSERT INTO messages (topic, payload) VALUES (?, ?)", (topic, data))
            gone = self.file.drop_oldest()
            dropped = sum(1 for i in gone if i not in self._in_flight)
            late = self._unwritten + self._unrecorded  # what a full disk kept out of the file until now
            if dropped or late:
                self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped + late,))
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # a failed COMMIT (a full disk) may leave it open
                self._db.execute("ROLLBACK")
            raise
        self._dropped_in_flight.update(i for i in gone if i in self._in_flight)
        self._in_flight.difference_update(gone)
        self._dropped += dropped
        self._unwritten = self._unrecorded = 0
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
                done, _ = self.file.write(lambda: self._db.execute(
                    "UPDATE meta SET value = value + ? WHERE key = 'dropped'", (lost,)))
                if not done:
                    self._unrecorded += lost  # into the file with the next message stored
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
        redelivered PUBACK may name a message already gone). On a disk that will not take the delete, they are
        forgotten with the next acknowledgement that can be written."""
        if not message_ids and not self._undeleted:
            return
        with self._lock:
            self._in_flight.difference_update(message_ids)
            self._dropped_in_flight.difference_update(message_ids)  # delivered after all
            ids = self._undeleted + list(message_ids)
            marks = ",".join("?" * len(ids))
            done, _ = self.file.write(lambda: self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids))
            self._undeleted = [] if done else ids
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
        """Close; what was dropped while in flight with no PUBACK seen counts as dropped (it may be lost). A disk
        that will not take the last writes (full) still lets the spool close: what it holds stays for the next
        start."""
        try:
            self.unsent()
            with self._lock:
                self.file.truncate_log()
        finally:
            self.file.close()
