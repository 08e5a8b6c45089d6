"""A device is in alarm while any of its channels is, on SQLite and a real PostgreSQL.

A combined detector raises and clears each bearing's alarm on its own: a clear of one channel must not take the
device out of alarm while another channel's episode is still active, in whatever order the messages arrive
(within a batch, across batches, redelivered). The fleet table (``vibrawatch fleet --json``, what the page's
API serves) shows the active channels and since when."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from monitor_helpers import vibrawatch_command

from vibrawatch.agent.link.topics import alarm_payload
from vibrawatch.monitor import fleet
from vibrawatch.monitor.decoding import decode
from vibrawatch.monitor.rows import Alarm, Batch
from vibrawatch.monitor.store import Store, open_store

T0 = 1_700_000_000.0


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    yield s
    s.close()


def alarm(device: str, seq: int, event: str, channel: str, active: list[str] | None) -> Alarm:
    """An alarm message exactly as the agent publishes it (``active``: a combined detector's channels in alarm
    after it; None: a plain detector's), decoded as the monitor decodes it."""
    t = T0 + seq
    extra = {} if active is None else {"channels": active}
    msg = {**alarm_payload(t=t, event=event, channel=channel, score=2.0, level=2.0,
                           since=t if event == "raised" else None, model="m-1", **extra), "seq": seq}
    row = decode(f"vibrawatch/v1/s1/{device}/alarm", json.dumps(msg).encode(), T0)
    assert isinstance(row, Alarm), row
    return row


def since(seq: int) -> str:
    return alarm("x", seq, "raised", "a", []).since or ""


def device(store: Store, name: str) -> dict[str, Any]:
    return next(r for r in fleet.table(store, T0 + 100, 1e9, 1e9) if r["device"] == name)


def story(name: str) -> list[Alarm]:
    """Raise bearing1, raise bearing3, clear bearing3, clear bearing1 (seq 1-4)."""
    return [alarm(name, 1, "raised", "bearing1", ["bearing1"]),
            alarm(name, 2, "raised", "bearing3", ["bearing1", "bearing3"]),
            alarm(name, 3, "cleared", "bearing3", ["bearing1"]),
            alarm(name, 4, "cleared", "bearing1", [])]


def expected(arrived: set[int]) -> tuple[int, str | None, str | None]:
    """(alarm, alarm_channel, alarm_since) once the seqs ``arrived`` are stored: a channel is active while its
    raise is stored and its clear is not."""
    active = [(raise_, ch) for raise_, clear, ch in ((1, 4, "bearing1"), (2, 3, "bearing3"))
              if raise_ in arrived and clear not in arrived]
    if not active:
        return 0, None, None
    return 1, ", ".join(ch for _, ch in active), since(active[0][0])


def state(store: Store, name: str) -> tuple[int, str | None, str | None]:
    d = device(store, name)
    assert (d["health"] == "alarm") == bool(d["alarm"])
    return d["alarm"], d["alarm_channel"], d["alarm_since"]


def test_a_clear_of_one_channel_leaves_the_device_in_alarm_on_the_other(store: Store) -> None:
    msgs = story("d1")
    for i, m in enumerate(msgs, 1):
        store.write(Batch(alarms=[m]), now=T0 + i)
        assert state(store, "d1") == expected(set(range(1, i + 1))), i
    assert state(store, "d1") == (0, None, None)
    # after raise 1, raise 2, clear 3: in alarm on bearing1 since its raise, not the cleared bearing3
    assert expected({1, 2, 3}) == (1, "bearing1", since(1))
    # the webhooks stay one per channel and event
    alerts = store.query("SELECT kind, payload FROM alerts ORDER BY key")
    assert sorted((a["kind"], json.loads(a["payload"])["channel"]) for a in alerts) == [
        ("alarm_cleared", "bearing1"), ("alarm_cleared", "bearing3"), ("alarm_raised", "bearing1"),
        ("alarm_raised", "bearing3")]
    assert [(e["channel"], e["state"]) for e in store.query("SELECT channel, state FROM episodes ORDER BY raised_seq")
            ] == [("bearing1", "cleared"), ("bearing3", "cleared")]


def test_every_arrival_order_across_batches_and_within_them_gives_the_same_device_state(store: Store) -> None:
    """All 24 orders, one message a batch (each prefix checked) and two a batch (shuffled within), then every
    message redelivered: the state follows the seqs, never the arrival."""
    for n, order in enumerate(itertools.permutations(range(4))):
        name = f"one{n}"
        msgs = story(name)
        for i, k in enumerate(order, 1):
            store.write(Batch(alarms=[msgs[k]]), now=T0 + i)
            assert state(store, name) == expected({order[j] + 1 for j in range(i)}), (order, i)
        name = f"two{n}"
        msgs = story(name)
        store.write(Batch(alarms=[msgs[order[0]], msgs[order[1]]]), now=T0 + 1)
        assert state(store, name) == expected({order[0] + 1, order[1] + 1}), order
        store.write(Batch(alarms=[msgs[order[2]], msgs[order[3]]]), now=T0 + 2)
        assert state(store, name) == (0, None, None), order
        w = store.write(Batch(alarms=msgs), now=T0 + 3)  # redelivered: nothing moves
        assert (w.alarms, w.duplicates) == (0, 4)
        assert state(store, name) == (0, None, None), order
    states = store.query("SELECT state, COUNT(*) AS n FROM episodes GROUP BY state")
    assert states == [{"state": "cleared", "n": 2 * 24 * 2}]  # every episode cleared, none opened twice


def test_a_late_clear_does_not_end_the_raise_after_it(store: Store) -> None:
    """bearing1 raised (1), cleared (2), raised again (3); the clear arrives last: in alarm since the second raise,
    in two episodes."""
    msgs = [alarm("d1", 1, "raised", "bearing1", ["bearing1"]), alarm("d1", 2, "cleared", "bearing1", []),
            alarm("d1", 3, "raised", "bearing1", ["bearing1"])]
    store.write(Batch(alarms=[msgs[0]]), now=T0 + 1)
    store.write(Batch(alarms=[msgs[2]]), now=T0 + 2)
    assert state(store, "d1") == (1, "bearing1", since(1))
    store.write(Batch(alarms=[msgs[1]]), now=T0 + 3)
    assert state(store, "d1") == (1, "bearing1", since(3))
    assert [(e["raised_seq"], e["state"], e["cleared_seq"]) for e in store.query(
        "SELECT raised_seq, state, cleared_seq FROM episodes ORDER BY raised_seq")] == [(1, "cleared", 2),
                                                                                       (3, "active", None)]


def test_a_plain_detector_has_one_alarm_a_device(store: Store) -> None:
    """Without ``channels`` the device has one alarm: its clear ends it whatever channel either names."""
    store.write(Batch(alarms=[alarm("d1", 1, "raised", "ch0", None)]), now=T0 + 1)
    assert state(store, "d1") == (1, "ch0", since(1))
    store.write(Batch(alarms=[alarm("d1", 2, "cleared", "ch1", None)]), now=T0 + 2)
    assert state(store, "d1") == (0, None, None)


def test_the_fleet_json_shows_the_device_in_alarm_on_the_channel_still_active(db_url: str) -> None:
    s = open_store(db_url)
    msgs = story("d1")
    s.write(Batch(alarms=[msgs[2], msgs[0]]), now=T0 + 1)  # the clear of bearing3 before either raise
    s.write(Batch(alarms=[msgs[1]]), now=T0 + 2)
    s.close()
    out = subprocess.run(vibrawatch_command("fleet", "--db", db_url, "--json"), capture_output=True, text=True,
                         timeout=120, check=True).stdout
    row = next(r for r in json.loads(out)["devices"] if r["device"] == "d1")
    assert (row["health"], row["alarm"], row["alarm_channel"], row["alarm_since"]) == ("alarm", 1, "bearing1",
                                                                                       since(1))


def test_a_repeated_raise_is_one_episode_and_a_late_raise_of_a_cleared_alarm_does_not_reopen_it(
        store: Store) -> None:
    """bearing1 raised at 1 and again at 2 (an agent restarted in alarm), cleared at 3, raised at 5; bearing3
    raised at 4. The repeat at 2 arrives after the clear, the raise at 1 last: still two bearing1 episodes (1-3, 5-)
    and the device in alarm on bearing1 since 5 and bearing3 since 4."""
    msgs = {m.seq: m for m in (alarm("d1", 1, "raised", "bearing1", ["bearing1"]),
                                alarm("d1", 2, "raised", "bearing1", ["bearing1"]),
                                alarm("d1", 3, "cleared", "bearing1", []),
                                alarm("d1", 4, "raised", "bearing3", ["bearing3"]),
                                alarm("d1", 5, "raised", "bearing1", ["bearing3", "bearing1"]))}
    for i, seq in enumerate((5, 3, 4, 2, 1), 1):
        store.write(Batch(alarms=[msgs[seq]]), now=T0 + i)
    assert state(store, "d1") == (1, "bearing3, bearing1", since(4))
    assert [(e["raised_seq"], e["channel"], e["state"], e["cleared_seq"]) for e in store.query(
        "SELECT raised_seq, channel, state, cleared_seq FROM episodes ORDER BY raised_seq")] == [
        (2, "bearing1", "cleared", 3), (4, "bearing3", "active", None), (5, "bearing1", "active", None)]
    other = [alarm("d2", m.seq, m.event, m.channel or "", m.channels) for m in msgs.values()]
    store.write(Batch(alarms=other), now=T0 + 9)  # in order, in one batch
    assert state(store, "d2") == (1, "bearing3, bearing1", since(4))
    assert [(e["raised_seq"], e["state"]) for e in store.query(
        "SELECT raised_seq, state FROM episodes WHERE device = 'd2' ORDER BY raised_seq")] == [
        (1, "cleared"), (4, "active"), (5, "active")]
