"""The spool's SQLite file (agent.link.spool): one agent's only, its size bound, and what a full disk does to it.

- One spool, one agent: a lock beside the file (``<spool>.lock``, holding the pid) for the agent's life, so a second
  copy of the same config stops at start instead of publishing one device from two timelines.
- The bound: the database may use its share of ``max_bytes`` (the log has the rest), or, when the disk under it is
  shorter, what its file holds plus the disk's free space beyond a reserve for the log (``RESERVE_PAGES``).
- A write the disk refuses all the same (full, failing): the log is checkpointed and truncated to win room back and
  the write tried once more; ``write`` says whether it took.
- A filesystem that went read-only under it (``gone_read_only``: an SD card's ext4 remounted read-only after an error):
  ``to_memory`` carries on in a database in memory (agent.link.spool_memory), so scoring and publishing go on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TypeVar

from ..errors import ConfigError
from .spool_memory import MEMORY_BYTES, copy_newest, read_only, said_read_only

T = TypeVar("T")

MIN_WAL_BYTES, MAX_WAL_BYTES = 64 * 1024, 4 * 1024 * 1024
CACHE_KB = 256  # SQLite's page cache (see SpoolFile.__init__)
COMMIT_PAGES = 12  # what one put's commit may add to the log past the checkpoint mark (message, meta, freelist)
RESERVE_PAGES = 4 * COMMIT_PAGES  # disk kept free for the log's next commits when the disk, not the bound, is short


def cannot_write(e: sqlite3.Error) -> bool:
    """The disk is full, failed a write or refuses writes (SQLITE_FULL, an SQLITE_IOERR, an SQLITE_READONLY): the
    write failed, not the spool."""
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY)


def claim(path: Path) -> int:
    """One spool, one agent: a second copy beside the first (the same config started twice) would publish the
    same device's messages from two timelines under one client id. The lock's descriptor, held until closed. A
    read-only filesystem under it stops here too (ConfigError: exit 2, which systemd does not restart on)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:  # a read-only filesystem: said here, before it turns into an exit 1 and a restart loop
        if e.errno != errno.EROFS:
            raise
        raise ConfigError(f"{path}: the spool's filesystem is read-only (an SD card remounted read-only after "
                          "errors?): messages could not be kept on disk while the broker is away; repair it (fsck, "
                          "or a new card) and start again, or point [agent] spool at a writable disk") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"{path}: in use by another vibrawatch-agent (pid {holder}); one spool serves one "
                          "agent: stop that one, or give this one its own [agent] spool and device") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def free_bytes(directory: Path) -> int | None:
    """The disk's free bytes under ``directory`` (None where it cannot be told), asked at every put: the log's
    growth uses the disk too, and a look that is a moment old may already be wrong on a small disk."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class SpoolFile:
    """The open database of a spool of ``max_bytes`` on disk: its tables, its bound, its writes."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.lock_fd = claim(path)
        self.disk_short = False  # the last put's room was the disk's, not the bound's
        self.log_short = False  # the disk's free space was below the log's reserve at the last put
        self.in_memory = False  # the filesystem went read-only: the database is in memory now (to_memory)
        try:
            self.db = db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # SQLite's page cache, 2 MB by default: a put touches a few pages and a drain after an outage reads
            # each page once, so 256 KB costs nothing in speed and keeps 1.8 MB off the gateway after an outage.
            db.execute(f"PRAGMA cache_size=-{CACHE_KB}")
            self.page = int(db.execute("PRAGMA page_size").fetchone()[0])
            # The log: checkpointed (by SQLite, after a commit) once it holds this many pages, truncated back to
            # wal_bytes when it restarts, so it never passes wal_bytes (a commit beyond COMMIT_PAGES excepted).
            wal_bytes = max(min(max_bytes // 8, MAX_WAL_BYTES), MIN_WAL_BYTES)
            db.execute(f"PRAGMA journal_size_limit={wal_bytes}")
            db.execute(f"PRAGMA wal_autocheckpoint={max(wal_bytes // self.page - COMMIT_PAGES, 1)}")
            # The database file: the rest, less two pages a put may take before it drops (the file's high mark).
            self.db_bytes = max_bytes - wal_bytes - 2 * self.page
            tables(db)
        except sqlite3.DatabaseError as e:  # a directory, a device, another program's file, a damaged spool
            raise ConfigError(f"{path}: cannot use it as the spool ({e}); [agent] spool must name an SQLite "
                              "file the agent can write (a damaged one: move it aside, it starts a new one)"
                              ) from None
        self.truncate_log()  # start small whatever the last run left (a full disk: later)

    def truncate_log(self) -> None:
        """Move the log into the database and truncate it; a disk that will not take that now is left for later."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as e:
            if not cannot_write(e):
                raise

    def gone_read_only(self) -> bool:
        """After a write that failed: whether it was the filesystem going read-only (not yet handled: ``to_memory``)."""
        return not self.in_memory and read_only(self.path.parent, self.lock_fd)

    def to_memory(self, keep: Collection[int], acked: Collection[int]) -> int:
        """Go on with the spool in memory (MEMORY_BYTES at most, less under a smaller bound): the file's counters and
        its newest messages, ``keep`` (in flight) too, never ``acked``; said in one log line. Returns how many were
        left behind in the file (counted as dropped here)."""
        mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        tables(mem)
        self.db_bytes = min(self.db_bytes, MEMORY_BYTES)
        left = copy_newest(self.db, mem, self.db_bytes, keep, acked)
        with contextlib.suppress(sqlite3.Error):  # its log cannot be checkpointed now: it stays as it is
            self.db.close()
        self.db, self.in_memory, self.disk_short, self.log_short = mem, True, False, False
        said_read_only(self.path, self.db_bytes, left)
        return left

    def write(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, ``fn()``); when the disk will not take the write, the log truncated (its pages are the room to win
        back) and ``fn`` tried once more; (False, None) if it still cannot be written. ``fn`` is one transaction,
        rolled back when it fails."""
        for attempt in range(2):
            try:
                return True, fn()
            except sqlite3.OperationalError as e:
                if not cannot_write(e):
                    raise
            if attempt == 0:
                self.truncate_log()
        return False, None

    def pages(self) -> int:
        return int(self.db.execute("PRAGMA page_count").fetchone()[0])

    def room(self) -> tuple[int, int]:
        """(bytes the database may use now, its pages): its bound, or what its file holds plus the disk's free
        space beyond the log's reserve when that is less (``disk_short``; ``log_short``: the reserve itself is
        not free, so the next put truncates the log first: SQLite would let it grow to its checkpoint size)."""
        pages, free = self.pages(), None if self.in_memory else free_bytes(self.path.parent)
        if free is None:
            return self.db_bytes, pages
        room = (pages - RESERVE_PAGES) * self.page + free
        self.disk_short, self.log_short = room < self.db_bytes, free < RESERVE_PAGES * self.page
        return min(room, self.db_bytes), pages

    def drop_oldest(self) -> list[int]:
        """Inside a put's transaction: delete the oldest messages, never the newest, until the database is within
        its room; the ids deleted. A page is freed only when all its rows are gone: a few at a time."""
        gone: list[int] = []
        room, pages = self.room()
        used = self.used_bytes(pages)
        while used > room:
            ids = [int(r[0]) for r in self.db.execute("SELECT id FROM messages WHERE id > ? ORDER BY id LIMIT 8",
                                                      (gone[-1] if gone else 0,)).fetchall()][:-1]
            if not ids:
                break
            self.db.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(ids))})", ids)
            gone += ids
            used = self.used_bytes()
        return gone

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            os.close(self.lock_fd)

    def used_bytes(self, pages: int | None = None) -> int:
        """Bytes of the database file in use (free pages are reused before the file grows)."""
        pages = self.pages() if pages is None else pages
        free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self.page


def tables(db: sqlite3.Connection) -> None:
    """The spool's tables, on disk or (its filesystem read-only) in memory."""
    db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
               "topic TEXT NOT NULL, payload BLOB NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT OR IGNORE INTO meta VALUES ('seq', 0), ('dropped', 0)")
