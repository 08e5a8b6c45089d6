"""The same SQL on both backends (SQLite and a real PostgreSQL): idempotent writes, seq gaps filled by late
messages, silent devices, retention into hourly aggregates, and alert delivery with retries to a real HTTP
server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from postgres import Postgres, postgres_bin

from vibrawatch.monitor import fleet, retention
from vibrawatch.monitor.alerts import WebhookSink, deliver_due
from vibrawatch.monitor.config import AlertsSection
from vibrawatch.monitor.ingest import decode
from vibrawatch.monitor.store import Batch, Score, Store, StoreError, open_store


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql (tests/run.sh)")
    pg = Postgres().start()
    yield pg
    pg.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        s = open_store(pg.fresh_database(f"t_{abs(hash(request.node.name)) % 10**8}"))
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
    assert not hasattr(ev, "reason"), getattr(ev, "reason", "")  # valid against agent/schemas/transient.json
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
