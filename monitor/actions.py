"""The state-changing side of the HTTP API: log in and out, acknowledge, shelve and close alarm episodes.

Every action needs an authenticated operator (auth.py): ``Authorization: Bearer NAME:SECRET``, or the page's
session cookie together with its CSRF token in ``X-CSRF-Token``. Bodies are JSON (``Content-Type:
application/json``, which an HTML form on another site cannot send) of at most ``BODY_MAX`` bytes. Answers:
200 done, 400 bad input, 401 not authenticated (no or wrong credentials), 403 no CSRF token or no operators
configured, 404 no such episode, 409 not from its state, 413 too big, 415 not JSON. A refused request changes
nothing and leaves no audit row (it is logged); a done one is in ``audit`` with who, what, when and from where.

After a repair the gateway should learn the machine's new healthy state: a close with ``"recalibrate": true``
(or ``POST /api/episodes/recalibrate``) has the ``Recalibrator`` publish the signed recalibrate request
(agent/model/signing.py, what `vibrawatch recalibrate` sends) on the device's command topic over the monitor's
own MQTT connection, when ``[remote] signing_key`` is set; the request is in the episode's history (an audit
row ``recalibrate``), and the device's answer comes back in its status. Without a key the answer carries the
`vibrawatch recalibrate` command to run where the key is, as before.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any, NamedTuple

from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.model.signing import command_topic, make_command

from . import episodes
from .auth import SESSION_S, Operators, Session, Sessions, same
from .episodes import Action, ActionError

log = logging.getLogger("vibrawatch.monitor.actions")
COOKIE = "vw_session"
BODY_MAX = 16_384


class Answer(NamedTuple):
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


def source(headers: Mapping[str, str], peer: str) -> str:
    """Where a request came from: the peer, and what a reverse proxy says it forwarded (as given: recorded, not
    trusted)."""
    fwd = headers.get("X-Forwarded-For")
    return f"{peer} (X-Forwarded-For {fwd[:200]})" if fwd else peer


def command_hint(site: str, device: str) -> str:
    """What to run where the signing key is, when this monitor holds none."""
    return f"vibrawatch recalibrate --broker mqtt://HOST:PORT --site {site} --device {device}"


class Recalibrator:
    """Sends a repaired machine's gateway the signed request to commission again, and records that it did.

    ``publish(topic, payload)`` sends one retained QoS 1 message over the monitor's connection and returns
    whether the broker acknowledged it. No ``key``: nothing is sent, the answer names the command to run."""

    PUBLISH_WAIT_S = 10.0

    def __init__(self, db: Any, key: str | None, expires_s: float,
                 publish: Callable[[str, bytes], bool] | None) -> None:
        self.db, self.key, self.expires_s, self.publish = db, key, expires_s, publish
        self._last_id = 0
        self._lock = threading.Lock()

    @classmethod
    def over_mqtt(cls, db: Any, key: str | None, expires_s: float, client: Callable[[], Any]) -> Recalibrator:
        """One that publishes with the paho client ``client()`` returns at the time (the monitor's own)."""
        def publish(topic: str, payload: bytes) -> bool:
            info = client().publish(topic, payload, qos=1, retain=True)
            try:
                info.wait_for_publish(cls.PUBLISH_WAIT_S)
            except (RuntimeError, ValueError) as e:  # not queued at all: say so, do not pretend it went
                raise ConfigError(f"the request to {topic} could not be queued: {e}") from None
            return bool(info.is_published())
        return cls(db, key, expires_s, publish)

    @property
    def signs(self) -> bool:
        """Whether this monitor sends the request itself (it holds the signing key)."""
        return self.key is not None and self.publish is not None

    def _refusal(self, site: str, device: str) -> str | None:
        """Why the device will not act on it, from its newest stored status (None: it will, or cannot tell)."""
        rows = self.db.query("SELECT payload FROM statuses WHERE site = ? AND device = ? ORDER BY received DESC "
                             "LIMIT 1", (site, device))
        try:
            accepts = json.loads(rows[0]["payload"]).get("accepts") if rows else None
        except (ValueError, AttributeError):
            return None
        if isinstance(accepts, dict) and accepts.get("recalibrate") is False:
            return f"{device} does not accept remote recalibration: [remote] recalibrate is not enabled in its config"
        return None

    def _next_id(self) -> int:
        """Milliseconds since the epoch, and always more than the last one sent from here (the anti-replay id)."""
        with self._lock:
            self._last_id = max(time.time_ns() // 1_000_000, self._last_id + 1)
            return self._last_id

    def send(self, episode: dict[str, Any], operator: str, where: str, note: str) -> dict[str, Any]:
        """Ask the episode's device to commission again; the answer, and (when anything was decided) an audit row
        ``recalibrate`` on the episode with its outcome: sent, queued (the broker has not acknowledged it yet),
        not_accepted (the device's status says it does not take it: nothing sent), failed (and why)."""
        site, device = episode["site"], episode["device"]
        out: dict[str, Any] = {"site": site, "device": device}
        if not self.signs:
            return {**out, "outcome": "not_sent", "command": command_hint(site, device),
                    "reason": "this monitor holds no signing key ([remote] signing_key): run the command where the "
                              "deploy key is"}
        assert self.key is not None and self.publish is not None
        topic = command_topic(site, device)
        now = time.time()
        why = self._refusal(site, device)
        if why is not None:
            out.update(outcome="not_accepted", reason=why)
        else:
            command_id = self._next_id()
            try:  # the key moved since the start, the connection's queue full: the close stands, this says why
                payload = make_command(site, device, command_id, self.key, self.expires_s, note=note, by=operator,
                                       now=now)
                expires = json.loads(json.loads(payload)["request"])["expires"]
                acked = self.publish(topic, payload)
            except (ConfigError, OSError) as e:
                out.update(outcome="failed", id=command_id, reason=str(e))
            else:
                out.update(outcome="sent" if acked else "queued", id=command_id, expires=expires, topic=topic,
                           reason="" if acked else f"the broker has not acknowledged it within "
                                                   f"{self.PUBLISH_WAIT_S:g} s; it goes out when the monitor's "
                                                   "connection is back")
        with self.db.transaction() as cur:
            episodes.audit(cur, operator, "recalibrate", episode["id"], where,
                           {k: out.get(k) for k in ("outcome", "id", "expires", "reason")} | {"note": note}, now)
        log.warning("%s recalibrate %s/%s for %s: %s %s", operator, site, device, episode["id"], out["outcome"],
                    out.get("id") or out.get("reason"))
        return out


class ActionApi:
    """Answers the POST requests; ``changed`` tells the page's event stream (and the alert sender) to look."""

    def __init__(self, db: Any, operators: Operators, sessions: Sessions, changed: Callable[[], None],
                 recalibrator: Recalibrator | None = None) -> None:
        self.db, self.operators, self.sessions, self.changed = db, operators, sessions, changed
        self.recalibrator = recalibrator or Recalibrator(db, None, 0.0, None)

    def _session(self, headers: Mapping[str, str]) -> tuple[str | None, Session | None]:
        try:
            jar = SimpleCookie(headers.get("Cookie") or "")
        except CookieError:
            return None, None
        token = jar[COOKIE].value if COOKIE in jar else None
        return token, self.sessions.get(token)

    def whoami(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """The page's operator (None: not logged in), the CSRF token its actions carry, whether anyone may act."""
        _, s = self._session(headers)
        return {"operator": s.operator if s else None, "csrf": s.csrf if s else None,
                "operators_configured": bool(self.operators), "signs_recalibration": self.recalibrator.signs}

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """The operator behind a state-changing request, or an ActionError (401 / 403)."""
        if not self.operators:
            raise ActionError(403, "no operators are configured, so nobody may act: add one with `vibrawatch "
                                   "operators add` and set [monitor] operators_file (docs/monitor.md)")
        auth = headers.get("Authorization") or ""
        if auth:
            scheme, _, token = auth.partition(" ")
            name = self.operators.check(token.strip()) if scheme.lower() == "bearer" else None
            if name is None:
                raise ActionError(401, "wrong credentials: expected Authorization: Bearer NAME:SECRET of an operator")
            return name
        _, s = self._session(headers)
        if s is None:
            raise ActionError(401, "not logged in: log in on the page, or send Authorization: Bearer NAME:SECRET")
        if not same(headers.get("X-CSRF-Token") or "", s.csrf):
            raise ActionError(403, "missing or wrong X-CSRF-Token for this session")
        return s.operator

    def post(self, path: str, raw: bytes, headers: Mapping[str, str], peer: str) -> Answer:
        """One POST request's answer; refusals are logged with where they came from."""
        where = source(headers, peer)
        try:
            return self._post(path, raw, headers, where)
        except ActionError as e:
            if e.status in (401, 403):
                log.warning("refused %s from %s: %s", path, where, e)
            extra = (("WWW-Authenticate", 'Bearer realm="vibrawatch"'),) if e.status == 401 else ()
            return Answer(e.status, {"error": str(e)}, extra)

    def _post(self, path: str, raw: bytes, headers: Mapping[str, str], where: str) -> Answer:
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ActionError(415, f"{path}: expected Content-Type: application/json")
        if path == "/api/logout":
            token, _ = self._session(headers)
            self.sessions.end(token)
            return Answer(200, {"operator": None}, (("Set-Cookie", f"{COOKIE}=; Path=/; Max-Age=0"),))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise ActionError(400, f"{path}: the body is not JSON") from None
        if not isinstance(body, dict):
            raise ActionError(400, f"{path}: expected a JSON object")
        if path == "/api/login":
            return self._login(body, headers, where)
        if not path.startswith("/api/episodes/"):
            raise ActionError(404, f"{path}: not found")
        operator = self.authenticate(headers)  # before anything about the request is looked at
        now = time.time()
        kind = path.rsplit("/", 1)[1]
        if kind == "recalibrate":
            return self._recalibrate(body, operator, where, now)
        action = Action.of(kind, body, now)
        row = episodes.act(self.db, str(body.get("id") or ""), action, operator, where, now)
        log.warning("%s %s %s from %s", operator, action.kind, row["id"], where)
        out: dict[str, Any] = {"episode": row}
        if action.kind == "close" and body.get("recalibrate"):  # after a repair: learn the new healthy state
            why = "; ".join(t for t in (f"{action.part}: {action.work}".strip(": "), action.note) if t)
            out["recalibration"] = self.recalibrator.send(row, operator, where, f"alarm {row['id']} closed"
                                                          + (f" ({why})" if why else ""))
            if out["recalibration"]["outcome"] == "not_sent":
                out["recalibrate"] = out["recalibration"]["command"]  # what to run, as before a key was possible
        self.changed()
        return Answer(200, out)

    def _recalibrate(self, body: dict[str, Any], operator: str, where: str, now: float) -> Answer:
        """``POST /api/episodes/recalibrate {"id": ..., "note": ...}``: the request alone, for an episode in any
        state (a repair done after it was closed, a request that expired while the gateway was off)."""
        note = episodes.note_text("note", body.get("note") or "")
        row = episodes.get(self.db, str(body.get("id") or ""), now)
        if row is None:
            raise ActionError(404, f"no alarm episode {str(body.get('id'))[:80]}")
        if not self.recalibrator.signs:
            raise ActionError(409, "this monitor holds no signing key ([remote] signing_key): run "
                                   f"`{command_hint(row['site'], row['device'])}` where the deploy key is")
        out = self.recalibrator.send(row, operator, where, note or f"after alarm {row['id']}")
        self.changed()
        return Answer(200, {"episode": row, "recalibration": out})

    def _login(self, body: dict[str, Any], headers: Mapping[str, str], where: str) -> Answer:
        if not self.operators:
            raise ActionError(403, "no operators are configured, so nobody may log in (docs/monitor.md)")
        name, password = body.get("name"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not name or len(password) > 1024:
            raise ActionError(400, "login: expected {\"name\": ..., \"password\": ...}")
        if self.operators.check(f"{name}:{password}") is None:
            raise ActionError(401, "wrong name or password")
        token, s = self.sessions.start(name)
        secure = "; Secure" if (headers.get("X-Forwarded-Proto") or "").lower() == "https" else ""
        log.warning("%s logged in from %s", name, where)
        return Answer(200, {"operator": name, "csrf": s.csrf},
                      (("Set-Cookie", f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; "
                                      f"Max-Age={int(SESSION_S)}{secure}"),))
