"""The monitor's page in a real headless Chromium, fed by the real chain: a sensor node publishes raw samples,
`vibrawatch-agent run` scores them with a real TFLite bundle, `vibrawatch monitor` stores and serves them.
The device row and the score chart are there, and change when the agent raises an alarm; screenshots are
saved in the test's folder and copied to test-artifacts/."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from chromium import Chromium, chromium_binary
from conftest import ROOT
from monitor_helpers import MonitorProcess, wait_until
from mosquitto import Broker, free_port
from test_agent_e2e import agent_command, gateway_env

from vibrawatch.agent.sources.loaders import load
from vibrawatch.monitor.live import RAW_TOPIC, SensorNode, agent_config, sample_messages
from vibrawatch.monitor.store import open_store

ARTIFACTS = ROOT / "test-artifacts"


def test_page_shows_the_device_and_its_chart_and_both_change_when_the_agent_raises_an_alarm(
        tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.skip("chromium not installed: apt-get install chromium (tests/run.sh does it)")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    http = free_port()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    mon = MonitorProcess(tmp_path / "monitor.log", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--db", db,
                         "--http", f"127.0.0.1:{http}", "--client-id", "page-test").start()
    conf = agent_config(tmp_path / "agent.toml", tiny_bundle, None, broker.port, tmp_path / "spool.sqlite")
    agent = subprocess.Popen(agent_command("run", "--config", str(conf)), cwd=ROOT, env=gateway_env(tmp_path),
                             stdout=open(tmp_path / "agent.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    store = open_store(db)
    node = browser = None
    logs = lambda: mon.log + (tmp_path / "agent.log").read_text(errors="replace")  # noqa: E731
    try:
        wait_until("the agent online at the monitor",
                   lambda: store.query("SELECT state FROM devices") == [{"state": "online"}], on_fail=logs)
        rec = load(tiny_data)
        snapshots = list(zip(rec.timestamps.tolist(), rec.data, strict=True))
        node = SensorNode(broker.port, RAW_TOPIC)
        node.publish(sample_messages(snapshots[:30], rec.fs_hz, 2048))  # the healthy part (trained on the first half)
        wait_until("scores of the healthy part", lambda: store.counts()["scores"] >= 50, on_fail=logs)

        browser = Chromium()
        base = f"http://127.0.0.1:{http}"
        browser.goto(f"{base}/")
        assert browser.wait_for("document.querySelector('tr[data-device=\"demo/machine1\"]')?.dataset.health") \
            == "online"
        assert browser.js("document.querySelector('tr[data-device]').dataset.thresholdSource") == "bundle"
        browser.screenshot(tmp_path / "fleet_healthy.png")
        browser.goto(f"{base}/device?site=demo&device=machine1")
        points = int(browser.wait_for("+document.querySelector('#score-chart').dataset.points"))
        assert points >= 50
        assert browser.js("document.querySelectorAll('#score-chart canvas').length") == 1  # uPlot drew it
        assert browser.js("document.querySelector('#score-chart').dataset.alarms") == "0"
        # per-channel contributions drawn, one series per channel (uPlot's legend lists them), and the status
        # history has the agent's online status
        assert browser.js("document.querySelectorAll('#contrib-chart canvas').length") == 1
        legend = browser.js("[...document.querySelectorAll('#contrib-chart .u-legend .u-series')]"
                            ".map((e) => e.textContent).join('|')")
        assert all(ch in legend for ch in ("bearing1", "bearing2", "bearing3", "bearing4")), legend
        assert "online" in browser.js("document.querySelector('#statuses tbody').textContent")
        # Where the thresholds come from, and the threshold line is each score's own (the newest stored here).
        assert browser.js("document.querySelector('#thresholds').dataset.source") == "bundle"
        newest = store.query("SELECT threshold FROM scores ORDER BY seq DESC LIMIT 1")[0]["threshold"]
        assert float(browser.js("document.querySelector('#score-chart').dataset.lastThreshold")) == newest
        # Which model file scores (the agent's status and scores say it): the bundle's model.tflite.
        with tarfile.open(tiny_bundle) as tar:
            sha = hashlib.sha256(tar.extractfile("model.tflite").read()).hexdigest()  # type: ignore[union-attr]
        assert browser.js("document.querySelector('#sha256').textContent") == f"(sha256 {sha[:12]})"
        browser.screenshot(tmp_path / "device_healthy.png")

        node.publish(sample_messages(snapshots[30:], rec.fs_hz, 2048))  # the bearing fails
        wait_until("an alarm stored", lambda: store.query("SELECT alarm FROM devices") == [{"alarm": 1}],
                   on_fail=logs)
        # The open page updates by itself (server-sent events): more points, an alarm period shaded.
        browser.wait_for("+document.querySelector('#score-chart').dataset.alarms >= 1")
        assert int(browser.js("+document.querySelector('#score-chart').dataset.points")) > points
        assert browser.js("document.querySelector('#device tr').dataset.health") == "alarm"
        browser.screenshot(tmp_path / "device_alarm.png")
        browser.goto(f"{base}/")
        assert browser.wait_for("document.querySelector('tr[data-device=\"demo/machine1\"]')?.dataset.health "
                                "=== 'alarm' && 'alarm'") == "alarm"
        assert "bearing1" in browser.js("document.querySelector('tr[data-device]').textContent")
        browser.screenshot(tmp_path / "fleet_alarm.png")
    finally:
        if browser is not None:
            browser.close()
        if node is not None:
            node.stop()
        agent.terminate()
        agent.wait(timeout=30)
        mon.kill()
        store.close()
        broker.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    for shot in tmp_path.glob("*.png"):
        shutil.copy(shot, ARTIFACTS / f"monitor_{shot.name}")
