"""The filesystem under the spool goes read-only mid-run, as an SD card's ext4 does after an error
(``errors=remount-ro``): the agent keeps scoring and publishing, says it once, and stops cleanly. Before, every
message after it was lost (each commit refused, counted as a full spool's drop), and a start on such a card was
an exit 1 that systemd restarted every 10 s.

The card is a real one: an ext4 image on a loop device, mounted with ``errors=remount-ro`` inside the agent's own
mount namespace (``unshare -m``), and failed by the kernel's own ext4 error path (``trigger_fs_error``). A plain
``mount -o remount,ro`` cannot stand in for it: the kernel refuses it (EBUSY) while the spool's files are open for
writing, for a tmpfs and for a read-only bind over it alike; only an error remounts a busy filesystem read-only."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mosquitto import Broker
from test_agent_e2e import Subscriber, agent_command, gateway_env, write_config

from vibrawatch.agent.link.spool import Spool
from vibrawatch.agent.link.spool_file import tables
from vibrawatch.agent.link.spool_memory import copy_newest

LINE = "the spool's file became read-only"
MOUNT = 'mount -t ext4 -o errors=remount-ro "$1" "$2" && mkdir -p "$2/state" && {then} shift 2 && exec "$@"'

needs_a_card = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/dev/loop-control").exists()
    or not all(shutil.which(t) for t in ("unshare", "losetup", "mkfs.ext4")),
    reason="needs root, loop devices, unshare and mkfs.ext4 (a real ext4 to fail)")


@pytest.fixture
def card(tmp_path: Path) -> Iterator[str]:
    """An ext4 filesystem on a loop device, as on a Raspberry Pi's SD card; the device's path."""
    image = tmp_path / "card.img"
    with image.open("wb") as f:
        f.truncate(16 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def fail(dev: str) -> str:
    """The shell line that makes the card's ext4 meet an error: with errors=remount-ro, it goes read-only."""
    return f"echo card failed > /sys/fs/ext4/{Path(dev).name}/trigger_fs_error"


def on_card(dev: str, mount: Path, cmd: list[str], then: str = "") -> list[str]:
    """``cmd`` in its own mount namespace with the card mounted on ``mount`` (gone with the namespace), after the
    shell line ``then``."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", MOUNT.format(then=f"{then} &&" if then else ""),
            "sh", dev, str(mount), *cmd]


def start_on_card(card: str, bundle: Path, data: Path, tmp_path: Path, then: str) -> tuple[Path, str]:
    """``vibrawatch-agent run`` with its spool on the card (mounted on ``tmp_path / "card"``) after the shell line
    ``then``: it must stop at start with exit 2 and one line; the spool's path and that line."""
    mount = tmp_path / "card"
    mount.mkdir()
    spool = mount / "state" / "spool.sqlite"
    cfg = write_config(tmp_path, 1, bundle, data, spool=spool)
    done = subprocess.run(on_card(card, mount, agent_command("run", "--config", str(cfg)), then=then),
                          env=gateway_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return spool, lines[0]


def scores_past(sub: Subscriber, seq: int, n: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(p["seq"] > seq for p in sub.of("score")) >= n:
            return True
        time.sleep(0.2)
    return False


@needs_a_card
def test_a_spool_gone_read_only_mid_run_keeps_scores_flowing_and_says_so_once(
        card: str, tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    mount = tmp_path / "card"
    mount.mkdir()
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "plant1", "press7")
    cfg = write_config(tmp_path, broker.port, tiny_bundle, tiny_data, 3000, mount / "state" / "spool.sqlite", loop=True)
    agent = subprocess.Popen(on_card(card, mount, agent_command("run", "--config", str(cfg))),
                             env=gateway_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert scores_past(sub, 0, 10, timeout=60), "no scores before the card failed"
        subprocess.run(["sh", "-c", fail(card)], check=True)
        options = next(line.split()[3] for line in Path(f"/proc/{agent.pid}/mounts").read_text().splitlines()
                       if line.split()[1] == str(mount))
        assert re.search(r"(^|,)(ro|emergency_ro)(,|$)", options), f"the card did not go read-only: {options}"
        failed_at = max(p["seq"] for p in sub.of("score"))
        assert scores_past(sub, failed_at, 30), "no scores after the spool's file went read-only"
        broker.stop()  # an outage after it: bridged in memory
        time.sleep(3)
        broker.start()
        assert scores_past(sub, max(p["seq"] for p in sub.of("score")), 20), "no scores after the outage"
        assert agent.poll() is None, agent.communicate()[0]
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
        sub.close()
        broker.stop()
    assert agent.returncode == 0, out
    assert out.count(LINE) == 1 and str(mount / "state" / "spool.sqlite") in out, out
    assert "Traceback" not in out and "crashed" not in out and "spool full" not in out, out
    seqs = sorted({p["seq"] for kind in ("score", "alarm") for p in sub.of(kind)})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "messages lost across the failure or the outage"
    statuses = sub.of("status")
    assert any(s.get("spool_read_only") is True for s in statuses if s["state"] != "offline"), statuses[-3:]


@needs_a_card
def test_a_spool_on_a_read_only_card_at_start_is_one_line_and_exit_2(
        card: str, tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    """Exit 2, as every other state-directory problem at start: systemd does not restart on it (a card does not
    become writable by restarting every 10 s), and the line says what to do."""
    spool, line = start_on_card(card, tiny_bundle, tiny_data, tmp_path, then=fail(card))
    assert line.startswith(f"error: {spool}: the spool's filesystem is read-only"), line


@needs_a_card
def test_a_card_flagged_read_only_at_start_is_named_so_not_as_a_permission(
        card: str, tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    """The other way a card goes read-only, flagged so by the kernel (a remount; Raspberry Pi OS kernels after an
    error): the start-up check said the directory was not writable by the service's user, whose fix (chown)
    cannot help; it names the read-only filesystem."""
    mount = tmp_path / "card"
    _, line = start_on_card(card, tiny_bundle, tiny_data, tmp_path, then=f'mount -o remount,ro "{mount}"')
    assert "is on a read-only filesystem" in line and str(mount) in line, line
    assert "give it to the service's user" not in line


def test_the_memory_takes_the_newest_the_in_flight_and_the_counters_never_the_delivered(tmp_path: Path) -> None:
    """What the switch to memory carries over from the file (read while the file still can be): the newest
    messages within the bound, the older ones in flight (their PUBACK still counts), never the acknowledged ones
    whose delete the disk refused; the rest are counted as dropped, and ids go on past every id the file gave."""
    s = Spool(tmp_path / "s.sqlite")
    seqs = [s.put("t", {"pad": "x" * 1000}) for _ in range(100)]
    ids = [m.id for m in s.peek(200)]
    s.ack(ids[-3:])  # the newest ids were taken and deleted: the memory must not give them out again
    mem = sqlite3.connect(":memory:", isolation_level=None)
    tables(mem)
    left = copy_newest(s.file.db, mem, 20_000, keep=ids[:2], acked=ids[2:3])
    kept = [int(r[0]) for r in mem.execute("SELECT id FROM messages ORDER BY id")]
    assert kept[:2] == ids[:2] and ids[2] not in kept and kept[-1] == ids[-4]  # in flight, newest; not acked
    assert 0 < len(kept) - 2 < 20 and left == 100 - 3 - 1 - len(kept)  # every message not kept is counted
    meta = dict(mem.execute("SELECT key, value FROM meta").fetchall())
    assert meta == {"seq": seqs[-1], "dropped": left}
    mem.execute("INSERT INTO messages (topic, payload) VALUES ('t', x'00')")
    assert mem.execute("SELECT MAX(id) FROM messages").fetchone()[0] == ids[-1] + 1
    s.close()
