"""Database faults the monitor rides through, and the bounds of its HTTP server.

- A real PostgreSQL restarted (``pg_ctl -m fast restart``) and stopped then started while a gateway publishes:
  the monitor reconnects by itself, /api/health turns 503 while the database is away and 200 after, and
  every score published is stored exactly once (nothing acknowledged before its commit).
- SQLite on a filesystem that fills up (a small tmpfs, mounted as root; skipped where it cannot be): the
  monitor keeps its messages unacknowledged, says why on /api/health, resumes once there is room, and a
  monitor killed while the disk is full loses nothing either (the broker redelivers).
- A new SQLite database and its -wal/-shm are the owner's alone (0600).
- HTTP: a connection that never finishes its request is closed while others are served; connections beyond
  the cap and event streams beyond theirs get 503; /api/dead comes a page at a time with payload excerpts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from monitor_helpers import Gateway, MonitorProcess, wait_until
from mosquitto import Broker, free_port
from postgres import Postgres, postgres_bin
from test_monitor_store import store  # noqa: F401 - the fixture: each case on both databases (tests/conftest.py)

from vibrawatch.monitor.config import load_monitor_config
from vibrawatch.monitor.store import Store, open_store
from vibrawatch.monitor.web import EXCERPT_CHARS, PAGE_MAX, Changes, make_server


def health(port: int) -> tuple[int, dict[str, Any]]:
    """/api/health's status and document."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def monitor_with_page(tmp_path: Path, name: str, broker: Broker, db: str) -> tuple[MonitorProcess, int]:
    port = free_port()
    conf = tmp_path / f"{name}.toml"
    conf.write_text(f'[monitor]\nbroker = "mqtt://127.0.0.1:{broker.port}"\ndb = "{db}"\nclient_id = "{name}"\n'
                    f'http = "127.0.0.1:{port}"\nbatch_max = 50\nbatch_wait_ms = 5\n')
    return MonitorProcess(tmp_path / f"{name}.log", "--config", str(conf)).start(), port


class Publisher:
    """A gateway publishing scores 1..n in a thread (each acknowledged by the broker before the next)."""

    def __init__(self, broker: Broker, n: int, pause_s: float = 0.004) -> None:
        self.g = Gateway(broker.port, "plant1", "press7")
        self.n, self.pause_s, self.sent = n, pause_s, 0
        self.hold = threading.Event()  # set: pause publishing
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for seq in range(1, self.n + 1):
            while self.hold.is_set():
                time.sleep(0.05)
            self.g.score(seq, float(seq), 0.1)
            self.sent = seq
            time.sleep(self.pause_s)

    def start(self) -> Publisher:
        self.thread.start()
        return self


def stored_seqs(db: Store) -> list[int]:
    return [r["seq"] for r in db.query("SELECT seq FROM scores ORDER BY seq")]


def broker_keeping_everything(tmp_path: Path) -> Broker:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    broker.conf.write_text(broker.conf.read_text() + "max_queued_messages 0\n")  # as docs/monitor.md says
    return broker.start()


@pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL binaries (initdb, pg_ctl) not installed")
def test_postgresql_restarted_and_stopped_mid_ingest_loses_nothing_and_health_says_so(tmp_path: Path) -> None:
    pg = Postgres().start()
    broker = broker_keeping_everything(tmp_path)
    db = pg.fresh_database("faults")
    mon, port = monitor_with_page(tmp_path, "mon", broker, db)
    reader = open_store(db)
    pub = None
    n = 1500

    def pg_ctl(*args: str) -> None:
        pg._run(str(pg.bin / "pg_ctl"), "-D", str(pg.data), "-m", "fast", "-w", *args)

    def count() -> int:
        return len(stored_seqs(reader))

    try:
        wait_until("subscribed", lambda: "subscribing to" in mon.log, on_fail=lambda: mon.log)
        assert health(port)[0] == 200
        pub = Publisher(broker, n).start()
        wait_until("ingest under way", lambda: count() >= 150, on_fail=lambda: mon.log)
        pg_ctl("restart")  # every connection is terminated mid-ingest
        wait_until("ingest past the restart", lambda: count() >= 500, on_fail=lambda: mon.log)

        pg_ctl("stop")
        wait_until("503 while the database is down", lambda: health(port)[0] == 503, on_fail=lambda: mon.log)
        code, doc = health(port)
        assert code == 503 and doc["ok"] is False, doc
        assert doc["database"]["reachable"] is False and doc["database"]["error"], doc
        assert doc["broker"]["connected"] is True, doc
        sent_while_down = pub.sent
        wait_until("messages waiting while down", lambda: pub is not None and pub.sent >= sent_while_down + 100)
        assert mon.proc is not None and mon.proc.poll() is None  # the monitor itself keeps running
        assert health(port)[1]["ingest"]["unwritten"] > 0

        pg.start()
        wait_until("200 once the database is back", lambda: health(port)[0] == 200, timeout=90,
                   on_fail=lambda: mon.log)
        pub.thread.join(timeout=120)
        wait_until("every score", lambda: count() == n, timeout=90,
                   on_fail=lambda: mon.log + f"\nstored {count()} of {n}")
        assert stored_seqs(reader) == list(range(1, n + 1))  # each exactly once (seq is the key: none twice)
        d = reader.devices()[0]
        assert (d["received"], d["lost"], d["first_seq"], d["last_seq"]) == (n, 0, 1, n)
        code, doc = health(port)
        assert code == 200 and doc["database"]["storing"] and doc["ingest"]["unwritten"] == 0, doc
        log = mon.log
        assert log.count("cannot store") == 2 and log.count("is back after") == 2, log  # once per outage
        assert mon.stop() == 0
    finally:
        if pub is not None:
            pub.g.c.disconnect()
            pub.g.c.loop_stop()
        reader.close()
        mon.kill()
        broker.stop()
        pg.remove()


@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``where`` (root only; the test is skipped where mounting is not allowed)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full filesystem needs a tmpfs mount: root only")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path) -> Path:
    """Write a file until the filesystem has no room left."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_sqlite_on_a_full_filesystem_keeps_messages_unacknowledged_and_resumes(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs") as fs:
        broker = broker_keeping_everything(tmp_path)
        db = f"sqlite:///{fs / 'fleet.db'}"
        mon, port = monitor_with_page(tmp_path, "mon", broker, db)
        g = Gateway(broker.port, "plant1", "press7")
        seq = 0

        def send(k: int) -> None:
            nonlocal seq
            for _ in range(k):
                seq += 1
                g.score(seq, float(seq), 0.1)

        def stored() -> int:
            return int(health(port)[1]["ingest"]["stored"])

        try:
            wait_until("subscribed", lambda: "subscribing to" in mon.log, on_fail=lambda: mon.log)
            send(50)
            wait_until("the first scores", lambda: stored() == 50, on_fail=lambda: mon.log)

            filler = fill(fs)  # the disk is full ...
            send(200)
            wait_until("503: cannot store", lambda: health(port)[0] == 503, on_fail=lambda: mon.log)
            doc = health(port)[1]
            assert doc["database"]["storing"] is False and "full" in doc["database"]["error"], doc
            assert doc["ingest"]["unwritten"] > 0, doc
            filler.unlink()  # ... and has room again: the monitor resumes by itself
            wait_until("200 again", lambda: health(port)[0] == 200, on_fail=lambda: mon.log)
            wait_until("everything so far", lambda: stored() == seq, on_fail=lambda: mon.log)

            filler = fill(fs)  # full again, and this time the monitor is killed before there is room
            send(200)
            wait_until("503 again", lambda: health(port)[0] == 503, on_fail=lambda: mon.log)
            assert mon.proc is not None
            mon.proc.send_signal(signal.SIGKILL)
            mon.proc.wait(timeout=10)
            mon.proc = None
            filler.unlink()
            mon.start()  # what it had not stored it had not acknowledged: the broker sends it again
            reader = open_store(db)
            try:
                wait_until("every score after the restart", lambda: len(stored_seqs(reader)) == seq,
                           on_fail=lambda: mon.log + f"\n{len(stored_seqs(reader))} of {seq}")
                assert stored_seqs(reader) == list(range(1, seq + 1))
                d = reader.devices()[0]
                assert (d["received"], d["lost"]) == (seq, 0)
            finally:
                reader.close()
            assert "cannot store" in mon.log and "is back after" in mon.log
            assert mon.stop() == 0
        finally:
            g.c.disconnect()
            g.c.loop_stop()
            mon.kill()
            broker.stop()


def test_a_new_sqlite_database_and_its_wal_and_shm_are_the_owners_alone(tmp_path: Path) -> None:
    old = os.umask(0)  # not the umask's doing: even with none, the files are 0600
    try:
        s = open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    finally:
        os.umask(old)
    try:
        s.try_write()
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        assert modes == {"fleet.db": 0o600, "fleet.db-wal": 0o600, "fleet.db-shm": 0o600}
    finally:
        s.close()


# -- HTTP ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def serving(db: Store, **bounds: Any) -> Iterator[tuple[int, Any]]:
    port = free_port()
    cfg = load_monitor_config(None, db=db.url, http=f"127.0.0.1:{port}")
    server = make_server(cfg, db, Changes(), lambda: {"ok": True}, **bounds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield port, server
    finally:
        server.shutdown()
        server.server_close()


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_request_never_finished_is_closed_while_others_are_served(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        with serving(s, request_timeout_s=1.0) as (port, server):
            slow = socket.create_connection(("127.0.0.1", port))
            slow.sendall(b"GET /api/fleet HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.settimeout(0.25)
            answer = None
            for _ in range(400):  # a slow-loris: a header line now and then, never the end of the headers
                try:
                    answer = slow.recv(1024)
                    break
                except TimeoutError:
                    assert get(port, "/api/fleet")[0] == 200  # others are served meanwhile
                    try:
                        slow.sendall(b"X-Slow: 1\r\n")
                    except OSError:
                        answer = b""
                        break
                except OSError:
                    answer = b""
                    break
            slow.close()
            assert answer == b""  # closed by the server, unanswered
            assert server.timed_out == 1
            assert get(port, "/api/fleet")[0] == 200
    finally:
        s.close()


def test_connections_and_event_streams_beyond_their_caps_get_503(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        with serving(s, max_connections=3, max_event_clients=1, request_timeout_s=60) as (port, server):
            idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
            wait_until("three open", lambda: server.open_connections == 3)
            extra = socket.create_connection(("127.0.0.1", port))
            extra.settimeout(30)
            assert extra.recv(1024).startswith(b"HTTP/1.1 503 ")
            extra.close()
            assert server.refused == 1
            for c in idle:
                c.close()
            wait_until("all closed", lambda: server.open_connections == 0)

            stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/events", timeout=30)
            assert stream.status == 200 and stream.readline() == b"event: change\n"
            code, doc = get(port, "/api/events")
            assert code == 503 and "event streams" in doc["error"]
            stream.close()
    finally:
        s.close()


def test_dead_letters_come_a_page_at_a_time_with_excerpts_on_both_databases(store: Store) -> None:  # noqa: F811
    with store.transaction() as cur:
        cur.executemany("INSERT INTO dead_letters (digest, received, topic, payload, reason) VALUES (?, ?, ?, ?, ?)",
                        [(f"d{i}", 1000.0 + i, "vibrawatch/v1/a/b/score", "x" * 100_000, "not JSON")
                         for i in range(7)])
    with serving(store) as (port, _server):
        code, first = get(port, "/api/dead?limit=3")
        assert code == 200 and (first["limit"], first["offset"], first["next"]) == (3, 0, 3)
        assert [r["received"] for r in first["items"]] == [1006.0, 1005.0, 1004.0]  # newest first
        assert all(len(r["payload"]) == EXCERPT_CHARS and r["payload_chars"] == 100_000 for r in first["items"])
        last = get(port, "/api/dead?limit=3&offset=6")[1]
        assert [r["received"] for r in last["items"]] == [1000.0] and last["next"] is None
        assert get(port, "/api/dead?limit=1000000")[1]["limit"] == PAGE_MAX
        code, doc = get(port, "/api/dead?limit=-1")
        assert code == 400 and "limit" in doc["error"]
        code, doc = get(port, "/api/alarms?site=a&device=b&limit=5")
        assert code == 200 and doc["items"] == [] and doc["next"] is None
