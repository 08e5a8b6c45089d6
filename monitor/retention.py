"""Retention, in the database: raw scores older than ``raw_days`` (by arrival) become hourly aggregates.

One statement rolls them up into ``score_hourly`` (count, min, mean, max, windows above threshold per
device and hour of the data's own time ``t``), merging into an hour already rolled up, and one deletes them,
in one transaction: a score is either raw or counted in its hour, never both, never neither.

The arithmetic cannot overflow, whatever was stored (a score of 1.7e308 from before ingest bounded numbers, or
from another writer): the mean takes each score up to ``bounds.MAX_NUMBER`` (min and max keep it exact), and an
hour already rolled up moves its mean towards the new one by their weights instead of adding up ``mean * n``.
One device's numbers never stop retention for the fleet (PostgreSQL refuses an overflow; SQLite would store
an infinite mean, which no JSON reader takes).
"""

from __future__ import annotations

import time

from .bounds import MAX_NUMBER
from .store import Store


def roll_up(store: Store, raw_days: float, now: float | None = None) -> int:
    """Aggregate and delete raw scores older than ``raw_days``; returns how many raw rows went."""
    now = time.time() if now is None else now
    cutoff = now - raw_days * 86400.0
    db = store.db
    hour = db.hour_of_t
    cap = f"{MAX_NUMBER:.0e}"
    with store.transaction() as cur:
        cur.execute(
            f"INSERT INTO score_hourly (site, device, hour, n, min, mean, max, above, threshold) "
            f"SELECT site, device, {hour}, COUNT(*), MIN(score), AVG({db.least}(score, {cap})), MAX(score), "
            f"SUM(CASE WHEN score > threshold THEN 1 ELSE 0 END), MAX(threshold) "
            f"FROM scores WHERE received < ? GROUP BY site, device, {hour} "
            f"ON CONFLICT (site, device, hour) DO UPDATE SET "
            f"mean = {db.least}(score_hourly.mean, {cap}) + (excluded.mean - {db.least}(score_hourly.mean, {cap})) "
            f"* excluded.n / (score_hourly.n + excluded.n), n = score_hourly.n + excluded.n, "
            f"min = {db.least}(score_hourly.min, excluded.min), "
            f"max = {db.greatest}(score_hourly.max, excluded.max), "
            f"above = score_hourly.above + excluded.above, threshold = excluded.threshold", (cutoff,))
        cur.execute("DELETE FROM scores WHERE received < ?", (cutoff,))
        gone = cur.rowcount
        cur.execute("DELETE FROM dead_letters WHERE received < ?", (cutoff,))
    return gone
