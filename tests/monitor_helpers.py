"""What the monitor tests share: simulated gateways that publish the agent's own payloads, the monitor run as
a user runs it (`vibrawatch monitor` in a subprocess), and waiting on the database."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from conftest import ROOT
from paho.mqtt.enums import CallbackAPIVersion

from vibrawatch.agent.link.topics import alarm_payload, encode, iso, score_payload, status_payload, topic


class Gateway:
    """Publishes score / alarm / status messages exactly as the agent builds them (vibrawatch.agent.link.topics),
    QoS 1, each acknowledged by the broker before the next; reconnects across a broker restart, and, like the
    agent's publisher, each connection has its own ``link``: its will says it, and its first status too."""

    def __init__(self, port: int, site: str, device: str, channels: tuple[str, ...] = ("ch0", "ch1")) -> None:
        self.site, self.device, self.channels = site, device, channels
        self.sent: dict[int, dict[str, Any]] = {}  # seq -> payload, what the monitor must hold
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gw-{site}-{device}", protocol=mqtt.MQTTv5)
        self._online = False
        self._new_link()
        self.c.on_disconnect = lambda c, u, f, rc, p: self._new_link()
        self.c.on_connect = lambda c, u, f, rc, p: self._online and self._send_online(wait=False)
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _publish(self, kind: str, payload: dict[str, Any], retain: bool = False) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.c.is_connected():
                info = self.c.publish(topic(self.site, self.device, kind), encode(payload), qos=1, retain=retain)
                try:
                    info.wait_for_publish(timeout=5)
                    if info.is_published():
                        return
                except (RuntimeError, ValueError):
                    pass
            time.sleep(0.1)
        raise AssertionError(f"{self.site}/{self.device}: broker never acknowledged a {kind}")

    def _new_link(self) -> None:
        self.link = iso(time.time())  # as the agent's publisher: the will is composed before the connection
        self.c.will_set(topic(self.site, self.device, "status"),
                        encode(status_payload("offline", reason="connection lost", link=self.link)), qos=1, retain=True)

    def _send_online(self, wait: bool = True) -> None:
        p = status_payload("online", agent="0.1.0", model="m-1", channels=list(self.channels), spool_dropped=0,
                           link=self.link)
        if wait:
            self._publish("status", p, retain=True)
        else:  # from paho's thread, after a reconnect: it cannot wait for its own acknowledgement
            self.c.publish(topic(self.site, self.device, "status"), encode(p), qos=1, retain=True)

    def online(self) -> None:
        self._online = True
        self._send_online()

    def score(self, seq: int, t: float, score: float, threshold: float = 1.0, send: bool = True) -> dict[str, Any]:
        contributions = {c: score / len(self.channels) for c in self.channels}
        p = {**score_payload(t=t, score=score, threshold=threshold, level=score / threshold,
                             contributions=contributions, model="m-1"), "seq": seq}
        self.sent[seq] = p
        if send:
            self._publish("score", p)
        return p

    def alarm(self, seq: int, t: float, event: str, since: float | None) -> dict[str, Any]:
        p = {**alarm_payload(t=t, event=event, channel=self.channels[0], score=2.0, level=2.0, since=since,
                             model="m-1"), "seq": seq}
        self.sent[seq] = p
        self._publish("alarm", p)
        return p

    def resend(self, seq: int) -> None:
        """The same message again, as the agent does when a PUBACK was lost."""
        self._publish("alarm" if "event" in self.sent[seq] else "score", self.sent[seq])

    def raw(self, kind: str, payload: bytes) -> None:
        info = self.c.publish(topic(self.site, self.device, kind), payload, qos=1)
        info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self._publish("status", status_payload("offline", reason="stopped", link=self.link), retain=True)
        self.c.disconnect()
        self.c.loop_stop()

    def vanish(self) -> None:
        """The gateway loses power: its connection ends with no DISCONNECT, so the broker publishes its will."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()


def vibrawatch_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("vibrawatch")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "vibrawatch.convert.cli", *args]


class MonitorProcess:
    """`vibrawatch monitor ...` in a subprocess, its output in a log file."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log_path = log
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MonitorProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(vibrawatch_command("monitor", "--verbose", *self.args), cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_monitor(tmp_path: Path, name: str, port: int, db: str, *extra: str) -> MonitorProcess:
    """`vibrawatch monitor` on the test broker, no page, its log in ``tmp_path/NAME.log``, client id NAME."""
    return MonitorProcess(tmp_path / f"{name}.log", "--broker", f"mqtt://127.0.0.1:{port}", "--db", db, "--http", "off",
                          "--client-id", name, *extra).start()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60, on_fail: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001, S110 - e.g. the database file not created yet: keep waiting
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{on_fail()}")


def dump(store: Any) -> dict[str, Any]:
    """The stored rows that must not depend on the backend, timing or arrival order."""
    return {
        "scores": sorted((r["site"], r["device"], r["seq"], r["t"], r["ts"], r["score"], r["threshold"], r["level"],
                          json.dumps(json.loads(r["contributions"]), sort_keys=True), r["model"])
                         for r in store.query("SELECT * FROM scores")),
        "alarms": sorted((r["site"], r["device"], r["seq"], r["t"], r["event"], r["channel"], r["since"])
                         for r in store.query("SELECT * FROM alarms")),
        "statuses": sorted((r["site"], r["device"], r["state"]) for r in store.query("SELECT * FROM statuses")),
        "gaps": sorted((r["site"], r["device"], r["first_seq"], r["last_seq"], r["filled"])
                       for r in store.query("SELECT * FROM gaps")),
        "dead": sorted((r["topic"], r["reason"]) for r in store.query("SELECT * FROM dead_letters")),
        "devices": sorted((r["site"], r["device"], r["first_seq"], r["last_seq"], r["received"], r["lost"], r["alarm"],
                           r["state"]) for r in store.devices()),
        "alerts": sorted((r["key"], r["kind"]) for r in store.query("SELECT * FROM alerts")),
    }


def page_login_and_acknowledge(browser: Any, row: str, name: str, password: str, note: str) -> None:
    """On the monitor's page: log in as ``name``, then acknowledge the alarm row (a JS expression) with ``note``;
    asserts the page shows the operator and the row acknowledged by them."""
    browser.js(f"document.querySelector('#login-name').value = {json.dumps(name)};"
               f"document.querySelector('#login-password').value = {json.dumps(password)};"
               "document.querySelector('#login button').click()")
    assert browser.wait_for("document.body.dataset.operator") == name
    browser.js(f"document.querySelector('#ack-note').value = {json.dumps(note)}")
    browser.js(f"{row}.querySelector('button[data-action=ack]').click()")
    assert browser.wait_for(f"{row}?.dataset.state === 'acknowledged' && 'yes'") == "yes"
    assert name in browser.js(f"{row}.textContent")
