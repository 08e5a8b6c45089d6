"""The same SQL on both backends (SQLite and a real PostgreSQL): idempotent writes, seq gaps filled by late
messages, silent devices, retention into hourly aggregates, and alert delivery with retries to a real HTTP
server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from postgres import Postgres

from vibrawatch.monitor import fleet, retention
from vibrawatch.monitor.alerts import WebhookSink, deliver_due
from vibrawatch.monitor.config import AlertsSection
from vibrawatch.monitor.db import StoreError
from vibrawatch.monitor.decoding import decode
from vibrawatch.monitor.rows import Batch, Score
from vibrawatch.monitor.schema import SCHEMA_VERSION
from vibrawatch.monitor.store import Store, open_store


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A store on each backend (db_url, tests/conftest.py)."""
    s = open_store(db_url)
    yield s
    s.close()


def score(seq: int, t: float, value: float = 0.1, device: str = "d1", received: float = 1000.0) -> Score:
    return Score("s1", device, seq, t, f"ts{t}", value, 0.5, value / 0.5, {"a": value}, "m", received)


def test_writes_are_idempotent_and_a_late_message_fills_its_gap(store: Store) -> None:
    w = store.write(Batch(scores=[score(1, 1.0), score(2, 2.0), score(5, 5.0)]), now=1000.0)
    assert (w.scores, w.lost) == (3, 2)  # 3 and 4 missing
    assert store.query("SELECT first_seq, last_seq, filled FROM gaps") == [{"first_seq": 3, "last_seq": 4, "filled": 0}]
    w = store.write(Batch(scores=[score(2, 2.0), score(4, 4.0), score(4, 4.0)]), now=1001.0)  # a repeat, a late one
    assert (w.scores, w.duplicates, w.lost) == (1, 2, -1)
    d = store.devices()[0]
    assert (d["first_seq"], d["last_seq"], d["received"], d["lost"], d["score_seq"]) == (1, 5, 4, 1, 5)
    assert store.query("SELECT filled FROM gaps") == [{"filled": 1}]
    assert store.counts()["scores"] == 4


def test_detector_events_are_stored_once_and_share_the_seq_of_scores_and_deploy_traffic_is_not_ours(
        store: Store) -> None:
    """The agent's spool numbers transients, condition changes and diagnoses with scores and alarms: the
    monitor stores them by seq and counts them, or every transient would show as a lost message."""
    transient = {"v": 1, "timestamp": "2026-01-01T00:00:02.000Z", "t": 2.0, "seq": 2, "channels": ["a"],
                 "ratio": [1.33], "relaxed_by": "2026-01-01T06:00:02.000Z", "model": "m"}
    ev = decode("vibrawatch/v1/s1/d1/transient", json.dumps(transient).encode(), 1000.0)
    assert not hasattr(ev, "reason"), getattr(ev, "reason", "")  # valid against agent/link/schemas/transient.json
    w = store.write(Batch(scores=[score(1, 1.0), score(3, 3.0)], events=[ev]), now=1000.0)  # type: ignore[list-item]
    assert (w.scores, w.events, w.lost) == (2, 1, 0)
    w = store.write(Batch(events=[ev]), now=1001.0)  # type: ignore[list-item]  # redelivered
    assert (w.events, w.duplicates) == (0, 1)
    assert store.query("SELECT seq, kind FROM events") == [{"seq": 2, "kind": "transient"}]
    assert store.counts()["gaps"] == 0 and store.devices()[0]["lost"] == 0
    for topic in ("vibrawatch/v1/s1/d1/deploy", "vibrawatch/v1/s1/d1/deploy/bundle"):
        assert decode(topic, b"\x00binary", 1000.0) is None  # addressed to the gateway: neither row nor dead letter
    bad = decode("vibrawatch/v1/s1/d1/transient", b'{"v": 1}', 1000.0)
    assert "transient.json" in bad.reason  # type: ignore[union-attr]


def test_a_device_that_stops_sending_goes_silent_once(store: Store) -> None:
    for i in range(1, 6):  # one score every 10 s
        store.write(Batch(scores=[score(i, float(i))]), now=1000.0 + 10 * i)
    row = store.devices()[0]
    assert row["interval_s"] == pytest.approx(10.0)
    assert fleet.sweep(store, 1050.0 + 45, silent_factor=5, min_silent_s=1) == 0  # 45 s: not yet 5 intervals
    assert fleet.sweep(store, 1050.0 + 60, silent_factor=5, min_silent_s=1) == 1
    assert fleet.sweep(store, 1050.0 + 90, silent_factor=5, min_silent_s=1) == 0  # one alert per silence
    assert fleet.table(store, 1050.0 + 60, 5, 1)[0]["health"] == "silent"
    assert store.query("SELECT kind FROM alerts") == [{"kind": "silent"}]
    store.write(Batch(scores=[score(6, 6.0)]), now=1200.0)  # back: no longer silent
    assert fleet.table(store, 1201.0, 5, 1)[0]["health"] == "online"


def test_retention_rolls_old_scores_into_hourly_aggregates_in_the_database(store: Store) -> None:
    day = 86400.0
    old = [score(i + 1, 3600.0 * 10 + 60 * i, value=0.1 * (i + 1), received=1000.0) for i in range(10)]  # hour 10
    new = [score(11, 3600.0 * 11, received=1000.0 + 40 * day)]
    store.write(Batch(scores=old + new), now=1000.0)
    assert retention.roll_up(store, raw_days=30, now=1000.0 + 35 * day) == 10
    assert store.counts()["scores"] == 1
    [h] = store.query("SELECT hour, n, min, mean, max, above, threshold FROM score_hourly")
    assert (h["hour"], h["n"], h["above"], h["threshold"]) == (36000.0, 10, 5, 0.5)  # 0.6 .. 1.0 are above 0.5
    assert (h["min"], h["max"]) == pytest.approx((0.1, 1.0)) and h["mean"] == pytest.approx(0.55)
    # a late score of the same hour, rolled up later, merges into it
    store.write(Batch(scores=[score(12, 3600.0 * 10 + 5, value=2.0, received=1000.0)]), now=1000.0)
    assert retention.roll_up(store, raw_days=30, now=1000.0 + 35 * day) == 1
    [h] = store.query("SELECT n, max, mean, above FROM score_hourly")
    assert (h["n"], h["max"], h["above"]) == (11, 2.0, 6) and h["mean"] == pytest.approx((5.5 + 2.0) / 11)


class Hook:
    """A local webhook receiver: answers 500 to the first ``fail`` POSTs, then 204."""

    def __init__(self, fail: int) -> None:
        self.received: list[dict] = []
        self.fail = fail
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if hook.fail > 0:
                    hook.fail -= 1
                    self.send_response(500)
                else:
                    hook.received.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_alerts_are_retried_with_backoff_and_their_delivery_state_is_stored(store: Store) -> None:
    payload = {"v": 1, "timestamp": "2026-01-01T00:00:10.000Z", "t": 10.0, "seq": 3, "event": "raised",
               "channel": "a", "score": 2.0, "level": 4.0, "since": "2026-01-01T00:00:10.000Z", "model": "m"}
    alarm = decode("vibrawatch/v1/s1/d1/alarm", json.dumps(payload).encode(), 1000.0)
    store.write(Batch(alarms=[alarm]), now=1000.0)  # type: ignore[list-item]
    store.write(Batch(alarms=[alarm]), now=1001.0)  # type: ignore[list-item]  # redelivered: still one alert
    hook = Hook(fail=2)
    settings = AlertsSection(webhook=hook.url, backoff_s=10, max_attempts=5)
    sink = WebhookSink(settings)
    try:
        assert deliver_due(store, sink, settings, now=1000.0) == 0  # 500
        [a] = store.query("SELECT state, attempts, next_try, last_error FROM alerts")
        assert (a["state"], a["attempts"], a["next_try"]) == ("pending", 1, 1010.0) and "500" in a["last_error"]
        assert deliver_due(store, sink, settings, now=1005.0) == 0  # not due yet: nothing sent
        assert deliver_due(store, sink, settings, now=1010.0) == 0  # 500 again, next in 20 s
        assert store.query("SELECT next_try FROM alerts") == [{"next_try": 1030.0}]
        assert deliver_due(store, sink, settings, now=1030.0) == 1
    finally:
        hook.close()
    [a] = store.query("SELECT state, attempts, delivered FROM alerts")
    assert (a["state"], a["attempts"]) == ("delivered", 3) and a["delivered"] is not None
    [body] = hook.received
    assert body == {"v": 1, "kind": "alarm_raised", "site": "s1", "device": "d1", "seq": 3,
                    "timestamp": payload["timestamp"], "channel": "a", "score": 2.0, "level": 4.0,
                    "since": payload["since"], "model": "m", "alert": "alarm:s1/d1:3", "created": 1000.0, "attempt": 3}


def test_a_bad_database_url_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="expected sqlite:///PATH"):
        open_store("sqlite://")
    with pytest.raises(StoreError, match="unknown database"):
        open_store("mysql://x/y")
    with pytest.raises(StoreError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/no/such/folder/fleet.db")


def test_shared_table_properties_decode_mqtt5_publish_properties_as_paho_does() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from vibrawatch.monitor.pahofast import SharedTableProperties, install

    p = Properties(PacketTypes.PUBLISH)
    p.MessageExpiryInterval = 60
    p.ContentType = "application/json"
    p.UserProperty = [("a", "1"), ("b", "2")]
    wire = p.pack()
    ours, theirs = SharedTableProperties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBLISH)
    assert ours.unpack(wire)[1] == theirs.unpack(wire)[1]
    assert ours.json() == theirs.json() == {"MessageExpiryInterval": 60, "ContentType": "application/json",
                                            "UserProperty": [("a", "1"), ("b", "2")]}
    assert SharedTableProperties(PacketTypes.PUBLISH).json() == {}  # nothing leaks between instances
    empty = Properties(PacketTypes.PUBLISH).pack() + b"payload"  # no properties: one zero byte, then the payload
    ours, theirs = SharedTableProperties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBLISH)
    assert empty[0] == 0 and ours.unpack(empty)[1] == theirs.unpack(empty)[1] == 1 and ours.json() == theirs.json()
    assert install()


def test_shared_table_properties_clear_what_a_packet_before_set() -> None:
    """paho reuses nothing between packets today, but ``unpack`` clears first: ours must clear the same way."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from vibrawatch.monitor.pahofast import SharedTableProperties

    one, two = Properties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBLISH)
    one.ContentType = "application/json"
    two.MessageExpiryInterval = 5
    ours = SharedTableProperties(PacketTypes.PUBLISH)
    ours.unpack(one.pack())
    ours.unpack(two.pack())
    assert ours.json() == {"MessageExpiryInterval": 5}


def test_acks_of_a_batch_are_the_bytes_paho_sends_one_by_one_in_one_write() -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from vibrawatch.monitor.pahofast import QuickMatcher, ack_many, quick_matcher

    def client() -> mqtt.Client:
        return mqtt.Client(CallbackAPIVersion.VERSION2, client_id="x", protocol=mqtt.MQTTv5, manual_ack=True)

    mids = [1, 2, 300, 65535]
    theirs, ours = client(), client()
    for mid in mids:
        theirs.ack(mid, 1)
    ack_many(ours, mids)
    assert len(theirs._out_packet) == 4 and len(ours._out_packet) == 1
    assert b"".join(p["packet"] for p in theirs._out_packet) == ours._out_packet[0]["packet"]
    c = client()
    assert quick_matcher(c) and isinstance(c._on_message_filtered, QuickMatcher)
    assert list(c._on_message_filtered.iter_match("vibrawatch/v1/s/d/score")) == []
    c.message_callback_add("vibrawatch/v1/+/+/score", print)  # the real matcher underneath still works
    assert list(c._on_message_filtered.iter_match("vibrawatch/v1/s/d/score")) == [print]


def test_only_this_connections_packet_ids_are_acknowledged_and_each_once(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A message that arrived before a reconnect is stored but not acknowledged on the new connection (there its
    packet id may name another message, not yet committed); the broker sends it again and that copy is acked."""
    from vibrawatch.monitor import ingest as ingest_mod
    from vibrawatch.monitor.config import load_monitor_config

    acked: list[list[int]] = []
    monkeypatch.setattr(ingest_mod.pahofast, "ack_many", lambda client, mids: acked.append(list(mids)))
    ing = ingest_mod.Ingest(load_monitor_config(None, broker="mqtt://127.0.0.1:1883"),
                            open_store(f"sqlite:///{tmp_path / 'fleet.db'}"))
    topic = "vibrawatch/v1/s/d1/score"

    def arrive(seq: int, mid: int) -> None:
        ing._on_message(ing._client, None, type("M", (), {"topic": topic, "payload": json.dumps(
            _score_msg(seq, 0.5, None)).encode(), "mid": mid, "qos": 1})())

    ing._link = 1
    arrive(1, 7)
    arrive(2, 8)
    ing._link = 2  # reconnected before the batch was written
    arrive(2, 3)  # the broker's copy of seq 2 under a new id
    arrive(3, 8)  # id 8 reused on this connection for another message
    ing.batcher.write(list(ing.batcher.queue))
    assert acked == [[3, 8]]
    assert ing.counters.stored == 3 and ing.counters.duplicates == 1


def _status(state: str, ts: str, **fields: object) -> dict:
    return {"v": 1, "state": state, "timestamp": ts, **fields}


def _decoded(kind: str, payload: dict, device: str = "d1") -> object:
    row = decode(f"vibrawatch/v1/s1/{device}/{kind}", json.dumps(payload).encode(), 1000.0)
    assert not hasattr(row, "reason"), getattr(row, "reason", "")  # valid against agent/link/schemas/
    return row


def _score_msg(seq: int, threshold: float, source: str | None) -> dict:
    p = {"v": 1, "timestamp": f"2026-01-01T00:00:{seq:02d}.000Z", "t": float(seq), "seq": seq, "score": 0.1,
         "threshold": threshold, "level": 0.1 / threshold, "contributions": {"a": 0.1}, "model": "m"}
    return p if source is None else {**p, "threshold_source": source}


def test_commissioning_shows_in_the_fleet_table_and_each_score_keeps_its_own_threshold(store: Store) -> None:
    """A machine being commissioned is not healthy (no alarm can be raised yet), a suspect commissioning needs a
    look (right after alarms, an alert), and every score row keeps the threshold and its source as sent."""
    d1 = [_decoded("status", _status("commissioning", "2026-01-01T00:00:00.000Z", threshold_source="commissioning",
                                     windows=0, note="commissioning starts: 3 windows"))]
    store.write(Batch(statuses=d1, scores=[_decoded("score", _score_msg(i, 0.5, "commissioning"))  # type: ignore
                                           for i in (1, 2, 3)]), now=1000.0)
    store.write(Batch(scores=[_decoded("score", _score_msg(1, 0.5, None), "d2")]), now=1000.0)  # type: ignore
    rows = {r["device"]: r for r in fleet.table(store, 1001.0)}
    assert (rows["d1"]["health"], rows["d1"]["threshold_source"]) == ("commissioning", "commissioning")
    assert "commissioning: 0 windows so far" in rows["d1"]["note"]
    assert (rows["d2"]["health"], rows["d2"]["threshold_source"]) == ("online", "bundle")  # an older agent
    assert [r["device"] for r in fleet.table(store, 1001.0)] == ["d1", "d2"]  # commissioning before online

    done = _status("commissioned", "2026-01-01T00:00:04.000Z", threshold_source="commissioned", threshold=0.3,
                   channel_thresholds=[0.3], windows=3, median_level=0.8, standout=1.0, bundle_threshold=0.5)
    store.write(Batch(statuses=[_decoded("status", done)],  # type: ignore[list-item]
                      scores=[_decoded("score", _score_msg(4, 0.3, "commissioned"))]), now=1002.0)  # type: ignore
    suspect = _status("commissioning_suspect", "2026-01-01T00:00:05.000Z", threshold_source="bundle", threshold=0.5,
                      channel_thresholds=[0.5], windows=3, median_level=12.5, standout=1.0, bundle_threshold=0.5)
    store.write(Batch(statuses=[_decoded("status", suspect, "d2")]), now=1002.0)  # type: ignore[list-item]
    rows = {r["device"]: r for r in fleet.table(store, 1003.0)}
    assert (rows["d1"]["health"], rows["d1"]["threshold_source"], rows["d1"]["threshold"]) == \
        ("online", "commissioned", 0.3)
    assert rows["d2"]["health"] == "suspect" and "median window 12.5x" in rows["d2"]["note"]
    assert [r["device"] for r in fleet.table(store, 1003.0)] == ["d2", "d1"]  # suspect before online
    assert store.query("SELECT kind, device FROM alerts") == [{"kind": "commissioning_suspect", "device": "d2"}]
    # An agent restart after a suspect commissioning says only "online": the verdict stands until the next one.
    store.write(Batch(statuses=[_decoded("status", _status("online", "2026-01-01T00:00:06.000Z"), "d2")]),  # type: ignore
                now=1004.0)
    assert fleet.table(store, 1005.0)[0]["health"] == "suspect"
    assert store.query("SELECT seq, threshold, threshold_source FROM scores WHERE device = 'd1' ORDER BY seq") == [
        {"seq": 1, "threshold": 0.5, "threshold_source": "commissioning"},
        {"seq": 2, "threshold": 0.5, "threshold_source": "commissioning"},
        {"seq": 3, "threshold": 0.5, "threshold_source": "commissioning"},
        {"seq": 4, "threshold": 0.3, "threshold_source": "commissioned"}]


def test_a_schema_1_database_gains_the_later_columns_and_keeps_its_rows(store: Store) -> None:
    store.write(Batch(scores=[score(1, 1.0)]), now=1000.0)
    with store.transaction() as cur:  # back to what vibrawatch with schema 1 created
        cur.execute("ALTER TABLE scores DROP COLUMN threshold_source")
        for column in ("threshold_source", "commissioning", "commissioning_info", "model_sha256", "deploy", "link",
                       "seq_anomalies", "seq_anomaly"):
            cur.execute(f"ALTER TABLE devices DROP COLUMN {column}")
        cur.execute("ALTER TABLE dead_letters DROP COLUMN size")
        cur.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    store.close()
    again = open_store(store.url)
    try:
        assert again.query("SELECT value FROM meta WHERE key = 'schema'") == [{"value": str(SCHEMA_VERSION)}]
        again.write(Batch(scores=[score(2, 2.0)]), now=1001.0)
        assert [r["threshold_source"] for r in again.query("SELECT threshold_source FROM scores ORDER BY seq")] == \
            [None, None]
        assert fleet.table(again, 1002.0)[0]["threshold_source"] == "bundle"
        with again.transaction() as cur:
            cur.execute(f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema'")
        again.close()
        with pytest.raises(StoreError, match=f"schema {SCHEMA_VERSION + 1} is newer"):
            open_store(store.url)
    finally:
        again.close()


SHA_A, SHA_B = "a" * 64, "b" * 64


def _deploy(outcome: str, ts: str, reason: str = "") -> dict:
    return {"deployment": 1795448578356, "outcome": outcome, "reason": reason, "from": "run-a", "to": "run-b",
            "sha256": "c" * 64, "timestamp": ts}


def test_the_fleet_state_has_each_devices_model_sha256_and_its_last_deploy_outcome(store: Store) -> None:
    """Which model file a machine runs, and what its last deploy did, as the agent's statuses and scores say."""
    online = _status("online", "2026-01-01T00:00:00.000Z", model="run-a", model_sha256=SHA_A, agent="1", runtime="x")
    store.write(Batch(statuses=[_decoded("status", online)],  # type: ignore[list-item]
                      scores=[_decoded("score", {**_score_msg(1, 0.5, None), "model_sha256": SHA_A})]),  # type: ignore
                now=1000.0)
    row = fleet.table(store, 1001.0)[0]
    assert (row["model"], row["model_sha256"], row["deploy"]) == ("run-a", SHA_A, None)

    # A deploy is applied: the status says so, and the next score comes from the new model file.
    applied = _status("online", "2026-01-01T00:00:02.000Z", event="deploy", model="run-b", model_sha256=SHA_B,
                      deploy=_deploy("applied", "2026-01-01T00:00:02.000Z"))
    store.write(Batch(statuses=[_decoded("status", applied)],  # type: ignore[list-item]
                      scores=[_decoded("score", {**_score_msg(2, 0.5, None), "model": "run-b",  # type: ignore
                                                 "model_sha256": SHA_B})]), now=1002.0)
    row = fleet.table(store, 1003.0)[0]
    assert (row["model"], row["model_sha256"]) == ("run-b", SHA_B)
    assert row["deploy"]["outcome"] == "applied" and row["deploy"]["to"] == "run-b"
    assert row["note"] == "deploy applied: run-a -> run-b"

    # The next deploy rolls back: the outcome and its reason are kept, and the score says the old file is back.
    back = _status("online", "2026-01-01T00:00:04.000Z", event="deploy", model="run-a", model_sha256=SHA_A,
                   deploy=_deploy("rolled_back", "2026-01-01T00:00:04.000Z", "failed on real windows: 3 NaN scores"))
    store.write(Batch(statuses=[_decoded("status", back)],  # type: ignore[list-item]
                      scores=[_decoded("score", {**_score_msg(3, 0.5, None), "model_sha256": SHA_A})]),  # type: ignore
                now=1004.0)
    row = fleet.table(store, 1005.0)[0]
    assert (row["model"], row["model_sha256"], row["deploy"]["outcome"]) == ("run-a", SHA_A, "rolled_back")
    assert row["note"] == "deploy rolled_back: run-a -> run-b (failed on real windows: 3 NaN scores)"
    # A restart's plain online status keeps the last deploy's outcome on record.
    store.write(Batch(statuses=[_decoded("status", _status("online", "2026-01-01T00:00:06.000Z"))]),  # type: ignore
                now=1006.0)
    assert fleet.table(store, 1007.0)[0]["deploy"]["outcome"] == "rolled_back"


def test_the_terminal_fleet_table_says_which_machine_is_commissioning_or_suspect_and_where_thresholds_come_from(
        tmp_path: Path) -> None:
    import subprocess

    from monitor_helpers import vibrawatch_command

    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    s = open_store(db)
    learning = _status("commissioning", "2026-01-01T00:00:00.000Z", threshold_source="commissioning", windows=120)
    suspect = _status("commissioning_suspect", "2026-01-01T00:00:05.000Z", threshold_source="bundle", threshold=0.5,
                      windows=3, median_level=12.5, standout=4.2, bundle_threshold=0.5)
    s.write(Batch(statuses=[_decoded("status", learning, "new"), _decoded("status", suspect, "odd")],  # type: ignore
                  scores=[_decoded("score", _score_msg(1, 0.5, "commissioning"), "new"),  # type: ignore[list-item]
                          _decoded("score", _score_msg(1, 0.5, "bundle"), "odd"),  # type: ignore[list-item]
                          _decoded("score", _score_msg(1, 0.3, "commissioned"), "ok")]), now=time.time())
    s.close()
    out = subprocess.run(vibrawatch_command("fleet", "--db", db), capture_output=True, text=True, check=True).stdout
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:] if ln.startswith("s1/")}
    assert list(lines) == ["s1/odd", "s1/new", "s1/ok"]  # worst first
    assert lines["s1/odd"].split()[1:2] == ["suspect"] and "median window 12.5x" in lines["s1/odd"]
    assert "bundle" in lines["s1/odd"]
    assert lines["s1/new"].split()[1:2] == ["commissioning"] and "120 windows so far" in lines["s1/new"]
    assert lines["s1/ok"].split()[1:2] == ["online"] and "commissioned" in lines["s1/ok"]


def grafana_query(site: str, device: str, start: float, end: float) -> str:
    """docs/monitor.md's Grafana query with its macros and variables filled in as Grafana's PostgreSQL data
    source fills them (``$__unixEpochFrom()`` is the panel's start in whole seconds)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "monitor.md").read_text()
    sql = doc[doc.index("```sql", doc.index("Grafana")) + len("```sql"):]
    sql = sql[: sql.index("```")]
    return (sql.replace("$__unixEpochFrom()", str(int(start))).replace("$__unixEpochTo()", str(int(end)))
            .replace("$site", site).replace("$device", device))


def test_the_documented_grafana_query_gives_a_devices_score_and_threshold_per_minute(
        postgres: Postgres) -> None:
    """The dashboard query docs/monitor.md gives runs on the monitor's PostgreSQL as written: one row a minute,
    the minute's largest score and threshold, this device only, within the panel's time range."""
    s = open_store(postgres.fresh_database("grafana"))
    try:
        t0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
        s.write(Batch(scores=[score(i + 1, t0 + 10 * i, value=0.1 + 0.01 * i) for i in range(18)]  # 3 minutes
                      + [score(1, t0, value=9.0, device="d2")]), now=t0 + 200)
        with s.transaction() as cur:
            cur.execute(grafana_query("s1", "d1", t0, t0 + 179))
            rows = cur.fetchall()
        assert [(r[0].timestamp(), round(r[1], 6), r[2]) for r in rows] == [
            (t0, 0.15, 0.5), (t0 + 60, 0.21, 0.5), (t0 + 120, 0.27, 0.5)]
        with s.transaction() as cur:  # the time range bounds it
            cur.execute(grafana_query("s1", "d1", t0 + 60, t0 + 119))
            assert [r[0].timestamp() for r in cur.fetchall()] == [t0 + 60]
    finally:
        s.close()


def test_a_last_will_counts_for_its_own_connection_and_never_for_a_later_one(store: Store) -> None:
    """The will is composed when a connection is set up, so its timestamp is older than what that connection
    sent: the connection (``link``) decides. A will ends its connection (a late status of it changes nothing);
    a later connection's status is current whatever its timestamp; a will of an older connection is not."""
    l1, l2 = "2026-01-01T00:00:00.000Z", "2026-01-01T01:00:00.000Z"
    will1 = _status("offline", "2026-01-01T00:00:00.000Z", reason="connection lost", link=l1)
    working = _status("commissioning", "2026-01-01T00:30:00.000Z", link=l1, threshold_source="commissioning")
    state = lambda: [(d["state"], d["reason"]) for d in store.devices()]  # noqa: E731

    def send(*statuses: dict, now: float = 1000.0) -> None:
        store.write(Batch(statuses=[_decoded("status", p) for p in statuses]), now=now)  # type: ignore[misc]

    send(_status("online", "2026-01-01T00:00:01.000Z", link=l1), working)
    send(will1)  # older by timestamp than the commissioning status, but its connection's last word
    assert state() == [("offline", "connection lost")]
    send(_status("online", "2026-01-01T00:59:00.000Z", link=l1))  # that connection's, delivered late
    assert state() == [("offline", "connection lost")]
    send(_status("online", "2026-01-01T00:00:02.000Z", link=l2))  # the next connection, whatever its clock says
    assert state() == [("online", None)]
    send(will1)  # the old connection's will, delivered again
    assert state() == [("online", None)]
    # Agents from before links: timestamps alone, as before.
    send(_status("offline", "2026-01-01T00:00:00.000Z", reason="connection lost"), now=1001.0)
    assert state() == [("online", None)]
    assert [a["kind"] for a in store.query("SELECT kind FROM alerts")] == ["offline"]  # the one will that counted
