"""The spool keeps order, survives a reopen (a crash), bounds its size and counts what it drops."""

from __future__ import annotations

from pathlib import Path

from agent.spool import Spool


def test_fifo_ack_and_reopen(tmp_path: Path) -> None:
    s = Spool(tmp_path / "s.db")
    for i in range(5):
        s.put("t", f"m{i}".encode())
    first = s.peek(2)
    assert [m.payload for m in first] == [b"m0", b"m1"]
    assert [m.payload for m in s.peek(10, after_id=first[-1].id)] == [b"m2", b"m3", b"m4"]
    s.ack(first[0].id)
    s.ack(first[0].id)  # a duplicate PUBACK changes nothing
    seq = s.next_seq()
    s.close()
    again = Spool(tmp_path / "s.db")  # what a restarted agent sees
    assert [m.payload for m in again.peek(10)] == [b"m1", b"m2", b"m3", b"m4"]
    assert again.next_seq() == seq + 1  # seq never repeats across restarts


def test_bounded_by_size_dropping_oldest_with_a_count(tmp_path: Path) -> None:
    s = Spool(tmp_path / "s.db", max_bytes=1000)
    for i in range(30):
        s.put("t", bytes([65 + i % 26]) * 100)
    kept = s.peek(100)
    assert len(kept) == 10 and s.dropped == 20
    assert kept[-1].payload == bytes([65 + 29 % 26]) * 100  # the newest survive
