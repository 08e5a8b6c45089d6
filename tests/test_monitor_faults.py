"""Faults the monitor must ride through as a fleet produces them: a gateway that loses power (its last will
says offline, an alert goes out) and a monitor killed with SIGKILL in the middle of draining its session (the
broker redelivers what was not acknowledged; every message is stored once)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
from monitor_helpers import Gateway, MonitorProcess, start_monitor, wait_until
from mosquitto import Broker
from paho.mqtt.enums import CallbackAPIVersion
from test_agent_e2e import agent_command, gateway_env
from test_commission import agent_config
from test_monitor_store import Hook

from vibrawatch.agent.link.topics import encode, score_payload, topic
from vibrawatch.monitor import fleet
from vibrawatch.monitor.store import open_store


def test_a_gateway_that_loses_power_goes_offline_by_its_last_will_and_an_alert_goes_out(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    hook = Hook(fail=0)
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    mon = start_monitor(tmp_path, "mon", broker.port, db, "--webhook", hook.url)
    store = open_store(db)
    try:
        wait_until("subscribed", lambda: "subscribing to" in mon.log, on_fail=lambda: mon.log)
        g = Gateway(broker.port, "plant1", "press7")
        g.online()
        g.score(1, 1.0, 0.1)
        wait_until("online", lambda: [d["state"] for d in store.devices()] == ["online"], on_fail=lambda: mon.log)
        g.vanish()  # no offline status of its own: only the broker can say it
        wait_until("offline by the will", lambda: [(d["state"], d["reason"]) for d in store.devices()]
                   == [("offline", "connection lost")], timeout=90, on_fail=lambda: mon.log)
        row = fleet.table(store, 0.0)[0]
        assert (row["health"], row["note"]) == ("offline", "connection lost")
        wait_until("the offline alert", lambda: [a["kind"] for a in hook.received] == ["offline"],
                   on_fail=lambda: mon.log)
        assert hook.received[0]["reason"] == "connection lost"
    finally:
        store.close()
        mon.kill()
        hook.close()
        broker.stop()


def test_an_agent_killed_with_sigkill_shows_offline_at_the_monitor_and_runs_again_when_it_restarts(
        tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    """The real agent, killed as a power cut would (SIGKILL: no offline of its own, the broker's will says
    it): the monitor shows it offline, 'connection lost'; started again, it runs again (commissioning). The will was
    composed when the connection was made, so it is older than the agent's online status: the monitor orders
    them by the connection they belong to (``link``), not by their timestamps alone."""
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    mon = start_monitor(tmp_path, "mon", broker.port, db)
    # With [commissioning] the agent's first status (commissioning) is composed after its connection and its
    # will: the will is the older of the two, as it is whenever an agent's status changes while it runs.
    cfg = agent_config(tmp_path, tiny_bundle, tiny_data, broker.port, windows=60)
    cfg.write_text(cfg.read_text().replace("speed = 0", "speed = 1"))  # real time: it runs until stopped
    store = open_store(db)
    agent = None

    def state() -> list[tuple[str, str | None]]:
        return [(d["state"], d["reason"]) for d in store.devices()]

    try:
        wait_until("subscribed", lambda: "subscribing to" in mon.log, on_fail=lambda: mon.log)
        for round_ in range(2):
            agent = subprocess.Popen(agent_command("run", "--config", str(cfg)), env=gateway_env(tmp_path),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(f"running ({round_})", lambda: state() == [("commissioning", None)], on_fail=lambda: mon.log)
            agent.send_signal(signal.SIGKILL)
            agent.wait(timeout=10)
            wait_until(f"offline by the will ({round_})", lambda: state() == [("offline", "connection lost")],
                       timeout=90, on_fail=lambda: mon.log + str(state()))
        links = [r["payload"] for r in store.query("SELECT payload FROM statuses ORDER BY received")]
        assert len({json.loads(p)["link"] for p in links}) == 2  # two connections, each with its own link
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        store.close()
        mon.kill()
        broker.stop()


def test_a_monitor_killed_mid_drain_stores_every_message_once_after_it_restarts(tmp_path: Path) -> None:
    """5,000 scores wait in the monitor's persistent session; it is SIGKILLed while draining them (some batches
    committed, some acknowledged, some neither); the broker redelivers what was not acknowledged, and the
    restarted monitor ends with each message stored exactly once and nothing counted lost. The broker is set
    up as docs/monitor.md says a fleet's must be: no limit on what waits for a stopped monitor (Mosquitto's
    default keeps 1,000 and drops the rest)."""
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    broker.conf.write_text(broker.conf.read_text() + "max_queued_messages 0\n")
    broker.start()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    conf = tmp_path / "monitor.toml"
    # Small batches and a small receive window: the drain takes long enough to be killed in the middle of it.
    conf.write_text(f'[monitor]\nbroker = "mqtt://127.0.0.1:{broker.port}"\ndb = "{db}"\nclient_id = "m"\n'
                    'batch_max = 50\nbatch_wait_ms = 5\n[mqtt]\nreceive_maximum = 50\n')
    mon = MonitorProcess(tmp_path / "mon.log", "--http", "off", "--config", str(conf)).start()
    n = 5000
    store = open_store(db)
    try:
        wait_until("subscribed", lambda: "subscribing to" in mon.log, on_fail=lambda: mon.log)
        assert mon.stop() == 0  # its session stays on the broker and collects what follows
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw", protocol=mqtt.MQTTv5)
        pub.max_inflight_messages_set(1000)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        infos = [pub.publish(topic("plant1", "press7", "score"),
                             encode({**score_payload(t=float(i), score=0.1, threshold=0.5, level=0.2,
                                                     contributions={"a": 0.1}, model="m-1"), "seq": i}), qos=1)
                 for i in range(1, n + 1)]
        for info in infos:
            info.wait_for_publish(timeout=60)
        pub.disconnect()
        pub.loop_stop()

        mon.start()
        wait_until("the drain under way", lambda: store.counts()["scores"] > 0, on_fail=lambda: mon.log)
        assert mon.proc is not None
        mon.proc.send_signal(signal.SIGKILL)
        mon.proc.wait(timeout=10)
        mon.proc = None
        stored_at_kill = store.counts()["scores"]
        assert 0 < stored_at_kill < n, stored_at_kill  # killed in the middle, or the test shows nothing

        mon.start()
        wait_until("every message", lambda: store.counts()["scores"] == n, timeout=60,
                   on_fail=lambda: mon.log + f"\nstored at kill {stored_at_kill}, now {store.counts()}")
        seqs = [r["seq"] for r in store.query("SELECT seq FROM scores ORDER BY seq")]
        assert seqs == list(range(1, n + 1))
        d = store.devices()[0]
        assert (d["received"], d["lost"], d["first_seq"], d["last_seq"]) == (n, 0, 1, n)
        assert mon.stop() == 0
    finally:
        store.close()
        mon.kill()
        broker.stop()
