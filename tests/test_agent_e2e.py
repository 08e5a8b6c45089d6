"""The agent end to end on a real Mosquitto, run as a gateway runs it (`vibrawatch-agent run --config ...`
in a subprocess), with TensorFlow, Keras, scikit-learn and the workstation CLI (typer) made unimportable, and
``cryptography`` too: a gateway checks signatures in a child process and never maps the library itself."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, cli
from jsonschema import Draft202012Validator
from mosquitto import Broker
from paho.mqtt.enums import CallbackAPIVersion

from vibrawatch.agent.model.bundle import load_bundle

BLOCK = '''
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in {"tensorflow", "tf_keras", "keras", "sklearn", "typer", "click", "cryptography", "agent", "train",
                   "convert"} or \
                name.split(".")[:2] in (["vibrawatch", "train"], ["vibrawatch", "convert"]):
            raise ImportError(f"{name} is not available on a gateway (blocked by the test)")
        return None
sys.meta_path.insert(0, _Block())
'''


class Subscriber:
    """Collects every message under vibrawatch/v1/<site>/<device>/#, surviving broker restarts (persistent session)."""

    def __init__(self, port: int, site: str, device: str) -> None:
        self.messages: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}", clean_session=False,
                             protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"vibrawatch/v1/{site}/{device}/#", qos=1)
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(1, 2)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((m.topic.rsplit("/", 1)[1], json.loads(m.payload)))

    def of(self, kind: str) -> list[dict]:
        with self._lock:
            return [p for k, p in self.messages if k == kind]

    def wait_for(self, kind: str, n: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len({p["seq"] for p in self.of(kind)}) < n:
            time.sleep(0.1)
        return self.of(kind)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture(scope="module")
def offline(tiny_run: Path, tiny_data: Path) -> dict:
    """What `vibrawatch evaluate` computes on the workstation for the same data (Keras scores per window)."""
    report = json.loads(cli("evaluate", tiny_run, "--data", tiny_data, "--json", "--quiet"))
    w = np.load(tiny_run / "windows.npz")
    return {"report": report, "scores": w["scores"], "times": w["end_times"]}


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def write_config(tmp_path: Path, port: int, bundle: Path, data: Path, speed: float = 0, spool: Path | None = None,
                 loop: bool = False) -> Path:
    """A gateway replaying ``data`` to the broker on ``port``; the spool in ``tmp_path`` unless ``spool`` says."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'''
[agent]
site = "plant1"
device = "press7"
bundle = "{bundle}"
spool = "{spool or tmp_path / 'spool.sqlite'}"

[source]
kind = "replay"
path = "{data}"
speed = {speed}
{"loop = true" if loop else ""}
anchor = false

[mqtt]
host = "127.0.0.1"
port = {port}
max_backoff_s = 1
''')
    return cfg


def gateway_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a gateway: TensorFlow, Keras, scikit-learn and the workstation CLI unimportable, and
    ``cryptography`` in the service's own process (its signature checks run in a child, ``python -I``, which
    this block does not reach)."""
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(BLOCK)
    return {**os.environ, "PYTHONPATH": str(block)}


def agent_command(*args: str) -> list[str]:
    """``vibrawatch-agent ...`` as installed (the console script next to this Python), as systemd runs it."""
    script = Path(sys.executable).with_name("vibrawatch-agent")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "vibrawatch.agent.cli", *args]


def start_agent(cfg: Path, tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(agent_command("run", "--config", str(cfg)), cwd=ROOT, env=gateway_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_check_verifies_config_and_bundle_and_names_what_is_wrong(tiny_bundle: Path, tiny_data: Path,
                                                                    tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 1883, tiny_bundle, tiny_data)
    ok = subprocess.run(agent_command("check", "--config", str(cfg)), env=gateway_env(tmp_path),
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert load_bundle(tiny_bundle).version in ok.stdout and "golden self-test ok" in ok.stdout
    assert "within WatchdogSec=60 and TimeoutStartSec=120" in ok.stdout  # the units' pace, for this bundle
    assert "blocked by the test" not in ok.stderr
    # a damaged model file: refused before anything runs, with the file named
    bad = tmp_path / "bad_bundle"
    with tarfile.open(tiny_bundle) as tar:
        tar.extractall(bad, filter="data")
    model = bad / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    refused = subprocess.run(agent_command("check", "--config", str(write_config(tmp_path, 1883, bad, tiny_data))),
                             env=gateway_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and "model.tflite" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_replay_publishes_one_score_per_window_equal_to_the_offline_scores(
    broker: Broker, tiny_bundle: Path, tiny_data: Path, offline: dict, tmp_path: Path
) -> None:
    sub = Subscriber(broker.port, "plant1", "press7")
    agent = start_agent(write_config(tmp_path, broker.port, tiny_bundle, tiny_data), tmp_path)
    out, _ = agent.communicate(timeout=120)
    assert agent.returncode == 0, out
    n = len(offline["scores"])
    scores = sub.wait_for("score", n)
    sub.close()
    assert "blocked by the test" not in out  # nothing on the agent path even tried to import TensorFlow
    assert len(scores) == n and [p["seq"] for p in scores] == sorted(p["seq"] for p in scores)
    edge = np.array([p["score"] for p in scores])
    diff = np.abs(edge - offline["scores"]).max()
    print(f"edge/workstation parity: max |score difference| {diff:.3g} over {n} windows")
    assert diff <= 1e-5 * offline["scores"].max()
    np.testing.assert_allclose([p["t"] for p in scores], offline["times"])
    alarms = sub.of("alarm")
    assert alarms and alarms[0]["event"] == "raised"
    assert alarms[0]["t"] == pytest.approx(offline["report"]["first_alarm_s"])  # the same window
    assert alarms[0]["channel"] == offline["report"]["alarm_channel"] == "bearing1"
    for kind in ("score", "alarm", "status"):  # the documented, versioned payloads
        validator = Draft202012Validator(json.loads((ROOT / "agent" / "link" / "schemas" / f"{kind}.json").read_text()))
        for payload in sub.of(kind):
            validator.validate(payload)
    status = sub.of("status")
    assert status[0]["state"] == "online" and status[0]["model"].startswith("run-none-")
    assert status[-1]["state"] == "offline"  # a clean stop says so (retained)


def test_broker_restart_mid_replay_loses_nothing(
    broker: Broker, tiny_bundle: Path, tiny_data: Path, offline: dict, tmp_path: Path
) -> None:
    sub = Subscriber(broker.port, "plant1", "press7")
    # 80 snapshots 600 s apart at 6000x: 8 s of replay, the broker away for 3 s in the middle
    agent = start_agent(write_config(tmp_path, broker.port, tiny_bundle, tiny_data, speed=6000), tmp_path)
    time.sleep(3)
    broker.stop()
    time.sleep(3)
    broker.start()
    out, _ = agent.communicate(timeout=120)
    assert agent.returncode == 0, out
    n = len(offline["scores"])
    scores = sub.wait_for("score", n)
    sub.close()
    seqs = [p["seq"] for p in scores]
    assert "disconnected from the broker" in out  # the outage really happened while scoring
    deduped = [p for i, p in enumerate(scores) if p["seq"] not in {q["seq"] for q in scores[:i]}]
    assert len(deduped) == n  # every window arrived
    assert [p["seq"] for p in deduped] == sorted(set(seqs))  # in order, once duplicates are dropped by seq
    np.testing.assert_allclose([p["score"] for p in deduped], offline["scores"], rtol=1e-5)


def test_sigkill_keeps_the_spool_and_the_next_start_drains_it(
    broker: Broker, tiny_bundle: Path, tiny_data: Path, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, tiny_bundle, tiny_data, speed=6000)
    broker.stop()  # nothing can leave: everything the agent scores stays in the spool
    agent = start_agent(cfg, tmp_path)
    time.sleep(5)
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=10)
    with sqlite3.connect(tmp_path / "spool.sqlite") as db:
        spooled = {json.loads(p)["seq"] for (p,) in db.execute("SELECT payload FROM messages")}
    assert len(spooled) > 20
    broker.start()
    sub = Subscriber(broker.port, "plant1", "press7")
    time.sleep(0.5)
    cfg.write_text(cfg.read_text().replace("speed = 6000", "speed = 0"))
    agent = start_agent(cfg, tmp_path)
    out, _ = agent.communicate(timeout=120)
    assert agent.returncode == 0, out
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not spooled <= {p["seq"] for p in sub.of("score") + sub.of("alarm")}:
        time.sleep(0.1)
    got = {p["seq"] for p in sub.of("score") + sub.of("alarm")}
    sub.close()
    assert spooled <= got  # every message written before the kill reached the broker after the restart
    assert max(spooled) < min(p["seq"] for p in sub.of("score") if p["seq"] not in spooled)  # seq never reused


def test_systemd_notify_sighup_reload_and_sigterm_drain(broker: Broker, tiny_bundle: Path, tiny_data: Path,
                                                         tmp_path: Path) -> None:
    import socket

    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(30)
    sub = Subscriber(broker.port, "plant1", "press7")
    cfg = write_config(tmp_path, broker.port, tiny_bundle, tiny_data, speed=600)  # 80 snapshots: ~80 s of replay
    os.environ["NOTIFY_SOCKET"] = str(sock_path)
    try:
        agent = start_agent(cfg, tmp_path)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    got = {notify.recv(64).decode() for _ in range(2)}
    assert got == {"READY=1", "WATCHDOG=1"}  # ready once windows are scored, and the watchdog fed
    agent.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(s.get("event") == "reloaded" for s in sub.of("status")):
        time.sleep(0.1)
    assert any(s.get("event") == "reloaded" for s in sub.of("status"))
    agent.send_signal(signal.SIGTERM)
    out, _ = agent.communicate(timeout=60)
    notify.close()
    sub.close()
    assert agent.returncode == 0, out
    assert "reloaded" in out and "stopping after" in out
    with sqlite3.connect(tmp_path / "spool.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0  # drained before exit
    assert sub.of("status")[-1]["state"] == "offline"
