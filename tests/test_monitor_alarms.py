"""Alarm episodes from raise to close, and who may act, on SQLite and a real PostgreSQL with a real Mosquitto.

A simulated gateway (monitor_helpers.Gateway: the agent's own payloads) raises alarms; `vibrawatch monitor`
stores them as episodes; operators acknowledge, shelve and close them through `vibrawatch alarms` and the HTTP
API; requests without a right operator are refused and leave nothing done; every change is in the audit table
and at the webhook; the verdicts give the fleet's measures. Then the page in a real Chromium: the alarm with
its diagnosis, an operator logs in, acknowledges and closes it (screenshots in test-artifacts/)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from chromium import Chromium, chromium_binary
from conftest import ROOT
from monitor_helpers import Gateway, MonitorProcess, page_login_and_acknowledge, vibrawatch_command, wait_until
from mosquitto import Broker, free_port

from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.link.topics import alarm_payload
from vibrawatch.monitor import episodes
from vibrawatch.monitor.auth import Operators
from vibrawatch.monitor.measures import measures
from vibrawatch.monitor.rows import Alarm, Batch, Score
from vibrawatch.monitor.store import Store, open_store

PASSWORD = "correct horse battery"
TOKEN = f"alice:{PASSWORD}"
DIAGNOSIS = {"defect": "bpfo", "ratio": 1.7, "ratios": {"bpfo": 1.7, "bpfi": 1.1, "bsf": 1.0, "ftf": 0.9}}
ARTIFACTS = ROOT / "test-artifacts"


def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VIBRAWATCH_TOKEN"}
    if token is not None:
        env["VIBRAWATCH_TOKEN"] = token
    return subprocess.run(vibrawatch_command(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def add_operator(path: Path) -> Path:
    done = subprocess.run(vibrawatch_command("operators", "add", "alice", "--file", str(path), "--password-stdin"),
                          input=PASSWORD + "\n", capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in path.read_text()  # only the hash is kept
    return path


def post(base: str, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    """POST JSON (or bytes as given); (status, JSON answer, response headers)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


class Webhook:
    """A real HTTP server that keeps every alert POSTed to it."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                hook.got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def raise_alarm(gw: Gateway, seq: int, channel: str, diagnosis: dict[str, Any] | None = None) -> None:
    """A combined detector's raise (with its diagnosis), exactly as the agent builds it."""
    t = time.time()
    extra: dict[str, Any] = {"channels": [channel]}
    if diagnosis is not None:
        extra["diagnosis"] = diagnosis
    gw._publish("alarm", {**alarm_payload(t=t, event="raised", channel=channel, score=2.0, level=2.0, since=t,
                                          model="m-1", **extra), "seq": seq})


def clear_alarm(gw: Gateway, seq: int, channel: str) -> None:
    gw._publish("alarm", {**alarm_payload(t=time.time(), event="cleared", channel=channel, score=0.5, level=0.5,
                                          since=None, model="m-1", channels=[]), "seq": seq})


def episode(store: Store, seq: int) -> dict[str, Any]:
    return store.query("SELECT * FROM episodes WHERE raised_seq = ?", (seq,))[0]


def test_an_alarm_from_raise_to_close_through_the_cli_and_the_api_and_refused_without_an_operator(
        db_url: str, tmp_path: Path) -> None:
    ops = add_operator(tmp_path / "operators")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    hook = Webhook()
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    mon = MonitorProcess(tmp_path / "monitor.log", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--db", db_url,
                         "--http", f"127.0.0.1:{http}", "--client-id", "alarms-test", "--operators", str(ops),
                         "--webhook", hook.url).start()
    store = None
    gw = None
    try:
        wait_until("the monitor's page", lambda: urllib.request.urlopen(base + "/api/health", timeout=5).status == 200,
                   on_fail=lambda: mon.log)
        store = open_store(db_url)
        gw = Gateway(broker.port, "plant", "press7")
        gw.online()
        gw.score(1, time.time(), 0.2)
        raise_alarm(gw, 2, "ch0", DIAGNOSIS)

        # It appears as active, with its diagnosis, in `vibrawatch alarms list --json` (the API underneath).
        def listed() -> list[dict[str, Any]]:
            done = cli("alarms", "list", "--url", base, "--json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)["episodes"]
        wait_until("the episode listed", lambda: len(listed()) == 1, on_fail=lambda: mon.log)
        [e] = listed()
        assert (e["id"], e["state"], e["channel"]) == ("plant/press7/2", "active", "ch0")
        assert e["diagnosis_text"] == "outer race (BPFO x1.7)"
        table = cli("alarms", "list", "--url", base)
        assert "plant/press7/2" in table.stdout and "outer race (BPFO x1.7)" in table.stdout

        # Refused: no credentials, a wrong password, an unknown operator, a form post, a session without its CSRF
        # token, and the CLI with no or a wrong token. Nothing of it is done or audited.
        ack = {"id": "plant/press7/2", "note": "x"}
        assert post(base, "/api/episodes/ack", ack)[0] == 401
        assert post(base, "/api/episodes/ack", ack, {"Authorization": "Bearer alice:wrong password"})[0] == 401
        assert post(base, "/api/episodes/ack", ack, {"Authorization": f"Bearer bob:{PASSWORD}"})[0] == 401
        assert post(base, "/api/episodes/ack", b"id=plant/press7/2",
                    {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-www-form-urlencoded"})[0] == 415
        status, who, headers = post(base, "/api/login", {"name": "alice", "password": PASSWORD})
        assert status == 200 and who["operator"] == "alice"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        assert post(base, "/api/episodes/ack", ack, {"Cookie": cookie})[0] == 403
        assert post(base, "/api/episodes/ack", ack, {"Cookie": cookie, "X-CSRF-Token": "guess"})[0] == 403
        assert post(base, "/api/login", {"name": "alice", "password": "nope nope"})[0] == 401
        none = cli("alarms", "ack", "plant/press7/2", "--url", base)
        assert none.returncode == 2 and "needs an operator" in none.stderr
        wrong = cli("alarms", "ack", "plant/press7/2", "--url", base, token="alice:guess1234")
        assert wrong.returncode == 2 and "401" in wrong.stderr and "Traceback" not in wrong.stderr
        assert episode(store, 2)["state"] == "active" and episode(store, 2)["ack_by"] is None
        assert [r["action"] for r in store.query("SELECT action FROM audit")] == ["raised"]
        assert not store.query("SELECT key FROM alerts WHERE kind = 'alarm_acknowledged'")

        # Acknowledged through the CLI, shelved through the API (a token), acknowledged again from the page's
        # session (cookie + CSRF token).
        done = cli("alarms", "ack", "plant/press7/2", "--note", "on my way", "--url", base, token=TOKEN)
        assert done.returncode == 0, done.stderr
        assert "acknowledged" in done.stdout
        row = episode(store, 2)
        assert (row["state"], row["ack_by"], row["ack_note"]) == ("acknowledged", "alice", "on my way")
        status, answer, _ = post(base, "/api/episodes/shelve", {"id": "plant/press7/2", "hours": 1},
                                 {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and answer["episode"]["state"] == "shelved"
        assert time.time() + 3000 < episode(store, 2)["shelved_until"] <= time.time() + 3600
        assert post(base, "/api/episodes/shelve", {"id": "plant/press7/2", "hours": 24 * 365},
                    {"Authorization": f"Bearer {TOKEN}"})[0] == 400  # too long a shelf
        status, answer, _ = post(base, "/api/episodes/ack", {"id": "plant/press7/2"},
                                 {"Cookie": cookie, "X-CSRF-Token": who["csrf"]})
        assert status == 200 and answer["episode"]["state"] == "acknowledged"

        # The device clears it: cleared, waiting for a verdict; acknowledging it now is a clear 409.
        clear_alarm(gw, 3, "ch0")
        wait_until("the episode cleared", lambda: episode(store, 2)["state"] == "cleared", on_fail=lambda: mon.log)
        late = cli("alarms", "ack", "plant/press7/2", "--url", base, token=TOKEN)
        assert late.returncode == 2 and "409" in late.stderr and "close it with a verdict" in late.stderr
        vague = cli("alarms", "close", "plant/press7/2", "--verdict", "fault_confirmed", "--url", base, token=TOKEN)
        assert vague.returncode == 2 and "needs part" in vague.stderr
        done = cli("alarms", "close", "plant/press7/2", "--verdict", "fault_confirmed", "--part", "bearing 1",
                   "--work", "bearing replaced", "--url", base, "--json", token=TOKEN)
        assert done.returncode == 0, done.stderr
        closed = json.loads(done.stdout)["episode"]
        assert (closed["state"], closed["verdict"], closed["part"], closed["work"], closed["closed_by"]) == \
            ("closed", "fault_confirmed", "bearing 1", "bearing replaced", "alice")

        # Two more: a false alarm closed through the API (asking for recalibration: the command to run comes back),
        # planned maintenance through the CLI.
        raise_alarm(gw, 4, "ch1")
        raise_alarm(gw, 5, "ch0")
        wait_until("two more episodes", lambda: len(store.query("SELECT site FROM episodes")) == 3)
        status, answer, _ = post(base, "/api/episodes/close", {"id": "plant/press7/4", "verdict": "no_fault_found",
                                                               "recalibrate": True},
                                 {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and answer["recalibrate"] == \
            "vibrawatch recalibrate --broker mqtt://HOST:PORT --site plant --device press7"
        assert answer["recalibration"]["outcome"] == "not_sent" and "no signing key" in \
            answer["recalibration"]["reason"]  # this monitor holds no key: nothing sent, nothing recorded as sent
        status, answer, _ = post(base, "/api/episodes/recalibrate", {"id": "plant/press7/4"},
                                 {"Authorization": f"Bearer {TOKEN}"})
        assert status == 409 and "no signing key" in answer["error"] and "vibrawatch recalibrate" in answer["error"]
        asked = cli("alarms", "recalibrate", "plant/press7/4", "--url", base, token=TOKEN)
        assert asked.returncode == 2 and "409" in asked.stderr and "no signing key" in asked.stderr, asked.stderr
        assert cli("alarms", "close", "plant/press7/5", "--verdict", "maintenance", "--url", base,
                   token=TOKEN).returncode == 0
        assert post(base, "/api/episodes/close", {"id": "plant/press7/5", "verdict": "maintenance"},
                    {"Authorization": f"Bearer {TOKEN}"})[0] == 409  # closed already

        # The whole history of the first, in order, each with who and from where.
        shown = json.loads(cli("alarms", "show", "plant/press7/2", "--url", base, "--json").stdout)
        steps = [(h["action"], h["actor"], h["source"]) for h in shown["history"]]
        assert steps == [("raised", "device plant/press7", "mqtt"), ("ack", "alice", "127.0.0.1"),
                         ("shelve", "alice", "127.0.0.1"), ("ack", "alice", "127.0.0.1"),
                         ("cleared", "device plant/press7", "mqtt"), ("close", "alice", "127.0.0.1")]
        assert shown["history"][-1]["detail"]["verdict"] == "fault_confirmed"

        # Every change went to the webhook too.
        def kinds() -> list[tuple[str, Any]]:
            return sorted((a["kind"], a.get("episode")) for a in hook.got if a["kind"].startswith("alarm_"))
        wanted = [("alarm_acknowledged", "plant/press7/2"), ("alarm_acknowledged", "plant/press7/2"),
                  ("alarm_cleared", None), ("alarm_closed", "plant/press7/2"), ("alarm_closed", "plant/press7/4"),
                  ("alarm_closed", "plant/press7/5"), ("alarm_raised", None), ("alarm_raised", None),
                  ("alarm_raised", None), ("alarm_shelved", "plant/press7/2")]
        wait_until("every change at the webhook", lambda: kinds() == wanted, on_fail=lambda: f"{kinds()}")
        closing = next(a for a in hook.got if a["kind"] == "alarm_closed" and a["episode"] == "plant/press7/2")
        assert (closing["by"], closing["part"], closing["work"]) == ("alice", "bearing 1", "bearing replaced")

        # The verdicts' measures in `vibrawatch fleet --json`, per site and per model.
        fleet = json.loads(cli("fleet", "--db", db_url, "--json").stdout)["measures"]
        for group in (fleet["fleet"], fleet["sites"]["plant"], fleet["models"]["m-1"]):
            assert (group["episodes"], group["open"], group["confirmed_faults"], group["nuisance_alarms"],
                    group["maintenance"], group["confirmed_share"]) == (3, 0, 1, 1, 1, 0.5)
            assert group["warning_to_repair_h"]["n"] == 1
        assert "Traceback" not in mon.log
    finally:
        if gw is not None:
            gw.close()
        mon.kill()
        if store is not None:
            store.close()
        hook.close()
        broker.stop()


def _alarm(seq: int, event: str, received: float, channel: str = "a") -> Alarm:
    return Alarm("s1", "d1", seq, float(seq), f"ts{seq}", event, channel, 2.0, 2.0,
                 f"ts{seq}" if event == "raised" else None, "m", received)


def test_episodes_follow_the_device_and_the_verdicts_give_the_measures(db_url: str) -> None:
    store = open_store(db_url)
    try:
        day = 86_400.0
        score = Score("s1", "d1", 1, 1.0, "ts1", 0.1, 0.5, 0.2, {"a": 0.1}, "m", 0.0)
        store.write(Batch(scores=[score]), now=1000.0)  # first seen
        # A plain detector: one alarm a device. Raised, raised again (the agent restarted in alarm: the same
        # episode), cleared on another channel (the most responsible one changed): it clears the episode.
        store.write(Batch(alarms=[_alarm(2, "raised", 2000.0), _alarm(3, "raised", 2100.0, "b")]), now=2100.0)
        store.write(Batch(alarms=[_alarm(4, "cleared", 2200.0, "b")]), now=2200.0)
        store.write(Batch(alarms=[_alarm(5, "raised", 3000.0)]), now=3000.0)
        store.write(Batch(alarms=[_alarm(6, "raised", 4000.0)]), now=4000.0)
        assert [(r["raised_seq"], r["state"], r["cleared_seq"]) for r in
                store.query("SELECT * FROM episodes ORDER BY raised_seq")] == [(2, "cleared", 4), (5, "active", None)]
        # Closed while the alarm is still active (maintenance underway), then the device clears it: it stays closed.
        episodes.act(store.db, "s1/d1/5", episodes.Action("close", verdict="no_fault_found"), "bob", "test", 5000.0)
        store.write(Batch(alarms=[_alarm(7, "cleared", 6000.0), _alarm(8, "raised", 7000.0)]), now=7000.0)
        assert [(r["raised_seq"], r["state"], r["cleared_seq"]) for r in
                store.query("SELECT * FROM episodes ORDER BY raised_seq")] == \
            [(2, "cleared", 4), (5, "closed", 7), (8, "active", None)]
        episodes.act(store.db, "s1/d1/2", episodes.Action("close", verdict="fault_confirmed", part="bearing",
                                                          work="replaced"), "bob", "test", 2000.0 + 7200.0)
        # Shelving runs out by itself: shown active again after its time.
        episodes.act(store.db, "s1/d1/8", episodes.Action("shelve", until=8000.0), "bob", "test", 7500.0)
        assert episodes.get(store.db, "s1/d1/8", 7999.0)["state"] == "shelved"
        assert episodes.get(store.db, "s1/d1/8", 8001.0)["state"] == "active"
        with pytest.raises(episodes.ActionError, match="is closed"):
            episodes.act(store.db, "s1/d1/5", episodes.Action("ack"), "bob", "test", 9000.0)
        store.write(Batch(scores=[dataclasses.replace(score, seq=9)]), now=1000.0 + 30 * day)  # a month watched
        m = measures(store.db, now=1000.0 + 30 * day)
        for group in (m["fleet"], m["sites"]["s1"], m["models"]["m"]):
            assert group["machine_months"] == 1.0
            counts = (group["episodes"], group["open"], group["confirmed_faults"], group["nuisance_alarms"])
            assert counts == (3, 1, 1, 1)
            assert group["nuisance_per_machine_month"] == 1.0
            assert group["warning_to_repair_h"] == {"median": 2.0, "max": 2.0, "n": 1}
        audit = store.query("SELECT action, actor FROM audit ORDER BY at, id")
        assert [a["action"] for a in audit].count("raised") == 3 and ("close", "bob") in \
            [(a["action"], a["actor"]) for a in audit]
    finally:
        store.close()


def test_an_operators_file_others_can_read_or_malformed_is_refused_with_one_line(tmp_path: Path) -> None:
    f = add_operator(tmp_path / "operators")
    ops = Operators.load(f)
    assert ops.check(TOKEN) == "alice" and ops.check("alice:wrong") is None and ops.check(f"eve:{PASSWORD}") is None
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644: other users can read it"):
        Operators.load(f)
    f.chmod(0o600)
    f.write_text(f.read_text() + "bob:plaintext\n")
    with pytest.raises(ConfigError, match=r"operators:2: expected NAME:\$argon2id"):
        Operators.load(f)
    with pytest.raises(ConfigError, match="does not exist"):
        Operators.load(tmp_path / "none")


def test_the_page_shows_the_alarm_with_its_diagnosis_and_an_operator_acknowledges_and_closes_it(
        tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.skip("chromium not installed: apt-get install chromium (tests/run.sh does it)")
    ops = add_operator(tmp_path / "operators")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    mon = MonitorProcess(tmp_path / "monitor.log", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--db", db,
                         "--http", f"127.0.0.1:{http}", "--client-id", "alarms-page", "--operators", str(ops)).start()
    gw = browser = None
    store = None
    try:
        wait_until("the monitor's page", lambda: urllib.request.urlopen(base + "/api/health", timeout=5).status == 200,
                   on_fail=lambda: mon.log)
        store = open_store(db)
        gw = Gateway(broker.port, "plant", "press7")
        gw.online()
        gw.score(1, time.time(), 0.2)
        raise_alarm(gw, 2, "ch0", DIAGNOSIS)
        wait_until("the episode stored", lambda: len(store.query("SELECT site FROM episodes")) == 1)

        browser = Chromium()
        browser.goto(f"{base}/device?site=plant&device=press7")
        row = "document.querySelector('tr[data-episode=\"plant/press7/2\"]')"
        assert browser.wait_for(f"{row}?.dataset.state") == "active"
        assert browser.js(f"{row}.querySelector('.diagnosis').textContent") == "outer race (BPFO x1.7)"
        browser.screenshot(tmp_path / "alarm_active.png")

        # Not logged in: acknowledging is refused (401) and the page says so; nothing changes.
        browser.js(f"{row}.querySelector('button[data-action=ack]').click()")
        assert "401" in browser.wait_for("document.querySelector('#action-error').textContent")
        assert store.query("SELECT state FROM episodes") == [{"state": "active"}]
        browser.screenshot(tmp_path / "alarm_refused.png")

        page_login_and_acknowledge(browser, row, "alice", PASSWORD, "seen, sending a fitter")
        browser.screenshot(tmp_path / "alarm_acknowledged.png")

        browser.js(f"{row}.querySelector('button[data-action=close]').click()")
        # no signing key: the form says the command will be shown, and after the close it is
        assert "holds no signing key" in browser.js("document.querySelector('#recal-how').textContent")
        browser.js("document.querySelector('#close-verdict').value = 'fault_confirmed';"
                   "document.querySelector('#close-part').value = 'bearing 1';"
                   "document.querySelector('#close-work').value = 'bearing replaced';"
                   "document.querySelector('#close-recalibrate').checked = true;"
                   "document.querySelector('#close-form button[type=submit]').click()")
        assert browser.wait_for(f"{row}?.dataset.state === 'closed' && 'yes'") == "yes"
        info = browser.wait_for("document.querySelector('#action-info').textContent")
        assert "no signing key" in info and \
            "vibrawatch recalibrate --broker mqtt://HOST:PORT --site plant --device press7" in info, info
        assert "bearing replaced" in browser.js(f"{row}.querySelector('.verdict').textContent")
        history = browser.wait_for("[...document.querySelectorAll('#history tr[data-action]')]"
                                   ".map((r) => r.dataset.action).join(',')")
        assert history == "close,ack,raised"
        browser.screenshot(tmp_path / "alarm_closed.png")
        row_db = store.query("SELECT state, verdict, part, work, ack_by, closed_by, ack_note FROM episodes")[0]
        assert row_db == {"state": "closed", "verdict": "fault_confirmed", "part": "bearing 1",
                          "work": "bearing replaced", "ack_by": "alice", "closed_by": "alice",
                          "ack_note": "seen, sending a fitter"}

        browser.goto(f"{base}/")
        assert browser.wait_for("document.querySelector('#measures tr[data-per=\"site\"][data-name=\"plant\"] "
                                ".confirmed')?.textContent") == "1"
        browser.screenshot(tmp_path / "fleet_measures.png")
    finally:
        if browser is not None:
            browser.close()
        if gw is not None:
            gw.close()
        mon.kill()
        if store is not None:
            store.close()
        broker.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    for shot in tmp_path.glob("*.png"):
        shutil.copy(shot, ARTIFACTS / f"monitor_{shot.name}")


def test_a_schema_4_database_gains_episodes_for_the_alarms_it_holds(db_url: str) -> None:
    store = open_store(db_url)
    store.write(Batch(alarms=[_alarm(1, "raised", 10.0), _alarm(2, "cleared", 20.0), _alarm(3, "raised", 30.0)]),
                now=30.0)
    with store.transaction() as cur:  # back to what vibrawatch with schema 4 created
        cur.execute("DROP TABLE episodes")
        cur.execute("DROP TABLE audit")
        cur.execute("ALTER TABLE alarms DROP COLUMN diagnosis")
        cur.execute("ALTER TABLE devices DROP COLUMN first_seen")
        cur.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    store.close()
    again = open_store(db_url)
    try:
        assert [(r["raised_seq"], r["state"], r["cleared_seq"]) for r in
                again.query("SELECT * FROM episodes ORDER BY raised_seq")] == [(1, "cleared", 2), (3, "active", None)]
        assert again.query("SELECT value FROM meta WHERE key = 'schema'") == [{"value": "5"}]
    finally:
        again.close()


def test_the_monitor_with_a_key_sends_a_request_the_gateway_verifies_and_records_it(db_url: str,
                                                                                      tmp_path: Path) -> None:
    """The Recalibrator as the monitor runs it, its publish the one seam: what it sends opens with the gateway's
    own verifier and public key, each id is newer than the last, a device whose status says it does not take
    remote recalibration is sent nothing, and every decision is in the episode's history."""
    from vibrawatch.agent.model.command import RECALIBRATE
    from vibrawatch.agent.model.signed_request import open_envelope
    from vibrawatch.convert.keys import PUBLIC_NAME, new_keypair
    from vibrawatch.monitor.actions import Recalibrator
    from vibrawatch.monitor.rows import Status

    key, _ = new_keypair(tmp_path / "keys")
    store = open_store(db_url)
    sent: list[tuple[str, bytes]] = []
    try:
        store.write(Batch(alarms=[_alarm(2, "raised", 2000.0)]), now=2000.0)
        ep = episodes.get(store.db, "s1/d1/2", 2001.0)
        assert ep is not None
        r = Recalibrator(store.db, str(key), 3600.0, lambda t, p: sent.append((t, p)) is None)
        first = r.send(ep, "alice", "127.0.0.1", "bearing 1: bearing replaced")
        second = r.send(ep, "alice", "127.0.0.1", "again")
        assert (first["outcome"], second["outcome"]) == ("sent", "sent") and second["id"] > first["id"]
        assert [t for t, _ in sent] == ["vibrawatch/v1/s1/d1/command"] * 2
        request = open_envelope(sent[0][1], tmp_path / "keys" / PUBLIC_NAME, RECALIBRATE, {"id": int})
        assert (request["command"], request["site"], request["device"], request["id"], request["by"],
                request["note"]) == ("recalibrate", "s1", "d1", first["id"], "alice", "bearing 1: bearing replaced")

        store.write(Batch(statuses=[Status("s1", "d1", "ts9", "online", {"state": "online", "accepts": {
            "deploy": False, "recalibrate": False}}, 3000.0)]), now=3000.0)
        refused = r.send(ep, "alice", "127.0.0.1", "third")
        assert refused["outcome"] == "not_accepted" and "[remote] recalibrate is not enabled" in refused["reason"]
        assert len(sent) == 2  # nothing sent to a device that would not act on it
        story = [(h["action"], h["detail"].get("outcome"), h["detail"].get("id")) for h in
                 episodes.history(store.db, "s1/d1/2")]
        assert story == [("raised", None, None), ("recalibrate", "sent", first["id"]),
                         ("recalibrate", "sent", second["id"]), ("recalibrate", "not_accepted", None)]

        no_key = Recalibrator(store.db, None, 3600.0, None).send(ep, "alice", "127.0.0.1", "")
        assert no_key["outcome"] == "not_sent" and no_key["command"].startswith("vibrawatch recalibrate ")
        assert len(episodes.history(store.db, "s1/d1/2")) == 4  # nothing happened: nothing recorded
    finally:
        store.close()


def test_a_signing_key_others_can_read_or_not_a_key_is_one_line_at_the_start(tmp_path: Path) -> None:
    from vibrawatch.convert.keys import new_keypair
    from vibrawatch.monitor.config import load_monitor_config

    key, pub = new_keypair(tmp_path / "keys")
    conf = tmp_path / "monitor.toml"
    conf.write_text('[remote]\nsigning_key = "keys/vibrawatch-signing.key"\n')
    assert load_monitor_config(conf).remote.signing_key == str(key)  # relative to the config file
    key.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        load_monitor_config(conf)
    assert str(conf) in str(e.value) and "signing_key" in str(e.value) and "chmod 600" in str(e.value)
    for bad in (pub, tmp_path / "none"):
        with pytest.raises(ConfigError) as e:
            load_monitor_config(None, signing_key=str(bad))
        assert "signing_key" in str(e.value) and "not a readable unencrypted PEM private key" in str(e.value)
        assert "\n" not in str(e.value)
