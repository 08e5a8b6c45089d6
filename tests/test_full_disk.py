"""A full disk under the spool: the agent keeps scoring and publishing, loses only what the disk would not take,
counts it, and numbers past it. Before, the first commit the disk refused crashed the service (and, under
Restart=on-failure, again after every restart).

The disk is a real one: a 1 MB tmpfs that bubblewrap mounts over the spool's directory (the test runs the
service inside it); the broker is away for the first seconds, so the spool fills the disk."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mosquitto import Broker
from test_agent_e2e import Subscriber, agent_command, gateway_env, write_config

from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.link.spool import Spool

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed (tests/run.sh)")


@needs_bwrap
def test_a_full_disk_loses_only_what_it_cannot_hold_and_the_agent_goes_on(tiny_bundle: Path, tiny_data: Path,
                                                                            tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")  # its port is chosen; it starts later
    cfg = write_config(tmp_path, broker.port, tiny_bundle, tiny_data, spool=disk / "spool.sqlite", loop=True)
    cmd = ["bwrap", "--die-with-parent", "--dev-bind", "/", "/", "--size", str(1024 * 1024), "--tmpfs", str(disk),
           *agent_command("run", "--config", str(cfg))]
    agent = subprocess.Popen(cmd, env=gateway_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    sub = None
    try:
        time.sleep(6)  # scoring at full speed with no broker: the spool fills its 1 MB
        assert agent.poll() is None, agent.communicate()[0]
        broker.start()
        sub = Subscriber(broker.port, "plant1", "press7")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(sub.of("score")) < 200:
            time.sleep(0.2)
        time.sleep(2)
        assert agent.poll() is None, agent.communicate()[0]
        for pid in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
            os.kill(int(pid), signal.SIGTERM)  # the agent, bwrap's child (bwrap forwards no signal)
        out, _ = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
        if sub is not None:
            sub.close()
        broker.stop()
    assert agent.returncode == 0, out
    assert "Traceback" not in out and "crashed" not in out, out
    seqs = sorted({p["seq"] for kind in ("score", "alarm") for p in sub.of(kind)})
    assert len(seqs) >= 200, out
    # the count the retained status carried last, or the stop's log line (drops after that status)
    dropped = max([s.get("spool_dropped", 0) for s in sub.of("status")]
                  + [int(n) for n in re.findall(r"spool full \(the disk under it is full\): .*?(\d+) in all", out)])
    assert dropped > 0, "the disk never filled: the test did not test anything"
    missing = set(range(1, seqs[-1] + 1)) - set(seqs)
    assert len(missing) <= dropped, f"{len(missing)} seqs missing, {dropped} counted as dropped"


def test_a_spool_that_is_not_an_sqlite_file_is_named_at_start(tmp_path: Path) -> None:
    """A directory, another program's file or a damaged spool: one line naming it, not a traceback."""
    (tmp_path / "dir.sqlite").mkdir()
    (tmp_path / "text.sqlite").write_text("not a database, but long enough to have a header " * 10)
    for name in ("dir.sqlite", "text.sqlite"):
        with pytest.raises(ConfigError, match=rf"{name}: cannot use it as the spool \(.+\); \[agent\] spool"):
            Spool(tmp_path / name)
