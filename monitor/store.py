"""The monitor's database as the rest of the monitor holds it: SQLite (``sqlite:///PATH``, the default) or
PostgreSQL (``postgresql://...``, psycopg 3), opened by ``open_store``.

A ``Store`` is its parts put together, one job each: the connections and the dialect (db.py), the schema,
made sure of on open, or only checked for a command that only reads (schema.py), the batch writer (writer.py,
with bulk.py's multi-row statements), and here the few reads the page and the CLI share. Backends register by
URL scheme (``BACKENDS``), so a third (TimescaleDB is PostgreSQL already) is one new entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple
from urllib.parse import urlparse

from . import schema
from .bulk import Bulk, PostgresBulk
from .db import Cursor, Database, PostgresDatabase, SQLiteDatabase, StoreError
from .rows import Batch, Written
from .state import AlertEvent
from .writer import BatchWriter

COUNTED = ("scores", "alarms", "statuses", "events", "gaps", "dead_letters", "devices", "alerts", "score_hourly")


class Store:
    """One database: its transactions and reads (``db``), batch writes (``writer``), the fleet's rows and counts."""

    def __init__(self, db: Database, bulk: Bulk, reads: Mapping[str, Iterable[str]] | None = None) -> None:
        self.db = db
        with db.opening():  # a failure here is the caller's one error, not an outage ridden out
            if reads is None:
                schema.ensure(db)
            else:  # a report: the database as it is, or one line on why it cannot be read
                schema.readable(db, reads)
        self.writer = BatchWriter(db, bulk)

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        return self.db.safe_url

    def transaction(self) -> AbstractContextManager[Cursor]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so two monitors take turns instead of failing)."""
        return self.db.transaction()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only statement as dicts (for the web API and the CLI)."""
        return self.db.query(sql, args)

    def close(self) -> None:
        self.db.close()

    def write(self, batch: Batch, now: float | None = None) -> Written:
        """Store one batch in one transaction; rows already present (redeliveries) are skipped and counted."""
        return self.writer.write(batch, now)

    def add_alerts(self, cur: Cursor, alerts: Iterable[AlertEvent], now: float) -> int:
        """Queue alerts for the sinks (in the caller's transaction); an alert already queued is not repeated."""
        return self.writer.add_alerts(cur, alerts, now)

    # -- reads ----------------------------------------------------------------------------------------------
    def devices(self) -> list[dict[str, Any]]:
        return self.query(f"SELECT {', '.join(schema.DEVICE_COLUMNS)} FROM devices ORDER BY site, device")

    def try_write(self) -> None:
        """Write one row that changes nothing it means (the schema version over itself): after an outage, an idle
        monitor finds out that the database stores again without waiting for a message."""
        with self.transaction() as cur:
            cur.execute("UPDATE meta SET value = value WHERE key = 'schema'")

    def dead_since(self, since: float) -> int:
        """Dead letters received since ``since`` (/api/health: what the fleet sent lately that could not be stored)."""
        return int(self.query("SELECT COUNT(*) AS n FROM dead_letters WHERE received >= ?", (since,))[0]["n"])

    def counts(self) -> dict[str, int]:
        """Rows per table (the tests and the bench compare these across backends)."""
        out = {}
        for table in COUNTED:
            out[table] = int(self.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])
        return out


class Backend(NamedTuple):
    """How to reach a kind of database and how to write many rows to it."""

    database: type[Database]
    bulk: type[Bulk]


BACKENDS: dict[str, Backend] = {"sqlite": Backend(SQLiteDatabase, Bulk),
                                "postgresql": Backend(PostgresDatabase, PostgresBulk),
                                "postgres": Backend(PostgresDatabase, PostgresBulk)}


def open_store(url: str, reads: Mapping[str, Iterable[str]] | None = None) -> Store:
    """The backend for a ``--db`` URL, by its scheme, its schema created or migrated (the monitor).

    With ``reads`` (the tables and columns a report reads: `vibrawatch fleet`) it changes nothing: connections
    that cannot write, no schema made or migrated; a database that is not there, is not a monitor's, or lacks one
    of those columns is refused in one line (an empty one would report an empty fleet)."""
    scheme = urlparse(url).scheme
    if scheme not in BACKENDS:
        raise StoreError(f"--db {url}: unknown database; use sqlite:///PATH or postgresql://USER@HOST/DB")
    backend = BACKENDS[scheme]
    return Store(backend.database(url, read_only=reads is not None), backend.bulk(), reads)
