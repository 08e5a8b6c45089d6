"""The monitor's page and JSON API on the standard library's threaded HTTP server, bounded.

    GET /                          the fleet table (static/index.html)
    GET /device?site=S&device=D    one device: score against threshold, alarm periods, contributions, status
    GET /static/NAME               the page's files, uPlot (MIT, vendored from npm with its LICENSE)
    GET /api/fleet                 the fleet table as JSON, worst first
    GET /api/device?site=&device=  a device's row, recent raw scores, hourly aggregates, its newest alarms,
                                   statuses, gaps
    GET /api/alarms?site=&device=&limit=&offset=   a device's alarms, newest first, a page at a time
    GET /api/alerts?limit=&offset=, /api/dead?limit=&offset=   alert delivery state; dead letters (an excerpt
                                   of each payload) with their reasons, newest first, a page at a time
    GET /api/health                what is true now: database reachable and storing, broker connected, ingest
                                   lag, dead letters in the last hour; 503 while the monitor cannot store
    GET /api/events                server-sent events: ``change`` whenever the data changed
    GET /api/episodes?site=&device=&state=&limit=&offset=&history=1   alarm episodes with their lifecycle,
                                   newest first (``history=1``: each with its audit rows, oldest first)
    GET /api/episode?id=SITE/DEVICE/SEQ   one episode and its history (the audit rows)
    GET /api/measures              the verdicts' measures per site and model (measures.py)
    GET /api/whoami                the page's operator and CSRF token, if logged in; whether this monitor signs
                                   recalibration requests itself
    POST /api/login, /api/logout, /api/episodes/{ack,shelve,close,recalibrate}   (actions.py: operators only)

Bounded, so no client can take the monitor down: a request's line and headers must arrive within
``request_timeout_s`` (an idle keep-alive connection is closed after it too), at most ``max_connections`` are
open at once and ``max_event_clients`` of them server-sent-event streams (beyond either: 503), and lists come a
page at a time (``limit`` at most PAGE_MAX) with long stored texts cut to an excerpt.

Viewing is open; changing an alarm's state needs an authenticated operator (actions.py, auth.py). Bind it to
127.0.0.1 (the default) and put a reverse proxy with TLS in front to reach it from elsewhere (docs/monitor.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from vibrawatch.agent.errors import ConfigError

from . import episodes, fleet
from .actions import BODY_MAX, ActionApi, Answer
from .bounds import INT_MAX, text_error
from .config import MonitorConfig
from .measures import measures
from .store import Store

log = logging.getLogger("vibrawatch.monitor.web")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", "": "text/plain; charset=utf-8"}
RAW_POINTS = 5000  # raw scores a device page gets at most (older history comes as hourly aggregates)
ALARM_POINTS = 1000  # the newest alarms a device page draws its alarm periods from (/api/alarms pages through all)
PAGE_DEFAULT, PAGE_MAX = 50, 200  # rows per page of /api/dead, /api/alerts, /api/alarms
EXCERPT_CHARS = 2000  # of a dead letter's payload (its length is given beside it)
STATUS_MAX_CHARS = 65536  # a stored status payload longer than this is not sent whole to the page
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
MAX_EVENT_CLIENTS = 16
_BUSY_BODY = b'{"error":"too many connections; try again later"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
         + str(len(_BUSY_BODY)).encode() + b"\r\nConnection: close\r\nRetry-After: 5\r\n\r\n" + _BUSY_BODY)


class Changes:
    """A version number that goes up when the data changed; SSE handlers wait on it."""

    def __init__(self) -> None:
        self.version = 0
        self._cond = threading.Condition()

    def bump(self) -> None:
        with self._cond:
            self.version += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.version != seen, timeout=timeout)
            return self.version


def _static(name: str) -> bytes | None:
    f = resources.files("vibrawatch.monitor") / "static" / name
    return f.read_bytes() if "/" not in name and f.is_file() else None


def device_detail(store: Store, site: str, device: str, now: float, cfg: MonitorConfig) -> dict[str, Any] | None:
    """Everything the device page draws, as columns (uPlot takes arrays)."""
    rows = [r for r in fleet.table(store, now, cfg.fleet.silent_factor, cfg.fleet.min_silent_s)
            if r["site"] == site and r["device"] == device]
    if not rows:
        return None
    raw = store.query("SELECT seq, t, score, threshold, level, contributions, threshold_source FROM scores "
                      "WHERE site = ? AND device = ? ORDER BY seq DESC LIMIT ?", (site, device, RAW_POINTS))
    raw.sort(key=lambda r: r["t"])
    contributions: dict[str, list[float | None]] = {}
    for i, r in enumerate(raw):
        for ch, v in json.loads(r["contributions"]).items():
            contributions.setdefault(ch, [None] * len(raw))[i] = v
    return {
        "device": rows[0],
        "scores": {"t": [r["t"] for r in raw], "score": [r["score"] for r in raw],
                   "threshold": [r["threshold"] for r in raw], "level": [r["level"] for r in raw],
                   "threshold_source": [r["threshold_source"] or "bundle" for r in raw],
                   "contributions": contributions},
        "hourly": store.query("SELECT hour, n, min, mean, max, above, threshold FROM score_hourly "
                              "WHERE site = ? AND device = ? ORDER BY hour", (site, device)),
        "alarms": store.query("SELECT * FROM (SELECT seq, t, ts, event, channel, score, level, since FROM alarms "
                              "WHERE site = ? AND device = ? ORDER BY seq DESC LIMIT ?) AS newest ORDER BY seq",
                              (site, device, ALARM_POINTS)),
        "statuses": store.query("SELECT ts, state, CASE WHEN LENGTH(payload) > ? THEN "
                                "'{\"oversize_chars\":' || LENGTH(payload) || '}' ELSE payload END AS payload, "
                                "received FROM statuses WHERE site = ? AND device = ? ORDER BY received DESC LIMIT 50",
                                (STATUS_MAX_CHARS, site, device)),
        "gaps": store.query("SELECT first_seq, last_seq, filled, detected FROM gaps WHERE site = ? AND device = ? "
                            "AND last_seq - first_seq + 1 > filled ORDER BY first_seq", (site, device)),
        "episodes": episodes.listing(store.db, now, site=site, device=device, limit=PAGE_MAX),
        # every change of this device's episodes, newest first: "site/device/" up to "site/device0" is the prefix
        "history": store.query("SELECT at, actor, action, target, source, detail FROM audit WHERE target >= ? AND "
                               "target < ? ORDER BY at DESC, id LIMIT ?",
                               (f"{site}/{device}/", f"{site}/{device}0", PAGE_MAX)),
    }


def to_json(obj: Any) -> bytes:
    """Standard JSON, which browsers' JSON.parse takes: a number that is not finite (a mean stored as infinite
    before numbers were bounded) is null, never ``Infinity`` or ``NaN``."""
    try:
        return json.dumps(obj, default=str, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # rare: only then is every value looked at
        return json.dumps(_finite(obj), default=str, separators=(",", ":"), allow_nan=False).encode()


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def page(q: dict[str, str]) -> tuple[int, int]:
    """``limit`` and ``offset`` of a list request, within bounds (a bad number is a 400 by ValueError): an
    offset past signed 64-bit is one no database takes."""
    limit = int(q.get("limit", PAGE_DEFAULT))
    offset = int(q.get("offset", 0))
    if limit < 1 or not 0 <= offset <= INT_MAX:
        raise ValueError(f"limit must be at least 1 and offset from 0 to {INT_MAX}")
    return min(limit, PAGE_MAX), offset


def query_params(query: str) -> dict[str, str]:
    """A request's query parameters (the first of each name); one holding a control character (a NUL, which
    PostgreSQL refuses in text) is a 400 by ValueError, as no stored site, device or id holds one."""
    q = {k: v[0] for k, v in parse_qs(query).items()}
    for k, v in q.items():
        if (why := text_error(k, v)) is not None:
            raise ValueError(why)
    return q


def paged(rows: list[dict[str, Any]], limit: int, offset: int) -> dict[str, Any]:
    """One page of a list, with the offset of the next one (None: this was the last)."""
    return {"items": rows, "limit": limit, "offset": offset, "next": offset + limit if len(rows) == limit else None}


ALARM_ROUTES = ("/api/episodes", "/api/episode", "/api/measures", "/api/whoami")


def alarm_route(store: Store, actions: ActionApi | None, path: str, q: dict[str, str], headers: Any,
                now: float) -> tuple[Any, int]:
    """The GET answers about alarm episodes, their measures and the page's operator: (JSON, status)."""
    if path == "/api/episodes":
        limit, offset = page(q)
        rows = episodes.listing(store.db, now, q.get("site"), q.get("device"), q.get("state"), limit, offset)
        if q.get("history") in ("1", "true"):  # each episode's whole story (raised ... closed, recalibration sent)
            for r in rows:
                r["history"] = episodes.history(store.db, r["id"])
        return paged(rows, limit, offset), HTTPStatus.OK
    if path == "/api/episode":
        ident = q.get("id", "")
        row = episodes.get(store.db, ident, now)  # a malformed id: 400 (ActionError is a ValueError)
        if row is None:
            return {"error": f"no alarm episode {ident[:80]}"}, HTTPStatus.NOT_FOUND
        return {"episode": row, "history": episodes.history(store.db, ident)}, HTTPStatus.OK
    if path == "/api/measures":
        return measures(store.db, now), HTTPStatus.OK
    return (actions.whoami(headers) if actions is not None else
            {"operator": None, "csrf": None, "operators_configured": False, "signs_recalibration": False}), \
        HTTPStatus.OK


class BoundedServer(ThreadingHTTPServer):
    """A threaded HTTP server that refuses connections beyond a cap and closes those too slow to ask.

    Each open connection has a deadline while it is waiting for (the rest of) a request; a reaper thread shuts
    down those past it, which ends the blocked read of their handler thread (a slow-loris holds nothing for
    longer than ``request_timeout_s``). Connections beyond ``max_connections`` are answered 503 and closed by
    the accepting thread, without a thread of their own."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], request_timeout_s: float,
                 max_connections: int, max_event_clients: int) -> None:
        self.stopping = threading.Event()  # before binding: a failed bind closes the server at once
        super().__init__(address, handler)
        self.request_timeout_s, self.max_connections = request_timeout_s, max_connections
        self.event_slots = threading.BoundedSemaphore(max_event_clients)
        self.refused = 0  # connections turned away at the cap
        self.timed_out = 0  # connections closed for not sending a request in time
        self._open: dict[socket.socket, float | None] = {}  # connection -> deadline (None: being answered)
        self._lock = threading.Lock()
        threading.Thread(target=self._reap, name="monitor-web-reaper", daemon=True).start()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = len(self._open) >= self.max_connections
            if not full:
                self._open[request] = time.monotonic() + self.request_timeout_s
        if full:
            self.refused += 1
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def waiting(self, conn: socket.socket) -> None:
        """``conn`` waits for a request: it has ``request_timeout_s`` to send its line and headers."""
        with self._lock:
            if conn in self._open:
                self._open[conn] = time.monotonic() + self.request_timeout_s

    def answering(self, conn: socket.socket) -> None:
        """``conn``'s request has arrived: no deadline while it is answered (a server-sent-event stream lasts)."""
        with self._lock:
            if conn in self._open:
                self._open[conn] = None

    def _reap(self) -> None:
        while not self.stopping.wait(min(0.5, self.request_timeout_s / 4)):
            now = time.monotonic()
            with self._lock:
                late = [c for c, deadline in self._open.items() if deadline is not None and deadline < now]
                for c in late:
                    self._open[c] = None  # shut down once
            for c in late:
                self.timed_out += 1
                with contextlib.suppress(OSError):  # the handler's read returns: it ends and closes the connection
                    c.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        self.stopping.set()
        super().server_close()


def make_server(cfg: MonitorConfig, store: Store, changes: Changes, health: Callable[[], dict[str, Any]],
                request_timeout_s: float = REQUEST_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                max_event_clients: int = MAX_EVENT_CLIENTS, actions: ActionApi | None = None) -> BoundedServer:
    """The HTTP server bound to ``cfg.monitor.http`` (not yet serving: call ``serve_forever`` in a thread).

    ``health()`` returns the health document; its ``ok`` false makes the answer a 503. ``actions``: who may
    change alarms' states (None: nobody; every POST is refused)."""
    host, _, port = (cfg.monitor.http or "127.0.0.1:8080").rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        server_version = "vibrawatch-monitor"
        protocol_version = "HTTP/1.1"
        timeout = request_timeout_s  # the socket's: a client that stops reading a response is dropped too
        server: BoundedServer

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug("%s %s", self.address_string(), format % args)

        def handle_one_request(self) -> None:
            self.server.waiting(self.connection)
            super().handle_one_request()

        def parse_request(self) -> bool:
            ok = super().parse_request()
            self.server.answering(self.connection)
            return ok

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                store.db.release()  # this connection's thread ends: so does its database connection

        def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> None:
            body = to_json(obj)
            self.send_response(status)
            for k, v in (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                         ("Cache-Control", "no-store"), *headers):
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            path = urlparse(self.path).path
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 <= length <= BODY_MAX:
                    self.close_connection = True
                    self._json({"error": f"{path}: a body of at most {BODY_MAX} bytes"},
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                    return
                raw = self.rfile.read(length)
                answer = (actions.post(path, raw, self.headers, self.client_address[0]) if actions is not None
                          else Answer(HTTPStatus.FORBIDDEN, {"error": "this monitor takes no actions"}))
                self._json(answer.body, answer.status, answer.headers)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True
            except ValueError as e:
                self._json({"error": f"{path}: {e}"}, HTTPStatus.BAD_REQUEST)
            except Exception as e:  # noqa: BLE001 - one bad request never takes the server down
                log.exception("POST %s failed", self.path)
                self._json({"error": f"{type(e).__name__}: {e}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            u = urlparse(self.path)
            try:
                self._route(u.path, query_params(u.query))
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True
            except ValueError as e:
                self._json({"error": f"{u.path}: {e}"}, HTTPStatus.BAD_REQUEST)
            except Exception as e:  # noqa: BLE001 - one bad request never takes the server down
                log.exception("GET %s failed", self.path)
                self._json({"error": f"{type(e).__name__}: {e}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

        def _route(self, path: str, q: dict[str, str]) -> None:
            now = time.time()
            if path in ("/", "/index.html"):
                self._send(_static("index.html") or b"", _TYPES[".html"])
            elif path == "/device":
                self._send(_static("device.html") or b"", _TYPES[".html"])
            elif path.startswith("/static/"):
                name = path[len("/static/"):]
                body = _static(name)
                if body is None:
                    self._json({"error": f"no file {name}"}, HTTPStatus.NOT_FOUND)
                else:
                    ext = name[name.rfind("."):] if "." in name else ""
                    self._send(body, _TYPES.get(ext, _TYPES[""]))
            elif path == "/api/fleet":
                self._json({"now": now, "devices": fleet.table(store, now, cfg.fleet.silent_factor,
                                                               cfg.fleet.min_silent_s)})
            elif path == "/api/device":
                detail = device_detail(store, q.get("site", ""), q.get("device", ""), now, cfg)
                if detail is None:
                    self._json({"error": "no such device"}, HTTPStatus.NOT_FOUND)
                else:
                    self._json(detail)
            elif path == "/api/alarms":
                limit, offset = page(q)
                self._json(paged(store.query(
                    "SELECT seq, t, ts, event, channel, score, level, since, model FROM alarms WHERE site = ? "
                    "AND device = ? ORDER BY seq DESC LIMIT ? OFFSET ?",
                    (q.get("site", ""), q.get("device", ""), limit, offset)), limit, offset))
            elif path == "/api/alerts":
                limit, offset = page(q)
                self._json(paged(store.query(
                    "SELECT key, kind, site, device, state, attempts, SUBSTR(last_error, 1, ?) AS last_error, "
                    "created, delivered FROM alerts ORDER BY created DESC, key LIMIT ? OFFSET ?",
                    (EXCERPT_CHARS, limit, offset)), limit, offset))
            elif path == "/api/dead":
                limit, offset = page(q)
                self._json(paged(store.query(
                    "SELECT received, SUBSTR(topic, 1, 512) AS topic, SUBSTR(reason, 1, ?) AS reason, "
                    "SUBSTR(payload, 1, ?) AS payload, LENGTH(payload) AS payload_chars FROM dead_letters "
                    "ORDER BY received DESC, digest LIMIT ? OFFSET ?",
                    (EXCERPT_CHARS, EXCERPT_CHARS, limit, offset)), limit, offset))
            elif path in ALARM_ROUTES:
                self._json(*alarm_route(store, actions, path, q, self.headers, now))
            elif path == "/api/health":
                doc = health()
                self._json(doc, HTTPStatus.OK if doc.get("ok", True) else HTTPStatus.SERVICE_UNAVAILABLE)
            elif path == "/api/events":
                self._events()
            else:
                self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

        def _events(self) -> None:
            if not self.server.event_slots.acquire(blocking=False):
                self._json({"error": f"at most {max_event_clients} event streams at once; try again later"},
                           HTTPStatus.SERVICE_UNAVAILABLE)
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seen = -1
                while not self.server.stopping.is_set():
                    version = changes.wait(seen, timeout=15.0)
                    if version != seen:
                        self.wfile.write(f"event: change\ndata: {version}\n\n".encode())
                        seen = version
                    else:
                        self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
            finally:
                self.close_connection = True
                self.server.event_slots.release()

    try:
        return BoundedServer((host, int(port)), Handler, request_timeout_s, max_connections, max_event_clients)
    except OSError as e:  # a busy port, an address not on this machine, a name that does not resolve
        raise ConfigError(f"--http {host}:{port}: cannot listen there: {e.strerror or e} (another program, or "
                          "another monitor, may hold it: give another --http HOST:PORT, or --http off)") from None
