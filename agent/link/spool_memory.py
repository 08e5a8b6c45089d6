"""The spool when the filesystem under its file goes read-only mid-run (agent.link.spool_file): what an SD card's
ext4 does after an error with ``errors=remount-ro``.

Stopping would end the scoring, and restarting would not make the card writable again: the spool goes on in a
database in memory instead, so the broker still gets every score and alarm while it is reachable, and an outage is
bridged as far as MEMORY_BYTES goes (past it the oldest are dropped and counted, as on disk). What the file held is
carried over, newest first, as far as that bound allows; the messages in flight too, so their PUBACKs still count.
What is in memory is lost at a stop: the log line says so, once, and the status carries ``spool_read_only``.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger("vibrawatch.publish")

MEMORY_BYTES = 4 * 1024 * 1024  # a spool in memory: at most this (about 10,000 score messages), less if its bound is


def read_only(directory: Path, fd: int) -> bool:
    """Whether the filesystem under ``directory`` refuses writes as read-only: flagged so (a remount), or a write to
    ``fd`` (the spool's lock, holding the pid) refused with EROFS (ext4 after an error, which some kernels do not
    flag). A full disk takes that write: the lock's bytes are written again in place."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return True
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except OSError as e:
        return e.errno == errno.EROFS
    return False


def copy_newest(disk: sqlite3.Connection, mem: sqlite3.Connection, budget: int, keep: Collection[int],
                acked: Collection[int]) -> int:
    """Into ``mem`` (the spool's tables, empty): ``disk``'s counters, its newest messages while their bytes stay
    well within ``budget``, and the older ones in ``keep`` (in flight: their PUBACK may still come); never ``acked``
    (delivered, their delete refused by the disk). Ids are kept, and the next one stays past every id the file gave.
    Returns how many messages were left behind (never to be sent now: the counter ``dropped`` has them)."""
    mem.executemany("UPDATE meta SET value = ? WHERE key = ?",
                    [(v, k) for k, v in disk.execute("SELECT key, value FROM meta")])
    last = disk.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
    mem.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', ?)", (last[0] if last else 0,))
    rows, size = [], 0
    for row in disk.execute("SELECT id, topic, payload FROM messages ORDER BY id DESC"):
        size += len(row[1]) + len(row[2])
        if size > budget * 4 // 5:  # rows and pages take more than their bytes: fill four fifths, drop none at once
            break
        rows.append(row)
    cut = rows[-1][0] if rows else (last[0] + 1 if last else 1)
    older = [i for i in {*keep, *acked} if i < cut]
    found = disk.execute(f"SELECT id, topic, payload FROM messages WHERE id IN ({','.join('?' * len(older))})",
                         older).fetchall() if older else []
    left = int(disk.execute("SELECT COUNT(*) FROM messages WHERE id < ?", (cut,)).fetchone()[0]) - len(found)
    done = set(acked)
    mem.executemany("INSERT INTO messages (id, topic, payload) VALUES (?, ?, ?)",
                    sorted(r for r in [*found, *rows] if r[0] not in done))
    if left:
        mem.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (left,))
    return left


def said_read_only(path: Path, budget: int, left: int) -> None:
    """The one line an operator needs: which file, what it means for the messages, and what was lost now."""
    behind = f"; {left} older message(s) left in the file, counted as dropped" if left else ""
    log.error("%s: the spool's file became read-only (its filesystem refuses writes: an SD card remounted read-only "
              "after errors?): messages are no longer kept on disk while the broker is away, only in memory (%g MB "
              "at most, lost at a stop); scoring and publishing go on%s", path, budget / 2**20, behind)
