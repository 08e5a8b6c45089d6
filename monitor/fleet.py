"""The fleet table: each device's health, worked out from its stored state and the clock, worst first.

The state itself is written by the store, batch by batch (``state.apply``); ``health`` and ``sweep`` add
what only the clock can tell: a device that stopped sending without saying so is silent.
"""

from __future__ import annotations

import json
from typing import Any

from .state import COMMISSIONING_STATES, AlertEvent, alert_payload
from .store import Store

# Severity order of the fleet table, worst first. ``suspect``: the machine's commissioning looked like a fault
# (the bundle's thresholds are kept): a person should look, so right after an alarm. ``commissioning``: its
# thresholds are being learned and no alarm can be raised yet, so not healthy, but nothing is wrong either.
SEVERITY = {"alarm": 0, "suspect": 1, "sensor": 2, "offline": 3, "silent": 4, "commissioning": 5, "online": 6,
            "unknown": 7}


def health(row: dict[str, Any], now: float, silent_factor: float, min_silent_s: float) -> str:
    """One word for the table: alarm, suspect, sensor, offline, silent, commissioning, online (or unknown
    before any message)."""
    if row.get("alarm"):
        return "alarm"
    if row.get("commissioning") == "commissioning_suspect":
        return "suspect"
    if row.get("state") in ("sensor", "offline"):
        return str(row["state"])
    if is_silent(row, now, silent_factor, min_silent_s):
        return "silent"
    source = row.get("threshold_source")  # the newest score's or status's word on it, whichever came last
    if source == "commissioning" or source is None and row.get("state") == "commissioning":
        return "commissioning"
    if row.get("state") in COMMISSIONING_STATES:  # commissioned: running on its own thresholds
        return "online"
    return str(row.get("state") or "unknown")


def is_silent(row: dict[str, Any], now: float, silent_factor: float, min_silent_s: float) -> bool:
    """No score for ``silent_factor`` times the device's usual interval (and at least ``min_silent_s``)."""
    if row.get("last_seen") is None or row.get("state") == "offline":
        return False
    limit = max(silent_factor * (row.get("interval_s") or 0.0), min_silent_s)
    return now - float(row["last_seen"]) > limit


def note(r: dict[str, Any]) -> str:
    """What the table's last column says about a device: a fault, why it is offline, its commissioning."""
    info = json.loads(r["commissioning_info"]) if r.get("commissioning_info") else {}
    if r["health"] == "suspect":
        return (f"commissioning suspect: median window {info.get('median_level', 0):.3g}x the bundle's thresholds, "
                f"one channel {info.get('standout', 0):.3g}x the others; alarms on the bundle's thresholds")
    if r["health"] == "commissioning":
        return f"commissioning: {info.get('windows', 0)} windows so far, no alarm until it ends"
    if r["health"] == "sensor":
        return f"sensor fault: {r.get('fault') or '?'}"
    if r["health"] == "offline":
        return str(r.get("reason") or "")
    if r["health"] == "silent" and r.get("age_s") is not None:
        return f"no score for {r['age_s']:.0f} s"
    if r.get("commissioning") in ("commissioning_refused", "calibration_unreadable"):
        return f"{r['commissioning']}: {info.get('note', '')}"
    if r.get("event") == "deploy" and r.get("deploy_note"):
        return str(r["deploy_note"])
    return str(r.get("event") or "")


def deploy_note(d: dict[str, Any]) -> str:
    """``deploy applied: run-a -> run-b`` (and why, when it was refused or rolled back)."""
    text = f"deploy {d.get('outcome', '?')}: {d.get('from') or '-'} -> {d.get('to') or '-'}"
    return f"{text} ({d['reason']})" if d.get("reason") else text


def table(store: Store, now: float, silent_factor: float = 5.0, min_silent_s: float = 30.0) -> list[dict[str, Any]]:
    """The fleet table, worst first: each device's row plus its ``health`` and seconds since its last score."""
    rows = []
    for r in store.devices():
        r = dict(r)
        r["deploy"] = json.loads(r["deploy"]) if r.get("deploy") else None
        r["deploy_note"] = deploy_note(r["deploy"]) if r["deploy"] else None  # the table's and the page's words
        r["health"] = health(r, now, silent_factor, min_silent_s)
        r["age_s"] = None if r["last_seen"] is None else round(now - r["last_seen"], 1)
        r["note"] = note(r)
        rows.append(r)
    rows.sort(key=lambda r: (SEVERITY.get(r["health"], 9), -(r["level"] or 0.0), r["site"], r["device"]))
    return rows


def sweep(store: Store, now: float, silent_factor: float, min_silent_s: float) -> int:
    """Mark devices that went silent and queue one alert each (keyed by their last seq); returns how many."""
    with store.transaction() as cur:
        cur.execute("SELECT site, device, last_seen, interval_s, state, last_seq FROM devices "
                    "WHERE silent_since IS NULL AND last_seen IS NOT NULL")
        rows = [dict(zip(("site", "device", "last_seen", "interval_s", "state", "last_seq"), r, strict=True))
                for r in cur.fetchall()]
        silent = [r for r in rows if is_silent(r, now, silent_factor, min_silent_s)]
        cur.executemany("UPDATE devices SET silent_since = ? WHERE site = ? AND device = ? AND silent_since IS NULL",
                        [(now, r["site"], r["device"]) for r in silent])
        return store.add_alerts(cur, [AlertEvent(
            key=f"silent:{r['site']}/{r['device']}:{r['last_seq']}", kind="silent", site=r["site"],
            device=r["device"], payload=alert_payload("silent", r["site"], r["device"], last_seq=r["last_seq"],
                                                      silent_s=round(now - r["last_seen"], 1),
                                                      interval_s=r["interval_s"])) for r in silent], now)
