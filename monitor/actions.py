"""The state-changing side of the HTTP API: log in and out, acknowledge, shelve and close alarm episodes.

Every action needs an authenticated operator (auth.py): ``Authorization: Bearer NAME:SECRET``, or the page's
session cookie together with its CSRF token in ``X-CSRF-Token``. Bodies are JSON (``Content-Type:
application/json``, which an HTML form on another site cannot send) of at most ``BODY_MAX`` bytes. Answers:
200 done, 400 bad input, 401 not authenticated (no or wrong credentials), 403 no CSRF token or no operators
configured, 404 no such episode, 409 not from its state, 413 too big, 415 not JSON. A refused request changes
nothing and leaves no audit row (it is logged); a done one is in ``audit`` with who, what, when and from where.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any, NamedTuple

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


class ActionApi:
    """Answers the POST requests; ``changed`` tells the page's event stream (and the alert sender) to look."""

    def __init__(self, db: Any, operators: Operators, sessions: Sessions, changed: Callable[[], None]) -> None:
        self.db, self.operators, self.sessions, self.changed = db, operators, sessions, changed

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
                "operators_configured": bool(self.operators)}

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
        action = Action.of(path.rsplit("/", 1)[1], body, now)
        row = episodes.act(self.db, str(body.get("id") or ""), action, operator, where, now)
        log.warning("%s %s %s from %s", operator, action.kind, row["id"], where)
        self.changed()
        out: dict[str, Any] = {"episode": row}
        if action.kind == "close" and body.get("recalibrate"):
            # The hook for remote recalibration after a repair: the signed request is made where the signing key
            # is (the operator's workstation, as for deploys), not by the monitor.
            out["recalibrate"] = (f"vibrawatch recalibrate --broker mqtt://HOST:PORT --site {row['site']} "
                                  f"--device {row['device']}")
        return Answer(200, out)

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
