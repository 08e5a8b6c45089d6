"""The write path: one batch in one transaction.

A batch's rows, the devices' state (``state.apply``), the seq gaps and the alerts it raises commit together
or not at all, and ingest acknowledges the MQTT messages only after the commit. Rows already stored (a
redelivery) are skipped and counted, and only the new ones move a device's state, so a batch written twice
changes nothing the second time. A score redelivered after retention rolled up its row (retention.py) is no new
row either: its seq was counted when it first came, so it is dropped as expired (``_seen``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from . import episodes, state
from .bulk import Bulk, chunks
from .db import Cursor, Database
from .fastjson import dumps
from .rows import Alarm, Batch, Event, Score, Status, Written
from .schema import DEVICE_COLUMNS


class BatchWriter:
    """Writes batches and queues alerts through ``db``, with ``bulk`` doing the backend's multi-row statements."""

    def __init__(self, db: Database, bulk: Bulk) -> None:
        self.db, self.bulk = db, bulk

    def write(self, batch: Batch, now: float | None = None) -> Written:
        """Store one batch in one transaction; rows already present (redeliveries) are skipped and counted."""
        now = time.time() if now is None else now
        w = Written()
        insert_new = self.bulk.insert_new
        with self.db.transaction() as cur:
            new_scores = insert_new(
                cur, "scores", ("site", "device", "seq", "t", "ts", "score", "threshold", "level", "contributions",
                                "model", "received", "threshold_source"),
                [(s.site, s.device, s.seq, s.t, s.ts, s.score, s.threshold, s.level, dumps(s.contributions), s.model,
                  s.received, s.threshold_source) for s in batch.scores],
                ("site", "device", "seq"))
            new_alarms = insert_new(
                cur, "alarms", ("site", "device", "seq", "t", "ts", "event", "channel", "score", "level", "since",
                                "model", "received", "diagnosis"),
                [(a.site, a.device, a.seq, a.t, a.ts, a.event, a.channel, a.score, a.level, a.since, a.model,
                  a.received, None if a.diagnosis is None else dumps(a.diagnosis)) for a in batch.alarms],
                ("site", "device", "seq"))
            new_statuses = insert_new(
                cur, "statuses", ("site", "device", "ts", "state", "payload", "received"),
                [(s.site, s.device, s.ts, s.state, dumps(s.payload), s.received) for s in batch.statuses],
                ("site", "device", "ts", "state"))
            new_events = insert_new(
                cur, "events", ("site", "device", "seq", "t", "ts", "kind", "payload", "received"),
                [(e.site, e.device, e.seq, e.t, e.ts, e.kind, dumps(e.payload), e.received) for e in batch.events],
                ("site", "device", "seq"))
            if batch.dead:
                dead = self.bulk.insert_returning(
                    cur, "dead_letters", ("digest", "received", "topic", "payload", "reason", "size"),
                    [(d.digest, d.received, d.topic, d.excerpt, d.reason, d.size) for d in batch.dead],
                    ("digest",), ("digest",))
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
                w.lost, w.alerts, w.expired = self._apply_to_devices(cur, scores, alarms, statuses, now, events)
                w.scores -= w.expired
        return w

    def _apply_to_devices(self, cur: Cursor, scores: list[Score], alarms: list[Alarm], statuses: list[Status],
                          now: float, events: Sequence[Event] = ()) -> tuple[int, int, int]:
        """Move the devices' state, gaps, episodes and alerts by the new rows; ``lost`` found, alerts queued and
        scores dropped as expired (deleted again: redeliveries of scores retention rolled up)."""
        keys = sorted({(m.site, m.device) for m in (*scores, *alarms, *statuses, *events)})
        # Create missing device rows, then lock them in one order (PostgreSQL: two monitors never deadlock).
        for part in chunks(keys):
            cur.execute("INSERT INTO devices (site, device) VALUES " + ", ".join(["(?, ?)"] * len(part))
                        + " ON CONFLICT (site, device) DO NOTHING", [v for k in part for v in k])
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for part in chunks(keys):
            cur.execute(f"SELECT {', '.join(DEVICE_COLUMNS)} FROM devices WHERE (site, device) IN (VALUES "
                        + ", ".join(["(?, ?)"] * len(part)) + f") ORDER BY site, device {self.db.lock_rows}",
                        [v for k in part for v in k])
            for r in cur.fetchall():
                current[(r[0], r[1])] = dict(zip(DEVICE_COLUMNS, r, strict=True))
        by_device: dict[tuple[str, str], state.Messages] = {k: state.Messages() for k in keys}
        for s in scores:
            by_device[(s.site, s.device)].scores.append(s)
        for a in alarms:
            by_device[(a.site, a.device)].alarms.append(a)
        for st in statuses:
            by_device[(st.site, st.device)].statuses.append(st)
        for e in events:
            by_device[(e.site, e.device)].events.append(e)
        updates, gaps_new, gaps_filled, alerts, expired = [], [], [], [], []
        tracked: list[Alarm] = []
        lost = 0
        for k in keys:
            before, msgs = current[k], by_device[k]
            counted, gone = _seen(cur, before, msgs)
            if gone:  # not stored again, moving nothing: its seq (whatever kind holds it here) counted already
                msgs.scores = [m for m in msgs.scores if m.seq not in gone]
                expired += [(k[0], k[1], q) for q in gone]
            change = state.apply(before, msgs, now, counted | gone)
            updates.append(change.state)
            tracked += [a for a in by_device[k].alarms if a.seq not in change.odd]
            gaps_new += [(k[0], k[1], a, b, now) for a, b in change.gaps]
            gaps_filled += [(k[0], k[1], s) for s in change.late]
            alerts += change.alerts
            lost += change.state["lost"] - (before["lost"] or 0)
        if tracked or any(e.kind == "diagnosis" for e in events):
            episodes.track(cur, tracked, events, now)  # the episodes' lifecycle, in the same transaction
        if tracked:  # in alarm while any channel is: from the open episodes those messages left
            moved = {(a.site, a.device) for a in tracked}
            now_active = episodes.active(cur, sorted(moved))
            for u in updates:
                k = (u["site"], u["device"])
                if k in moved:
                    since, channels = now_active.get(k, (None, []))
                    u.update(alarm=1 if k in now_active else 0, alarm_since=since,
                             alarm_channel=", ".join(channels) or None)
        self.bulk.update(cur, "devices", DEVICE_COLUMNS, ("site", "device"), updates)
        if gaps_new:
            cur.executemany("INSERT INTO gaps (site, device, first_seq, last_seq, filled, detected) "
                            "VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (site, device, first_seq) DO NOTHING", gaps_new)
        if gaps_filled:
            cur.executemany("UPDATE gaps SET filled = filled + 1 WHERE site = ? AND device = ? "
                            "AND first_seq <= ? AND last_seq >= ?", [(s, d, q, q) for s, d, q in gaps_filled])
        cur.executemany("DELETE FROM scores WHERE site = ? AND device = ? AND seq = ?", expired)
        return lost, self.add_alerts(cur, alerts, now), len(expired)

    def add_alerts(self, cur: Cursor, alerts: Iterable[state.AlertEvent], now: float) -> int:
        """Queue alerts for the sinks (in the caller's transaction); an alert already queued is not repeated."""
        rows = [(a.key, a.kind, a.site, a.device, json.dumps(a.payload, separators=(",", ":")), now, now)
                for a in alerts]
        if not rows:
            return 0
        new = self.bulk.insert_returning(cur, "alerts", ("key", "kind", "site", "device", "payload", "created",
                                                         "next_try"), rows, ("key",), ("key",))
        return len(new)


_SEQ_TABLES = ("scores", "alarms", "events")  # the kinds that share a device's seq


def _seen(cur: Cursor, row: dict[str, Any], msgs: state.Messages) -> tuple[frozenset[int], frozenset[int]]:
    """Which of the new messages' seqs inside the device's known range were counted before. ``counted``: a
    stored message of another kind holds it (scores, alarms and events share one seq), so no late arrival.
    ``expired``: new scores whose seq no stored row holds but which came before all the same, as they fill no
    gap (``_expired``): their rows were rolled up by retention, so these are redeliveries, neither late nor
    lost. Only a seq inside the range is looked up, so a device sending in order costs no query."""
    first, top = row["first_seq"], row["last_seq"]
    if first is None:
        return frozenset(), frozenset()
    mine: dict[int, int] = {}  # seq -> this batch's new rows holding it
    for m in (*msgs.scores, *msgs.alarms, *msgs.events):
        if first <= m.seq <= top:
            mine[m.seq] = mine.get(m.seq, 0) + 1
    if not mine:
        return frozenset(), frozenset()
    stored: dict[int, int] = {}
    for part in chunks(sorted(mine), 300):  # 3 x 302 parameters: under SQLite's oldest limit (999)
        marks = ", ".join("?" * len(part))
        cur.execute(" UNION ALL ".join(f"SELECT seq FROM {t} WHERE site = ? AND device = ? AND seq IN ({marks})"
                                       for t in _SEQ_TABLES),
                    [v for _ in _SEQ_TABLES for v in (row["site"], row["device"], *part)])
        for (q,) in cur.fetchall():
            stored[int(q)] = stored.get(int(q), 0) + 1
    counted = frozenset(q for q, n in mine.items() if stored.get(q, 0) > n)
    fresh = sorted({m.seq for m in msgs.scores if first <= m.seq <= top} - counted)
    return counted, _expired(cur, row["site"], row["device"], fresh, mine) if fresh else frozenset()


def _expired(cur: Cursor, site: str, device: str, seqs: list[int], mine: dict[int, int]) -> frozenset[int]:
    """Of ``seqs`` (new scores inside the range that no message stored before holds), those that came before,
    so retention deleted their rows: a seq in no gap came in its turn; one in a gap, when every seq of the gap
    came late already, or when fewer of its seqs are stored (not counting this batch's rows, ``mine``) than came
    late into it: a late arrival of it was rolled up, and this may be that one. Taken as expired then, so
    ``lost`` may err high, never low."""
    cur.execute("SELECT first_seq, last_seq, filled FROM gaps WHERE site = ? AND device = ? AND first_seq <= ? "
                "AND last_seq >= ?", (site, device, seqs[-1], seqs[0]))
    gaps = [(int(a), int(b), int(n)) for a, b, n in cur.fetchall()]
    kept: dict[tuple[int, int, int], int] = {}  # gap -> its seqs stored before this batch

    def came_before(q: int) -> bool:
        gap = next((g for g in gaps if g[0] <= q <= g[1]), None)
        if gap is None or gap[2] >= gap[1] - gap[0] + 1:
            return True
        if gap not in kept:
            cur.execute(" UNION ALL ".join(f"SELECT seq FROM {t} WHERE site = ? AND device = ? AND seq BETWEEN ? "
                                           "AND ?" for t in _SEQ_TABLES), [site, device, gap[0], gap[1]] * 3)
            held: dict[int, int] = {}
            for (s,) in cur.fetchall():
                held[int(s)] = held.get(int(s), 0) + 1
            kept[gap] = sum(1 for s, n in held.items() if n > mine.get(s, 0))
        return kept[gap] < gap[2]

    return frozenset(q for q in seqs if came_before(q))
