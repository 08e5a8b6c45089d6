"""Edge benchmark: the agent on a 4-channel 20 kHz stream, against the articles' way (Keras in the loop).

    .venv/bin/python bench/agent.py --run runs/bench/ims2_defaults [--seconds 120]

Each side runs in its own fresh process (so resident memory is its own) in the same run of this command:
- edge: the bundle converted from --run (made with `vibrawatch convert` if --bundle is not given), the
  agent's own Pipeline and Publisher to a local Mosquitto, on one core (``taskset`` when available).
  Reports throughput as a multiple of real time split into features / inference / publish, inference
  latency p50/p99 over single windows, RSS after warm-up, and the time from process start to first score.
- keras: the run's Keras model, ``model.predict`` on one window at a time (what the articles do in their
  loop), and the same model under ``tf.function``; latency and RSS.
The stream is the built-in bearing simulator, generated before timing starts (its cost is not the agent's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

EDGE = r'''
import json, os, sys, time
T_START = float(sys.argv[1])
import numpy as np
from agent.bundle import load_bundle
from agent.config import AgentConfig, AgentSection, MqttSection
from agent.pipeline import Pipeline, Scored
from agent.publish import Publisher
from agent.simulate import BearingSimulator
from agent.source import Chunk
from agent.spool import Spool
from agent.topics import score_payload

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

bundle_path, port, seconds, workdir = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
b = load_bundle(bundle_path)
spec = b.spec
cfg = AgentConfig(AgentSection("bench", "edge", bundle_path, spool=f"{workdir}/spool.sqlite"),
                  mqtt=MqttSection(port=port))
spool = Spool(cfg.agent.spool)
pub = Publisher(cfg, spool, {"model": b.version})
pub.start()
while not pub.connected:
    time.sleep(0.01)
pipe = Pipeline(b)
fs = int(spec.fs_hz)
# first score: one window's worth of samples straight after start-up
sim = BearingSimulator(n_snapshots=int(seconds) + b.window + 2, snapshot_samples=fs, fs_hz=spec.fs_hz,
                       n_channels=len(spec.channels), seed=5)
first = None
i = 0
while first is None:
    for ev in pipe.process(Chunk(sim.snapshot(i), float(i), new_segment=False)):
        if isinstance(ev, Scored) and first is None:
            first = time.time() - T_START
    i += 1
# the timed stream, generated beforehand
chunks = [Chunk(sim.snapshot(k), float(k), new_segment=False) for k in range(i, i + int(seconds))]
pipe.times.features = pipe.times.inference = 0.0
pipe.times.windows = 0
rss_warm = rss_mb()
t_pub = 0.0
n = 0
t0 = time.perf_counter()
for c in chunks:
    for j in range(0, fs, 2048):
        for ev in pipe.process(Chunk(c.samples[j:j + 2048], c.t_start + j / fs)):
            if isinstance(ev, Scored):
                tp = time.perf_counter()
                pub.enqueue("score", score_payload(t=ev.t, seq=spool.next_seq(), score=ev.score, threshold=b.threshold,
                            level=ev.level, contributions=dict(zip(spec.channels, map(float, ev.contributions))),
                            model=b.version))
                t_pub += time.perf_counter() - tp
                n += 1
wall = time.perf_counter() - t0
pub.wait_drained(30)
# inference latency of single windows (scale + model), as the agent calls it
x = b.scaler.transform(np.random.default_rng(0).uniform(0, 1, (b.window, spec.n_features))).astype(np.float32)
lat = []
for _ in range(2000):
    t = time.perf_counter(); b.model.reconstruct(x); lat.append(time.perf_counter() - t)
pub.stop()
signal_s = len(chunks)
print(json.dumps({"side": "edge", "runtime": b.model.runtime, "windows": n, "signal_s": signal_s, "wall_s": wall,
    "x_realtime": signal_s / wall, "x_realtime_features": signal_s / pipe.times.features,
    "x_realtime_inference": signal_s / pipe.times.inference, "x_realtime_publish": signal_s / t_pub,
    "infer_p50_us": float(np.percentile(lat, 50) * 1e6), "infer_p99_us": float(np.percentile(lat, 99) * 1e6),
    "rss_mb": rss_warm, "rss_end_mb": rss_mb(), "first_score_s": first}))
'''

KERAS = r'''
import json, os, sys, time
T_START = float(sys.argv[1])
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
from train.run import Run

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

run = Run.open(sys.argv[2])
model = run.keras_model()
import tensorflow as tf
x = np.random.default_rng(0).uniform(0, 1, (1, run.window, run.spec.n_features)).astype(np.float32)
model.predict(x, verbose=0)
first = time.time() - T_START
lat = []
for _ in range(100):
    t = time.perf_counter(); model.predict(x, verbose=0); lat.append(time.perf_counter() - t)
f = tf.function(lambda v: model(v, training=False))
f(x)
lat_f = []
for _ in range(500):
    t = time.perf_counter(); f(x).numpy(); lat_f.append(time.perf_counter() - t)
print(json.dumps({"side": "keras", "predict_p50_us": float(np.percentile(lat, 50) * 1e6),
    "predict_p99_us": float(np.percentile(lat, 99) * 1e6), "tf_function_p50_us": float(np.percentile(lat_f, 50) * 1e6),
    "tf_function_p99_us": float(np.percentile(lat_f, 99) * 1e6), "rss_mb": rss_mb(), "first_score_s": first}))
'''


def child(code: str, *args: str) -> dict:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([*pin, sys.executable, "-c", code, str(time.time()), *args], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run directory (its Keras model is the comparison)")
    ap.add_argument("--bundle", help="the bundle to bench (default: convert --run into a temporary one)")
    ap.add_argument("--seconds", type=float, default=120, help="seconds of signal to stream (default 120)")
    a = ap.parse_args()
    from mosquitto import Broker

    with tempfile.TemporaryDirectory() as d:
        bundle = a.bundle or str(Path(d) / "bundle")
        if not a.bundle:
            subprocess.run([str(Path(sys.executable).with_name("vibrawatch")), "convert", a.run, "--out", bundle],
                           check=True, capture_output=True)
        broker = Broker(Path(d)).start()
        try:
            edge = child(EDGE, bundle, str(broker.port), str(a.seconds), d)
        finally:
            broker.stop()
        keras = child(KERAS, a.run)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    print(json.dumps({"machine": f"{cpu}, {os.cpu_count()} cores", "edge": edge, "keras": keras}, indent=2))
    print(f"\n| measure | edge agent ({edge['runtime']}) | Keras model.predict in the loop |")
    print("|---|---|---|")
    print(f"| throughput, x real time (one core) | {edge['x_realtime']:.0f}x "
          f"(features {edge['x_realtime_features']:.0f}x, "
          f"inference {edge['x_realtime_inference']:.0f}x, publish {edge['x_realtime_publish']:.0f}x) | "
          f"{1e6 / keras['predict_p50_us']:.0f} windows/s |")
    print(f"| inference p50 / p99 per window | {edge['infer_p50_us']:.0f} / {edge['infer_p99_us']:.0f} us | "
          f"{keras['predict_p50_us'] / 1000:.1f} / {keras['predict_p99_us'] / 1000:.1f} ms "
          f"(tf.function {keras['tf_function_p50_us'] / 1000:.2f} ms) |")
    print(f"| resident memory after warm-up | {edge['rss_mb']:.0f} MB | {keras['rss_mb']:.0f} MB |")
    print(f"| start to first score | {edge['first_score_s']:.2f} s | {keras['first_score_s']:.2f} s |")


if __name__ == "__main__":
    main()
