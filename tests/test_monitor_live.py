"""The demo's live path on the embedded broker (amqtt, MQTT 3.1.1 only, as on a machine without Mosquitto):
the agent and the monitor both fall back from MQTT 5 by themselves, and the alarm reaches the monitor's
database at the same window as the workstation's evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli

from vibrawatch.agent.sources.loaders import load
from vibrawatch.monitor.live import run_live, sample_messages


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
    assert "falling back to MQTT 3.1.1" in agent_log  # publish.py's fallback for a broker that never answers


def test_lorenz_demo_alarms_live_once_the_node_switches_to_the_broken_parameters(tmp_path: Path) -> None:
    out = cli("demo", "--lorenz", "--out", tmp_path / "lorenz", "--quiet", "--for", "40")
    summary = json.loads((tmp_path / "lorenz" / "live" / "summary.json").read_text())
    first = summary["first_alarm"]
    assert first is not None, out
    assert 1500 <= first["t"] < 1520  # the node switches after 1500 healthy samples (1 Hz): no alarm before
    assert summary["lost"] == 0 and summary["dead_letters"] == 0
    assert "ALARM raised on demo/machine1" in out
