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
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError
from .topics import encode

T = TypeVar("T")

MIN_BYTES = 128 * 1024  # the log's share (64 KB at least), the schema's 5 pages and room for some messages
MIN_WAL_BYTES, MAX_WAL_BYTES = 64 * 1024, 4 * 1024 * 1024
CACHE_KB = 256  # SQLite's page cache (see Spool.__init__)
COMMIT_PAGES = 12  # what one put's commit may add to the log past the checkpoint mark (message, meta, freelist)
RESERVE_PAGES = 4 * COMMIT_PAGES  # disk kept free for the log's next commits when the disk, not the bound, is short


@dataclass(frozen=True)
class Spooled:
    id: int
    topic: str
    payload: bytes


def _cannot_write(e: sqlite3.Error) -> bool:
    """The disk is full or failed a write (SQLITE_FULL, an SQLITE_IOERR): the write failed, not the spool."""
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


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
        self._unwritten = 0  # lost to a full disk since the last message stored: the next seq skips them
        self._unrecorded = 0  # dropped, counted here, not yet in the file (a full disk): with the next message
        self._undeleted: list[int] = []  # acknowledged, but a full disk refused their delete: the next ack's too
        self.disk_short = False  # the last drops were for want of disk, not for the bound
        self._log_short = False  # the disk's free space was below the log's reserve at the last put
        self._lock_fd = self._claim()
        try:
            self._open()
        except sqlite3.DatabaseError as e:  # a directory, a device, another program's file, a damaged spool
            raise ConfigError(f"{self.path}: cannot use it as the spool ({e}); [agent] spool must name an SQLite "
                              "file the agent can write (a damaged one: move it aside, it starts a new one)"
                              ) from None

    def _claim(self) -> int:
        """One spool, one agent: a second copy beside the first (the same config started twice) would publish
        the same device's messages from two timelines under one client id. Held until ``close`` (or death)."""
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{self.path}: in use by another vibrawatch-agent (pid {holder}); one spool serves one "
                              "agent: stop that one, or give this one its own [agent] spool and device") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd

    def _open(self) -> None:
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
        self._write(lambda: self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)"))  # start small whatever the last
        # run left (a full disk: later)

    def _free_bytes(self) -> int | None:
        """The disk's free bytes under the spool (None where it cannot be told), asked at every put: the log's
        growth uses the disk too, and a look that is a moment old may already be wrong on a small disk."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _pages(self) -> int:
        return int(self._db.execute("PRAGMA page_count").fetchone()[0])

    def _room(self) -> tuple[int, int]:
        """(bytes the database may use now, its pages): its bound, or what its file holds plus the disk's free
        space beyond the log's reserve when that is less (``disk_short``; ``_log_short``: the log's reserve
        itself is not free)."""
        pages = self._pages()
        free = self._free_bytes()
        if free is None:
            return self._db_bytes, pages
        room = (pages - RESERVE_PAGES) * self._page + free
        self.disk_short, self._log_short = room < self._db_bytes, free < RESERVE_PAGES * self._page
        return min(room, self._db_bytes), pages

    def _spare_the_disk(self) -> None:
        """On a disk short of the log's reserve (seen by the last put), move the log into the database now and
        truncate it (SQLite would let it grow to its checkpoint size first, which a small disk may not have)."""
        if self._log_short:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as e:
                if not _cannot_write(e):
                    raise

    def _used_bytes(self, pages: int | None = None) -> int:
        """Bytes of the database file in use (free pages are reused before the file grows)."""
        pages = self._pages() if pages is None else pages
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page

    def put(self, topic: str, payload: Mapping[str, Any]) -> int | None:
        """Number a message with the device's next ``seq``, append it, and return the seq.

        Numbering and storing are one transaction (one commit), so seq is consecutive over what was
        stored and survives restarts: a gap in seq at a consumer means messages the spool had to drop.
        Past ``max_bytes`` the oldest messages go, counted (see the module docstring); the message just
        written always stays. None: the disk would not take it (full, or failing), even after the log was
        truncated; it is counted in ``dropped`` and the next seq skips it.
        """
        with self._lock:
            self._spare_the_disk()
            done, seq = self._write(lambda: self._put(topic, payload))
            if not done:
                self._unwritten += 1
                self._dropped += 1
            return seq

    def _write(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, ``fn()``); when the disk will not take the write, the log checkpointed and truncated (its pages
        are the room to win back) and ``fn`` tried once more; (False, None) if it still cannot be written. The
        caller holds the lock; ``fn`` is one transaction, rolled back when it fails."""
        for attempt in range(2):
            try:
                return True, fn()
            except sqlite3.OperationalError as e:
                if not _cannot_write(e):
                    raise
            if attempt == 0:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.OperationalError as e:
                    if not _cannot_write(e):
                        raise
        return False, None

    def _put(self, topic: str, payload: Mapping[str, Any]) -> int:
        """``put``'s one transaction; the in-memory bookkeeping follows only once it has committed."""
        gone: list[int] = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            seq = int(self._db.execute("UPDATE meta SET value = value + 1 + ? WHERE key = 'seq' RETURNING value",
                                       (self._unwritten,)).fetchone()[0])
            data = encode({**payload, "seq": seq})
            self._db.execute("INSERT INTO messages (topic, payload) VALUES (?, ?)", (topic, data))
            room, pages = self._room()
            used = self._used_bytes(pages)
            while used > room:
                # A page is freed only when all its rows are gone: drop a few at a time, oldest first.
                ids = [int(r[0]) for r in self._db.execute(
                    "SELECT id FROM messages WHERE id > ? ORDER BY id LIMIT 8", (gone[-1] if gone else 0,)
                ).fetchall()][:-1]  # never the newest
                if not ids:
                    break
                self._db.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(ids))})", ids)
                gone += ids
                used = self._used_bytes()
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
                done, _ = self._write(lambda: self._db.execute(
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
            done, _ = self._write(lambda: self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids))
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
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as e:
            if not _cannot_write(e):
                raise
        finally:
            self._db.close()
            os.close(self._lock_fd)
