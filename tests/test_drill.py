"""The drill, as a test: a running `vibrawatch-agent run` (subprocess, real Mosquitto, raw samples over MQTT)
gets a few hundred malformed messages, then good samples again. Before, 15 of 497 such messages crashed the
agent and 7 silently killed its network thread; now it reports each as a `sensor` status, keeps scoring the
good ones, and its memory stays bounded."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from mosquitto import Broker
from paho.mqtt.enums import CallbackAPIVersion
from test_agent_e2e import Subscriber, agent_command, gateway_env
from test_hostile_input import HOSTILE

from vibrawatch.agent.sources.loaders import load

TOPIC = "sensors/press7/raw"
MAX_MESSAGE = 256 * 1024  # [source] max_message_bytes in the drill's config


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _malformed(rng: random.Random, n: int, channels: int) -> list[bytes]:
    """The drill's payloads: every hostile kind, huge samples, oversized blocks, truncated and random bytes."""
    good = json.dumps({"v": 1, "t": 1.0, "fs_hz": 20000, "samples": [[0.1] * channels] * 64}).encode()
    kinds = [p for p, _ in HOSTILE.values()] + [
        json.dumps({"v": 1, "t": 5e9, "fs_hz": 20000, "samples": [[1e38, -1e38] * (channels // 2)] * 1024}).encode(),
        b'{"v": 1, "t": 1, "fs_hz": 20000, "samples": [[' + b"0.5, " * (MAX_MESSAGE // 5) + b"0.5]]}",  # too big
        good[: len(good) // 2],
        json.dumps({"v": 1, "t": 1.0, "fs_hz": 20000, "samples": [[0.1] * (channels + 1)] * 64}).encode(),
    ]
    out = [kinds[i % len(kinds)] for i in range(n - 40)]
    out += [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) for _ in range(40)]
    rng.shuffle(out)
    return out


def test_a_running_agent_survives_a_flood_of_malformed_samples(tiny_bundle: Path, tiny_data: Path,
                                                               tmp_path: Path) -> None:
    rec = load(tiny_data)
    channels = rec.data.shape[2]
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'''
[agent]
site = "plant1"
device = "press7"
bundle = "{tiny_bundle}"
spool = "{tmp_path / 'spool.sqlite'}"

[source]
kind = "mqtt"
topic = "{TOPIC}"
max_message_bytes = {MAX_MESSAGE}

[mqtt]
port = {broker.port}
max_backoff_s = 1
''')
    sub = Subscriber(broker.port, "plant1", "press7")
    agent = subprocess.Popen(agent_command("run", "--config", str(cfg)), env=gateway_env(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sensor-node")
    node.connect("127.0.0.1", broker.port)
    node.loop_start()

    def send(payload: bytes | str) -> None:
        node.publish(TOPIC, payload, qos=1).wait_for_publish(10)

    def send_snapshots(first: int, t0: float) -> None:
        for i in range(first, first + 8):  # a window (6 frames) and then some: several scores
            for j in range(0, rec.data.shape[1], 1024):
                body = {"v": 1, "t": t0 + i * 10 + j / rec.fs_hz, "fs_hz": rec.fs_hz,
                        "samples": rec.data[i, j: j + 1024].tolist()}
                send(json.dumps(body))

    def wait(cond: object, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and agent.poll() is None:
            if cond():  # type: ignore[operator]
                return True
            time.sleep(0.1)
        return bool(cond())  # type: ignore[operator]

    try:
        assert wait(lambda: sub.of("status")), "the agent never came online"
        time.sleep(0.5)  # its subscription is in place
        send_snapshots(0, 1_700_000_000.0)
        assert wait(lambda: len(sub.of("score")) >= 3), "no scores from good samples"
        rss_before = _rss_kb(agent.pid)
        flood = _malformed(random.Random(9), 400, channels)
        for payload in flood:
            send(payload)
        assert wait(lambda: any(s["state"] == "sensor" for s in sub.of("status")))
        n_scores = len(sub.of("score"))
        send_snapshots(8, 1_700_010_000.0)
        assert wait(lambda: len(sub.of("score")) >= n_scores + 3), "good samples after the flood were not scored"
        rss_after = _rss_kb(agent.pid)
        assert agent.poll() is None, "the agent died"
        assert sub.of("status")[-1]["state"] == "online"  # back from the sensor faults with the first good window
    finally:
        node.loop_stop()
        agent.terminate()
        out, _ = agent.communicate(timeout=60)
        sub.close()
        broker.stop()
    faults = {s.get("fault") for s in sub.of("status") if s["state"] == "sensor"}
    print(f"drill: {len(flood)} malformed messages, {len(faults)} distinct sensor faults, RSS {rss_before / 1024:.1f} "
          f"-> {rss_after / 1024:.1f} MB")
    assert agent.returncode == 0, out
    assert "Traceback" not in out, out
    assert any(f and f.startswith("samples message refused: ") for f in faults)  # the latest of each burst
    refusals = [line for line in out.splitlines() if "samples message refused" in line]
    assert any(f"message larger than the {MAX_MESSAGE}-byte limit" in line for line in refusals)
    assert any("nested too deep" in line for line in refusals) and any("got nan" in line for line in refusals)
    assert len(refusals) < 40, f"{len(refusals)} log lines for {len(flood)} refusals: not rate-limited"
    assert rss_after - rss_before < 16 * 1024, f"RSS grew {(rss_after - rss_before) / 1024:.1f} MB"
    scores = np.array([p["score"] for p in sub.of("score")])
    assert np.isfinite(scores).all()
