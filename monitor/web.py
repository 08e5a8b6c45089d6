"""The monitor's page and JSON API on the standard library's threaded HTTP server.

    GET /                          the fleet table (static/index.html)
    GET /device?site=S&device=D    one device: score against threshold, alarm periods, contributions, status
    GET /static/NAME               the page's files, uPlot (MIT, vendored from npm with its LICENSE)
    GET /api/fleet                 the fleet table as JSON, worst first
    GET /api/device?site=&device=  a device's row, recent raw scores, hourly aggregates, alarms, statuses, gaps
    GET /api/alerts, /api/dead     alert delivery state; dead letters with their reasons
    GET /api/health                ingest counters
    GET /api/events                server-sent events: ``change`` whenever the data changed

Read-only: nothing on the page changes the database. Bind it to 127.0.0.1 (the default) or put it behind
a reverse proxy with authentication; it has none of its own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from . import fleet
from .config import MonitorConfig
from .store import Store

log = logging.getLogger("vibrawatch.monitor.web")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", "": "text/plain; charset=utf-8"}
RAW_POINTS = 5000  # raw scores a device page gets at most (older history comes as hourly aggregates)


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
        "alarms": store.query("SELECT seq, t, ts, event, channel, score, level, since FROM alarms "
                              "WHERE site = ? AND device = ? ORDER BY seq", (site, device)),
        "statuses": store.query("SELECT ts, state, payload, received FROM statuses WHERE site = ? AND device = ? "
                                "ORDER BY ts DESC LIMIT 50", (site, device)),
        "gaps": store.query("SELECT first_seq, last_seq, filled, detected FROM gaps WHERE site = ? AND device = ? "
                            "AND last_seq - first_seq + 1 > filled ORDER BY first_seq", (site, device)),
    }


def make_server(cfg: MonitorConfig, store: Store, changes: Changes,
                health: Callable[[], dict[str, Any]]) -> ThreadingHTTPServer:
    """The HTTP server bound to ``cfg.monitor.http`` (not yet serving: call ``serve_forever`` in a thread)."""
    host, _, port = (cfg.monitor.http or "127.0.0.1:8080").rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        server_version = "vibrawatch-monitor"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: Any, status: int = 200) -> None:
            body = json.dumps(obj, default=str, separators=(",", ":")).encode()
            self._send(body, "application/json", status)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            u = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            try:
                self._route(u.path, q)
            except (BrokenPipeError, ConnectionResetError):
                pass
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
            elif path == "/api/alerts":
                self._json(store.query("SELECT key, kind, site, device, state, attempts, last_error, created, "
                                       "delivered FROM alerts ORDER BY created DESC LIMIT 200"))
            elif path == "/api/dead":
                self._json(store.query("SELECT received, topic, reason, payload FROM dead_letters "
                                       "ORDER BY received DESC LIMIT 200"))
            elif path == "/api/health":
                self._json(health())
            elif path == "/api/events":
                self._events()
            else:
                self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

        def _events(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = -1
            while not stopping.is_set():
                version = changes.wait(seen, timeout=15.0)
                if version != seen:
                    self.wfile.write(f"event: change\ndata: {version}\n\n".encode())
                    seen = version
                else:
                    self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()

    stopping = threading.Event()
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    server.stopping = stopping  # type: ignore[attr-defined]
    return server
