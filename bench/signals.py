"""How fast `vibrawatch-agent run` answers SIGHUP and SIGTERM while its source waits (docs/gateway.md, Signals).

    .venv/bin/python bench/signals.py [--bundle runs/demo/bundle.tar] [--rounds 5]

For each source kind that can wait a long time: the simulator at real-time speed (after its first snapshot it
sleeps 600 s until the next) and an MQTT samples topic nobody publishes to. Each round starts the real
service on a local Mosquitto, waits for its retained `online` status and one more second (the source is now
waiting), sends SIGHUP and times it to the `reloaded` status, then sends SIGTERM and times it to the
process's exit (a clean stop: spool drained, `offline`/`stopped` published). Without --bundle a tiny
4-channel 20 kHz bundle is made first with the workstation CLI (simulate, train on tests/data/tiny.toml,
convert). Prints one JSON object: median and max seconds per kind and signal, and the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' Mosquitto helper

SOURCES = {
    "simulator": '[source]\nkind = "simulator"\nsamples = 4096\nfs_hz = {fs}\nspeed = 1\n',
    "mqtt": '[source]\nkind = "mqtt"\ntopic = "bench/raw"\n',
}


def tiny_bundle(workdir: Path) -> Path:
    """A tiny bundle made as the tests make theirs (about a minute on a laptop, mostly TensorFlow's start)."""
    exe = Path(sys.executable).with_name("vibrawatch")
    data, run, bundle = workdir / "bearing.npz", workdir / "run", workdir / "tiny.tar"
    subprocess.run([str(exe), "simulate", "bearing", "--out", str(data), "--snapshots", "40", "--samples", "4096",
                    "--fs-hz", "20000", "--seed", "3"], check=True, capture_output=True)
    subprocess.run([str(exe), "train", "--data", str(data), "--healthy-until", "50%", "--config",
                    str(ROOT / "tests" / "data" / "tiny.toml"), "--out", str(run), "--quiet"], check=True,
                   capture_output=True)
    subprocess.run([str(exe), "convert", str(run), "--out", str(bundle)], check=True, capture_output=True)
    return bundle


def one_round(kind: str, bundle: Path, fs: float, port: int, workdir: Path) -> tuple[float, float]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    cfg = workdir / f"{kind}.toml"
    cfg.write_text(f'[agent]\nsite = "bench"\ndevice = "{kind}"\nbundle = "{bundle}"\n'
                   f'spool = "{workdir / kind / "spool.sqlite"}"\n\n{SOURCES[kind].format(fs=fs)}\n'
                   f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n')
    seen: list[dict] = []
    lock = threading.Lock()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"vibrawatch/v1/bench/{kind}/status", qos=1)

    def on_message(c: object, u: object, m: mqtt.MQTTMessage) -> None:
        with lock:
            seen.append(json.loads(m.payload))

    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()

    def wait_for(pred: object, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                if any(pred(s) for s in seen):  # type: ignore[operator]
                    return
            time.sleep(0.005)
        raise RuntimeError(f"{kind}: no such status within {timeout} s: {seen[-3:]}")

    agent = subprocess.Popen([str(Path(sys.executable).with_name("vibrawatch-agent")), "run", "--config", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda s: s["state"] == "online" and "event" not in s)
        time.sleep(1.0)
        t0 = time.monotonic()
        agent.send_signal(signal.SIGHUP)
        wait_for(lambda s: s.get("event") == "reloaded")
        reload_s = time.monotonic() - t0
        t0 = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        stop_s = time.monotonic() - t0
    finally:
        if agent.poll() is None:
            agent.kill()
        sub.loop_stop()
        sub.disconnect()
    if agent.returncode != 0:
        raise RuntimeError(f"{kind}: the agent exited {agent.returncode}")
    with lock:
        seen.clear()
    return reload_s, stop_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="a 4-channel bundle (default: make a tiny one)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from mosquitto import Broker

    from vibrawatch.agent.model.bundle import load_bundle

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bundle = args.bundle.resolve() if args.bundle else tiny_bundle(workdir)
        fs = load_bundle(bundle).detector.spec.fs_hz
        (workdir / "broker").mkdir()
        broker = Broker(workdir / "broker").start()
        out: dict[str, object] = {"machine": f"{platform.node()} {platform.machine()}, {platform.python_version()}",
                                  "rounds": args.rounds}
        try:
            for kind in SOURCES:
                got = [one_round(kind, bundle, fs, broker.port, workdir) for _ in range(args.rounds)]
                for i, name in enumerate(("sighup_to_reloaded_s", "sigterm_to_exit_s")):
                    values = [g[i] for g in got]
                    out[f"{kind}.{name}"] = {"median": round(statistics.median(values), 3),
                                             "max": round(max(values), 3)}
        finally:
            broker.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
