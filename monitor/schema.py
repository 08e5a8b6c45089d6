"""The schema both backends share: the tables, the devices' columns, and the migration of an older database.

Every write is idempotent because of the keys here: scores, alarms and events by (site, device, seq),
statuses by (site, device, timestamp, state), dead letters by a digest of topic and payload, alerts by a
key naming their cause. ``ensure`` runs when the monitor opens its store, in one transaction: it creates what is
missing, adds the columns later versions brought, and refuses a database a newer vibrawatch wrote. A command that
only reads (`vibrawatch fleet`) never migrates (an older monitor may still be writing there, and looking must
change nothing): ``readable`` checks that the tables and columns it reads are there, else refuses in one line.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from .db import Cursor, Database, StoreError

SCHEMA_VERSION = 5  # 2: where thresholds come from (scores, devices) and the last commissioning (devices);
# 3: the model file's sha256, the last deploy outcome and the connection (link) of the last status (devices);
# 4: a dead letter's full size (its payload is a bounded excerpt), a device's seq anomalies (count and last);
# 5: alarm episodes and their lifecycle (episodes), who did what (audit), a raised alarm's diagnosis (alarms),
#    when a device was first seen (devices: its machine-months)

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
        received DOUBLE PRECISION NOT NULL, diagnosis TEXT, PRIMARY KEY (site, device, seq))""",
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
        reason TEXT NOT NULL, size BIGINT)""",
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
        link TEXT, seq_anomalies BIGINT NOT NULL DEFAULT 0, seq_anomaly TEXT, first_seen DOUBLE PRECISION,
        PRIMARY KEY (site, device))""",
    """CREATE TABLE IF NOT EXISTS alerts (
        key TEXT PRIMARY KEY, kind TEXT NOT NULL, site TEXT NOT NULL, device TEXT NOT NULL, payload TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL, state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_try DOUBLE PRECISION NOT NULL, last_error TEXT, delivered DOUBLE PRECISION)""",
    """CREATE INDEX IF NOT EXISTS alerts_due ON alerts (state, next_try)""",
    """CREATE TABLE IF NOT EXISTS score_hourly (
        site TEXT NOT NULL, device TEXT NOT NULL, hour DOUBLE PRECISION NOT NULL, n BIGINT NOT NULL,
        min DOUBLE PRECISION NOT NULL, mean DOUBLE PRECISION NOT NULL, max DOUBLE PRECISION NOT NULL,
        above BIGINT NOT NULL, threshold DOUBLE PRECISION NOT NULL, PRIMARY KEY (site, device, hour))""",
    # One alarm episode (raised -> cleared) per site/device/channel, keyed by the seq that raised it, with its
    # lifecycle (monitor/episodes.py): active -> acknowledged / shelved -> cleared -> closed with a verdict.
    """CREATE TABLE IF NOT EXISTS episodes (
        site TEXT NOT NULL, device TEXT NOT NULL, raised_seq BIGINT NOT NULL, channel TEXT NOT NULL,
        raised_t DOUBLE PRECISION NOT NULL, raised_ts TEXT NOT NULL, raised_at DOUBLE PRECISION NOT NULL,
        model TEXT NOT NULL, level DOUBLE PRECISION NOT NULL, diagnosis TEXT, state TEXT NOT NULL,
        cleared_seq BIGINT, cleared_ts TEXT, cleared_at DOUBLE PRECISION,
        ack_by TEXT, ack_at DOUBLE PRECISION, ack_note TEXT, shelved_by TEXT, shelved_until DOUBLE PRECISION,
        verdict TEXT, part TEXT, work TEXT, closed_by TEXT, closed_at DOUBLE PRECISION, close_note TEXT,
        updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (site, device, raised_seq))""",
    """CREATE INDEX IF NOT EXISTS episodes_state ON episodes (state)""",
    # Every change of an episode's state, by a device (source mqtt) or an operator (source: the client address).
    """CREATE TABLE IF NOT EXISTS audit (
        id TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, source TEXT NOT NULL, detail TEXT NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS audit_target ON audit (target, at)""",
]

DEVICE_COLUMNS = (
    "site", "device", "first_seq", "last_seq", "received", "lost", "score_seq", "last_t", "last_ts", "last_score",
    "threshold", "level", "contributions", "model", "state", "state_ts", "fault", "reason", "agent", "runtime",
    "channels", "spool_dropped", "event", "alarm_seq", "alarm", "alarm_since", "alarm_channel", "last_seen",
    "interval_s", "silent_since", "threshold_source", "commissioning", "commissioning_info", "model_sha256", "deploy",
    "link", "seq_anomalies", "seq_anomaly", "first_seen",
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
    (4, "dead_letters", "size", "BIGINT"),
    (4, "devices", "seq_anomalies", "BIGINT NOT NULL DEFAULT 0"),
    (4, "devices", "seq_anomaly", "TEXT"),
    (5, "alarms", "diagnosis", "TEXT"),
    (5, "devices", "first_seen", "DOUBLE PRECISION"),
]


def columns(db: Database, cur: Cursor, table: str) -> set[str]:
    """The columns ``table`` has now, seen from ``cur``'s transaction (what a migration still has to add), read
    from the catalog as ``Reads.columns`` reads it outside one."""
    cur.execute(db.columns_sql, (table,))
    return {str(r[0]) for r in cur.fetchall()}


def ensure(db: Database) -> None:
    """Create the tables, or bring an older database up to ``SCHEMA_VERSION``; refuse a newer one."""
    with db.transaction() as cur:
        for stmt in DDL:
            cur.execute(stmt)
        cur.execute("SELECT value FROM meta WHERE key = 'schema'")
        row = cur.fetchone()
        if row is None:
            cur.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("schema", str(SCHEMA_VERSION)))
        elif int(row[0]) > SCHEMA_VERSION:
            raise _newer(db, int(row[0]))
        elif int(row[0]) < SCHEMA_VERSION:
            for version, table, column, kind in MIGRATIONS:
                if version > int(row[0]) and column not in columns(db, cur, table):
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            if int(row[0]) < 5:
                _episodes_from_alarms(cur)
            cur.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))


def _newer(db: Database, version: int) -> StoreError:
    return StoreError(f"{db.safe_url}: database schema {version} is newer than this vibrawatch "
                      f"(it reads {SCHEMA_VERSION} and older): upgrade vibrawatch")


def require(db: Database) -> int:
    """The schema version of a monitor's database; refuse one that is not there or holds no vibrawatch schema (a
    typo in ``--db``), before anything is created: a report on an empty database would say the fleet is empty."""
    if not db.exists():
        raise StoreError(f"{db.safe_url}: no such database (the monitor creates it; check --db)")
    try:
        rows = db.query("SELECT value FROM meta WHERE key = 'schema'")
    except Exception as e:  # noqa: BLE001 - unreachable, no table meta, not a database: one line says which
        raise StoreError(f"{db.safe_url}: cannot read a vibrawatch monitor's schema there ({db.why(e)})") from None
    if not rows:
        raise StoreError(f"{db.safe_url}: not a vibrawatch monitor's database (no schema version in meta)")
    try:
        return int(rows[0]["value"])
    except ValueError:
        raise StoreError(f"{db.safe_url}: not a vibrawatch monitor's database (schema version "
                         f"{str(rows[0]['value'])[:40]!r} in meta)") from None


def readable(db: Database, reads: Mapping[str, Iterable[str]]) -> int:
    """For a command that only reads: the database's schema version, as it is. One a newer vibrawatch wrote is
    refused; an older one is read when every table and column in ``reads`` is there (nothing is migrated), else
    refused in one line naming both versions and how to upgrade it."""
    version = require(db)
    if version > SCHEMA_VERSION:
        raise _newer(db, version)
    missing = []
    for table, wanted in reads.items():
        have = db.columns(table)
        missing += [f"table {table}"] if not have else [f"{table}.{c}" for c in wanted if c not in have]
    if missing:
        lacks = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        if version == SCHEMA_VERSION:  # not as a monitor left it: nothing to upgrade
            raise StoreError(f"{db.safe_url}: database schema {version} lacks what this command reads ({lacks}): "
                             "not as a vibrawatch monitor of this version left it")
        raise StoreError(f"{db.safe_url}: database schema {version} is older than this vibrawatch's "
                         f"{SCHEMA_VERSION} and lacks what this command reads ({lacks}); it only reads and leaves "
                         "the database as it is: upgrade the monitor that writes it (`vibrawatch monitor` of this "
                         "version migrates it when it starts), then run this again")
    return version


def _episodes_from_alarms(cur: Cursor) -> None:
    """The alarms stored before episodes existed, as episodes (the alarm still open shows as active): replayed in
    seq order per device, one alarm a device (which channels a combined detector had in alarm was not kept)."""
    from . import episodes  # the lifecycle sits above the schema; only this one-off replay needs it
    from .rows import Alarm

    cur.execute("SELECT site, device, seq, t, ts, event, channel, score, level, since, model, received FROM alarms "
                "ORDER BY site, device, seq")
    rows = [Alarm(*r) for r in cur.fetchall()]
    now = time.time()
    for i in range(0, len(rows), 1000):
        episodes.track(cur, rows[i:i + 1000], [], now)
