"""No message stops the fleet monitor (issue 21): each poison a gateway, a bug or an attacker can send, between
valid scores on a real Mosquitto into SQLite and a real PostgreSQL, becomes one bounded dead letter, and every
valid score around it is stored exactly once; a forged seq is a seq anomaly, not billions of lost messages;
a batch the database still refuses is split until the one refused message alone is a dead letter."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from monitor_helpers import Gateway, start_monitor, wait_until
from mosquitto import Broker

from vibrawatch.agent.link.topics import encode, score_payload, status_payload
from vibrawatch.monitor import bounds, decoding
from vibrawatch.monitor.batcher import Batcher, Unfinished
from vibrawatch.monitor.config import MonitorSection
from vibrawatch.monitor.decoding import Item
from vibrawatch.monitor.rows import Batch, Written
from vibrawatch.monitor.store import Store, open_store


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    yield s
    s.close()


def score_msg(seq: int, **fields: Any) -> dict[str, Any]:
    return {**score_payload(t=float(seq), score=0.1, threshold=1.0, level=0.1, contributions={"a": 0.05, "b": 0.05},
                            model="m-1"), "seq": seq, **fields}


def item(seq: int, mid: int, device: str = "d", **fields: Any) -> Item:
    return (f"vibrawatch/v1/s/{device}/score", encode(score_msg(seq, **fields)), mid, 1, 1000.0, 1)


def stored_seqs(store: Store, device: str = "d") -> list[int]:
    return [r["seq"] for r in store.query("SELECT seq FROM scores WHERE device = ? ORDER BY seq", (device,))]


# -- the bounds, unit by unit --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("vibrawatch/v1/s/d/score", encode(score_msg(1, model="m\x00x")), "model: a control character (U+0000)"),
    ("vibrawatch/v1/s/d/score", encode(score_msg(2**63)), "seq: integer 9223372036854775808 out of range"),
    ("vibrawatch/v1/s/d/score", encode(score_msg(2**64)), "seq: 1.8446744073709552e+19 is not an integer"),
    ("vibrawatch/v1/s/d/score", encode(score_msg(1))[:-1] + b',"x":1\x00}', "not JSON"),
    ("vibrawatch/v1/s/d/score", encode(score_msg(1, model="m" * 257)), "model: 257 characters, at most 256"),
    ("vibrawatch/v1/s/d/score", encode(score_msg(1, contributions={f"c{i}": 0.0 for i in range(257)})),
     "contributions: 257 keys, at most 256"),
    ("vibrawatch/v1/s/d/score", encode(score_msg(1, model="m\u202e1-m")), "model: an invisible or direction"),
    ("vibrawatch/v1/s/d/status", encode(status_payload("sensor", fault="x" * 4097)), "fault: 4097 characters"),
    ("vibrawatch/v1/s/d/status", encode(status_payload("sensor", fault="x" * 70_000)), "70"),
    ("vibrawatch/v1//d/score", encode(score_msg(1)), "topic: site '' is not 1-64"),
    ("vibrawatch/v1/s/" + "d" * 65 + "/score", encode(score_msg(1)), "topic: device 'ddd"),
    ("vibrawatch/v1/s/d\u200bd/score", encode(score_msg(1)), "topic: device 'd\\u200bd' is not"),
])
def test_a_value_out_of_bounds_is_a_dead_letter_naming_the_field(topic: str, payload: bytes, reason: str) -> None:
    row = decoding.decode(topic, payload, 1000.0)
    assert reason in getattr(row, "reason", "no dead letter"), getattr(row, "reason", row)


def test_free_text_takes_a_direction_character_but_no_control_character() -> None:
    assert bounds.check(status_payload("sensor", fault="got 'a\u202eb'")) is None
    assert "U+001B" in (bounds.check(status_payload("sensor", fault="a\x1b[2J")) or "")


def test_a_dead_letter_keeps_a_bounded_escaped_excerpt_the_reason_the_topic_and_the_size() -> None:
    payload = b"\x00\xff\\" + "\u202e".encode() + b"x" * 4_000_000
    row = decoding.decode("vibrawatch/v1/s/" + "\u202e" * 10_000 + "/score", payload, 1000.0)
    assert row.size == len(payload)  # type: ignore[union-attr]
    assert row.excerpt.startswith("\\x00\\xff\\\\\\u202exxx")  # type: ignore[union-attr]
    assert len(row.excerpt) <= 4 * bounds.MAX_EXCERPT_BYTES + 6  # type: ignore[union-attr]
    assert len(row.topic) <= bounds.MAX_TOPIC_CHARS + 3 and "\u202e" not in row.topic  # type: ignore[union-attr]
    assert len(row.reason) <= bounds.MAX_REASON_CHARS + 3  # type: ignore[union-attr]


# -- a batch the database refuses is split -----------------------------------------------------------------------
class RefusingStore:
    """The real store, whose database refuses any batch holding seq ``bad`` (as the driver's DataError would),
    and loses its connection once on write number ``lose_at``."""

    def __init__(self, store: Store, bad: int, lose_at: int = 0) -> None:
        self.store, self.bad, self.lose_at = store, bad, lose_at
        self.db, self.safe_url, self.writes = store.db, store.safe_url, 0
        self.driver: Any = sqlite3
        if store.db.scheme == "postgresql":
            import psycopg

            self.driver = psycopg

    def write(self, batch: Batch, now: float | None = None) -> Written:
        self.writes += 1
        if self.writes == self.lose_at:
            raise self.driver.OperationalError("the connection is lost (test)")
        if any(s.seq == self.bad for s in batch.scores):
            raise self.driver.DataError("value refused (test)")
        return self.store.write(batch, now)


def test_a_refused_batch_is_split_until_the_refused_message_alone_is_a_dead_letter(store: Store) -> None:
    acked: list[int] = []
    refusing = RefusingStore(store, bad=37)
    batcher = Batcher(MonitorSection(), refusing, lambda items: acked.extend(i[2] for i in items))  # type: ignore[arg-type]
    batcher.write([item(seq, mid=seq) for seq in range(1, 101)])
    assert sorted(acked) == list(range(1, 101))  # every message acknowledged, once
    assert stored_seqs(store) == [s for s in range(1, 101) if s != 37]
    dead = store.query("SELECT reason, size FROM dead_letters")
    assert [d["reason"] for d in dead] == ["database refused it: DataError: value refused (test)"]
    assert batcher.counters.refused == 1 and batcher.counters.stored == 99 and batcher.counters.received == 100
    assert refusing.writes <= 2 * 7 + 2  # a bisection, not one write per message


def test_a_lost_connection_in_a_split_hands_back_only_what_is_not_stored(store: Store) -> None:
    acked: list[int] = []
    # writes: 1-16 refused, 1-8 refused, 1-4 stored, 5-8 refused, 5-6: the connection is lost
    refusing = RefusingStore(store, bad=5, lose_at=5)
    batcher = Batcher(MonitorSection(), refusing, lambda items: acked.extend(i[2] for i in items))  # type: ignore[arg-type]
    items = [item(seq, mid=seq) for seq in range(1, 17)]
    with pytest.raises(Unfinished) as lost:
        batcher.write(items)
    rest = lost.value.rest
    assert acked == [1, 2, 3, 4] and [i[2] for i in rest] == list(range(5, 17))
    assert sorted(acked + [i[2] for i in rest]) == list(range(1, 17))  # nothing acked is handed back, nothing dropped
    batcher.write(rest)
    assert sorted(acked) == list(range(1, 17))
    assert stored_seqs(store) == [s for s in range(1, 17) if s != 5]
    # not split: the writer loop retries it whole, nothing acked
    with pytest.raises(Exception, match="the connection is lost"):
        Batcher(MonitorSection(), RefusingStore(store, bad=0, lose_at=1),  # type: ignore[arg-type]
                lambda items: acked.extend(i[2] for i in items)).write([item(99, mid=99)])
    assert 99 not in acked


def test_what_the_real_database_refuses_past_the_bounds_is_split_out(store: Store,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounds turned off: SQLite and PostgreSQL themselves refuse seq 2^63 (and PostgreSQL a NUL); the
    batcher tells that from a lost connection, and only those messages are dead letters."""
    monkeypatch.setattr(decoding.bounds, "check", lambda msg: None)
    acked: list[int] = []
    batcher = Batcher(MonitorSection(), store, lambda items: acked.extend(i[2] for i in items))
    items = [item(seq, mid=seq) for seq in range(1, 41)]
    items[10] = item(2**63, mid=11)
    items[25] = item(26, mid=26, device="e", model="m\x00")  # PostgreSQL: text fields cannot contain NUL
    batcher.write(items)
    assert sorted(acked) == list(range(1, 41))
    assert stored_seqs(store) == [s for s in range(1, 41) if s not in (11, 26)]
    reasons = [r["reason"] for r in store.query("SELECT reason FROM dead_letters")]
    assert reasons and all(r.startswith("database refused it: ") for r in reasons)
    assert len(reasons) == (2 if store.db.scheme == "postgresql" else 1) == batcher.counters.refused


# -- sequence sanity ---------------------------------------------------------------------------------------------
def test_a_forged_seq_is_a_seq_anomaly_and_lost_stays_truthful(store: Store) -> None:
    w = decoding.to_batch([item(seq, mid=seq) for seq in range(1, 11)])
    store.write(w, now=1000.0)
    store.write(decoding.to_batch([item(2**62, mid=11)]), now=1001.0)  # valid, stored, but no gap of 2^62
    store.write(decoding.to_batch([item(seq, mid=seq) for seq in (11, 13)]), now=1002.0)
    store.write(decoding.to_batch([item(2**63 - 1, mid=12), item(1, mid=1, device="x")]), now=1003.0)
    d = next(r for r in store.devices() if r["device"] == "d")
    assert (d["first_seq"], d["last_seq"], d["received"], d["lost"], d["score_seq"]) == (1, 13, 12, 1, 13)
    assert d["seq_anomalies"] == 2 and store.query("SELECT first_seq, last_seq FROM gaps") == [
        {"first_seq": 12, "last_seq": 12}]
    last = json.loads(d["seq_anomaly"])
    assert (last["kind"], last["seq"], last["last_seq"]) == ("jump", 2**63 - 1, 13)
    assert 2**62 in stored_seqs(store)  # the message itself is kept (it was valid), it just moved nothing


def test_a_device_that_really_numbers_anew_is_a_reset_and_keeps_what_it_lost(store: Store) -> None:
    store.write(decoding.to_batch([item(seq, mid=seq) for seq in (1, 2, 4)]), now=1000.0)  # 3 lost
    start = 10**9  # a spool replaced: the next seq is far beyond anything plausible
    store.write(decoding.to_batch([item(start, mid=1)]), now=1001.0)
    store.write(decoding.to_batch([item(start + 1, mid=2), item(start + 3, mid=3)]), now=1002.0)
    d = store.devices()[0]
    assert (d["first_seq"], d["last_seq"], d["received"], d["lost"], d["score_seq"]) == \
        (start, start + 3, 6, 2, start + 3)  # 3 and start + 2
    assert d["seq_anomalies"] == 2 and json.loads(d["seq_anomaly"])["kind"] == "reset"


# -- the drill: every poison between valid scores, a real broker, a running monitor ---------------------------------
def poisons() -> list[tuple[str, str, bytes]]:
    """(site/device, kind, payload) of each case of issue 21, each one a dead letter."""
    big = b"x" * 4_000_000
    return [
        ("s/d", "score", encode(score_msg(1000, model="m\x00"))),  # a model with a NUL
        ("s/d", "score", b'{"v":1,\x00"seq":1}'),  # any payload with a 0x00 byte
        ("s/d", "status", b"\x00" * 100),
        ("s/d", "score", encode(score_msg(2**63))),
        ("s/d", "score", encode(score_msg(2**64))),
        ("s/d", "score", encode(score_msg(1001, model="m" * 1_000_000))),  # a 1 MB model
        ("s/d", "score", encode(score_msg(1002, contributions={f"channel{i}": 0.0 for i in range(50_000)}))),
        ("s/d", "score", encode(score_msg(1003, contributions={f"c{i}": 0.0 for i in range(1000)}))),
        ("s/d", "status", encode(status_payload("sensor", fault="f" * 3_000_000))),  # a 3 MB fault
        ("s/d", "status", encode(status_payload("sensor", fault="f" * 5000))),
        ("/d", "score", encode(score_msg(1))),  # an empty site
        ("s/" + "d" * 10_000, "score", encode(score_msg(1))),  # a 10,000-character device
        ("s/d\u202eb", "score", encode(score_msg(1))),
        ("s/d\u200bd", "score", encode(score_msg(1))),
        *[("s/d", "score", bytes([i]) + big) for i in range(3)],  # oversize dead letters
    ]


def test_no_poison_stops_the_monitor_and_every_valid_score_is_stored_once(tmp_path: Path, db_url: str) -> None:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    mon = start_monitor(tmp_path, "mon", broker.port, db_url)
    store = open_store(db_url)
    g = None
    try:
        wait_until("subscribed", lambda: "subscribing to" in mon.log, on_fail=lambda: mon.log)
        g = Gateway(broker.port, "s", "d")
        g.online()
        seq = 0
        cases = poisons()
        for where, kind, payload in cases:
            for _ in range(3):  # valid scores before and after each poison
                seq += 1
                g.score(seq, float(seq), 0.1)
            info = g.c.publish(f"vibrawatch/v1/{where}/{kind}", payload, qos=1)
            info.wait_for_publish(timeout=60)
        g.score(seq + 1, float(seq + 1), 0.1)
        g.score(2**62, 1.0, 0.1)  # forged, valid: far beyond any plausible next seq
        for extra in range(seq + 2, seq + 12):  # and the monitor keeps ingesting
            g.score(extra, float(extra), 0.1)
        last = seq + 11
        wait_until(f"seq {last} stored", lambda: last in stored_seqs(store), timeout=120, on_fail=lambda: mon.log)
        wait_until("every dead letter", lambda: store.counts()["dead_letters"] >= len(cases), timeout=60,
                   on_fail=lambda: mon.log)

        assert stored_seqs(store) == [*range(1, last + 1), 2**62]  # every valid score, once
        assert store.query("SELECT COUNT(*) AS n FROM scores")[0]["n"] == last + 1
        dead = store.query("SELECT topic, payload, reason, size FROM dead_letters")
        assert len(dead) == len(cases)
        assert sorted(d["size"] for d in dead) == sorted(len(p) for *_, p in cases)
        for d in dead:
            assert "\x00" not in d["payload"] + d["topic"] + d["reason"]
            assert len(d["payload"]) <= 4 * bounds.MAX_EXCERPT_BYTES + 6 and len(d["topic"]) <= 259
        assert sum(len(d["payload"]) for d in dead) < 64 * 1024  # 17 MB sent, a few KB kept
        assert [(r["site"], r["device"]) for r in store.devices()] == [("s", "d")]  # no bad name is a device
        row = store.devices()[0]
        assert (row["first_seq"], row["last_seq"], row["received"], row["lost"]) == (1, last, last, 0)
        assert row["seq_anomalies"] == 1 and row["state"] == "online"
        assert mon.proc is not None and mon.proc.poll() is None
    finally:
        if g is not None:
            g.close()
        mon.kill()
        store.close()
        broker.stop()
