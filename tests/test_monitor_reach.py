"""A monitor started before its broker: it says at once why it cannot reach it and when it tries again (the agent's
own code for it, agent/link/reach.py), keeps its page up meanwhile, and ingests once the broker appears."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from monitor_helpers import Gateway, MonitorProcess, wait_until
from mosquitto import Broker, free_port

from vibrawatch.monitor.store import open_store


def _health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as r:  # noqa: S310 - local
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503 while not ok: the body says the same
        return json.loads(e.read())


def test_a_monitor_started_before_its_broker_says_why_keeps_its_page_and_ingests_once_it_appears(
        tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")  # its port is chosen, nothing listens there yet
    http = free_port()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    mon = MonitorProcess(tmp_path / "mon.log", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--db", db,
                         "--http", f"127.0.0.1:{http}", "--client-id", "mon")
    mon.start()
    gw = None
    try:
        wait_until("the reason", lambda: "cannot reach the broker" in mon.log, timeout=120, on_fail=lambda: mon.log)
        first = [line for line in mon.log.splitlines() if "cannot reach the broker" in line]
        assert len(first) == 1
        assert (f"cannot reach the broker at 127.0.0.1:{broker.port}: connection refused: nothing listens on that "
                "host and port") in first[0]
        assert "next attempt in 3 s, the wait doubling up to 30 s" in first[0]  # paho: 1 s, then 2 s
        assert "Traceback" not in mon.log
        wait_until("the page", lambda: _health(http)["broker"]["connected"] is False, timeout=60,
                   on_fail=lambda: mon.log)

        broker.start()
        wait_until("connected", lambda: "connected to 127.0.0.1" in mon.log, timeout=120, on_fail=lambda: mon.log)
        line = next(x for x in mon.log.splitlines() if "connected to 127.0.0.1" in x)
        assert "failed attempt(s) over" in line
        gw = Gateway(broker.port, "plant", "pump1")
        gw.online()
        sent = gw.score(1, time.time(), 0.5)
        store = open_store(db)
        try:
            wait_until("the score stored", lambda: [r["score"] for r in store.query("SELECT score FROM scores")]
                       == [sent["score"]], on_fail=lambda: mon.log)
        finally:
            store.close()
        wait_until("health says connected", lambda: _health(http)["broker"]["connected"] is True,
                   on_fail=lambda: mon.log)
        assert "Traceback" not in mon.log
    finally:
        if gw is not None:
            gw.close()
        mon.kill()
        broker.stop()
