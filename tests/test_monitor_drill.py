"""What the attack drill on the fleet monitor found, each on SQLite and a real PostgreSQL where a database is
involved: a score near a double's limit stops neither retention nor the page's JSON; huge numbers and NUL
bytes in requests are a 400, not a traceback; a seq shared by two message kinds leaves ``lost`` truthful;
statuses are ordered by the instant their timestamp names; a report refuses a database that is not there; a
failure at the start is one error line; operators' notes follow the MQTT free-text rule; a client-id clash is
named in the log; a report never migrates a database an older monitor made; a score redelivered after retention
rolled it up is expired, not late."""

from __future__ import annotations

import json
import logging
import math
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from vibrawatch.agent.link.topics import encode, score_payload, status_payload
from vibrawatch.convert.cli import app
from vibrawatch.monitor import decoding, retention, state
from vibrawatch.monitor.actions import ActionApi
from vibrawatch.monitor.auth import Operators, Sessions, hash_line
from vibrawatch.monitor.bounds import MAX_NUMBER
from vibrawatch.monitor.config import MonitorConfig, MonitorSection
from vibrawatch.monitor.db import StoreError
from vibrawatch.monitor.episodes import Action, ActionError
from vibrawatch.monitor.ingest import Ingest
from vibrawatch.monitor.rows import Batch, Event, Score, Status
from vibrawatch.monitor.schema import DEVICE_COLUMNS
from vibrawatch.monitor.store import Store, open_store
from vibrawatch.monitor.web import Changes, make_server, to_json

PASSWORD = "correct horse battery"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    yield s
    s.close()


def score(seq: int, value: float = 0.1, received: float = 1000.0) -> Score:
    return Score("s", "d", seq, 3600.0 + seq, f"ts{seq}", value, 0.5, value / 0.5, {"a": value}, "m", received)


def transient(seq: int) -> Event:
    return Event("s", "d", seq, 3600.0 + seq, f"ts{seq}", "transient", {"seq": seq}, 1000.0)


# -- 1. a score near a double's limit ----------------------------------------------------------------------------
def test_a_score_beyond_the_bound_is_a_dead_letter_naming_the_field() -> None:
    p = {**score_payload(t=1.0, score=1.7e308, threshold=1.0, level=1.0, contributions={"a": 1.0}, model="m"),
         "seq": 1}
    row = decoding.decode("vibrawatch/v1/s/d/score", encode(p), 1000.0)
    assert "score: 1.7e+308 beyond 1e+30 in magnitude" in getattr(row, "reason", "no dead letter")
    p = {**p, "score": MAX_NUMBER / 2, "contributions": {"a": -1.7e308}}
    assert "contributions.a" in getattr(decoding.decode("vibrawatch/v1/s/d/score", encode(p), 1000.0), "reason", "")
    p["contributions"] = {"a": 1.0}
    assert not hasattr(decoding.decode("vibrawatch/v1/s/d/score", encode(p), 1000.0), "reason")


def test_retention_of_scores_near_a_doubles_limit_neither_overflows_nor_stores_infinity(store: Store) -> None:
    """Stored before numbers were bounded (or by another writer): PostgreSQL refused the whole roll-up (for
    every device), SQLite stored an infinite mean."""
    store.write(Batch(scores=[score(1, 1.7e308, received=1.0), score(2, 1.7e308, received=1.0),
                              score(3, 0.1, received=1.0)]), now=1.0)
    assert retention.roll_up(store, raw_days=1, now=86400.0 * 2) == 3
    store.write(Batch(scores=[score(4, 1.7e308, received=2.0), score(5, 1.7e308, received=2.0)]), now=2.0)
    assert retention.roll_up(store, raw_days=1, now=86400.0 * 2) == 2  # merged into the same hour
    [row] = store.query("SELECT n, min, mean, max FROM score_hourly")
    assert row["n"] == 5 and row["min"] == 0.1 and row["max"] == 1.7e308
    assert math.isfinite(row["mean"]) and row["mean"] == pytest.approx(0.8 * MAX_NUMBER)


def test_the_api_never_sends_infinity_or_nan() -> None:
    body = to_json({"hourly": [{"mean": math.inf, "min": -math.inf, "max": math.nan, "n": 2}], "ok": 1.5})
    assert json.loads(body, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")) == {
        "hourly": [{"mean": None, "min": None, "max": None, "n": 2}], "ok": 1.5}


# -- 2. and 7. requests: huge numbers, NUL bytes, operators' notes -----------------------------------------------
@pytest.fixture
def web(store: Store, tmp_path: Path) -> Iterator[str]:
    """The monitor's HTTP server on the store, with operator alice; its base URL."""
    ops = Operators({"alice": [hash_line("alice", PASSWORD).split(":", 1)[1]]})
    cfg = MonitorConfig(monitor=MonitorSection(http="127.0.0.1:0", db=store.url))
    server = make_server(cfg, store, Changes(), lambda: {"ok": True},
                         actions=ActionApi(store.db, ops, Sessions(), lambda: None))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def request(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer alice:{PASSWORD}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize(("path", "body", "says"), [
    ("/api/dead?offset=99999999999999999999", None, "offset from 0 to 9223372036854775807"),
    ("/api/alarms?site=s&device=d&offset=9223372036854775808", None, "offset from 0"),
    ("/api/alerts?offset=-1", None, "offset from 0"),
    ("/api/episode?id=a/b/99999999999999999999", None, "expected SITE/DEVICE/SEQ"),
    ("/api/episode?id=a%00/b/1", None, "id: a control character (U+0000)"),
    ("/api/alarms?site=%00&device=d", None, "site: a control character (U+0000)"),
    ("/api/episodes?site=%00", None, "site: a control character"),
    ("/api/episodes/ack", {"id": "a/b/99999999999999999999"}, "expected SITE/DEVICE/SEQ"),
    ("/api/episodes/ack", {"id": "a\u0000/b/1"}, "expected SITE/DEVICE/SEQ"),
    ("/api/episodes/shelve", {"id": "a/b/1", "hours": 10**400}, "shelve: expected hours"),
    ("/api/episodes/ack", {"id": "a/b/1", "note": "seen \x85 here"}, "note: a control character (U+0085)"),
    ("/api/episodes/close", {"id": "a/b/1", "verdict": "maintenance", "note": "x\x7f"}, "U+007F"),
    ("/api/episodes/recalibrate", {"id": "a/b/1", "note": "\x9b2J"}, "note: a control character (U+009B)"),
])
def test_huge_numbers_nul_bytes_and_control_characters_in_a_request_are_a_400_saying_why(
        web: str, path: str, body: dict[str, Any] | None, says: str) -> None:
    status, answer = request(web + path, body)
    assert (status, says in answer["error"]) == (400, True), answer


def test_an_operators_note_follows_the_mqtt_free_text_rule() -> None:
    """The same rule as a status's ``note`` (bounds.py): direction characters are text, controls are not."""
    assert Action.of("ack", {"note": " got 'a\u202eb' \n"}, 0.0).note == "got 'a\u202eb'"
    for bad in ("a\x1b[2J", "a\x85b", "a\x7f", "a\nb"):
        with pytest.raises(ActionError, match="a control character"):
            Action.of("ack", {"note": bad}, 0.0)


# -- 3. one seq on two kinds of message --------------------------------------------------------------------------
def test_a_seq_on_two_kinds_of_message_is_counted_once_and_lost_stays_truthful(store: Store) -> None:
    store.write(Batch(scores=[score(q) for q in range(1, 11)]), now=1000.0)
    w = store.write(Batch(events=[transient(q) for q in range(1, 11)]), now=1001.0)
    assert w.events == 10
    d = store.devices()[0]
    assert (d["first_seq"], d["last_seq"], d["received"], d["lost"]) == (1, 10, 10, 0)
    # A real loss stays counted: 12 and 13 missing; a transient sharing seq 11 does not fill their gap.
    store.write(Batch(scores=[score(11), score(14)], events=[transient(14)]), now=1002.0)
    store.write(Batch(events=[transient(11)]), now=1003.0)
    d = store.devices()[0]
    assert (d["last_seq"], d["received"], d["lost"]) == (14, 12, 2)
    store.write(Batch(events=[transient(12)]), now=1004.0)  # a real late arrival still fills its gap
    assert store.devices()[0]["lost"] == 1
    assert store.query("SELECT filled FROM gaps") == [{"filled": 1}]


# -- 4. statuses ordered by the instant of their timestamp -------------------------------------------------------
@pytest.mark.parametrize("stale", ["2026-12-06t00:00:00z", "2026-12-06T03:00:00+05:00"])
def test_a_status_is_current_by_the_instant_its_timestamp_names_not_its_text(stale: str) -> None:
    row: dict[str, Any] = {**dict.fromkeys(DEVICE_COLUMNS), "site": "s", "device": "d"}

    def status(st: str, ts: str) -> Status:
        return Status("s", "d", ts, st, status_payload(st) | {"timestamp": ts}, 1000.0)

    row = state.apply(row, state.Messages(statuses=[status("sensor", stale)]), 1000.0).state
    row = state.apply(row, state.Messages(statuses=[status("online", "2026-12-06T01:00:00Z")]), 1001.0).state
    assert (row["state"], row["state_ts"]) == ("online", "2026-12-06T01:00:00Z")
    row = state.apply(row, state.Messages(statuses=[status("sensor", "2026-12-06T05:30:00+05:00")]), 1002.0).state
    assert row["state"] == "online"  # 00:30 UTC: older than what the row knows


# -- 5. and 6. opening a database -------------------------------------------------------------------------------
def test_a_report_refuses_a_database_that_is_not_there_or_not_a_monitors(db_url: str, tmp_path: Path) -> None:
    """`vibrawatch fleet --db sqlite:///typo.db` made an empty database and reported an empty fleet."""
    result = CliRunner().invoke(app, ["fleet", "--db", db_url])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert ("no such database" if db_url.startswith("sqlite") else "cannot read a vibrawatch") in said, said
    assert not (tmp_path / "fleet.db").exists()
    open_store(db_url).close()  # the monitor makes it; then the report reads it
    result = CliRunner().invoke(app, ["fleet", "--db", db_url])
    assert result.exit_code == 0 and "0 scores" in result.output, result.output


def test_a_failure_at_the_start_is_one_error_not_an_outage_ridden_out(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(content := b"not a database" * 100)
    for url in (f"sqlite:///{junk}", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vibrawatch.monitor"), pytest.raises(StoreError) as e:
            open_store(url)
        assert [r.getMessage() for r in caplog.records] == [], url  # not "reconnecting with backoff"
        assert url.split("?")[0].split("@")[-1] in str(e.value)
    with pytest.raises(StoreError, match="cannot read a vibrawatch"):
        open_store(f"sqlite:///{junk}", reads={})
    assert junk.read_bytes() == content  # left as it was


# -- 8. two monitors with one client id -------------------------------------------------------------------------
def test_a_connection_dropped_within_seconds_again_and_again_names_the_client_id(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    cfg = MonitorConfig(monitor=MonitorSection(broker="mqtt://127.0.0.1:1", client_id="mon-a"))
    ingest = Ingest(cfg, s)
    ok = SimpleNamespace(is_failure=False)
    kicked = SimpleNamespace(value=0x80)  # "unspecified": brokers do not always say "session taken over"
    client = SimpleNamespace(subscribe=lambda *a, **k: None)
    with caplog.at_level(logging.WARNING, logger="vibrawatch.monitor"):
        for _ in range(5):
            ingest._on_connect(client, None, None, ok, None)  # type: ignore[arg-type]
            ingest._on_disconnect(client, None, None, kicked, None)  # type: ignore[arg-type]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "client id 'mon-a'" in errors[0], errors  # named once, not every second
    s.close()


# -- 9. a report on a database an older monitor made --------------------------------------------------------------
def _as_schema_4(url: str) -> None:
    """Take a monitor's database back to what vibrawatch with schema 4 made (no episodes, audit, diagnosis, nor
    ``first_seen``), with one device in it."""
    s = open_store(url)
    s.write(Batch(scores=[score(1), score(2), score(4)]), now=1000.0)
    with s.transaction() as cur:
        for table in ("episodes", "audit"):
            cur.execute(f"DROP TABLE {table}")
        cur.execute("ALTER TABLE alarms DROP COLUMN diagnosis")
        cur.execute("ALTER TABLE devices DROP COLUMN first_seen")
        cur.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    s.close()


def _fingerprint(url: str) -> Any:
    """What a report must leave as it was: a SQLite database's bytes (and no -wal or -shm left beside it); a
    PostgreSQL database's schema version row and every table's columns."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
    import psycopg

    with psycopg.connect(url) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchall()
        cols = conn.execute("SELECT table_name, column_name FROM information_schema.columns "
                            "WHERE table_schema = current_schema() ORDER BY 1, 2").fetchall()
    return version, cols


def test_a_report_never_migrates_an_older_database_and_says_how_to_upgrade_it(db_url: str) -> None:
    """`vibrawatch fleet` on a database of schema 4 ran the migrations (an older monitor may still write there,
    and the user only asked to look); it refuses in one line, naming the database, both versions and the cure."""
    import subprocess

    from monitor_helpers import vibrawatch_command

    _as_schema_4(db_url)
    before = _fingerprint(db_url)
    for args in ((), ("--json",)):
        run = subprocess.run(vibrawatch_command("fleet", "--db", db_url, *args), capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 2 and run.stdout == "", (run.stdout, run.stderr)
        [line] = run.stderr.splitlines()
        assert line.startswith(f"error: {db_url}: database schema 4 is older than this vibrawatch's 5"), line
        assert "episodes" in line and "vibrawatch monitor" in line and "Traceback" not in line, line
        assert _fingerprint(db_url) == before
    open_store(db_url).close()  # the monitor of this version migrates it
    with pytest.raises(StoreError, match=r"schema 5 lacks what this command reads \(devices.nope\): not as"):
        open_store(db_url, reads={"devices": ("nope",)})
    run = subprocess.run(vibrawatch_command("fleet", "--db", db_url), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.splitlines()[1].startswith("s/d "), run.stderr


def test_a_report_reads_an_older_database_that_has_what_it_reads_and_leaves_it_as_it_was(db_url: str) -> None:
    """The version row says older, but every table and column the report reads is there: it reads, unmigrated."""
    import subprocess

    from monitor_helpers import vibrawatch_command

    s = open_store(db_url)
    s.write(Batch(scores=[score(1), score(2), score(4)]), now=1000.0)
    with s.transaction() as cur:
        cur.execute("ALTER TABLE dead_letters DROP COLUMN size")  # schema 3: a column the report does not read
        cur.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    s.close()
    before = _fingerprint(db_url)
    run = subprocess.run(vibrawatch_command("fleet", "--db", db_url, "--json"), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    [device] = json.loads(run.stdout)["devices"]
    assert (device["site"], device["device"], device["received"], device["lost"]) == ("s", "d", 3, 1)
    assert _fingerprint(db_url) == before
    report = open_store(db_url, reads={"meta": ("key", "value")})  # the reports' connections cannot write
    try:
        with pytest.raises(Exception, match="read-only|readonly"):
            report.try_write()
    finally:
        report.close()
    assert _fingerprint(db_url) == before


# -- 10. a score redelivered after retention rolled it up -------------------------------------------------------
def _item(seq: int, received: float) -> tuple[str, bytes, int, int, float, int]:
    p = {**score_payload(t=3600.0 + seq, score=0.1, threshold=0.5, level=0.2, contributions={"a": 0.1}, model="m"),
         "seq": seq}
    return "vibrawatch/v1/s/d/score", encode(p), seq, 1, received, 1


def test_a_score_redelivered_after_retention_rolled_it_up_is_expired_not_late(store: Store) -> None:
    """QoS 1 redelivery (after a monitor restart) of a score whose row retention had deleted: it was stored
    again and counted as a late arrival (``lost`` down by one, below zero here), and rolled up a second time.
    It is dropped as expired: not stored, counted as expired, neither late nor lost."""
    from vibrawatch.monitor.batcher import Batcher

    day = 86400.0
    batcher = Batcher(MonitorSection(), store, lambda items: None)
    batcher.write([_item(q, 1000.0) for q in (1, 2, 3, 6, 7)])  # 4 and 5 missing
    batcher.write([_item(4, 1000.0)])  # late: fills one of its gap
    batcher.write([_item(8, 40 * day)])
    assert retention.roll_up(store, raw_days=30, now=40 * day) == 6
    row = lambda: {k: store.devices()[0][k] for k in ("first_seq", "last_seq", "received", "lost")}  # noqa: E731
    assert row() == {"first_seq": 1, "last_seq": 8, "received": 7, "lost": 1}

    batcher.write([_item(2, 40 * day), _item(7, 40 * day), _item(4, 40 * day)])  # redelivered, all rolled up
    assert row() == {"first_seq": 1, "last_seq": 8, "received": 7, "lost": 1}  # 5 is still lost
    assert store.query("SELECT seq FROM scores") == [{"seq": 8}]
    assert store.query("SELECT filled FROM gaps") == [{"filled": 1}]
    c = batcher.counters
    assert (c.stored, c.duplicates, c.lost, c.expired) == (7, 0, 1, 3)
    # A gap none of whose seqs was rolled up: a late message still fills it.
    batcher.write([_item(10, 40 * day)])
    batcher.write([_item(9, 40 * day)])
    assert row() == {"first_seq": 1, "last_seq": 10, "received": 9, "lost": 1}
    assert (c.stored, c.lost, c.expired) == (9, 1, 3)
    assert retention.roll_up(store, raw_days=30, now=80 * day) == 3  # 8, 9, 10: nothing rolled up twice
    assert store.query("SELECT SUM(n) AS n FROM score_hourly") == [{"n": 9}]
