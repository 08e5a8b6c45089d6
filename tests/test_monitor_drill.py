"""What the attack drill on the fleet monitor found, each on SQLite and a real PostgreSQL where a database is
involved: a score near a double's limit stops neither retention nor the page's JSON; huge numbers and NUL
bytes in requests are a 400, not a traceback; a seq shared by two message kinds leaves ``lost`` truthful;
statuses are ordered by the instant their timestamp names; a report refuses a database that is not there; a
failure at the start is one error line; operators' notes follow the MQTT free-text rule; a client-id clash is
named in the log."""

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
        open_store(f"sqlite:///{junk}", create=False)
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
