"""From alarm to repair, end to end, with nothing stood in for: a real Mosquitto, the real agent
(`vibrawatch-agent run` in a subprocess, a signed tiny bundle, [remote] recalibrate and [commissioning]) fed a
bearing's run to failure by a sensor node, `vibrawatch monitor` holding the deploy signing key, a real headless
Chromium for the operator. The alarm appears on the page with its diagnosis; acting without logging in is
refused; the operator acknowledges it and closes it as "bearing replaced"; the monitor sends the signed
recalibration, the gateway verifies it and commissions again, and the page says so; `vibrawatch alarms list
--json` has the whole story; `vibrawatch alarms recalibrate` asks again. Screenshots are copied to test-artifacts/."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from chromium import Chromium, chromium_binary
from conftest import ROOT
from monitor_helpers import MonitorProcess, page_login_and_acknowledge, wait_until
from mosquitto import Broker, free_port
from test_agent_e2e import agent_command, gateway_env
from test_deploy import resign
from test_monitor_alarms import PASSWORD, add_operator, cli, post

from vibrawatch.agent.sources.loaders import load
from vibrawatch.convert.keys import PUBLIC_NAME, new_keypair
from vibrawatch.monitor.live import DEVICE, RAW_TOPIC, SITE, SensorNode, agent_config, sample_messages
from vibrawatch.monitor.store import open_store

ARTIFACTS = ROOT / "test-artifacts"
WAIT_S = 240  # generous: two busy cores, a TFLite agent, a browser
GATEWAY = "[remote]\nrecalibrate = true\n\n[commissioning]\nwindows = 60\n"  # of ~110 in the healthy part


def statuses(store: Any) -> list[dict[str, Any]]:
    """The device's stored statuses, oldest first, as the gateway sent them."""
    return [json.loads(r["payload"]) for r in store.query("SELECT payload FROM statuses ORDER BY received, ts")]


def test_an_operator_takes_an_alarm_from_the_page_to_a_repaired_and_recommissioning_gateway(
        tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.skip("chromium not installed: apt-get install chromium (tests/run.sh does it)")
    key, _ = new_keypair(tmp_path / "keys")
    bundle = resign(tiny_bundle, tmp_path / "signed.tar", key)
    ops = add_operator(tmp_path / "operators")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    mon = MonitorProcess(tmp_path / "monitor.log", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--db", db,
                         "--http", f"127.0.0.1:{http}", "--client-id", "operator-e2e", "--operators", str(ops),
                         "--signing-key", str(key)).start()
    conf = agent_config(tmp_path / "agent.toml", bundle, tmp_path / "keys" / PUBLIC_NAME, broker.port,
                        tmp_path / "spool.sqlite")
    conf.write_text(conf.read_text() + "\n" + GATEWAY)
    agent_log = tmp_path / "agent.log"
    agent = subprocess.Popen(agent_command("run", "--config", str(conf)), cwd=ROOT, env=gateway_env(tmp_path),
                             stdout=open(agent_log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    logs = lambda: mon.log[-4000:] + agent_log.read_text(errors="replace")[-4000:]  # noqa: E731
    store = node = browser = None
    try:
        wait_until("the monitor's page", lambda: urllib.request.urlopen(base + "/api/health", timeout=5).status == 200,
                   WAIT_S, on_fail=logs)
        store = open_store(db)
        wait_until("the gateway's first status, accepting remote recalibration",
                   lambda: any((s.get("accepts") or {}).get("recalibrate") for s in statuses(store)), WAIT_S, logs)
        rec = load(tiny_data)
        snapshots = list(zip(rec.timestamps.tolist(), rec.data, strict=True))
        node = SensorNode(broker.port, RAW_TOPIC)
        node.publish(sample_messages(snapshots[:30], rec.fs_hz, 2048))  # healthy: the gateway commissions on it
        wait_until("the gateway commissioned", lambda: store.query("SELECT commissioning FROM devices")
                   == [{"commissioning": "commissioned"}], WAIT_S, logs)
        node.publish(sample_messages(snapshots[30:], rec.fs_hz, 2048))  # the outer race fails (onset 60%)
        wait_until("the whole run scored", lambda: store.query("SELECT MAX(t) AS t FROM scores")[0]["t"]
                   >= snapshots[-1][0], WAIT_S, logs)
        # Nuisance alarms of tight new thresholds may come and go before; the failing bearing's alarm stays open.
        wait_until("bearing1's alarm open", lambda: len(store.query(
            "SELECT raised_seq FROM episodes WHERE channel = 'bearing1' AND cleared_seq IS NULL")) == 1, WAIT_S, logs)
        [seq] = [r["raised_seq"] for r in store.query("SELECT raised_seq FROM episodes WHERE channel = 'bearing1' "
                                                      "AND cleared_seq IS NULL")]
        [first] = [e for e in json.loads(cli("alarms", "list", "--url", base, "--json").stdout)["episodes"]
                   if e["raised_seq"] == seq]
        ident = first["id"]
        assert first["state"] == "active" and first["raised_t"] >= snapshots[int(0.6 * len(snapshots))][0], first
        # the diagnosis as the gateway made it: a defect named, or none standing out
        assert first["diagnosis_text"] == "" or "outer race" in first["diagnosis_text"] \
            or "stands out" in first["diagnosis_text"], first

        browser = Chromium()
        browser.goto(f"{base}/device?site={SITE}&device={DEVICE}")
        row = f"document.querySelector('tr[data-episode=\"{ident}\"]')"
        assert browser.wait_for(f"{row}?.dataset.state", WAIT_S) == "active"
        shown = browser.wait_for(f"document.body.dataset.signs && {row}.querySelector('.diagnosis').textContent")
        assert shown == (first["diagnosis_text"] or "none stands out")
        assert browser.js("document.querySelector('#recal-how').textContent") == \
            "(the monitor sends the gateway the signed request)"
        browser.screenshot(tmp_path / "alarm.png")

        # Not logged in: the page's acknowledge and close are refused (401) and change nothing; so is a bare POST.
        browser.js(f"{row}.querySelector('button[data-action=ack]').click()")
        assert "401" in browser.wait_for("document.querySelector('#action-error').textContent")
        browser.js(f"{row}.querySelector('button[data-action=close]').click()")
        browser.js("document.querySelector('#close-work').value = 'bearing replaced';"
                   "document.querySelector('#close-part').value = 'bearing 1';"
                   "document.querySelector('#close-form button[type=submit]').click()")
        assert "401" in browser.wait_for("document.querySelector('#action-error').textContent.includes('401') && "
                                         "document.querySelector('#action-error').textContent")
        code, answer, _ = post(base, "/api/episodes/close", {"id": ident, "verdict": "fault_confirmed", "part": "x",
                                                              "work": "y", "recalibrate": True})
        assert code == 401, answer
        assert store.query("SELECT state, closed_by FROM episodes WHERE raised_seq = ?", (first["raised_seq"],)) \
            == [{"state": "active", "closed_by": None}]
        assert not [s for s in statuses(store) if s.get("command")]  # nothing was sent to the gateway
        browser.screenshot(tmp_path / "refused.png")

        browser.js("document.querySelector('#close-cancel').click()")
        page_login_and_acknowledge(browser, row, "alice", PASSWORD, "seen, sending a fitter")
        browser.screenshot(tmp_path / "acknowledged.png")

        browser.js(f"{row}.querySelector('button[data-action=close]').click()")
        # a confirmed fault is repaired: recalibrating afterwards is the form's default
        assert browser.js("document.querySelector('#close-recalibrate').checked") is True
        browser.js("document.querySelector('#close-verdict').value = 'fault_confirmed';"
                   "document.querySelector('#close-part').value = 'bearing 1';"
                   "document.querySelector('#close-work').value = 'bearing replaced';"
                   "document.querySelector('#close-form button[type=submit]').click()")
        assert browser.wait_for(f"{row}?.dataset.state === 'closed' && 'yes'") == "yes"
        info = browser.wait_for("document.querySelector('#action-info').textContent")
        assert "sent to demo/machine1" in info, info

        # The gateway verified the signed request and commissions again, without a restart.
        sent = [h for h in json.loads(cli("alarms", "show", ident, "--url", base, "--json").stdout)["history"]
                if h["action"] == "recalibrate"]
        assert [h["detail"]["outcome"] for h in sent] == ["sent"] and sent[0]["actor"] == "alice"
        command_id = sent[0]["detail"]["id"]
        wait_until("the gateway applied the recalibration", lambda: any(
            (s.get("command") or {}).get("id") == command_id and s["command"]["outcome"] == "applied"
            and s["state"] == "commissioning" for s in statuses(store)), WAIT_S, logs)
        assert f"recalibrate {command_id} requested remotely" in agent_log.read_text()
        assert "bearing 1: bearing replaced" in agent_log.read_text()
        assert agent.poll() is None

        # The page shows it: the device's status is commissioning, the episode's request was applied.
        assert browser.wait_for("document.querySelector('#device-state')?.dataset.state === 'commissioning' && "
                                "'yes'", WAIT_S) == "yes"
        assert browser.wait_for(f"{row}?.querySelector('.recalibration').dataset.recalibration", WAIT_S) \
            == "applied"
        assert "device commissioning" in browser.js(f"{row}.querySelector('.recalibration').textContent")
        assert "recalibrate" in browser.js("[...document.querySelectorAll('#history tr[data-action]')]"
                                           ".map((r) => r.dataset.action).join(',')")
        browser.screenshot(tmp_path / "recommissioning.png")

        # `vibrawatch alarms list --json`: the whole story of the episode, in order.
        listed = json.loads(cli("alarms", "list", "--url", base, "--json").stdout)["episodes"]
        [ep] = [e for e in listed if e["id"] == ident]
        assert (ep["state"], ep["verdict"], ep["part"], ep["work"], ep["closed_by"]) == (
            "closed", "fault_confirmed", "bearing 1", "bearing replaced", "alice")
        assert [h["action"] for h in ep["history"]] == ["raised", "ack", "close", "recalibrate"], ep["history"]
        by_action = {h["action"]: h for h in ep["history"]}
        assert by_action["close"]["detail"]["verdict"] == "fault_confirmed"
        assert by_action["close"]["detail"]["work"] == "bearing replaced"
        assert by_action["recalibrate"]["detail"]["outcome"] == "sent"
        assert by_action["recalibrate"]["detail"]["id"] == command_id

        # Asked again from the command line (an operator's token): a newer id, verified and applied as well.
        again = cli("alarms", "recalibrate", ident, "--note", "re-aligned", "--url", base, "--json",
                    token=f"alice:{PASSWORD}")
        assert again.returncode == 0, again.stderr
        second = json.loads(again.stdout)["recalibration"]
        assert second["outcome"] == "sent" and second["id"] > command_id
        wait_until("the gateway applied the second request", lambda: any(
            (s.get("command") or {}).get("id") == second["id"] and s["command"]["outcome"] == "applied"
            for s in statuses(store)), WAIT_S, logs)
    finally:
        if browser is not None:
            browser.close()
        if node is not None:
            node.stop()
        agent.terminate()
        agent.wait(timeout=30)
        mon.kill()
        if store is not None:
            store.close()
        broker.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    for shot in tmp_path.glob("*.png"):
        shutil.copy(shot, ARTIFACTS / f"operator_{shot.name}")
