"""The spool keeps order, numbers messages across restarts, bounds its size and counts what it drops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.link.spool import Spool


def _payloads(msgs: list) -> list[dict]:
    return [json.loads(m.payload) for m in msgs]


def test_fifo_ack_and_reopen(tmp_path: Path) -> None:
    s = Spool(tmp_path / "s.db")
    seqs = [s.put("t", {"i": i}) for i in range(5)]
    assert seqs == list(range(seqs[0], seqs[0] + 5))  # consecutive: a gap at a consumer means a drop
    first = s.peek(2)
    assert _payloads(first) == [{"i": 0, "seq": seqs[0]}, {"i": 1, "seq": seqs[1]}]
    assert [p["i"] for p in _payloads(s.peek(10, after_id=first[-1].id))] == [2, 3, 4]
    s.ack([first[0].id])
    s.ack([first[0].id])  # a duplicate PUBACK changes nothing
    s.close()
    again = Spool(tmp_path / "s.db")  # what a restarted agent sees
    assert [p["i"] for p in _payloads(again.peek(10))] == [1, 2, 3, 4]
    assert again.put("t", {"i": 5}) == seqs[-1] + 1  # seq never repeats across restarts
    again.ack([m.id for m in again.peek(10)])  # one transaction for a batch of PUBACKs
    assert len(again) == 0


def test_bounded_by_size_dropping_oldest_with_a_count(tmp_path: Path) -> None:
    s = Spool(tmp_path / "s.db", max_bytes=128 * 1024)
    seqs = [s.put("t", {"x": chr(65 + i % 26) * 800}) for i in range(300)]
    kept = _payloads(s.peek(5000))
    assert 0 < len(kept) < 300 and s.dropped == 300 - len(kept)  # every message not kept is counted
    assert [k["seq"] for k in kept] == seqs[-len(kept):]  # the oldest went first; the rest are consecutive
    s.put("t", {"x": "big" * 30000})  # bigger than the bound alone: kept, everything older dropped
    assert _payloads(s.peek(100))[0]["x"] == "big" * 30000 and len(s) == 1


@pytest.mark.parametrize(("limit_kb", "n"), [(128, 150), (1024, 1000)])
def test_the_bound_holds_for_the_files_on_disk(tmp_path: Path, limit_kb: int, n: int) -> None:
    """The limit is what the database and its write-ahead log take on disk, not the payloads' sum (a 64 MB
    limit gave a 77 MB file, 0.05 MB a 4.1 MB log): tested past the limit, with acks in between."""
    s = Spool(tmp_path / "s.db", max_bytes=limit_kb * 1024)
    biggest = 0
    for i in range(n):  # ~1.5 MB of messages
        s.put("vibrawatch/v1/plant1/press7/score", {"score": i * 1e-3, "pad": "x" * 1500})
        if i % 7 == 0:
            s.ack([m.id for m in s.peek(3)])  # the broker takes a few now and then
        biggest = max(biggest, s.disk_bytes())
    assert s.dropped > 0 and len(s) > 0
    assert biggest <= limit_kb * 1024, f"{biggest} bytes on disk for a {limit_kb} KB limit"
    s.close()


def test_too_small_a_limit_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spool_max_mb >= 0.125"):
        Spool(tmp_path / "s.db", max_bytes=50_000)


def test_drops_count_only_undelivered_messages(tmp_path: Path) -> None:
    """A message dropped while in flight counts only if its PUBACK never comes (it was delivered otherwise)."""
    s = Spool(tmp_path / "s.db", max_bytes=128 * 1024)
    for i in range(20):
        s.put("t", {"i": i, "pad": "x" * 1000})
    in_flight = s.peek(20)
    s.sent([m.id for m in in_flight])
    fillers = 0
    while {m.id for m in s.peek(20)} & {m.id for m in in_flight}:  # fill until they are all dropped
        s.put("t", {"pad": "y" * 1000})
        fillers += 1
    never_sent = fillers - len(s)  # fillers the spool dropped too (a page goes at a time)
    assert s.dropped == never_sent  # the 20 in flight are not counted yet
    s.ack([m.id for m in in_flight[:15]])  # their PUBACKs come after all: delivered
    assert s.dropped == never_sent
    assert s.unsent() == 5 and s.dropped == never_sent + 5  # the connection went: those five are lost


def test_wait_empty_is_woken_by_the_last_ack_and_says_when_it_timed_out(tmp_path: Path) -> None:
    """A clean stop waits for the broker's PUBACKs: it must return as the last one is taken (not at the next
    poll, which the bench measured as a fifth of its end-to-end time), and say False when some never came."""
    import threading
    import time

    s = Spool(tmp_path / "s.db")
    for i in range(3):
        s.put("t", {"i": i})
    ids = [m.id for m in s.peek(10)]
    assert s.wait_empty(0.2, poll=0.05) is False and len(s) == 3  # nothing acknowledged: nothing lost
    acker = threading.Timer(0.1, s.ack, args=(ids,))
    t0 = time.monotonic()
    acker.start()
    assert s.wait_empty(20.0, poll=20.0) is True
    assert time.monotonic() - t0 < 10.0  # woken by the ack; a poll alone would have waited the whole 20 s
    acker.join()
