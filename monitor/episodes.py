"""Alarm episodes and their lifecycle: what a person does with an alarm, stored beside what the device said.

An episode is one alarm from raised to cleared, per site, device and channel, keyed by the seq that raised it
(its id: ``site/device/seq``). Its ``state``:

    active        raised, nobody has acknowledged it
    acknowledged  an operator has seen it (who, when, a note)
    shelved       set aside until a stated time (then active or acknowledged again, as before)
    cleared       the device cleared it; it waits for a verdict
    closed        an operator closed it with a verdict: ``fault_confirmed`` (which part, what was done),
                  ``no_fault_found`` (a false alarm) or ``maintenance`` (planned work, not a fault)

The device moves an episode by its alarm messages (``track``, inside the batch's transaction); an operator by
``act`` (acknowledge, shelve, close), one transaction each with its ``audit`` row and its webhook alert. A
cleared episode keeps what the operators wrote; a closed one stays closed when the device clears it later.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .bounds import INT_MAX, NAME, escape, text_error
from .db import Cursor
from .fastjson import dumps
from .rows import Alarm, Event
from .state import AlertEvent, alert_payload

STATES = ("active", "acknowledged", "shelved", "cleared", "closed")
VERDICTS = ("fault_confirmed", "no_fault_found", "maintenance")
SHELVE_MAX_S = 30 * 86_400.0  # a shelved alarm comes back within a month at the latest
TEXT_MAX = 500  # characters of a note, a part, the work done
COLUMNS = ("site", "device", "raised_seq", "channel", "raised_t", "raised_ts", "raised_at", "model", "level",
           "diagnosis", "state", "cleared_seq", "cleared_ts", "cleared_at", "ack_by", "ack_at", "ack_note",
           "shelved_by", "shelved_until", "verdict", "part", "work", "closed_by", "closed_at", "close_note", "updated")
DEFECT_NAMES = {"bpfo": "outer race", "bpfi": "inner race", "bsf": "ball", "ftf": "cage"}  # agent/detect/diagnosis


class ActionError(ValueError):
    """An action that cannot be done: ``status`` is the HTTP answer (400 bad input, 404 no such episode, 409 not
    from its state)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def episode_id(site: str, device: str, raised_seq: int) -> str:
    return f"{site}/{device}/{raised_seq}"


def parse_id(text: str) -> tuple[str, str, int]:
    """``site/device/seq`` -> its parts; a clear ActionError otherwise: names as topics allow them and a seq
    within signed 64-bit, so no id reaches the database that it would refuse (a NUL, 2^64) or no episode has."""
    parts = str(text).split("/")
    if (len(parts) != 3 or not NAME.fullmatch(parts[0]) or not NAME.fullmatch(parts[1])
            or not (parts[2].isascii() and parts[2].isdigit()) or len(parts[2]) > 19 or int(parts[2]) > INT_MAX):
        raise ActionError(400, f"episode {escape(str(text), 80)!r}: expected SITE/DEVICE/SEQ (as `vibrawatch alarms "
                               f"list` shows it; SEQ at most {INT_MAX})")
    return parts[0], parts[1], int(parts[2])


def describe(diagnosis: dict[str, Any] | None) -> str:
    """'outer race (BPFO x1.7)', or why none stands out; '' when the device sent no diagnosis."""
    if not diagnosis:
        return ""
    d = diagnosis.get("defect")
    if d is None:
        return f"no defect frequency stands out (largest x{diagnosis.get('ratio')})"
    return f"{DEFECT_NAMES.get(d, d)} ({str(d).upper()} x{diagnosis.get('ratio')})"


def effective(row: dict[str, Any], now: float) -> str:
    """The state as it is now: a shelved episode whose time is up is active (or acknowledged) again."""
    if row["state"] == "shelved" and (row.get("shelved_until") or 0.0) <= now:
        return "acknowledged" if row.get("ack_by") else "active"
    return str(row["state"])


def shown(row: dict[str, Any], now: float) -> dict[str, Any]:
    """An episode as the API, the CLI and the page show it: its id, its state now, the diagnosis in words."""
    r = dict(row)
    r["id"] = episode_id(r["site"], r["device"], r["raised_seq"])
    r["stored_state"], r["state"] = r["state"], effective(r, now)
    r["diagnosis"] = json.loads(r["diagnosis"]) if r.get("diagnosis") else None
    r["diagnosis_text"] = describe(r["diagnosis"])
    return r


def audit(cur: Cursor, actor: str, action: str, target: str, source: str, detail: dict[str, Any], now: float,
          key: str | None = None) -> None:
    """One row of who did what, when and from where (``key``: a device's change is recorded once however often
    its message is delivered)."""
    cur.execute("INSERT INTO audit (id, at, actor, action, target, source, detail) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING", (key or uuid.uuid4().hex, now, actor, action, target, source,
                                                dumps(detail)))


def _open(cur: Cursor, site: str, device: str, channel: str | None, before_seq: int | None = None) -> list[int]:
    """Raised seqs of the device's episodes not yet cleared (of one channel when ``channel`` is given)."""
    sql = "SELECT raised_seq FROM episodes WHERE site = ? AND device = ? AND cleared_seq IS NULL"
    args: list[Any] = [site, device]
    if channel is not None:
        sql, args = sql + " AND channel = ?", [*args, channel]
    if before_seq is not None:
        sql, args = sql + " AND raised_seq < ?", [*args, before_seq]
    cur.execute(sql + " ORDER BY raised_seq", args)
    return [int(r[0]) for r in cur.fetchall()]


def _start(cur: Cursor, a: Alarm, cleared: tuple[int, str, float] | None, now: float) -> None:
    """Open the episode ``a`` raises; cleared at once by ``cleared`` (seq, timestamp, received), the clear after it
    that was stored first."""
    cur.execute(f"INSERT INTO episodes ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
                "ON CONFLICT (site, device, raised_seq) DO NOTHING",
                (a.site, a.device, a.seq, a.channel or "", a.t, a.ts, a.received, a.model, a.level,
                 None if a.diagnosis is None else dumps(a.diagnosis), "active", None, None, None, None, None,
                 None, None, None, None, None, None, None, None, None, now))
    audit(cur, f"device {a.site}/{a.device}", "raised", episode_id(a.site, a.device, a.seq), "mqtt",
          {"channel": a.channel, "level": a.level, "timestamp": a.ts, "diagnosis": describe(a.diagnosis)},
          now, key=f"mqtt:{a.site}/{a.device}:{a.seq}")
    if cleared is not None:
        _clear(cur, a.site, a.device, a.seq, *cleared, now)


def _run(cur: Cursor, site: str, device: str, channel: str | None,
         seq: int) -> tuple[int | None, tuple[int, str, float] | None]:
    """The stored clears either side of ``seq`` (of one channel when ``channel`` is given): the seq of the one
    before, and (seq, timestamp, received) of the one after. Between them lies one alarm, however it arrived."""
    where = "site = ? AND device = ? AND event = 'cleared'" + (" AND COALESCE(channel, '') = ?" if channel is not None
                                                              else "")
    args = [site, device, *([channel] if channel is not None else []), seq]
    cur.execute(f"SELECT MAX(seq) FROM alarms WHERE {where} AND seq < ?", args)
    before = cur.fetchone()[0]
    cur.execute(f"SELECT seq, ts, received FROM alarms WHERE {where} AND seq > ? ORDER BY seq LIMIT 1", args)
    after = cur.fetchone()
    return (None if before is None else int(before)), (None if after is None else (int(after[0]), after[1],
                                                                                    after[2]))


def _raised_between(cur: Cursor, site: str, device: str, channel: str | None, low: int | None,
                    high: int | None) -> list[int]:
    """Raised seqs of the episodes raised between two seqs (None: no bound), of one channel when given."""
    sql, args = "SELECT raised_seq FROM episodes WHERE site = ? AND device = ?", [site, device]
    for cond, v in ((" AND channel = ?", channel), (" AND raised_seq > ?", low), (" AND raised_seq < ?", high)):
        if v is not None:
            sql, args = sql + cond, [*args, v]
    cur.execute(sql + " ORDER BY raised_seq", args)
    return [int(r[0]) for r in cur.fetchall()]


def _clear(cur: Cursor, site: str, device: str, raised_seq: int, seq: int, ts: str, received: float,
           now: float) -> None:
    cur.execute("UPDATE episodes SET cleared_seq = ?, cleared_ts = ?, cleared_at = ?, updated = ?, "
                "state = CASE WHEN state = 'closed' THEN 'closed' ELSE 'cleared' END "
                "WHERE site = ? AND device = ? AND raised_seq = ? AND cleared_seq IS NULL",
                (seq, ts, received, now, site, device, raised_seq))
    audit(cur, f"device {site}/{device}", "cleared", episode_id(site, device, raised_seq), "mqtt",
          {"seq": seq, "timestamp": ts}, now, key=f"mqtt:{site}/{device}:{seq}:{raised_seq}")


def _stored(cur: Cursor, site: str, device: str, seq: int, channels: list[str] | None) -> Alarm:
    """A stored alarm message as the row decoding made of it (``channels``: whether its detector is combined)."""
    cur.execute("SELECT site, device, seq, t, ts, event, channel, score, level, since, model, received, diagnosis "
                "FROM alarms WHERE site = ? AND device = ? AND seq = ?", (site, device, seq))
    r = cur.fetchone()
    return Alarm(*r[:12], json.loads(r[12]) if r[12] else None, channels)


def active(cur: Cursor, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[str | None, list[str]]]:
    """The devices' alarms now, from their episodes not yet cleared: (since, channels), the earliest raise first.

    ``since`` is the earliest open episode's (its raise's ``since``, else its timestamp): how long the device has
    been in alarm without a break. A device without an open episode is left out."""
    out: dict[tuple[str, str], tuple[str | None, list[str]]] = {}
    for site, device in keys:
        cur.execute("SELECT e.channel, COALESCE(a.since, e.raised_ts) FROM episodes e LEFT JOIN alarms a "
                    "ON a.site = e.site AND a.device = e.device AND a.seq = e.raised_seq "
                    "WHERE e.site = ? AND e.device = ? AND e.cleared_seq IS NULL ORDER BY e.raised_seq",
                    (site, device))
        rows = cur.fetchall()
        if rows:
            channels = list(dict.fromkeys(str(r[0]) for r in rows if r[0]))
            out[(site, device)] = (rows[0][1], channels)
    return out


def track(cur: Cursor, alarms: Sequence[Alarm], events: Sequence[Event], now: float) -> None:
    """Move episodes by the device's new alarm messages (seq order) and diagnoses, in the batch's transaction.

    A combined detector raises and clears per channel; a plain one has one alarm a device (any channel's
    messages are the same alarm). Between two clears of a channel (of the device, plain) lies one alarm, by seq
    whatever order the messages came in (the alarms table holds every one stored, this batch's too): a raise
    opens an episode unless that stretch has one already (an agent restarted in alarm raises it again, or an
    earlier raise came late), cleared at once when the clear after it is stored already (it came first). A
    cleared alarm clears the open episodes raised before it, and opens the one of the raise after it if that
    raise was taken as the alarm this clear ends (the clear came late)."""
    for a in sorted(alarms, key=lambda m: m.seq):
        combined = a.channels is not None
        channel = (a.channel or "") if combined else None
        if a.event == "raised":
            before, after = _run(cur, a.site, a.device, channel, a.seq)
            same = _raised_between(cur, a.site, a.device, channel, before, None if after is None else after[0])
            if same:  # a repeat (an agent restarted in alarm), or an earlier raise of it that came late
                if a.diagnosis is not None:  # the repeat knows the defect: keep it if the episode did not
                    cur.execute("UPDATE episodes SET diagnosis = ?, updated = ? WHERE site = ? AND device = ? "
                                "AND raised_seq = ? AND diagnosis IS NULL",
                                (dumps(a.diagnosis), now, a.site, a.device, same[0]))
                continue
            _start(cur, a, after, now)
        else:
            for seq in _open(cur, a.site, a.device, channel, a.seq):
                _clear(cur, a.site, a.device, seq, a.seq, a.ts, a.received, now)
            # A raise after this clear, stored before it came, was taken as the alarm this clear ends: its own.
            _, after = _run(cur, a.site, a.device, channel, a.seq)
            high = None if after is None else after[0]
            cur.execute("SELECT MIN(seq) FROM alarms WHERE site = ? AND device = ? AND event = 'raised' AND seq > ?"
                        + (" AND COALESCE(channel, '') = ?" if combined else "")
                        + (" AND seq < ?" if high is not None else ""),
                        [a.site, a.device, a.seq, *([channel] if combined else []),
                         *([high] if high is not None else [])])
            later = cur.fetchone()[0]
            if later is not None and not _raised_between(cur, a.site, a.device, channel, a.seq, high):
                _start(cur, _stored(cur, a.site, a.device, int(later), a.channels), after, now)
    for e in events:
        if e.kind == "diagnosis":  # an active alarm's defect stood out later than its raise
            diag = {k: e.payload[k] for k in ("defect", "ratio", "ratios") if k in e.payload}
            cur.execute("UPDATE episodes SET diagnosis = ?, updated = ? WHERE site = ? AND device = ? "
                        "AND channel = ? AND cleared_seq IS NULL", (dumps(diag), now, e.site, e.device,
                                                                    e.payload.get("channel") or ""))


def note_text(field: str, v: Any) -> str:
    """What an operator wrote (a note, a part, the work done), stripped, or a clear ActionError (400): at most
    ``TEXT_MAX`` characters and none that the MQTT free-text fields refuse either (bounds.py: C0, DEL, C1)."""
    if not isinstance(v, str) or len(v) > TEXT_MAX:
        raise ActionError(400, f"{field}: expected text of at most {TEXT_MAX} characters")
    if (why := text_error(field, v.strip())) is not None:
        raise ActionError(400, why)
    return v.strip()


@dataclass(frozen=True)
class Action:
    """What an operator asks: ``kind`` ack | shelve | close, and its fields."""

    kind: str
    note: str = ""
    until: float | None = None  # shelve: wall clock
    verdict: str | None = None  # close
    part: str = ""  # close as fault_confirmed: which part
    work: str = ""  # close as fault_confirmed: what was done

    @classmethod
    def of(cls, kind: str, body: dict[str, Any], now: float) -> Action:
        """An action from a request's JSON, checked: a clear ActionError (400) names the field."""
        if kind not in ("ack", "shelve", "close"):
            raise ActionError(404, f"no action {kind!r}: ack, shelve or close")
        text = {}
        for k in ("note", "part", "work"):
            text[k] = note_text(k, body.get(k) or "")
        until = None
        if kind == "shelve":
            until = body.get("until")
            if until is None and body.get("hours") is not None:
                h = body["hours"]
                until = (now + float(h) * 3600 if isinstance(h, (int, float)) and not isinstance(h, bool)
                         and abs(h) <= SHELVE_MAX_S else None)  # 1e400 hours: no float, and far past the limit
            if isinstance(until, bool) or not isinstance(until, (int, float)) or not now < until <= now + SHELVE_MAX_S:
                raise ActionError(400, f"shelve: expected hours > 0 (or until, a Unix time) within "
                                       f"{SHELVE_MAX_S / 86400:.0f} days")
            until = float(until)
        verdict = None
        if kind == "close":
            verdict = body.get("verdict")
            if verdict not in VERDICTS:
                raise ActionError(400, f"verdict: expected one of {', '.join(VERDICTS)}, got {str(verdict)[:40]!r}")
            if verdict == "fault_confirmed" and not (text["part"] and text["work"]):
                raise ActionError(400, "fault_confirmed needs part (which part failed) and work (what was done)")
        return cls(kind, text["note"], until, verdict, text["part"], text["work"])


ALLOWED = {"ack": ("active", "shelved"), "shelve": ("active", "acknowledged"),
           "close": ("active", "acknowledged", "shelved", "cleared")}


def act(db: Any, episode: str, action: Action, actor: str, source: str, now: float | None = None) -> dict[str, Any]:
    """Do ``action`` to an episode for operator ``actor`` (authenticated by the caller) from ``source``: the
    change, its audit row and its webhook alert in one transaction; the episode as shown afterwards."""
    now = time.time() if now is None else now
    site, device, seq = parse_id(episode)
    with db.transaction() as cur:
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM episodes WHERE site = ? AND device = ? AND raised_seq = ? "
                    f"{db.lock_rows}", (site, device, seq))
        found = cur.fetchone()
        if found is None:
            raise ActionError(404, f"no alarm episode {episode}")
        row = dict(zip(COLUMNS, found, strict=True))
        now_state = effective(row, now)
        if now_state not in ALLOWED[action.kind]:
            hint = {"cleared": "it is cleared: close it with a verdict", "closed": "it is closed already"}
            raise ActionError(409, f"{episode} is {now_state}: cannot {action.kind} it"
                                   + (f" ({hint[now_state]})" if now_state in hint else ""))
        if action.kind == "ack":
            sets = {"state": "acknowledged", "ack_by": actor, "ack_at": now, "ack_note": action.note}
        elif action.kind == "shelve":
            sets = {"state": "shelved", "shelved_by": actor, "shelved_until": action.until}
        else:
            sets = {"state": "closed", "verdict": action.verdict, "part": action.part or None,
                    "work": action.work or None, "closed_by": actor, "closed_at": now, "close_note": action.note}
        sets["updated"] = now
        cur.execute(f"UPDATE episodes SET {', '.join(f'{k} = ?' for k in sets)} WHERE site = ? AND device = ? "
                    "AND raised_seq = ?", (*sets.values(), site, device, seq))
        detail = {"from": now_state, "to": sets["state"], "note": action.note,
                  **({"until": action.until} if action.kind == "shelve" else {}),
                  **({"verdict": action.verdict, "part": action.part, "work": action.work}
                     if action.kind == "close" else {})}
        audit(cur, actor, action.kind, episode, source, detail, now)
        kind = {"ack": "alarm_acknowledged", "shelve": "alarm_shelved", "close": "alarm_closed"}[action.kind]
        alert = AlertEvent(key=f"episode:{episode}:{action.kind}:{uuid.uuid4().hex[:12]}", kind=kind, site=site,
                           device=device, payload=alert_payload(kind, site, device, episode=episode, by=actor,
                                                                at=now, channel=row["channel"] or None, **detail))
        cur.execute("INSERT INTO alerts (key, kind, site, device, payload, created, next_try) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?)", (alert.key, alert.kind, site, device,
                                              json.dumps(alert.payload, separators=(",", ":")), now, now))
        row.update(sets)
    return shown(row, now)


def listing(db: Any, now: float, site: str | None = None, device: str | None = None, state: str | None = None,
            limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """Episodes newest first (of one site / device, in one state now), as shown."""
    where, args = [], []
    for col, v in (("site", site), ("device", device)):
        if v:
            where.append(f"{col} = ?")
            args.append(v)
    if state == "open":
        where.append("state <> 'closed'")
    elif state in ("cleared", "closed", "acknowledged", "active"):
        where.append("state IN (?, 'shelved')" if state in ("active", "acknowledged") else "state = ?")
        args.append(state)
    elif state == "shelved":
        where.append("state = 'shelved' AND shelved_until > ?")
        args.append(now)
    elif state:
        raise ActionError(400, f"state: expected open or one of {', '.join(STATES)}, got {state[:40]!r}")
    rows = db.query(f"SELECT {', '.join(COLUMNS)} FROM episodes {'WHERE ' + ' AND '.join(where) if where else ''} "
                    "ORDER BY raised_at DESC, site, device, raised_seq DESC LIMIT ? OFFSET ?", (*args, limit, offset))
    out = [shown(r, now) for r in rows]
    return [r for r in out if state in (None, "", "open", "cleared", "closed", "shelved") or r["state"] == state]


def get(db: Any, episode: str, now: float) -> dict[str, Any] | None:
    """One episode as shown, or None."""
    site, device, seq = parse_id(episode)
    rows = db.query(f"SELECT {', '.join(COLUMNS)} FROM episodes WHERE site = ? AND device = ? AND raised_seq = ?",
                    (site, device, seq))
    return shown(rows[0], now) if rows else None


def history(db: Any, episode: str, limit: int = 200) -> list[dict[str, Any]]:
    """The audit rows of one episode, oldest first: the whole story from raise to close."""
    parse_id(episode)
    rows = db.query("SELECT at, actor, action, source, detail FROM audit WHERE target = ? ORDER BY at, id LIMIT ?",
                    (episode, limit))
    for r in rows:
        r["detail"] = json.loads(r["detail"])
    return rows
