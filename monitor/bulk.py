"""Many rows in one go, the fastest way each backend offers, and which of them were new.

Every insert is ``ON CONFLICT DO NOTHING`` on the table's key, so a redelivered message is never stored twice;
the caller learns the keys that went in, to count repeats and to apply only new messages to the devices'
state. ``Bulk`` is plain SQL (SQLite, and the fallback for any backend); ``PostgresBulk`` sends the rows by
COPY into a staging table instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from .db import Cursor

_ROWS_PER_INSERT = 400  # rows per multi-row INSERT: 400 x 12 parameters stays under every driver's limit


def chunks(rows: Sequence[Any], n: int = _ROWS_PER_INSERT) -> Iterator[Sequence[Any]]:
    """``rows`` in slices small enough for one multi-row statement."""
    for i in range(0, len(rows), n):
        yield rows[i:i + n]


class Bulk:
    """Multi-row inserts and updates in plain SQL, inside the caller's transaction."""

    def insert_new(self, cur: Cursor, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]],
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
        return self.insert_unique(cur, table, columns, unique, key)

    def insert_unique(self, cur: Cursor, table: str, columns: Sequence[str],
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
        return self.insert_returning(cur, table, columns, list(unique.values()), key, key)

    def insert_returning(self, cur: Cursor, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]],
                         key: Sequence[str], returning: Sequence[str]) -> set[tuple[Any, ...]]:
        """Multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING: the keys of the rows that were new."""
        new: set[tuple[Any, ...]] = set()
        one = "(" + ", ".join("?" * len(columns)) + ")"
        for part in chunks(rows):
            sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * len(part))} "
                   f"ON CONFLICT ({', '.join(key)}) DO NOTHING RETURNING {', '.join(returning)}")
            cur.execute(sql, [v for r in part for v in r])
            new.update(tuple(r) for r in cur.fetchall())
        return new

    def update(self, cur: Cursor, table: str, columns: Sequence[str], key: Sequence[str],
               rows: list[dict[str, Any]]) -> None:
        """Write every column but the key of each row (a dict by column) to the row with its key."""
        cols = [c for c in columns if c not in key]
        cur.executemany(f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in cols)} "
                        f"WHERE {' AND '.join(f'{k} = ?' for k in key)}",
                        [[u[c] for c in cols] + [u[k] for k in key] for u in rows])


class PostgresBulk(Bulk):
    """A batch's rows go to the server by COPY into a temporary staging table (one per table and connection,
    emptied at each commit), then one INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING puts the new ones
    in place: three round trips and one set operation on the server, where executemany() runs one INSERT per
    row (pipelined, but each parsed and planned: the server's CPU was the limit)."""

    def _stage(self, cur: Cursor, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
        stage = f"vw_stage_{table}"
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
        with cur.raw.copy(f"COPY {stage} ({', '.join(columns)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        return stage

    def insert_unique(self, cur: Cursor, table: str, columns: Sequence[str],
                      unique: dict[tuple[Any, ...], tuple[Any, ...]], key: Sequence[str]) -> set[tuple[Any, ...]]:
        stage = self._stage(cur, table, columns, unique.values())
        cols = ", ".join(columns)
        cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT ({', '.join(key)}) "
                    f"DO NOTHING RETURNING {', '.join(key)}")
        new = {tuple(r) for r in cur.fetchall()}
        cur.execute(f"DELETE FROM {stage}")  # the same table may be staged again before the commit
        return new

    def update(self, cur: Cursor, table: str, columns: Sequence[str], key: Sequence[str],
               rows: list[dict[str, Any]]) -> None:
        stage = self._stage(cur, table, columns, ([u[c] for c in columns] for u in rows))
        cols = [c for c in columns if c not in key]
        cur.execute(f"UPDATE {table} AS d SET {', '.join(f'{c} = s.{c}' for c in cols)} FROM {stage} AS s "
                    f"WHERE {' AND '.join(f'd.{k} = s.{k}' for k in key)}")
        cur.execute(f"DELETE FROM {stage}")
