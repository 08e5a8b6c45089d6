"""`vibrawatch recalibrate`: ask one gateway over MQTT to commission its machine again (after a bearing was
replaced, a re-alignment), the way deploys travel: signed with the deploy key, addressed to one device, an id
newer than the last (milliseconds since the epoch), and an expiry time, so a stale request is refused.

One retained QoS 1 message on ``vibrawatch/v1/<site>/<device>/command`` (docs/mqtt.md, schema
agent/link/schemas/command.json): ``{"v": 1, "request": "<JSON text>", "signature": "<base64 Ed25519>"}``.
Retained, so a gateway offline now gets it when it reconnects, until it expires. The outcome comes back in the
device's retained status (``command``; state ``commissioning``). A device whose status says it does not accept
it (``accepts.recalibrate`` false) is answered at once and sent nothing.

The request itself is made by agent/model/signing.py (``make_command``), beside the gateway's verifier; the
monitor publishes the same bytes over its own connection when it holds the key (monitor/actions.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.model.signing import DEFAULT_EXPIRES_S, command_topic, make_command

from .deploy import BrokerOptions, Session


def send_recalibrate(broker: BrokerOptions, site: str, device: str, sign_key: Path, wait_s: float = 60.0,
                     expires_s: float = DEFAULT_EXPIRES_S, note: str = "", by: str = "",
                     command_id: int | None = None) -> dict[str, Any]:
    """Publish a signed recalibrate request to one device and wait up to ``wait_s`` for its answer.

    Returns ``{"site", "device", "id", "outcome", "reason", "seconds", "state", "expires"}``; ``outcome`` is
    ``applied`` (the device started commissioning), ``refused`` (its reason), ``not_accepted`` (its status says
    it does not take remote recalibration: nothing was sent), ``sent`` (``wait_s`` 0) or ``pending`` (no answer
    yet: the request stays retained until it expires). Raises ConfigError for a bad broker, name or key."""
    if expires_s <= 0:
        raise ConfigError(f"--expires-in {expires_s:g}: give a positive number of seconds")
    command_topic(site, device)
    command_id = command_id or time.time_ns() // 1_000_000
    payload = make_command(site, device, command_id, sign_key, expires_s, note, by)  # a bad key fails here
    expires = json.loads(json.loads(payload)["request"])["expires"]
    out: dict[str, Any] = {"site": site, "device": device, "id": command_id, "expires": expires, "seconds": None}
    session = Session(broker, site)
    try:
        session.settle()
        why = session.refusal(device, "recalibrate")
        if why is not None:
            return {**out, "outcome": "not_accepted", "reason": why, "state": _state(session, device)}
        t0 = time.monotonic()
        session.publish(command_topic(site, device), payload)
        if wait_s <= 0:
            return {**out, "outcome": "sent", "reason": "", "state": _state(session, device)}
        deadline = t0 + wait_s
        while time.monotonic() < deadline and not session.command(device, command_id):
            time.sleep(0.05)
        seen = session.command(device, command_id)
        state = _state(session, device)
    finally:
        session.close()
    if not seen:
        return {**out, "outcome": "pending", "state": state,
                "reason": f"no answer in {wait_s:g} s (device {state or 'unknown'}); the request stays retained "
                          f"and is acted on when it reconnects, until {expires}"}
    result = "applied" if "applied" in seen else "refused"
    t, c = seen[result]
    return {**out, "outcome": result, "reason": c.get("reason", ""), "seconds": round(t - t0, 3), "state": state}


def _state(session: Session, device: str) -> str | None:
    with session.lock:
        return session.status.get(device, {}).get("state")
