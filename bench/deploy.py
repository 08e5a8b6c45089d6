"""Deploy benchmark: time from `vibrawatch deploy` to `applied` for 1 and for 10 agents on one broker.

    .venv/bin/python bench/deploy.py --run runs/bench/ims2_defaults [--agents 1,10] [--probation 20]
    .venv/bin/python bench/deploy.py --old OLD.tar --new NEW.tar --key KEY ...   (bundles signed with KEY)

With --run, two signed bundles are made from the run first (`vibrawatch convert`, float32 and float16, with a
fresh key), so the deploy changes the model file. For each fleet size: a local Mosquitto, that many real
`vibrawatch-agent run` processes (simulator source at 600x real time: ~20 windows/s each, deploys enabled,
probation of --probation windows), all online with the old bundle; then the real command
`vibrawatch deploy NEW --all --json` in its own process. Reported: the command's wall time (start to exit,
Python start-up and its local bundle check included) and, per device, seconds from the request being
published to `verified` (fetched, verified, swapped) and to `applied` (after probation), median and max.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' Mosquitto helper

from mosquitto import Broker  # noqa: E402

BIN = Path(sys.executable).parent


def make_bundles(run: Path, d: Path) -> tuple[Path, Path, Path]:
    """A fresh key and two signed bundles of ``run``: float32 (old) and float16 (new, another model file)."""
    subprocess.run([BIN / "vibrawatch", "keys", "new", "--out-dir", d / "keys"], check=True, capture_output=True)
    key = d / "keys" / "vibrawatch-signing.key"
    for name, q in (("old", "none"), ("new", "float16")):
        subprocess.run([BIN / "vibrawatch", "convert", run, "--out", d / f"{name}.tar", "--quantize", q, "--force",
                        "--sign-key", key], check=True, capture_output=True)
    return d / "old.tar", d / "new.tar", key


def online(port: int, site: str, n: int, timeout: float = 120) -> None:
    """Wait until ``n`` devices of ``site`` have a retained 'online' status."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    seen: dict[str, str] = {}
    lock = threading.Lock()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        with lock:
            seen[m.topic.split("/")[3]] = json.loads(m.payload).get("state")

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-watch-{time.time_ns()}")
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"vibrawatch/v1/{site}/+/status", qos=1)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with lock:
                if sum(s == "online" for s in seen.values()) >= n:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"only {seen} came online in {timeout} s")
    finally:
        c.loop_stop()
        c.disconnect()


def one(n: int, old: Path, new: Path, key: Path, pub: Path, probation: int, work: Path) -> dict:
    """One fleet of ``n`` agents on a fresh broker, one deploy to all of them."""
    (work / "broker").mkdir(parents=True)
    broker = Broker(work / "broker").start()
    procs = []
    try:
        for i in range(n):
            d = work / f"gw{i}"
            d.mkdir()
            (d / "agent.toml").write_text(f'''
[agent]
site = "bench"
device = "gw{i}"
bundle = "{old}"
public_key = "{pub}"
spool = "{d / 'spool.sqlite'}"
[source]
kind = "simulator"
snapshots = 100000
speed = 600
seed = {i}
[mqtt]
port = {broker.port}
[deploy]
enabled = true
state_dir = "{d / 'state'}"
probation_windows = {probation}
''')
            log = open(d / "agent.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append((subprocess.Popen([BIN / "vibrawatch-agent", "run", "--config", d / "agent.toml"],
                                           stdout=log, stderr=subprocess.STDOUT), log))
        online(broker.port, "bench", n)
        time.sleep(2)  # every agent past its start-up, scoring
        t0 = time.monotonic()
        r = subprocess.run([BIN / "vibrawatch", "deploy", new, "--broker", f"mqtt://127.0.0.1:{broker.port}",
                            "--site", "bench", "--all", "--sign-key", key, "--wait", "300", "--json"],
                           capture_output=True, text=True)
        wall = time.monotonic() - t0
        report = json.loads(r.stdout)
        if r.returncode != 0:
            raise RuntimeError(f"deploy to {n} agents failed: {report['results']}")
    finally:
        for p, log in procs:
            p.terminate()
            p.wait(timeout=30)
            log.close()
        broker.stop()
    applied = [x["seconds"] for x in report["results"]]
    verified = [x["seconds_verified"] for x in report["results"] if x["seconds_verified"] is not None]
    return {"agents": n, "bundle_bytes": report["bundle_bytes"], "command_wall_s": round(wall, 2),
            "verified_s_median": round(statistics.median(verified), 2) if verified else None,
            "verified_s_max": round(max(verified), 2) if verified else None,
            "applied_s_median": round(statistics.median(applied), 2), "applied_s_max": round(max(applied), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a run directory: make the two signed bundles from it")
    ap.add_argument("--old", type=Path)
    ap.add_argument("--new", type=Path)
    ap.add_argument("--key", type=Path, help="the private key both bundles are signed with (public key beside it)")
    ap.add_argument("--agents", default="1,10", help="fleet sizes, comma-separated")
    ap.add_argument("--probation", type=int, default=20, help="probation windows on each agent")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vibrawatch-bench-deploy-") as tmp:
        work = Path(tmp)
        if args.run:
            old, new, key = make_bundles(args.run, work)
        elif args.old and args.new and args.key:
            old, new, key = args.old.resolve(), args.new.resolve(), args.key.resolve()
        else:
            ap.error("give --run, or --old, --new and --key")
        pub = key.with_suffix(".pub")
        rows = [one(n, old, new, key, pub, args.probation, work / f"fleet{n}") for n in
                (int(s) for s in args.agents.split(","))]
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    print(json.dumps({"machine": machine, "cpus": os.cpu_count(), "probation_windows": args.probation,
                      "rows": rows}, indent=2))
    print("\n| agents | bundle bytes | command wall s | request -> verified s (median / max) | "
          "request -> applied s (median / max) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['agents']} | {r['bundle_bytes']} | {r['command_wall_s']} | {r['verified_s_median']} / "
              f"{r['verified_s_max']} | {r['applied_s_median']} / {r['applied_s_max']} |")


if __name__ == "__main__":
    main()
