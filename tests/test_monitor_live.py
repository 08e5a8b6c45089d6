"""The demo's live path on the embedded broker (amqtt, MQTT 3.1.1 only, as on a machine without Mosquitto):
the agent and the monitor both fall back from MQTT 5 by themselves, and the alarm reaches the monitor's
database at the same window as the workstation's evaluation."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import cli
from paho.mqtt.enums import CallbackAPIVersion

from vibrawatch.agent.link.broker import MqttSection
from vibrawatch.agent.link.publish import Publisher
from vibrawatch.agent.link.spool import Spool
from vibrawatch.agent.link.topics import topic
from vibrawatch.agent.sources.loaders import load
from vibrawatch.monitor.live import LocalBroker, run_live, sample_messages


def test_live_path_on_the_embedded_amqtt_broker_stores_the_alarm_of_the_offline_evaluation(
        tiny_bundle: Path, tiny_run: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("amqtt", reason="amqtt not installed: pip install -e '.[dev]' (tests/run.sh does it)")
    monkeypatch.setenv("VIBRAWATCH_DEMO_EMBEDDED_BROKER", "1")
    report = json.loads(cli("evaluate", tiny_run, "--data", tiny_data, "--json", "--quiet"))
    rec = load(tiny_data)
    lines: list[str] = []
    summary = run_live(tmp_path / "live", tiny_bundle, None,
                       sample_messages(zip(rec.timestamps.tolist(), rec.data, strict=True), rec.fs_hz, 2048), 0.0,
                       seconds=240, echo=lines.append, http_port=0, until_alarm=True)
    out = "\n".join(lines)
    assert summary["broker"].startswith("amqtt"), out
    assert summary["first_alarm"] is not None, out
    assert summary["first_alarm"]["t"] == pytest.approx(report["first_alarm_s"])  # the same window as evaluate
    assert summary["first_alarm"]["channel"] == report["alarm_channel"]
    assert summary["lost"] == 0 and summary["dead_letters"] == 0
    assert "ALARM raised on demo/machine1" in out and "page: http://127.0.0.1:" in out
    agent_log = (tmp_path / "live" / "agent.log").read_text()
    # The demo knows amqtt speaks 3.1.1 only: the agent speaks it from the start, no MQTT 5 CONNECT left unanswered.
    assert "(MQTT 3.1.1)" in agent_log and "falling back" not in agent_log, agent_log


def test_the_embedded_broker_keeps_its_errors_off_the_console(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What made the demo print amqtt's tracebacks and ERROR lines before its live part: a connection that closes
    without a CONNECT (a port probe), and the agent's MQTT 5 CONNECT with a will, which amqtt (3.1.1 only) misreads.
    Started as the demo starts it, the broker takes both, and the agent's 3.1.1 connection with its will, without
    a word on the console; what amqtt has to say is in the broker's log file."""
    pytest.importorskip("amqtt", reason="amqtt not installed: pip install -e '.[dev]' (tests/run.sh does it)")
    monkeypatch.setenv("VIBRAWATCH_DEMO_EMBEDDED_BROKER", "1")
    broker_log = tmp_path / "broker.log"
    broker = LocalBroker(tmp_path, broker_log).start()
    assert broker.mqtt_311_only
    spool = Spool(str(tmp_path / "spool.sqlite"))
    pub = Publisher(MqttSection(port=broker.port, keepalive=2, protocol="3.1.1"), spool, {"model": "m"},
                    site="demo", device="machine1")
    v5 = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v5-with-will", protocol=mqtt.MQTTv5)
    try:
        with socket.create_connection(("127.0.0.1", broker.port)):
            pass  # a port probe: connects and drops
        v5.will_set(topic("demo", "other", "status"), b'{"state":"offline"}', qos=1, retain=True)
        v5.connect_async("127.0.0.1", broker.port, keepalive=2)
        v5.loop_start()
        pub.start()
        pub.enqueue("score", {"v": 1, "t": 0.0, "score": 0.1})
        assert pub.wait_drained(60), broker_log.read_text()
        deadline = time.monotonic() + 60  # until amqtt has given up on the MQTT 5 CONNECT (keepalive 2 s)
        while "Will flag set" not in broker_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        v5.loop_stop()
        pub.stop()
        spool.close()
        broker.stop()
    out, err = capfd.readouterr()
    console = out + err
    assert "Will flag set" in broker_log.read_text()  # amqtt said it, in its own log
    assert "Traceback" not in console and "ERROR" not in console and "WARNING" not in console, console
    assert "amqtt" not in console and "Failed to initialize" not in console, console


def test_lorenz_demo_alarms_live_once_the_node_switches_to_the_broken_parameters(tmp_path: Path) -> None:
    out = cli("demo", "--lorenz", "--out", tmp_path / "lorenz", "--quiet", "--for", "40")
    summary = json.loads((tmp_path / "lorenz" / "live" / "summary.json").read_text())
    first = summary["first_alarm"]
    assert first is not None, out
    assert abs(summary["anchor"] - time.time()) < 3600  # the run is sent from the demo's start on, not from 1970
    assert first["ts"][:4] != "1970"
    assert 1500 <= first["t"] - summary["anchor"] < 1520  # the node switches after 1500 healthy samples (1 Hz)
    assert summary["lost"] == 0 and summary["dead_letters"] == 0
    assert "ALARM raised on demo/machine1" in out
