"""`vibrawatch monitor` connects the way the gateways do: over TLS with a username and a password file to a
real Mosquitto (a wrong password is refused, said once, and the monitor keeps trying), and to a 3.1.1-only
broker by falling back to a plain subscription and saying so. Messages come from the agent's own publisher."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from monitor_helpers import MonitorProcess, wait_until
from mosquitto import Broker
from test_publish_tls import Mqtt311Gate, pki, publisher, tls_broker  # noqa: F401  (pki: a fixture)

from vibrawatch.agent.link.topics import score_payload
from vibrawatch.monitor.store import open_store


def monitor_config(path: Path, broker: str, **mqtt: str) -> Path:
    lines = "".join(f'{k} = "{v}"\n' for k, v in mqtt.items())
    path.write_text(f'[monitor]\nbroker = "{broker}"\ndb = "sqlite:///{path.parent}/fleet.db"\n'
                    f'client_id = "monitor-{path.stem}"\n[mqtt]\n{lines}')
    return path


def secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def scores(n: int) -> list[dict]:
    return [score_payload(t=1_767_225_600.0 + i, score=0.1, threshold=0.5, level=0.2, contributions={"a": 0.1},
                          model="m-1") for i in range(n)]


def test_monitor_over_tls_with_a_password_file_stores_what_a_gateway_sends(tmp_path: Path,
                                                                            pki: dict[str, Path]) -> None:  # noqa: F811
    users = tmp_path / "users"
    for i, (user, password) in enumerate((("monitor", "monitor-s3cret"), ("press7", "gateway-s3cret"))):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(users), user, password],
                       check=True)
    users.chmod(0o644)
    broker = tls_broker(tmp_path, pki, require_certificate=False, password_file=users)
    url = f"mqtts://127.0.0.1:{broker.port}"
    good = MonitorProcess(tmp_path / "good.log", "--http", "off", "--config", str(monitor_config(
        tmp_path / "good.toml", url, username="monitor", ca_file=pki["ca"],
        password_file=secret(tmp_path / "monitor-pw", "monitor-s3cret"))))
    (tmp_path / "bad").mkdir()
    bad = MonitorProcess(tmp_path / "bad.log", "--http", "off", "--config", str(monitor_config(
        tmp_path / "bad" / "bad.toml", url, username="monitor", ca_file=pki["ca"],
        password_file=secret(tmp_path / "wrong-pw", "guess"))))
    pub, spool = publisher(tmp_path / "gw", broker.port, tls=True, ca_file=str(pki["ca"]), username="press7",
                           password_file=str(secret(tmp_path / "gw-pw", "gateway-s3cret")))
    store = None
    try:
        good.start()
        bad.start()
        wait_until("the monitor connected over TLS", lambda: "connected to 127.0.0.1" in good.log,
                   on_fail=lambda: good.log)
        pub.start()
        for p in scores(5):
            pub.enqueue("score", p)
        store = open_store(f"sqlite:///{tmp_path}/fleet.db")
        wait_until("five scores stored", lambda: store.counts()["scores"] == 5, on_fail=lambda: good.log)
        assert [r["seq"] for r in store.query("SELECT seq FROM scores ORDER BY seq")] == [1, 2, 3, 4, 5]
        wait_until("the wrong password refused", lambda: "broker refused the connection" in bad.log,
                   on_fail=lambda: bad.log)
        time.sleep(3)  # it keeps trying without crashing, and says it once per refusal, not in a loop
        assert bad.proc is not None and bad.proc.poll() is None, bad.log
        assert "connected to 127.0.0.1" not in bad.log and "Traceback" not in bad.log
        assert not (tmp_path / "bad" / "fleet.db").exists() or \
            open_store(f"sqlite:///{tmp_path}/bad/fleet.db").counts()["scores"] == 0
        assert good.stop() == 0 and bad.stop() == 0
    finally:
        if store is not None:
            store.close()
        pub.stop()
        spool.close()
        good.kill()
        bad.kill()
        broker.stop()


def test_monitor_falls_back_to_a_plain_subscription_on_a_311_broker_and_says_so(tmp_path: Path) -> None:
    broker = Broker(tmp_path).start()
    gate = Mqtt311Gate(broker.port)
    mon = MonitorProcess(tmp_path / "monitor.log", "--http", "off", "--config", str(monitor_config(
        tmp_path / "m.toml", f"mqtt://127.0.0.1:{gate.port}")))
    pub, spool = publisher(tmp_path / "gw", broker.port)
    store = None
    try:
        mon.start()
        wait_until("the monitor subscribed over 3.1.1", lambda: "MQTT 3.1.1 broker: no shared subscriptions" in mon.log,
                   on_fail=lambda: mon.log)
        assert gate.refused_v5 >= 1 and gate.passed_311 >= 1
        pub.start()
        for p in scores(3):
            pub.enqueue("score", p)
        store = open_store(f"sqlite:///{tmp_path}/fleet.db")
        wait_until("three scores stored through the 3.1.1 gate", lambda: store.counts()["scores"] == 3,
                   on_fail=lambda: mon.log)
        assert mon.stop() == 0
    finally:
        if store is not None:
            store.close()
        pub.stop()
        spool.close()
        mon.kill()
        gate.close()
        broker.stop()
