"""A device's state after its new messages: the pure step the store takes inside each batch's transaction.

``apply`` takes a device row and the new messages and gives the new row, the seq gaps found and the alerts
to queue, touching nothing else: the store calls it in the batch's transaction, so the state, the rows and
the alerts always agree. It sits below the store (which calls it) and the fleet table (which reads what it
wrote), so neither has to import the other to share it.

Lost messages: every score and alarm carries the device's ``seq`` (+1 per message, never reused). A new
highest seq that skips numbers records the skipped range as a gap; a late message inside a gap fills it.
``lost`` = (last_seq - first_seq + 1) - messages received, so it goes back down when a redelivery arrives.
A seq counted already (a message of another kind with the same seq: a faulty or forged sender) is no late
arrival: it moves neither ``received`` nor ``lost``, so ``lost`` is never negative and never hides a real loss.

Sequence sanity: a seq further from the known range than the device can have sent (``plausible_jump``: twice a
day of messages at its usual rate plus the time since it was last seen, at least ``SEQ_JUMP_FLOOR``) is not a
gap of billions of lost messages. It is stored, counted in ``seq_anomalies`` and described in ``seq_anomaly``,
and moves nothing else (range, ``lost``, the latest score). A second such seq that continues the first (the
device really numbers anew: a spool replaced) is a reset: the range starts again from those two, the ``lost``
counted so far is kept.

Alarms: a device is in alarm while any of its channels is (a combined detector raises and clears each channel
on its own), so ``alarm``, ``alarm_since`` and ``alarm_channel`` are not this step's: the writer sets them from
the device's open episodes (episodes.py) after it moved them by the same messages, in the same transaction.
Here only ``alarm_seq`` (the newest alarm message's seq) moves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .fastjson import dumps
from .rows import Alarm, Event, Score, Status

COMMISSIONING_STATES = ("commissioning", "commissioned", "commissioning_suspect")
COMMISSIONING_EVENTS = ("commissioning_refused", "calibration_unreadable")  # with state online: bundle thresholds
COMMISSIONING_FIELDS = ("windows", "note", "threshold", "channel_thresholds", "median_level", "standout",
                        "bundle_threshold")
DEPLOY_FIELDS = ("deployment", "outcome", "reason", "from", "to", "sha256", "timestamp")  # docs/deploy.md
WILL_REASON = "connection lost"  # the agent's last will (agent/link/publish.py)
_EWMA = 0.2
SEQ_JUMP_FLOOR = 100_000  # a seq this far from the range is always plausible (a day at ~1 message a second)
DAY_S = 86_400.0


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
    odd: set[int] = field(default_factory=set)  # seq anomalies: stored, but they move nothing (nor an episode)


def alert_payload(kind: str, site: str, device: str, **fields: Any) -> dict[str, Any]:
    """The webhook's JSON (docs/monitor.md): the same envelope for every kind."""
    return {"v": 1, "kind": kind, "site": site, "device": device, **fields}


def apply(before: dict[str, Any], msgs: Messages, now: float, counted: frozenset[int] = frozenset()) -> Change:
    """The device's row after these (new, not yet seen) messages; gaps found, late seqs, alerts to send.
    ``counted``: seqs of these messages that a stored message of another kind holds already."""
    s = dict(before)
    change = Change(state=s)
    if s.get("first_seen") is None:
        s["first_seen"] = now  # machine-months (the verdict measures) count from here
    site, device = s["site"], s["device"]
    seqs = sorted({m.seq for m in (*msgs.scores, *msgs.alarms, *msgs.events)} - counted)  # each seq counted once
    odd = _sequence(s, seqs, change, now)
    scores = [m for m in msgs.scores if m.seq not in odd]

    if scores:
        newest = max(scores, key=lambda m: m.seq)
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
        if a.seq not in odd and (s["alarm_seq"] is None or a.seq > s["alarm_seq"]):
            s["alarm_seq"] = a.seq  # ``alarm``, its since and channels: from the open episodes (writer.py)
    change.odd = odd

    for st in sorted(msgs.statuses, key=lambda m: (instant(m.payload.get("link")), instant(m.ts))):
        p = st.payload
        if not current(s, st):
            continue  # an older retained status delivered late, or the will of a connection since replaced
        s["state"], s["state_ts"] = st.state, max(st.ts, s["state_ts"] or st.ts, key=instant)
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


def plausible_jump(row: dict[str, Any], now: float) -> float:
    """How far outside the known seq range a message may be and still be this sequence: twice the messages the
    device sends in a day plus the time since it was last seen, at its usual rate; ``SEQ_JUMP_FLOOR`` at least
    (and while the rate is not known yet)."""
    interval = row.get("interval_s")
    if not interval or interval <= 0:
        return float(SEQ_JUMP_FLOOR)
    elapsed = max(now - row["last_seen"], 0.0) if row.get("last_seen") is not None else 0.0
    return max(float(SEQ_JUMP_FLOOR), 2 * (elapsed + DAY_S) / interval)


def _sequence(s: dict[str, Any], seqs: list[int], change: Change, now: float) -> set[int]:
    """Move the device's seq range, ``received`` and ``lost`` by these new seqs (ascending); the seqs that are
    anomalies and so moved nothing."""
    odd: set[int] = set()
    bound = plausible_jump(s, now)
    last = json.loads(s["seq_anomaly"]) if s.get("seq_anomaly") else None
    pending = last["seq"] if last and last.get("pending") else None
    for q in seqs:
        first, top = s["first_seq"], s["last_seq"]
        if top is None:
            s["first_seq"] = s["last_seq"] = q
        elif q > top + bound or q < first - bound:
            if pending is not None and pending < q <= pending + bound:  # a second seq continuing the first: reset
                if q > pending + 1:
                    change.gaps.append((pending + 1, q - 1))
                s.update(first_seq=pending, last_seq=q, lost=(s["lost"] or 0) + q - pending - 1, score_seq=None,
                         alarm_seq=None, received=(s["received"] or 0) + 1)  # the first was not counted yet
                odd.discard(pending)
                last = {"kind": "reset", "seq": q, "from_seq": pending, "last_seq": top, "at": now, "pending": False}
                pending = None
            else:
                odd.add(q)
                last = {"kind": "jump" if q > top else "backwards", "seq": q, "first_seq": first, "last_seq": top,
                        "bound": int(bound), "at": now, "pending": True}
                pending = q
                s["seq_anomalies"] = (s.get("seq_anomalies") or 0) + 1
                continue  # neither received nor lost: not this sequence
            s["seq_anomalies"] = (s.get("seq_anomalies") or 0) + 1
        else:
            if pending is not None:
                pending = None
                last = {**last, "pending": False} if last else None
            if q > top:
                if q > top + 1:
                    change.gaps.append((top + 1, q - 1))
                s["last_seq"] = q
                s["lost"] = (s["lost"] or 0) + q - top - 1
            elif q < first:  # older than anything seen: the range between was missing too
                if q + 1 <= first - 1:
                    change.gaps.append((q + 1, first - 1))
                s["first_seq"] = q
                s["lost"] = (s["lost"] or 0) + first - q - 1
            else:
                change.late.append(q)
                s["lost"] = (s["lost"] or 0) - 1
        s["received"] = (s["received"] or 0) + 1
    if last is not None:
        s["seq_anomaly"] = json.dumps(last)
    return odd


def instant(ts: str | None) -> tuple[float, str]:
    """An RFC 3339 timestamp as the instant it names (seconds since the epoch), for ordering: ``2026-12-06t00:00z``
    and ``2026-12-06T03:00:00+05:00`` are as old as they say, not as their text sorts. One that does not parse
    (or none) comes before every one that does; the text breaks ties."""
    if not ts:
        return -math.inf, ""
    text = ts.upper()
    try:  # Python 3.10's parser knows no "Z"
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return -math.inf, ts
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp(), ts


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
        return row["state_ts"] is None or instant(status.ts) >= instant(row["state_ts"])
    if link != known:
        return instant(link) > instant(known)
    if row.get("state") == "offline" and row.get("reason") == WILL_REASON:
        return False  # this connection is gone: whatever else it sent is older news
    return (status.state == "offline" and p.get("reason") == WILL_REASON) or instant(status.ts) >= instant(
        row["state_ts"])

