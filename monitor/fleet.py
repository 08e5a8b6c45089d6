"""Per-device state: what the fleet table shows, worked out from a device's messages in seq order.

``apply`` is pure (a device row and the new messages in, the new row, seq gaps and alerts out): the store
calls it inside the batch's transaction, so the state, the rows and the alerts always agree. ``health`` and
``sweep`` add what only the clock can tell: a device that stopped sending without saying so is silent.

Lost messages: every score and alarm carries the device's ``seq`` (+1 per message, never reused). A new
highest seq that skips numbers records the skipped range as a gap; a late message inside a gap fills it.
``lost`` = (last_seq - first_seq + 1) - messages received, so it goes back down when a redelivery arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .fastjson import dumps

if TYPE_CHECKING:
    from .store import Alarm, Event, Score, Status, Store

# Severity order of the fleet table, worst first. ``suspect``: the machine's commissioning looked like a fault
# (the bundle's thresholds are kept): a person should look, so right after an alarm. ``commissioning``: its
# thresholds are being learned and no alarm can be raised yet, so not healthy, but nothing is wrong either.
SEVERITY = {"alarm": 0, "suspect": 1, "sensor": 2, "offline": 3, "silent": 4, "commissioning": 5, "online": 6,
            "unknown": 7}
COMMISSIONING_STATES = ("commissioning", "commissioned", "commissioning_suspect")
COMMISSIONING_EVENTS = ("commissioning_refused", "calibration_unreadable")  # with state online: bundle thresholds
COMMISSIONING_FIELDS = ("windows", "note", "threshold", "channel_thresholds", "median_level", "standout",
                        "bundle_threshold")
DEPLOY_FIELDS = ("deployment", "outcome", "reason", "from", "to", "sha256", "timestamp")  # docs/deploy.md
WILL_REASON = "connection lost"  # the agent's last will (agent/link/publish.py)
_EWMA = 0.2


@dataclass
class Messages:
    scores: list[Score] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # transient, condition_change, diagnosis: seq only here


@dataclass(frozen=True)
class AlertEvent:
    """Something a person should hear about; ``key`` names its cause, so it is queued once however often seen."""

    key: str
    kind: str  # alarm_raised | alarm_cleared | offline | silent | commissioning_suspect
    site: str
    device: str
    payload: dict[str, Any]


@dataclass
class Change:
    state: dict[str, Any]
    gaps: list[tuple[int, int]] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)


def alert_payload(kind: str, site: str, device: str, **fields: Any) -> dict[str, Any]:
    """The webhook's JSON (docs/monitor.md): the same envelope for every kind."""
    return {"v": 1, "kind": kind, "site": site, "device": device, **fields}


def apply(before: dict[str, Any], msgs: Messages, now: float) -> Change:
    """The device's row after these (new, not yet seen) messages; gaps found, late seqs, alerts to send."""
    s = dict(before)
    change = Change(state=s)
    site, device = s["site"], s["device"]
    seqs = sorted([m.seq for m in msgs.scores] + [m.seq for m in msgs.alarms] + [m.seq for m in msgs.events])
    for q in seqs:
        if s["last_seq"] is None:
            s["first_seq"] = s["last_seq"] = q
        elif q > s["last_seq"]:
            if q > s["last_seq"] + 1:
                change.gaps.append((s["last_seq"] + 1, q - 1))
            s["last_seq"] = q
        elif q < s["first_seq"]:  # older than anything seen: the range between was missing too
            if q + 1 <= s["first_seq"] - 1:
                change.gaps.append((q + 1, s["first_seq"] - 1))
            s["first_seq"] = q
        else:
            change.late.append(q)
    s["received"] = (s["received"] or 0) + len(seqs)
    if seqs:
        s["lost"] = s["last_seq"] - s["first_seq"] + 1 - s["received"]

    if msgs.scores:
        newest = max(msgs.scores, key=lambda m: m.seq)
        if s["score_seq"] is None or newest.seq > s["score_seq"]:
            s.update(score_seq=newest.seq, last_t=newest.t, last_ts=newest.ts, last_score=newest.score,
                     threshold=newest.threshold, level=newest.level, model=newest.model,
                     contributions=dumps(newest.contributions),
                     threshold_source=newest.threshold_source or "bundle")
            if newest.model_sha256:  # the model that scores now (after a deploy, before its status arrives)
                s["model_sha256"] = newest.model_sha256
        # The usual interval: wall time since the last score over the scores that came in it, so a spool
        # flushed after an outage (many at once) still averages to the device's real rate.
        n = len(msgs.scores)
        if s["last_seen"] is not None:
            estimate = max(now - s["last_seen"], 0.0) / n
            s["interval_s"] = estimate if s["interval_s"] is None else (1 - _EWMA) * s["interval_s"] + _EWMA * estimate
        s["last_seen"] = now
        s["silent_since"] = None
        if s["state"] in (None, "offline"):  # scores only come from a running agent (a retained will may lag)
            s["state"] = "online"

    for a in sorted(msgs.alarms, key=lambda m: m.seq):
        change.alerts.append(AlertEvent(
            key=f"alarm:{site}/{device}:{a.seq}", kind=f"alarm_{a.event}", site=site, device=device,
            payload=alert_payload(f"alarm_{a.event}", site, device, seq=a.seq, timestamp=a.ts, channel=a.channel,
                                  score=a.score, level=a.level, since=a.since, model=a.model)))
        if s["alarm_seq"] is None or a.seq > s["alarm_seq"]:
            s["alarm_seq"] = a.seq
            s["alarm"] = 1 if a.event == "raised" else 0
            s["alarm_since"] = a.since if a.event == "raised" else None
            s["alarm_channel"] = a.channel if a.event == "raised" else None

    for st in sorted(msgs.statuses, key=lambda m: (m.payload.get("link") or "", m.ts)):
        p = st.payload
        if not current(s, st):
            continue  # an older retained status delivered late, or the will of a connection since replaced
        s["state"], s["state_ts"] = st.state, max(st.ts, s["state_ts"] or "")
        s["link"] = p.get("link") or s["link"]
        s["fault"] = p.get("fault") if st.state == "sensor" else None
        s["reason"] = p.get("reason") if st.state == "offline" else None
        for key in ("agent", "runtime", "model", "model_sha256"):
            if p.get(key):
                s[key] = p[key]
        if isinstance(p.get("deploy"), dict):  # the last deploy's outcome, as the agent reports it
            s["deploy"] = dumps({k: p["deploy"][k] for k in DEPLOY_FIELDS if k in p["deploy"]})
        if "channels" in p:
            s["channels"] = json.dumps(p["channels"])
        if "spool_dropped" in p:
            s["spool_dropped"] = p["spool_dropped"]
        if p.get("event"):
            s["event"] = p["event"]
        if p.get("threshold_source"):
            s["threshold_source"] = p["threshold_source"]
        if st.state in COMMISSIONING_STATES or p.get("event") in COMMISSIONING_EVENTS:
            # The last word on this machine's thresholds; kept through later online statuses (a suspect
            # commissioning stays suspect until the machine is commissioned again).
            s["commissioning"] = st.state if st.state in COMMISSIONING_STATES else p["event"]
            s["commissioning_info"] = dumps({"timestamp": st.ts, **{k: p[k] for k in COMMISSIONING_FIELDS if k in p}})
            if st.state == "commissioning_suspect":
                change.alerts.append(AlertEvent(
                    key=f"commissioning_suspect:{site}/{device}:{st.ts}", kind="commissioning_suspect", site=site,
                    device=device, payload=alert_payload(
                        "commissioning_suspect", site, device, timestamp=st.ts,
                        **{k: p[k] for k in ("threshold", "bundle_threshold", "median_level", "standout", "windows")
                           if k in p})))
        if st.state == "offline":
            change.alerts.append(AlertEvent(
                key=f"offline:{site}/{device}:{st.ts}", kind="offline", site=site, device=device,
                payload=alert_payload("offline", site, device, timestamp=st.ts, reason=p.get("reason"))))
    return change


def current(row: dict[str, Any], status: Status) -> bool:
    """Does a status say more than the row already knows?

    Statuses of one connection are ordered by timestamp. The last will is the exception: the broker sends
    it when it loses the connection, but it was composed when the connection was set up, so its timestamp is
    older than the statuses that connection sent. The ``link`` (when the connection was set up) tells: a
    status of a later connection than the row's is current, one of an earlier connection is not, and a will
    is its connection's last word. Agents from before links: timestamps alone, as before."""
    p = status.payload
    link, known = p.get("link"), row.get("link")
    if link is None or known is None:
        return row["state_ts"] is None or status.ts >= row["state_ts"]
    if link != known:
        return link > known
    if row.get("state") == "offline" and row.get("reason") == WILL_REASON:
        return False  # this connection is gone: whatever else it sent is older news
    return (status.state == "offline" and p.get("reason") == WILL_REASON) or status.ts >= row["state_ts"]


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
