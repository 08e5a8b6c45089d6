"""Connections and dialects: SQLite (``sqlite:///PATH``, the default) and PostgreSQL (``postgresql://...``,
psycopg 3).

A backend only says how to connect, how to open a write transaction, and the few words their dialects spell
differently; every statement is written once with ``?`` placeholders (``Cursor`` turns them into the
driver's). One connection per thread, so the writer, the sweep, the alert sender and the page's requests
never share one. What goes through the connections (the schema, a batch's rows, the reads) lives elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from vibrawatch.agent.errors import VibrawatchError

log = logging.getLogger("vibrawatch.monitor.db")
RETRY_S, RETRY_MAX_S = 0.5, 30.0  # reconnecting after a lost database: doubling from RETRY_S, capped


class StoreError(VibrawatchError):
    """A database URL that cannot be used, or a database this version cannot read."""


class Unavailable(StoreError):
    """The database cannot be reached or written now (connection lost, server down, file read-only or disk
    full): the database's fault, not the data's, so the same batch is retried later, never split or dead-lettered."""


class Cursor:
    """A DB-API cursor that takes '?' placeholders on every backend."""

    def __init__(self, cur: Any, param: str) -> None:
        self._cur, self._param = cur, param

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._cur.execute(sql if self._param == "?" else sql.replace("?", self._param), tuple(args))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(sql if self._param == "?" else sql.replace("?", self._param), rows)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    @property
    def raw(self) -> Any:
        """The driver's own cursor (PostgreSQL's COPY)."""
        return self._cur

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)


class Outage:
    """A database that cannot store, from the first failed write to the next that commits: logged once when it
    begins and once when it ends, reconnects paced by a doubling, capped backoff."""

    def __init__(self, name: str) -> None:
        self.name = name  # the URL without its password
        self.since: float | None = None  # wall clock of the start; None while writes go through
        self.reason = ""
        self.failures = 0
        self.next_try = 0.0  # monotonic: no reconnect for writing before this
        # Goes up at every fault: a connection made before it (another thread's, idle through a server restart) is
        # replaced before its next use instead of failing once more and starting an outage of its own.
        self.epoch = 0
        # While the store opens (its schema made sure of), a failure is no outage to ride out: the caller stops
        # with that one error, so nothing says "reconnecting" (a thread's: web requests go on meanwhile).
        self.opening = threading.local()
        self._lock = threading.Lock()

    def wait_left(self) -> float:
        """Seconds until the backoff allows the next try (0: now)."""
        return max(self.next_try - time.monotonic(), 0.0) if self.since is not None else 0.0

    @contextmanager
    def opening_scope(self) -> Iterator[None]:
        """While the store opens (this thread): a failure is the caller's one error, not an outage ridden out."""
        self.opening.on = True
        try:
            yield
        finally:
            self.opening.on = False

    def fault(self, reason: str) -> None:
        if getattr(self.opening, "on", False):
            return
        with self._lock:
            self.failures += 1
            self.next_try = time.monotonic() + min(RETRY_S * 2 ** (self.failures - 1), RETRY_MAX_S)
            self.epoch += 1
            first = self.since is None
            if first:
                self.since = time.time()
            self.reason = reason
        if first:
            log.error("database %s cannot store (%s); reconnecting with backoff (at most every %g s), nothing "
                      "is acknowledged until it is back", self.name, reason, RETRY_MAX_S)

    def over(self) -> None:
        if self.since is None:
            return
        with self._lock:
            since, self.since, self.failures, self.next_try = self.since, None, 0, 0.0
        log.warning("database %s is back after %.1f s of outage; writing again", self.name, time.time() - since)


class Reads:
    """The read side of a ``Database``: read-only statements as dicts, the columns a table has, the health probe."""

    param: ClassVar[str]
    columns_sql: ClassVar[str]  # the dialect's catalog: one row (name) per column of the table given
    url: str
    _conn: Callable[[], Any]
    release: Callable[[], None]
    lost: Callable[[BaseException], bool]
    why: Callable[[BaseException], str]
    outage: str | None

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        u = urlparse(self.url)
        if u.password:
            return self.url.replace(f":{u.password}@", ":***@")
        return self.url

    def columns(self, table: str) -> set[str]:
        """The columns ``table`` has (none: no such table), read from the catalog: what a command that only
        reads checks before it reads, as it may not migrate."""
        return {str(r["name"]) for r in self.query(self.columns_sql, (table,))}

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only statement as dicts (for the web API and the CLI); a connection lost since the
        last read (the server restarted) is replaced once before giving up."""
        for attempt in (1, 2):
            try:
                return self._read(self._conn(), sql, args)
            except Exception as e:
                if not self.lost(e):
                    raise
                self.release()
                if attempt == 2:
                    raise Unavailable(f"{self.safe_url}: {self.why(e)}") from e
        raise AssertionError("unreachable")

    def _read(self, conn: Any, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        cur = conn.cursor()
        try:
            cur.execute(sql.replace("?", self.param), tuple(args))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        finally:
            with contextlib.suppress(Exception):  # a lost connection has no transaction left to end
                conn.rollback()  # end the read transaction: a long one would pin old rows (WAL, MVCC)
        return rows

    def probe(self) -> str | None:
        """Ask the database itself (a round trip, not a remembered flag): None when it answers and writes have
        not been failing, else why it cannot store."""
        try:
            self.query("SELECT 1 AS one")
        except Exception as e:  # noqa: BLE001 - whatever it is, the answer is "cannot store, because ..."
            return f"unreachable: {self.why(e)}"
        return self.outage


class Database(Reads):
    """Per-thread connections, write transactions and reads; subclasses connect and name their dialect's words."""

    scheme: ClassVar[str] = ""
    param: ClassVar[str] = "?"
    least: ClassVar[str] = "MIN"
    greatest: ClassVar[str] = "MAX"
    hour_of_t: ClassVar[str] = "CAST(t / 3600 AS INTEGER) * 3600"
    lock_rows: ClassVar[str] = ""

    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url, self.read_only = url, read_only  # read_only: connections that cannot write (the reports)
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._outage = Outage(self.safe_url)
        self.opening = self._outage.opening_scope  # while the store opens: a failure is its one error, no outage

    # -- what a backend provides -------------------------------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin(self, conn: Any) -> None:
        raise NotImplementedError

    def _lost(self, exc: BaseException) -> bool:
        """Whether the driver's ``exc`` is the database's fault rather than the values'."""
        return False

    def _broken(self, conn: Any) -> bool:
        """Whether ``conn`` can no longer be used (closed by the server, the network gone)."""
        return False

    def _changes(self, conn: Any) -> int | None:
        """Rows ``conn`` has changed so far, where the driver knows (a commit that changed none proves no disk)."""
        return None

    # -- faults: tell the database's from the values', ride out the former ---------------------------------
    def lost(self, exc: BaseException) -> bool:
        """True when ``exc`` says the database cannot store now (connection lost or refused, server restarting,
        read-only, disk full), so the batch is kept and retried whole; False when it refused the values
        themselves (a NUL, an integer out of range), which splitting the batch can find."""
        if isinstance(exc, (Unavailable, OSError)):
            return True
        conn = getattr(self._local, "conn", None)
        return self._lost(exc) or (conn is not None and self._broken(conn))

    @property
    def outage(self) -> str | None:
        """Why the database cannot store, while a write has failed for the database's fault and none has
        succeeded since; None otherwise."""
        return self._outage.reason if self._outage.since is not None else None

    @property
    def down_since(self) -> float | None:
        """When the outage began (wall clock), or None."""
        return self._outage.since

    def why(self, exc: BaseException) -> str:
        """One line on ``exc``: its first line, the driver's class name before it (ours says enough itself)."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        for prefix in (f"--db {self.url}: ", f"--db {self.safe_url}: ", f"{self.safe_url}: "):
            text = text.removeprefix(prefix)
        return text if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {text}".rstrip(": ")

    def _fault(self, exc: BaseException) -> str:
        """Note a lost database (the outage logs its start once and backs off reconnecting)."""
        reason = self.why(exc)
        self._outage.fault(reason)
        return reason

    # -- connections: one per thread ------------------------------------------------------------------------
    def _conn(self) -> Any:
        """This thread's connection, made anew when it was lost."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and (self._broken(conn) or self._local.epoch != self._outage.epoch):
            self.release()
            conn = None
        if conn is None:
            epoch = self._outage.epoch
            conn = self._connect()
            self._local.conn, self._local.epoch = conn, epoch
            with self._lock:
                self._all.append(conn)
        return conn

    def release(self) -> None:
        """Close this thread's connection (a lost one, or a web request's thread that is about to end)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        with contextlib.suppress(Exception):  # it may be broken already: nothing to tell anyone
            conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(Exception):  # closing at exit: nothing left to tell anyone
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    def exists(self) -> bool:
        """Whether the database is there already (SQLite: its file; a server's database: by connecting)."""
        return True

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so two monitors take turns instead of failing).

        A failure that is the database's (``lost``) drops the connection, starts or continues the outage and is
        raised as ``Unavailable``; the next transaction reconnects once the backoff allows."""
        if left := self._outage.wait_left():
            raise Unavailable(f"{self.safe_url}: {self._outage.reason} (next try in {left:.1f} s)")
        try:
            conn = self._conn()
            self._begin(conn)
            cur = Cursor(conn.cursor(), self.param)
            before = self._changes(conn)
        except Exception as e:
            if not self.lost(e):
                raise
            self.release()
            raise Unavailable(f"{self.safe_url}: {self._fault(e)}") from e
        try:
            yield cur
            conn.commit()
        except BaseException as e:
            lost = isinstance(e, Exception) and self.lost(e)
            with contextlib.suppress(Exception):  # a lost connection cannot roll back: the server did
                conn.rollback()
            if not lost:
                raise
            self.release()
            raise Unavailable(f"{self.safe_url}: {self._fault(e)}") from e
        if before is None or (self._changes(conn) or 0) > before:
            self._outage.over()


class SQLiteDatabase(Database):
    """One file, WAL: readers (the page, `vibrawatch fleet`) never block the writer."""

    scheme = "sqlite"
    columns_sql = "SELECT name FROM pragma_table_info(?)"

    def __init__(self, url: str, read_only: bool = False) -> None:
        u = urlparse(url)
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if u.scheme != "sqlite" or not path:
            raise StoreError(f"--db {url}: expected sqlite:///PATH (sqlite:///fleet.db, sqlite:////var/lib/fleet.db)")
        self.path = Path(path)  # as SQLAlchemy reads it: sqlite:///rel.db is relative, sqlite:////abs.db absolute
        if not self.path.parent.exists():
            raise StoreError(f"--db {url}: folder {self.path.parent} does not exist")
        super().__init__(url, read_only)

    def exists(self) -> bool:
        return self.path.is_file()

    def _connect(self) -> sqlite3.Connection:
        # The fleet's data is nobody else's business: a new database file is the owner's alone (0600), and SQLite
        # gives its -wal and -shm files the database file's mode.
        if not self.read_only:
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        try:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            if self.read_only:  # writes nothing, not even the journal mode; closing removes the -wal it used
                conn.execute("PRAGMA query_only=ON")  # (mode=ro would leave -wal and -shm behind)
            else:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a crash of the process
            conn.execute("PRAGMA busy_timeout=60000")
        except sqlite3.OperationalError as e:
            raise Unavailable(f"--db {self.url}: cannot open: {e}") from None
        return conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _lost(self, exc: BaseException) -> bool:
        # OperationalError: locked past the busy timeout, read-only, disk full, I/O error, cannot open; a bare
        # DatabaseError: the file is not (or no longer) a database. Integrity, interface (a value it cannot bind)
        # and OverflowError (an integer past 64 bits) are the values'.
        return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError

    def _changes(self, conn: sqlite3.Connection) -> int:
        return conn.total_changes

    def _read(self, conn: Any, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        cur = conn.execute(sql, tuple(args))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3: several monitors (and Grafana) on one database."""

    scheme = "postgresql"
    param = "%s"
    least, greatest = "LEAST", "GREATEST"
    hour_of_t = "floor(t / 3600) * 3600"
    lock_rows = "FOR UPDATE"
    columns_sql = ("SELECT column_name AS name FROM information_schema.columns WHERE table_name = ? "
                   "AND table_schema = current_schema()")

    def __init__(self, url: str, read_only: bool = False) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError(f"--db {url}: PostgreSQL needs psycopg 3: pip install 'vibrawatch[monitor]'") from None
        super().__init__(url, read_only)

    def _connect(self) -> Any:
        import psycopg

        extra = {} if "connect_timeout" in self.url else {"connect_timeout": 10}  # a silent network: not forever
        try:
            conn = psycopg.connect(self.url, autocommit=False, **extra)
            conn.read_only = self.read_only  # the server refuses any write in its transactions
            return conn
        except psycopg.OperationalError as e:
            raise Unavailable(f"--db {self.safe_url}: cannot connect: {str(e).strip().splitlines()[0]}") from None

    def _begin(self, conn: Any) -> None:
        conn.rollback()  # leave any read transaction; psycopg opens the next one on the first statement

    def _lost(self, exc: BaseException) -> bool:
        # OperationalError: the connection lost or refused, the server shutting down, its disk full, a deadlock;
        # InterfaceError: the connection closed. DataError, IntegrityError and the rest are the values'.
        import psycopg

        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))

    def _broken(self, conn: Any) -> bool:
        return bool(conn.closed or getattr(conn, "broken", False))
