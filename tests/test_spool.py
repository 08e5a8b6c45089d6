"""The spool keeps order, numbers messages across restarts, bounds its size and counts what it drops."""

from __future__ import annotations

import json
from pathlib import Path

from vibrawatch.agent.spool import Spool


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
    s = Spool(tmp_path / "s.db", max_bytes=1000)
    for i in range(30):
        s.put("t", {"x": chr(65 + i % 26) * 80})
    kept = _payloads(s.peek(100))
    size = len(json.dumps({"x": "A" * 80, "seq": 10}, separators=(",", ":")))
    assert len(kept) == 1000 // size and s.dropped == 30 - len(kept)
    assert kept[-1]["x"] == chr(65 + 29 % 26) * 80 and kept[-1]["seq"] - kept[0]["seq"] == len(kept) - 1
    s.put("t", {"x": "big" * 400})  # bigger than the bound alone: kept, everything older dropped
    assert _payloads(s.peek(100))[0]["x"] == "big" * 400 and len(s) == 1
