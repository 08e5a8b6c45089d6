"""Connections and dialects: SQLite (``sqlite:///PATH``, the default) and PostgreSQL (``postgresql://...``,
psycopg 3).

A backend only says how to connect, how to open a write transaction, and the few words their dialects spell
differently; every statement is written once with ``?`` placeholders (``Cursor`` turns them into the
driver's). One connection per thread, so the writer, the sweep, the alert sender and the page's requests
never share one. What goes through the connections (the schema, a batch's rows, the reads) lives elsewhere.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from vibrawatch.agent.errors import VibrawatchError


class StoreError(VibrawatchError):
    """A database URL that cannot be used, or a database this version cannot read."""


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


class Database:
    """Per-thread connections, write transactions and reads; subclasses connect and name their dialect's words."""

    scheme: ClassVar[str] = ""
    param: ClassVar[str] = "?"
    least: ClassVar[str] = "MIN"
    greatest: ClassVar[str] = "MAX"
    hour_of_t: ClassVar[str] = "CAST(t / 3600 AS INTEGER) * 3600"
    lock_rows: ClassVar[str] = ""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    # -- what a backend provides -------------------------------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin(self, conn: Any) -> None:
        raise NotImplementedError

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        u = urlparse(self.url)
        if u.password:
            return self.url.replace(f":{u.password}@", ":***@")
        return self.url

    # -- connections: one per thread ------------------------------------------------------------------------
    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(Exception):  # closing at exit: nothing left to tell anyone
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so two monitors take turns instead of failing)."""
        conn = self._conn()
        self._begin(conn)
        cur = Cursor(conn.cursor(), self.param)
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only statement as dicts (for the web API and the CLI)."""
        conn = self._conn()
        cur = conn.cursor()
        try:
            cur.execute(sql.replace("?", self.param), tuple(args))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        finally:
            conn.rollback()  # end the read transaction: a long one would pin old rows (WAL, MVCC)
        return rows


class SQLiteDatabase(Database):
    """One file, WAL: readers (the page, `vibrawatch fleet`) never block the writer."""

    scheme = "sqlite"

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if u.scheme != "sqlite" or not path:
            raise StoreError(f"--db {url}: expected sqlite:///PATH (sqlite:///fleet.db, sqlite:////var/lib/fleet.db)")
        self.path = Path(path)  # as SQLAlchemy reads it: sqlite:///rel.db is relative, sqlite:////abs.db absolute
        if not self.path.parent.exists():
            raise StoreError(f"--db {url}: folder {self.path.parent} does not exist")
        super().__init__(url)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a crash of the process
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        conn = self._conn()
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

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError(f"--db {url}: PostgreSQL needs psycopg 3: pip install 'vibrawatch[monitor]'") from None
        super().__init__(url)

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=False)
        except psycopg.OperationalError as e:
            raise StoreError(f"--db {self.safe_url}: cannot connect: {str(e).strip().splitlines()[0]}") from None

    def _begin(self, conn: Any) -> None:
        conn.rollback()  # leave any read transaction; psycopg opens the next one on the first statement
