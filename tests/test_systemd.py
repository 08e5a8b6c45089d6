"""The systemd units in systemd/: rated by systemd's own tools, and the real agent run under their restrictions.

``systemd-analyze security --offline=true`` and ``systemd-analyze verify`` run wherever systemd-analyze
exists. The machine running the tests has no systemd as PID 1, so the agent runs under the units'
restrictions as tests/unit_sandbox.py rebuilds them (see there what is and is not rebuilt).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import unit_sandbox
from conftest import ROOT, cli
from mosquitto import Broker
from test_agent_e2e import Subscriber, agent_command

from vibrawatch.agent.checks import UNIT_START_S, UNIT_WATCHDOG_S, watchdog_fit, window_seconds
from vibrawatch.agent.model.bundle import load_bundle

UNITS = [ROOT / "systemd" / "vibrawatch-agent.service", ROOT / "systemd" / "vibrawatch-agent@.service"]
IDS = ["single", "template"]
MONITOR_UNIT = ROOT / "systemd" / "vibrawatch-monitor.service"
ALL_UNITS, ALL_IDS = [*UNITS, MONITOR_UNIT], [*IDS, "monitor"]
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def instance(unit: Path, tmp_path: Path) -> Path:
    """The unit as systemd would load it: a template gets an instance name (press7)."""
    if "@." not in unit.name:
        return unit
    out = tmp_path / unit.name.replace("@.", "@press7.")
    shutil.copy(unit, out)
    return out


@needs_analyze
@pytest.mark.parametrize("unit", ALL_UNITS, ids=ALL_IDS)
def test_unit_exposure_is_2_or_less(unit: Path, tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", str(instance(unit, tmp_path))],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", res.stdout)
    assert m, res.stdout + res.stderr
    print(f"{unit.name}: exposure {m.group(1)} {m.group(2)}")
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK"


@needs_analyze
@pytest.mark.parametrize("unit", ALL_UNITS, ids=ALL_IDS)
def test_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    """verify checks that ExecStart exists: /opt/vibrawatch is made, in a private mount namespace only,
    links to this checkout's installed vibrawatch-agent and vibrawatch."""
    if os.geteuid() != 0 and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root or user namespaces to mount a private /opt")
    script = Path(agent_command()[0]) if agent_command()[0].endswith("vibrawatch-agent") else None
    if script is None:
        pytest.skip("the vibrawatch-agent console script is not installed next to this Python")
    links = " ".join(shlex.quote(str(p)) for p in (script, script.with_name("vibrawatch")))  # paths may hold spaces
    inner = (f"mount -t tmpfs tmpfs /opt && mkdir -p /opt/vibrawatch/bin && ln -s {links} /opt/vibrawatch/bin/ "
             f"&& systemd-analyze verify {shlex.quote(str(instance(unit, tmp_path)))}")
    ns = ["unshare", "--mount", "--propagation", "private"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    res = subprocess.run([*ns, "sh", "-c", inner], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


@pytest.mark.parametrize("unit", UNITS, ids=IDS)
def test_unit_settings_match_the_agent(unit: Path) -> None:
    """What the agent does and what the unit expects of it: notify, watchdog pace, drain time, paths."""
    s = unit_sandbox.unit_settings(unit)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    # the agent pings at most once a second, while windows are scored (1 s apart by default); `check` measures
    # a bundle's windows against the units' own numbers
    assert int(s["WatchdogSec"][0]) >= 30
    assert float(s["WatchdogSec"][0]) == UNIT_WATCHDOG_S and float(s["TimeoutStartSec"][0]) == UNIT_START_S
    assert int(s["TimeoutStopSec"][0]) > 10  # drain_timeout_s, 10 s by default
    assert s["Restart"] == ["on-failure"] and s["RestartPreventExitStatus"] == ["2 216 243"]
    assert s["DynamicUser"] == ["yes"] and "i2c" in s["SupplementaryGroups"][0]
    assert s["LoadCredential"][0].startswith("mqtt-password:/etc/vibrawatch/")
    assert "char-i2c" in s["DeviceAllow"][0]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    config = "/etc/vibrawatch/%i.toml" if "@." in unit.name else "/etc/vibrawatch/agent.toml"
    assert s["ExecStart"][0].endswith(f"run --config {config}")
    assert s["StateDirectory"] == (["vibrawatch/%i"] if "@." in unit.name else ["vibrawatch"])
    unit_text = unit.read_text()
    assert "StartLimitBurst=" in unit_text and "StartLimitIntervalSec=" in unit_text


def test_monitor_unit_matches_the_monitor() -> None:
    """Hardened as the agent's units (the same restrictions, less the I2C device), with both passwords as
    credentials under the names the monitor reads, and its own state directory (not the agent's)."""
    m, a = unit_sandbox.unit_settings(MONITOR_UNIT), unit_sandbox.unit_settings(UNITS[0])
    for key in ("DynamicUser", "ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "CapabilityBoundingSet",
                "MemoryDenyWriteExecute", "SystemCallFilter", "SystemCallArchitectures", "RestrictAddressFamilies",
                "UMask", "ProtectProc", "ProcSubset", "PrivateDevices", "RestrictNamespaces", "LockPersonality"):
        assert m[key] == a[key], key
    assert "DeviceAllow" not in m and "SupplementaryGroups" not in m
    assert m["ExecStart"] == ["/opt/vibrawatch/bin/vibrawatch monitor --config /etc/vibrawatch/monitor.toml"]
    assert sorted(c.split(":")[0] for c in m["LoadCredential"]) == ["db-password", "mqtt-password"]
    assert m["StateDirectory"] == ["vibrawatch-monitor"] and m["Restart"] == ["on-failure"]
    assert "2" in m["RestartPreventExitStatus"][0].split()


def test_check_says_when_a_bundles_windows_are_too_slow_for_the_units_watchdog(tiny_bundle: Path) -> None:
    """READY=1 waits for the first window and each window pings the watchdog: a bundle whose windows come
    further apart than half of WatchdogSec would be restarted between them, and `check` says so."""
    d = load_bundle(tiny_bundle).detector
    first, every = window_seconds(d)
    assert every == d.hop * d.spec.frame_length / d.spec.fs_hz and first == d.window * every / d.hop
    fits, text = watchdog_fit(d)
    assert fits and "within WatchdogSec=60" in text
    slow = dataclasses.replace(d, hop=int(np.ceil(31 * d.spec.fs_hz / d.spec.frame_length)))  # > 30 s apart
    fits, text = watchdog_fit(slow)
    assert not fits and "too slow for WatchdogSec=60" in text and "drop-in" in text
    fits, text = watchdog_fit(slow, watchdog_s=120)
    assert fits and "too slow" not in text
    late = dataclasses.replace(d, window=int(np.ceil(121 * d.spec.fs_hz / d.spec.frame_length)))
    fits, text = watchdog_fit(late)
    assert not fits and "too slow" in text  # the first window after TimeoutStartSec=120


needs_sandbox = pytest.mark.skipif(unit_sandbox.available() is not None, reason=str(unit_sandbox.available()))


@needs_sandbox
def test_the_sandbox_really_restricts(tmp_path: Path) -> None:
    """The restrictions are in force (else the agent passing under them would prove nothing)."""
    probe = tmp_path / "etc" / "probe.py"
    d = {k: tmp_path / k for k in ("state", "etc", "creds", "run")}
    for p in d.values():
        p.mkdir()
    probe.write_text(f'''
import mmap, os, socket
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return e.errno
print(attempt(lambda: open("{d['state']}/x", "w")), attempt(lambda: open("/etc/vibrawatch-x", "w")),
      attempt(lambda: open("{d['etc']}/x", "w")), attempt(lambda: mmap.mmap(-1, 4096, prot=7)),
      attempt(lambda: socket.socket(17, 3)), attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM)),
      attempt(lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))), os.getuid())
''')
    unit_sandbox.prepare(d["state"], d["etc"], None, d["run"])
    cmd = unit_sandbox.bwrap_command(UNITS[0], [sys.executable, str(probe)], state=d["state"], config=d["etc"],
                                     credentials=None, runtime=d["run"], env={})
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "MemoryDenyWriteExecute" in res.stderr and "SystemCallFilter" in res.stderr
    # state writable; / and the config read-only; no W+X page; no AF_PACKET; no real-time; not root
    assert res.stdout.split() == ["ok", "30", "30", "1", "97", "ok", "1", str(unit_sandbox.DYNAMIC_UID)]


class NotifyListener:
    """The notify socket systemd would listen on: collects READY=1 / WATCHDOG=1 datagrams."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o777)
        self.sock.settimeout(0.5)
        self.messages: list[str] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        self.sock.close()


def password_broker(workdir: Path, accounts: dict[str, str]) -> Broker:
    """A Mosquitto that refuses anonymous clients: the agent must present the credential."""
    b = Broker(workdir)
    pw = workdir / "passwd"
    pw.touch()
    for user, password in accounts.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True, capture_output=True)
    pw.chmod(0o600)
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", f"allow_anonymous false\npassword_file {pw}"))
    return b.start()


@pytest.fixture(scope="module")
def signed_tar(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``tiny_run`` as a signed bundle (.tar) and the public key that verifies it, as production deploys it."""
    d = tmp_path_factory.mktemp("signed")
    cli("keys", "new", "--out-dir", d)
    cli("convert", tiny_run, "--out", d / "bundle.tar", "--sign-key", d / "vibrawatch-signing.key")
    return d / "bundle.tar", d / "vibrawatch-signing.pub"


@needs_sandbox
@pytest.mark.parametrize("unit", UNITS, ids=IDS)
def test_agent_runs_under_the_units_restrictions(unit: Path, signed_tar: tuple[Path, Path], tiny_data: Path,
                                                 tmp_path: Path) -> None:
    """`vibrawatch-agent run` as the unit runs it: the spool in the state directory, the password only as a
    credential, READY and WATCHDOG over AF_UNIX, MQTT over AF_INET, read-only elsewhere, the bundle's signature
    checked (in a child process, under the same system-call filter): every score equal to the same pipeline run
    unrestricted in this process."""
    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.source import ReplaySource

    d = {k: tmp_path / k for k in ("state", "etc", "creds", "run", "broker")}
    for p in d.values():
        p.mkdir()
    tiny_bundle, public_key = signed_tar
    shutil.copy(tiny_bundle, d["state"] / "bundle.tar")
    shutil.copy(public_key, d["etc"] / "signing.pub")
    shutil.copy(tiny_data, d["etc"] / "bearing.npz")
    (d["creds"] / "mqtt-password").write_text("s3cret-from-LoadCredential\n")
    broker = password_broker(d["broker"], {"press7": "s3cret-from-LoadCredential", "test-sub": "x"})
    cfg = d["etc"] / "agent.toml"
    cfg.write_text(f'''[agent]
site = "plant1"
device = "press7"
bundle = "{d['state']}/bundle.tar"
public_key = "{d['etc']}/signing.pub"
spool = "{d['state']}/spool.sqlite"
[source]
kind = "replay"
path = "{d['etc']}/bearing.npz"
speed = 0
[mqtt]
host = "127.0.0.1"
port = {broker.port}
username = "press7"
max_backoff_s = 1
''')
    unit_sandbox.prepare(d["state"], d["etc"], d["creds"], d["run"])
    notify = NotifyListener(d["run"] / "notify")
    sub = AuthSubscriber(broker.port)
    cmd = unit_sandbox.bwrap_command(unit, agent_command("run", "--config", str(cfg)), state=d["state"],
                                     config=d["etc"], credentials=d["creds"], runtime=d["run"], env={})
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        notify.close()
    pipeline = Pipeline(load_bundle(tiny_bundle))
    expected = [ev.score for ch in ReplaySource(str(tiny_data), speed=0).chunks()
                for ev in pipeline.process(ch) if isinstance(ev, Scored)]
    scores = sub.wait_for("score", len(expected))
    sub.close()
    broker.stop()
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "SystemCallFilter" in res.stderr and "MemoryDenyWriteExecute" in res.stderr
    assert "Traceback" not in out and "error" not in out.lower().replace("error in cpuinfo", "")
    assert "READY=1" in notify.messages and "WATCHDOG=1" in notify.messages
    assert (d["state"] / "spool.sqlite").stat().st_uid == unit_sandbox.DYNAMIC_UID
    assert len(scores) == len(expected)
    np.testing.assert_allclose([p["score"] for p in scores], expected, rtol=1e-6)
    assert sub.of("alarm") and sub.of("alarm")[0]["event"] == "raised"


class AuthSubscriber(Subscriber):
    """The e2e tests' subscriber, logging in with its own account."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}", protocol=mqtt.MQTTv311)
        self.c.username_pw_set("test-sub", "x")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("vibrawatch/v1/plant1/press7/#", qos=1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()


@needs_sandbox
def test_monitor_runs_under_its_units_restrictions(tmp_path: Path) -> None:
    """`vibrawatch monitor` as its unit runs it: MQTT password only as a credential, the SQLite database in
    the state directory, owned by the service's user and readable by it alone; every score stored."""
    import json
    import signal
    import sqlite3
    import time

    import paho.mqtt.client as mqtt
    from monitor_helpers import vibrawatch_command
    from paho.mqtt.enums import CallbackAPIVersion

    from vibrawatch.agent.link.topics import encode, score_payload, topic

    d = {k: tmp_path / k for k in ("state", "etc", "creds", "run", "broker")}
    for p in d.values():
        p.mkdir()
    (d["creds"] / "mqtt-password").write_text("monitor-s3cret\n")
    (d["creds"] / "db-password").write_text("")  # SQLite: no database password (the unit needs the file)
    broker = password_broker(d["broker"], {"monitor": "monitor-s3cret", "gw": "gw-pw"})
    cfg = d["etc"] / "monitor.toml"
    cfg.write_text(f'[monitor]\nbroker = "mqtt://127.0.0.1:{broker.port}"\ndb = "sqlite:///{d["state"]}/fleet.db"\n'
                   'http = "off"\n[mqtt]\nusername = "monitor"\n')
    unit_sandbox.prepare(d["state"], d["etc"], d["creds"], d["run"])
    cmd = unit_sandbox.bwrap_command(MONITOR_UNIT, vibrawatch_command("monitor", "--config", str(cfg)),
                                     state=d["state"], config=d["etc"], credentials=d["creds"], runtime=d["run"],
                                     env={})
    log = (tmp_path / "monitor.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    db = d["state"] / "fleet.db"

    def stored() -> int:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM scores").fetchone()[0])

    log_text = (tmp_path / "monitor.log").read_text
    gw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-unit", protocol=mqtt.MQTTv5)
    gw.username_pw_set("gw", "gw-pw")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (db.exists() and "monitor:" in log_text()):
            assert proc.poll() is None, log_text()
            time.sleep(0.2)
        time.sleep(1.0)  # subscribed
        gw.connect("127.0.0.1", broker.port)
        gw.loop_start()
        for seq in range(1, 21):
            p = {**score_payload(t=1.7e9 + seq, score=0.5, threshold=1.0, level=0.5,
                                 contributions={"ch0": 0.25, "ch1": 0.25}, model="m-1"), "seq": seq}
            gw.publish(topic("plant1", "press7", "score"), encode(p), qos=1).wait_for_publish(10)
        while time.monotonic() < deadline and not (db.exists() and stored() == 20):
            assert proc.poll() is None, log_text()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        gw.loop_stop()
        broker.stop()
    out = log_text()
    assert stored() == 20, out
    assert "SystemCallFilter" in out and "MemoryDenyWriteExecute" in out and "Traceback" not in out, out
    st = db.stat()
    assert st.st_uid == unit_sandbox.DYNAMIC_UID and st.st_mode & 0o077 == 0, oct(st.st_mode)
    assert "monitor-s3cret" not in out and json.dumps("monitor-s3cret") not in out
