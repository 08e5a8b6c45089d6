"""Hostile-input benchmark: what the spool takes on disk at its limit, the agent's memory under large and
malformed samples messages, and the fleet monitor's memory under oversize messages and dead-letter reads.

    .venv/bin/python bench/hostile.py --bundle BUNDLE.tar [--big 5]     # all parts
    .venv/bin/python bench/hostile.py --part monitor [--big 20]         # the monitor's part alone (no bundle)

- spool: 20,000 score messages into spools limited to 128 KB, 1 MB and 64 MB; the most the database and
  its write-ahead log took on disk together, puts per second, messages dropped.
- memory: the real `vibrawatch-agent run` (raw samples over MQTT, a local Mosquitto, the default message
  bound: 3 s of samples at the bundle's rate) fed good samples, then --big messages of ~12 MB (over the
  bound: refused unread), then --big of ~5 MB (under it: parsed and scored), then 400 malformed ones; its
  resident memory after each step, and whether it still scores.
- monitor: the real `vibrawatch monitor` (SQLite, its page on) fed 1,000 good scores, then --big 4 MB
  payloads that are not JSON, a score with a 1 MB model, one with 50,000 contributions, a status with a 3 MB
  fault, then 1,000 good scores; then 50 GET /api/dead of the largest page and 20 GET /api/device. Its
  resident memory (and peak) after each step, the database's size, what was stored.
- resend: the real agent fed a run of raw samples over MQTT in messages of 4,096, 16,384 and 111,111 rows,
  each sent twice, then every other one sent again out of order, then half-overlapping ones; the windows
  its unique samples hold against the scores it published (duplicate windows: scores beyond that, or a
  score time seen twice).
Prints a Markdown table per part.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' Mosquitto helper


def spool_part() -> None:
    from vibrawatch.agent.link.spool import Spool

    payload = {"v": 1, "timestamp": "2004-02-16T00:12:39.000Z", "t": 1076890359.0, "score": 0.2412,
               "threshold": 0.2137, "level": 1.13, "model": "ims2-none-f845fe5516",
               "contributions": {"bearing1": 0.151, "bearing2": 0.031, "bearing3": 0.028, "bearing4": 0.031}}
    print("| spool limit | most on disk (db + WAL) | puts/s | dropped of 20,000 |\n|---|---|---|---|")
    for kb in (128, 1024, 65536):
        d = Path(tempfile.mkdtemp())
        s = Spool(d / "s.db", max_bytes=kb * 1024)
        most, t0 = 0, time.perf_counter()
        for i in range(20_000):
            s.put("vibrawatch/v1/plant1/press7/score", payload)
            if i % 50 == 0:
                most = max(most, s.disk_bytes())
        rate = 20_000 / (time.perf_counter() - t0)
        most = max(most, s.disk_bytes())
        print(f"| {kb} KB | {most / 1024:.0f} KB | {rate:.0f} | {s.dropped} |")
        s.close()


class MqttAgent:
    """The real `vibrawatch-agent run` scoring raw samples from topic ``raw`` of its own local Mosquitto, a node
    client to publish them and a subscriber collecting ``field`` of every score."""

    def __init__(self, bundle: Path, device: str, field: str, source_extra: str = "") -> None:
        import paho.mqtt.client as mqtt
        from mosquitto import Broker
        from paho.mqtt.enums import CallbackAPIVersion

        self.tmp = Path(tempfile.mkdtemp())
        (self.tmp / "broker").mkdir()
        self.broker = Broker(self.tmp / "broker").start()
        cfg = self.tmp / "agent.toml"
        cfg.write_text(f'[agent]\nsite = "bench"\ndevice = "{device}"\nbundle = "{bundle.resolve()}"\n'
                       f'spool = "{self.tmp / "spool.sqlite"}"\n[source]\nkind = "mqtt"\ntopic = "raw"\n'
                       f'{source_extra}[mqtt]\nport = {self.broker.port}\n')
        script = Path(sys.executable).with_name("vibrawatch-agent")
        self.log = (self.tmp / "agent.log").open("w")
        self.agent = subprocess.Popen([str(script), "run", "--config", str(cfg)], stdout=self.log,
                                      stderr=subprocess.STDOUT)
        self.scores: list[float] = []
        self.sub = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.sub.on_message = lambda c, u, m: self.scores.append(json.loads(m.payload)[field])
        self.sub.connect("127.0.0.1", self.broker.port)
        self.sub.subscribe(f"vibrawatch/v1/bench/{device}/score", qos=1)
        self.sub.loop_start()
        self.node = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.node.connect("127.0.0.1", self.broker.port)
        self.node.loop_start()

    def rss(self) -> float:
        for line in Path(f"/proc/{self.agent.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> bool:
        """Stop everything; was the agent still running?"""
        alive = self.agent.poll() is None
        self.agent.terminate()
        self.agent.wait(30)
        self.log.close()
        self.node.loop_stop()
        self.sub.loop_stop()
        self.broker.stop()
        return alive


def memory_part(bundle: Path, big: int) -> None:
    from vibrawatch.agent.model.bundle import load_bundle

    spec = load_bundle(bundle).detector.spec
    fs, n_ch = spec.fs_hz, len(spec.channels)
    run = MqttAgent(bundle, "hostile", "score")
    scores, node, rss = run.scores, run.node, run.rss
    rng = np.random.default_rng(0)
    t = [1.7e9]

    def send(rows: int, times: int = 1) -> None:
        for _ in range(times):
            body = {"v": 1, "t": t[0], "fs_hz": fs, "samples": (rng.standard_normal((rows, n_ch)) * 0.1).tolist()}
            node.publish("raw", json.dumps(body), qos=1).wait_for_publish(120)
            t[0] += rows / fs

    def settle() -> None:
        time.sleep(5)

    time.sleep(5)
    send(1024, int(10 * fs / 1024))  # 10 s of good samples
    settle()
    steps = [("good samples (10 s)", rss(), len(scores))]
    send(120_000, big)  # ~12 MB each at 4 channels
    settle()
    steps.append((f"{big} x {120_000 * n_ch * 25 / 1e6:.0f} MB messages (refused unread)", rss(), len(scores)))
    send(int(2.5 * fs), big)
    settle()
    steps.append((f"{big} x {2.5 * fs * n_ch * 25 / 1e6:.0f} MB messages (parsed, scored)", rss(), len(scores)))
    junk = [b'{"v": 1, "t": NaN, "fs_hz": 1, "samples": [[1]]}', b"[" * 50_000 + b"]" * 50_000,
            b'{"v": 1, "t": 1, "fs_hz": ' + b"9" * 401 + b', "samples": [[1]]}', b'{"v": true}', b"\xff"]
    for i in range(400):
        node.publish("raw", junk[i % len(junk)], qos=1).wait_for_publish(30)
    send(1024, int(10 * fs / 1024))
    settle()
    steps.append(("400 malformed, then 10 s of good samples", rss(), len(scores)))
    alive = run.close()
    print("\n| after | agent RSS | scores so far |\n|---|---|---|")
    for name, mb, n in steps:
        print(f"| {name} | {mb:.1f} MB | {n} |")
    print(f"\nagent {'alive' if alive else 'DIED'} at the end; log: {run.tmp / 'agent.log'}")


def resend_part(bundle: Path) -> None:
    from vibrawatch.agent.model.bundle import load_bundle

    det = load_bundle(bundle).detector
    spec = det.spec
    fs, n_ch, frame = spec.fs_hz, len(spec.channels), spec.frame_length
    print("\n| message rows | messages sent (unique) | unique samples | windows they hold | scores | "
          "duplicate windows |\n|---|---|---|---|---|---|")
    for rows in (4096, 16_384, 111_111):
        run = MqttAgent(bundle, "resend", "t", f"max_message_bytes = {int(rows * n_ch * 24 * 1.5) + 65536}\n")
        times, node = run.scores, run.node
        time.sleep(4)
        rng = np.random.default_rng(1)
        n_msgs = max(4, int(40 * fs / rows) // 4 * 4)  # about 40 s of signal
        t0 = 1.7e9
        bodies = [json.dumps({"v": 1, "t": t0 + i * rows / fs, "fs_hz": fs,
                              "samples": np.round(rng.standard_normal((rows, n_ch)) * 0.1, 5).tolist()})
                  for i in range(n_msgs)]
        half = [json.dumps({**json.loads(b), "t": json.loads(b)["t"] - rows / fs / 2}) for b in bodies[1:]]
        order = [b for b in bodies for _ in range(2)] + bodies[::2][::-1] + half
        for b in order:
            node.publish("raw", b, qos=1).wait_for_publish(120)
        unique = n_msgs * rows
        holds = max(0, (unique // frame - det.window) // det.hop + 1)
        deadline = time.monotonic() + 180  # the agent parses every copy: it may take a while to catch up
        while time.monotonic() < deadline and len(times) < holds:
            time.sleep(1)
        time.sleep(5)  # anything scored twice would come now
        run.close()
        dup = max(0, len(times) - holds) + (len(times) - len(set(times)))
        print(f"| {rows:,} | {len(order)} ({n_msgs}) | {unique:,} | {holds} | {len(times)} | {dup} |")


def monitor_part(big: int) -> None:
    import urllib.request

    import paho.mqtt.client as mqtt
    from mosquitto import Broker, free_port
    from paho.mqtt.enums import CallbackAPIVersion

    from vibrawatch.agent.link.topics import encode, score_payload, status_payload, topic

    tmp = Path(tempfile.mkdtemp())
    (tmp / "broker").mkdir()
    broker = Broker(tmp / "broker")
    broker.conf.write_text(broker.conf.read_text() + "max_queued_messages 0\n")
    broker.start()
    port = free_port()
    db = tmp / "fleet.db"
    script = Path(sys.executable).with_name("vibrawatch")
    log = (tmp / "monitor.log").open("w")
    mon = subprocess.Popen([str(script), "monitor", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--db",
                            f"sqlite:///{db}", "--http", f"127.0.0.1:{port}", "--client-id", "bench"],
                           stdout=log, stderr=subprocess.STDOUT)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-gw", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    seq = [0]

    def status(field: str) -> float:
        for line in Path(f"/proc/{mon.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def get(path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as r:
            return r.read()

    def health() -> dict:
        return json.loads(get("/api/health"))

    def publish(kind: str, payload: bytes) -> None:
        pub.publish(topic("bench", "m1", kind), payload, qos=1).wait_for_publish(120)

    def scores(n: int, **over: object) -> None:
        for _ in range(n):
            seq[0] += 1
            p = {**score_payload(t=1.7e9 + seq[0], score=0.1, threshold=1.0, level=0.1,
                                 contributions={"a": 0.05, "b": 0.05}, model="m-1"), "seq": seq[0], **over}
            publish("score", encode(p))

    def settle() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and health()["ingest"]["unwritten"]:
            time.sleep(0.2)
        time.sleep(1)

    def disk() -> float:
        return sum(f.stat().st_size for f in tmp.glob("fleet.db*")) / 1e6

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if health()["broker"]["connected"]:
                break
        except OSError:
            pass
        time.sleep(0.2)
    steps = []

    def step(name: str) -> None:
        h = health()
        steps.append((name, status("VmRSS"), status("VmHWM"), disk(), h["ingest"]["stored"], h["ingest"]["dead"]))

    scores(1000)
    settle()
    step("1,000 good scores")
    for i in range(big):
        publish("score", b"%d" % i + b"x" * (4 << 20))
    seq[0] += 1
    scores(1, model="m" * (1 << 20))
    scores(1, contributions={f"c{i}": 0.0 for i in range(50_000)})
    publish("status", encode(status_payload("sensor", fault="f" * (3 << 20))))
    scores(1000)
    settle()
    step(f"{big} x 4 MB not-JSON, a 1 MB model, 50,000 contributions, a 3 MB fault, 1,000 good scores")
    t0 = time.perf_counter()
    largest = max(len(get("/api/dead?limit=1000000")) for _ in range(50))
    dead_s = (time.perf_counter() - t0) / 50
    for _ in range(20):
        get("/api/device?site=bench&device=m1")
    step(f"50 GET /api/dead (largest answer {largest / 1e3:.0f} kB, {dead_s * 1e3:.0f} ms each), "
         "20 GET /api/device")
    alive = mon.poll() is None
    mon.terminate()
    mon.wait(30)
    log.close()
    pub.loop_stop()
    broker.stop()
    print("\n| after | monitor RSS | peak RSS | database on disk | stored | dead letters |\n|---|---|---|---|---|---|")
    for name, rss, hwm, mb, stored, dead in steps:
        print(f"| {name} | {rss:.1f} MB | {hwm:.1f} MB | {mb:.1f} MB | {stored} | {dead} |")
    print(f"\nmonitor {'alive' if alive else 'DIED'} at the end; log: {tmp / 'monitor.log'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="a bundle made by `vibrawatch convert` (the agent's part)")
    ap.add_argument("--big", type=int, default=5, help="large messages per size")
    ap.add_argument("--part", choices=("all", "spool", "agent", "resend", "monitor"), default="all")
    args = ap.parse_args()
    if args.part in ("all", "agent", "resend") and args.bundle is None:
        ap.error("--bundle is needed for the agent's part (or --part spool / --part monitor)")
    if args.part in ("all", "spool"):
        spool_part()
    if args.part in ("all", "agent"):
        memory_part(args.bundle, args.big)
    if args.part in ("all", "resend"):
        resend_part(args.bundle)
    if args.part in ("all", "monitor"):
        monitor_part(args.big)


if __name__ == "__main__":
    main()
