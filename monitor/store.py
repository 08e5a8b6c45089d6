"""Storage backends: SQLite (``sqlite:///PATH``, the default) and PostgreSQL (``postgresql://...``, psycopg 3).

One schema and one set of SQL statements for both; a backend only says how to connect, how to open a write
transaction, and the few words their dialects spell differently. Backends register by URL scheme
(``BACKENDS``), so a third (TimescaleDB is PostgreSQL already) is one new class.

Every write is idempotent: scores and alarms are keyed by (site, device, seq), statuses by (site, device,
timestamp, state), dead letters by a digest of topic and payload, alerts by a key naming their cause. A
batch is one transaction: the rows, the devices' state (``fleet.apply``), the seq gaps and the alerts it
raises commit together or not at all, and ingest acknowledges the MQTT messages only after the commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from vibrawatch.agent.errors import VibrawatchError

from . import fleet
from .fastjson import dumps

SCHEMA_VERSION = 3  # 2: where thresholds come from (scores, devices) and the last commissioning (devices);
# 3: the model file's sha256, the last deploy outcome and the connection (link) of the last status (devices)


class StoreError(VibrawatchError):
    """A database URL that cannot be used, or a database this version cannot read."""


# -- what ingest hands the store -------------------------------------------------------------------------
@dataclass(slots=True)
class Score:
    site: str
    device: str
    seq: int
    t: float
    ts: str
    score: float
    threshold: float
    level: float
    contributions: dict[str, float]
    model: str
    received: float
    threshold_source: str | None = None  # bundle | commissioning | commissioned; None from older agents (bundle)
    model_sha256: str | None = None  # the model file that scored it; None from agents older than deploys


@dataclass(slots=True)
class Alarm:
    site: str
    device: str
    seq: int
    t: float
    ts: str
    event: str
    channel: str | None
    score: float
    level: float
    since: str | None
    model: str
    received: float


@dataclass(slots=True)
class Status:
    site: str
    device: str
    ts: str
    state: str
    payload: dict[str, Any]
    received: float


@dataclass(slots=True)
class Event:
    """A combined detector's ``transient``, ``condition_change`` or ``diagnosis``: numbered by the agent's spool
    like scores and alarms, so it is keyed by (site, device, seq) and counts in the device's seq (no false gap)."""

    site: str
    device: str
    seq: int
    t: float
    ts: str
    kind: str
    payload: dict[str, Any]
    received: float


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    payload: bytes
    reason: str
    received: float

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.topic.encode() + b"\0" + self.payload).hexdigest()


@dataclass
class Batch:
    scores: list[Score] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores) + len(self.alarms) + len(self.statuses) + len(self.events) + len(self.dead)


@dataclass
class Written:
    """What a batch changed: new rows per kind (repeats are not counted), alerts raised, seqs found missing."""

    scores: int = 0
    alarms: int = 0
    statuses: int = 0
    events: int = 0
    dead: int = 0
    duplicates: int = 0
    alerts: int = 0
    lost: int = 0


# -- the schema -------------------------------------------------------------------------------------------
DDL = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS scores (
        site TEXT NOT NULL, device TEXT NOT NULL, seq BIGINT NOT NULL,
        t DOUBLE PRECISION NOT NULL, ts TEXT NOT NULL, score DOUBLE PRECISION NOT NULL,
        threshold DOUBLE PRECISION NOT NULL, level DOUBLE PRECISION NOT NULL, contributions TEXT NOT NULL,
        model TEXT NOT NULL, received DOUBLE PRECISION NOT NULL, threshold_source TEXT,
        PRIMARY KEY (site, device, seq))""",
    """CREATE INDEX IF NOT EXISTS scores_received ON scores (received)""",
    """CREATE TABLE IF NOT EXISTS alarms (
        site TEXT NOT NULL, device TEXT NOT NULL, seq BIGINT NOT NULL,
        t DOUBLE PRECISION NOT NULL, ts TEXT NOT NULL, event TEXT NOT NULL, channel TEXT,
        score DOUBLE PRECISION NOT NULL, level DOUBLE PRECISION NOT NULL, since TEXT, model TEXT NOT NULL,
        received DOUBLE PRECISION NOT NULL, PRIMARY KEY (site, device, seq))""",
    """CREATE TABLE IF NOT EXISTS statuses (
        site TEXT NOT NULL, device TEXT NOT NULL, ts TEXT NOT NULL, state TEXT NOT NULL, payload TEXT NOT NULL,
        received DOUBLE PRECISION NOT NULL, PRIMARY KEY (site, device, ts, state))""",
    """CREATE TABLE IF NOT EXISTS events (
        site TEXT NOT NULL, device TEXT NOT NULL, seq BIGINT NOT NULL, t DOUBLE PRECISION NOT NULL, ts TEXT NOT NULL,
        kind TEXT NOT NULL, payload TEXT NOT NULL, received DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (site, device, seq))""",
    """CREATE TABLE IF NOT EXISTS gaps (
        site TEXT NOT NULL, device TEXT NOT NULL, first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL,
        filled BIGINT NOT NULL DEFAULT 0, detected DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (site, device, first_seq))""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        digest TEXT PRIMARY KEY, received DOUBLE PRECISION NOT NULL, topic TEXT NOT NULL, payload TEXT NOT NULL,
        reason TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS devices (
        site TEXT NOT NULL, device TEXT NOT NULL,
        first_seq BIGINT, last_seq BIGINT, received BIGINT NOT NULL DEFAULT 0, lost BIGINT NOT NULL DEFAULT 0,
        score_seq BIGINT, last_t DOUBLE PRECISION, last_ts TEXT, last_score DOUBLE PRECISION,
        threshold DOUBLE PRECISION, level DOUBLE PRECISION, contributions TEXT, model TEXT,
        state TEXT, state_ts TEXT, fault TEXT, reason TEXT, agent TEXT, runtime TEXT, channels TEXT,
        spool_dropped BIGINT, event TEXT,
        alarm_seq BIGINT, alarm INTEGER NOT NULL DEFAULT 0, alarm_since TEXT, alarm_channel TEXT,
        last_seen DOUBLE PRECISION, interval_s DOUBLE PRECISION, silent_since DOUBLE PRECISION,
        threshold_source TEXT, commissioning TEXT, commissioning_info TEXT, model_sha256 TEXT, deploy TEXT,
        link TEXT, PRIMARY KEY (site, device))""",
    """CREATE TABLE IF NOT EXISTS alerts (
        key TEXT PRIMARY KEY, kind TEXT NOT NULL, site TEXT NOT NULL, device TEXT NOT NULL, payload TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL, state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_try DOUBLE PRECISION NOT NULL, last_error TEXT, delivered DOUBLE PRECISION)""",
    """CREATE INDEX IF NOT EXISTS alerts_due ON alerts (state, next_try)""",
    """CREATE TABLE IF NOT EXISTS score_hourly (
        site TEXT NOT NULL, device TEXT NOT NULL, hour DOUBLE PRECISION NOT NULL, n BIGINT NOT NULL,
        min DOUBLE PRECISION NOT NULL, mean DOUBLE PRECISION NOT NULL, max DOUBLE PRECISION NOT NULL,
        above BIGINT NOT NULL, threshold DOUBLE PRECISION NOT NULL, PRIMARY KEY (site, device, hour))""",
]

DEVICE_COLUMNS = (
    "site", "device", "first_seq", "last_seq", "received", "lost", "score_seq", "last_t", "last_ts", "last_score",
    "threshold", "level", "contributions", "model", "state", "state_ts", "fault", "reason", "agent", "runtime",
    "channels", "spool_dropped", "event", "alarm_seq", "alarm", "alarm_since", "alarm_channel", "last_seen",
    "interval_s", "silent_since", "threshold_source", "commissioning", "commissioning_info", "model_sha256", "deploy",
    "link",
)
# Columns later schema versions added, as (version, table, column, type): a database of an older version gets
# them on open (ALTER TABLE ... ADD COLUMN), in the transaction that creates the tables.
MIGRATIONS = [
    (2, "scores", "threshold_source", "TEXT"),
    (2, "devices", "threshold_source", "TEXT"),
    (2, "devices", "commissioning", "TEXT"),
    (2, "devices", "commissioning_info", "TEXT"),
    (3, "devices", "model_sha256", "TEXT"),
    (3, "devices", "deploy", "TEXT"),
    (3, "devices", "link", "TEXT"),
]
_ROWS_PER_INSERT = 400  # rows per multi-row INSERT: 400 x 12 parameters stays under every driver's limit


def _chunks(rows: Sequence[Any], n: int = _ROWS_PER_INSERT) -> Iterator[Sequence[Any]]:
    for i in range(0, len(rows), n):
        yield rows[i:i + n]


class Store:
    """The SQL both backends share; subclasses connect and name their dialect's differences."""

    scheme: ClassVar[str] = ""
    least: ClassVar[str] = "MIN"
    greatest: ClassVar[str] = "MAX"
    hour_of_t: ClassVar[str] = "CAST(t / 3600 AS INTEGER) * 3600"
    lock_rows: ClassVar[str] = ""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        with self.transaction() as cur:
            for stmt in DDL:
                cur.execute(stmt)
            cur.execute("SELECT value FROM meta WHERE key = 'schema'")
            row = cur.fetchone()
            if row is None:
                cur.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("schema", str(SCHEMA_VERSION)))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"{self.safe_url}: database schema {row[0]} is newer than this vibrawatch "
                                 f"(it reads {SCHEMA_VERSION} and older): upgrade vibrawatch")
            elif int(row[0]) < SCHEMA_VERSION:
                for version, table, column, kind in MIGRATIONS:
                    if version > int(row[0]) and column not in self._columns(cur, table):
                        cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                cur.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))

    # -- what a backend provides -------------------------------------------------------------------------
    param: ClassVar[str] = "?"

    def _columns(self, cur: _Cursor, table: str) -> set[str]:
        cur.execute(f"SELECT * FROM {table} LIMIT 0")
        return {d[0] for d in cur.raw.description}

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
    def transaction(self) -> Iterator[_Cursor]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so two monitors take turns instead of failing)."""
        conn = self._conn()
        self._begin(conn)
        cur = _Cursor(conn.cursor(), self.param)
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

    # -- the write path ---------------------------------------------------------------------------------------
    def write(self, batch: Batch, now: float | None = None) -> Written:
        """Store one batch in one transaction; rows already present (redeliveries) are skipped and counted."""
        now = time.time() if now is None else now
        w = Written()
        with self.transaction() as cur:
            new_scores = self._insert_new(
                cur, "scores", ("site", "device", "seq", "t", "ts", "score", "threshold", "level", "contributions",
                                "model", "received", "threshold_source"),
                [(s.site, s.device, s.seq, s.t, s.ts, s.score, s.threshold, s.level, dumps(s.contributions), s.model,
                  s.received, s.threshold_source) for s in batch.scores],
                ("site", "device", "seq"))
            new_alarms = self._insert_new(
                cur, "alarms", ("site", "device", "seq", "t", "ts", "event", "channel", "score", "level", "since",
                                "model", "received"),
                [(a.site, a.device, a.seq, a.t, a.ts, a.event, a.channel, a.score, a.level, a.since, a.model,
                  a.received) for a in batch.alarms],
                ("site", "device", "seq"))
            new_statuses = self._insert_new(
                cur, "statuses", ("site", "device", "ts", "state", "payload", "received"),
                [(s.site, s.device, s.ts, s.state, dumps(s.payload), s.received) for s in batch.statuses],
                ("site", "device", "ts", "state"))
            new_events = self._insert_new(
                cur, "events", ("site", "device", "seq", "t", "ts", "kind", "payload", "received"),
                [(e.site, e.device, e.seq, e.t, e.ts, e.kind, dumps(e.payload), e.received) for e in batch.events],
                ("site", "device", "seq"))
            if batch.dead:
                dead = self._insert_returning(
                    cur, "dead_letters", ("digest", "received", "topic", "payload", "reason"),
                    [(d.digest, d.received, d.topic, d.payload.decode("utf-8", "replace"), d.reason)
                     for d in batch.dead], ("digest",), ("digest",))
                w.dead = len(dead)
            w.scores, w.alarms, w.statuses = len(new_scores), len(new_alarms), len(new_statuses)
            w.events = len(new_events)
            w.duplicates = len(batch) - w.scores - w.alarms - w.statuses - w.events - w.dead
            # The rows that were new (a batch may hold a message and its redelivery: only one of them counts).
            scores = list({(s.site, s.device, s.seq): s for s in batch.scores
                           if (s.site, s.device, s.seq) in new_scores}.values())
            alarms = list({(a.site, a.device, a.seq): a for a in batch.alarms
                           if (a.site, a.device, a.seq) in new_alarms}.values())
            statuses = list({(s.site, s.device, s.ts, s.state): s for s in batch.statuses
                             if (s.site, s.device, s.ts, s.state) in new_statuses}.values())
            events = list({(e.site, e.device, e.seq): e for e in batch.events
                           if (e.site, e.device, e.seq) in new_events}.values())
            if scores or alarms or statuses or events:
                lost, alerts = self._apply_to_devices(cur, scores, alarms, statuses, now, events)
                w.lost, w.alerts = lost, alerts
        return w

    def _insert_new(self, cur: _Cursor, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]],
                    key: Sequence[str]) -> set[tuple[Any, ...]]:
        """INSERT ... ON CONFLICT DO NOTHING; the keys of the rows that were new (a key twice in ``rows``: the
        first one counts).

        The usual batch is all new (a redelivery follows a restart or a lost PUBACK), so it is tried first as
        one ``executemany`` (half the cost of multi-row VALUES with RETURNING on SQLite): when every row went in,
        every key is new. Otherwise that attempt is rolled back to its savepoint and the rows go in again with
        RETURNING, which names the new ones."""
        if not rows:
            return set()
        at = [columns.index(k) for k in key]
        keyf = itemgetter(*at) if len(at) > 1 else (lambda r: (r[at[0]],))
        unique: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for r in rows:
            unique.setdefault(keyf(r), r)
        return self._insert_unique(cur, table, columns, unique, key)

    def _insert_unique(self, cur: _Cursor, table: str, columns: Sequence[str],
                       unique: dict[tuple[Any, ...], tuple[Any, ...]], key: Sequence[str]) -> set[tuple[Any, ...]]:
        """Rows with distinct keys in; the keys that were new."""
        cur.execute("SAVEPOINT vw_insert")
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                        f"ON CONFLICT ({', '.join(key)}) DO NOTHING", list(unique.values()))
        if cur.rowcount == len(unique):
            cur.execute("RELEASE SAVEPOINT vw_insert")
            return set(unique)
        cur.execute("ROLLBACK TO SAVEPOINT vw_insert")
        cur.execute("RELEASE SAVEPOINT vw_insert")
        return self._insert_returning(cur, table, columns, list(unique.values()), key, key)

    def _insert_returning(self, cur: _Cursor, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]],
                          key: Sequence[str], returning: Sequence[str]) -> set[tuple[Any, ...]]:
        """Multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING: the keys of the rows that were new."""
        new: set[tuple[Any, ...]] = set()
        one = "(" + ", ".join("?" * len(columns)) + ")"
        for part in _chunks(rows):
            sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * len(part))} "
                   f"ON CONFLICT ({', '.join(key)}) DO NOTHING RETURNING {', '.join(returning)}")
            cur.execute(sql, [v for r in part for v in r])
            new.update(tuple(r) for r in cur.fetchall())
        return new

    def _apply_to_devices(self, cur: _Cursor, scores: list[Score], alarms: list[Alarm], statuses: list[Status],
                          now: float, events: Sequence[Event] = ()) -> tuple[int, int]:
        keys = sorted({(m.site, m.device) for m in (*scores, *alarms, *statuses, *events)})
        # Create missing device rows, then lock them in one order (PostgreSQL: two monitors never deadlock).
        for part in _chunks(keys):
            cur.execute("INSERT INTO devices (site, device) VALUES " + ", ".join(["(?, ?)"] * len(part))
                        + " ON CONFLICT (site, device) DO NOTHING", [v for k in part for v in k])
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for part in _chunks(keys):
            cur.execute(f"SELECT {', '.join(DEVICE_COLUMNS)} FROM devices WHERE (site, device) IN (VALUES "
                        + ", ".join(["(?, ?)"] * len(part)) + f") ORDER BY site, device {self.lock_rows}",
                        [v for k in part for v in k])
            for r in cur.fetchall():
                current[(r[0], r[1])] = dict(zip(DEVICE_COLUMNS, r, strict=True))
        by_device: dict[tuple[str, str], fleet.Messages] = {k: fleet.Messages() for k in keys}
        for s in scores:
            by_device[(s.site, s.device)].scores.append(s)
        for a in alarms:
            by_device[(a.site, a.device)].alarms.append(a)
        for st in statuses:
            by_device[(st.site, st.device)].statuses.append(st)
        for e in events:
            by_device[(e.site, e.device)].events.append(e)
        updates, gaps_new, gaps_filled, alerts = [], [], [], []
        lost = 0
        for k in keys:
            before = current[k]
            change = fleet.apply(before, by_device[k], now)
            updates.append(change.state)
            gaps_new += [(k[0], k[1], a, b, now) for a, b in change.gaps]
            gaps_filled += [(k[0], k[1], s) for s in change.late]
            alerts += change.alerts
            lost += change.state["lost"] - (before["lost"] or 0)
        self._update_devices(cur, updates)
        if gaps_new:
            cur.executemany("INSERT INTO gaps (site, device, first_seq, last_seq, filled, detected) "
                            "VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (site, device, first_seq) DO NOTHING", gaps_new)
        if gaps_filled:
            cur.executemany("UPDATE gaps SET filled = filled + 1 WHERE site = ? AND device = ? "
                            "AND first_seq <= ? AND last_seq >= ?", [(s, d, q, q) for s, d, q in gaps_filled])
        return lost, self.add_alerts(cur, alerts, now)

    def _update_devices(self, cur: _Cursor, updates: list[dict[str, Any]]) -> None:
        """Write the devices' new state (every column but the key)."""
        cols = [c for c in DEVICE_COLUMNS if c not in ("site", "device")]
        cur.executemany(f"UPDATE devices SET {', '.join(f'{c} = ?' for c in cols)} WHERE site = ? AND device = ?",
                        [[u[c] for c in cols] + [u["site"], u["device"]] for u in updates])

    def add_alerts(self, cur: _Cursor, alerts: Iterable[fleet.AlertEvent], now: float) -> int:
        """Queue alerts for the sinks (in the caller's transaction); an alert already queued is not repeated."""
        rows = [(a.key, a.kind, a.site, a.device, json.dumps(a.payload, separators=(",", ":")), now, now)
                for a in alerts]
        if not rows:
            return 0
        new = self._insert_returning(cur, "alerts", ("key", "kind", "site", "device", "payload", "created",
                                                     "next_try"), rows, ("key",), ("key",))
        return len(new)

    # -- reads ----------------------------------------------------------------------------------------------
    def devices(self) -> list[dict[str, Any]]:
        return self.query(f"SELECT {', '.join(DEVICE_COLUMNS)} FROM devices ORDER BY site, device")

    def counts(self) -> dict[str, int]:
        """Rows per table (the tests and the bench compare these across backends)."""
        out = {}
        for table in ("scores", "alarms", "statuses", "events", "gaps", "dead_letters", "devices", "alerts",
                      "score_hourly"):
            out[table] = int(self.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])
        return out


class _Cursor:
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


class SQLiteStore(Store):
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


class PostgresStore(Store):
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

    # A batch's rows go to the server by COPY into a temporary staging table (one per table and connection,
    # emptied at each commit), then one INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING puts the new
    # ones in place: three round trips and one set operation on the server, where executemany() runs one
    # INSERT per row (pipelined, but each parsed and planned: the server's CPU was the limit).
    def _stage(self, cur: _Cursor, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
        stage = f"vw_stage_{table}"
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
        with cur.raw.copy(f"COPY {stage} ({', '.join(columns)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        return stage

    def _insert_unique(self, cur: _Cursor, table: str, columns: Sequence[str],
                       unique: dict[tuple[Any, ...], tuple[Any, ...]], key: Sequence[str]) -> set[tuple[Any, ...]]:
        stage = self._stage(cur, table, columns, unique.values())
        cols = ", ".join(columns)
        cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT ({', '.join(key)}) "
                    f"DO NOTHING RETURNING {', '.join(key)}")
        new = {tuple(r) for r in cur.fetchall()}
        cur.execute(f"DELETE FROM {stage}")  # the same table may be staged again before the commit
        return new

    def _update_devices(self, cur: _Cursor, updates: list[dict[str, Any]]) -> None:
        stage = self._stage(cur, "devices", DEVICE_COLUMNS, ([u[c] for c in DEVICE_COLUMNS] for u in updates))
        cols = [c for c in DEVICE_COLUMNS if c not in ("site", "device")]
        cur.execute(f"UPDATE devices AS d SET {', '.join(f'{c} = s.{c}' for c in cols)} FROM {stage} AS s "
                    "WHERE d.site = s.site AND d.device = s.device")
        cur.execute(f"DELETE FROM {stage}")


BACKENDS: dict[str, type[Store]] = {"sqlite": SQLiteStore, "postgresql": PostgresStore, "postgres": PostgresStore}


def open_store(url: str) -> Store:
    """The backend for a ``--db`` URL, by its scheme."""
    scheme = urlparse(url).scheme
    if scheme not in BACKENDS:
        raise StoreError(f"--db {url}: unknown database; use sqlite:///PATH or postgresql://USER@HOST/DB")
    return BACKENDS[scheme](url)
