"""The MQTT topic and payload scheme, version 1 (documented in docs/mqtt.md, JSON Schemas in agent/link/schemas/).

    vibrawatch/v1/<site>/<device>/score    one message per scored window        QoS 1, not retained
    vibrawatch/v1/<site>/<device>/alarm    alarm raised or cleared              QoS 1, not retained
    vibrawatch/v1/<site>/<device>/status   online / offline (last will) / sensor  QoS 1, retained
    vibrawatch/v1/<site>/<device>/deploy   a signed deploy request (agent.deploy)  QoS 1, retained, inbound
    vibrawatch/v1/<site>/<device>/deploy/bundle   its bundle, raw .tar bytes      QoS 1, retained, inbound
    vibrawatch/v1/<site>/<device>/transient         a jump that relaxed back     QoS 1, not retained
    vibrawatch/v1/<site>/<device>/condition_change  every channel changed at once  QoS 1, not retained
    vibrawatch/v1/<site>/<device>/diagnosis  an active alarm's defect first stands out  QoS 1, not retained

Payloads are JSON objects with ``"v": 1``. ``seq`` counts every score and alarm message of a device and
survives agent restarts (it lives in the spool), so a consumer drops a redelivered message by seq.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..detect.results import Scored

PREFIX = "vibrawatch/v1"
VERSION = 1
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def topic(site: str, device: str, kind: str) -> str:
    """``vibrawatch/v1/<site>/<device>/<kind>``; site and device may not contain MQTT wildcards or '/'."""
    for name, value in (("site", site), ("device", device)):
        if not _SEGMENT.match(value):
            raise ConfigError(f"agent.{name} {value!r}: use 1-64 letters, digits, '_', '-' or '.' (no '/', '+', '#')")
    return f"{PREFIX}/{site}/{device}/{kind}"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FIRST, _LAST = datetime.min.replace(tzinfo=timezone.utc), datetime.max.replace(tzinfo=timezone.utc)


def iso(t: float) -> str:
    """Timestamps in payloads: ISO 8601 UTC with milliseconds (the ``t`` field keeps the seconds).

    Never raises: a time outside the years 1-9999 (or NaN, which reads as the epoch) becomes the nearest
    time ISO 8601 can write. The sources refuse such times first; this keeps a bad clock from ever
    stopping the agent in the middle of a message.
    """
    try:
        d = _EPOCH + timedelta(seconds=t)
    except (OverflowError, ValueError, TypeError):
        d = _FIRST if isinstance(t, int | float) and t < 0 else _LAST if t == t else _EPOCH
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def score_payload(*, t: float, score: float, threshold: float, level: float,
                  contributions: dict[str, float], model: str, model_sha256: str | None = None) -> dict[str, Any]:
    """A score message without its ``seq``: the spool numbers messages as it stores them."""
    return {"v": VERSION, "timestamp": iso(t), "t": t, "score": score, "threshold": threshold,
            "level": level, "contributions": contributions, "model": model, **_sha(model_sha256)}


def _sha(model_sha256: str | None) -> dict[str, str]:
    """``model_sha256``: the sha256 of the model file that scored (the manifest's), when known."""
    return {} if model_sha256 is None else {"model_sha256": model_sha256}


def alarm_payload(*, t: float, event: str, channel: str | None, score: float, level: float,
                  since: float | None, model: str, model_sha256: str | None = None, **extra: Any) -> dict[str, Any]:
    """An alarm message without its ``seq`` (see ``score_payload``); ``extra``: the optional ``channels``
    and ``diagnosis`` of a combined detector."""
    return {"v": VERSION, "timestamp": iso(t), "t": t, "event": event, "channel": channel,
            "score": score, "level": level, "since": None if since is None else iso(since), "model": model,
            **_sha(model_sha256), **extra}


def verdict_messages(ev: Scored, channels: Sequence[str], model: str,
                     model_sha256: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """A combined detector's window: one alarm per channel raised or cleared (with the diagnosis), and its
    transients and condition changes."""
    v = ev.verdict
    assert v is not None
    out: list[tuple[str, dict[str, Any]]] = []
    active = [channels[c] for c in v.active]
    for event, chans in (("raised", v.raised), ("cleared", v.cleared)):
        for c in chans:
            extra: dict[str, Any] = {"channels": active}
            if event == "raised" and c in ev.diagnosis:
                extra["diagnosis"] = ev.diagnosis[c]
            out.append(("alarm", alarm_payload(t=ev.t, event=event, channel=channels[c], score=ev.score,
                                               level=float(v.evidence[c]), since=ev.since, model=model,
                                               model_sha256=model_sha256, **extra)))
    for c, dg in ev.diagnosed.items():
        out.append(("diagnosis", {"v": VERSION, "timestamp": iso(ev.t), "t": ev.t, "channel": channels[c],
                                  "since": None if ev.since is None else iso(ev.since), **dg, "model": model,
                                  **_sha(model_sha256)}))
    for e in v.events:
        body: dict[str, Any] = {"v": VERSION, "timestamp": iso(e.t), "t": e.t,
                                "channels": [channels[c] for c in e.channels], "ratio": list(e.ratio), "model": model,
                                **_sha(model_sha256)}
        if e.kind == "transient":
            body["relaxed_by"] = iso(e.until if e.until is not None else e.t)
        out.append((e.kind, body))
    return out


def window_messages(ev: Scored, channels: Sequence[str], threshold: float, model: str,
                    model_sha256: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(kind, payload) for one scored window: its score, and an alarm when the window raised or cleared one."""
    contributions = {c: float(v) for c, v in zip(channels, ev.contributions, strict=True)}
    out = [("score", score_payload(t=ev.t, score=ev.score, threshold=threshold, level=ev.level,
                                   contributions=contributions, model=model, model_sha256=model_sha256))]
    if ev.verdict is not None:
        return out + verdict_messages(ev, channels, model, model_sha256)
    d = ev.decision
    if d.event:
        channel = channels[d.channel] if d.channel >= 0 else None
        out.append(("alarm", alarm_payload(t=ev.t, event=d.event, channel=channel, score=ev.score, level=ev.level,
                                           since=ev.since, model=model, model_sha256=model_sha256)))
    return out


def status_payload(state: str, **fields: Any) -> dict[str, Any]:
    return {"v": VERSION, "state": state, "timestamp": iso(datetime.now(timezone.utc).timestamp()), **fields}


_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # json.dumps makes one per call with these


def encode(payload: dict[str, Any]) -> bytes:
    """Compact JSON (NaN and infinity refused: ValueError), as bytes; one encoder for every message."""
    return _JSON.encode(payload).encode()
