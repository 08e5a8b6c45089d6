"""Edge benchmark: the agent on a 4-channel 20 kHz stream, against the articles' way (Keras in the loop).

    .venv/bin/python bench/agent.py --run runs/bench/ims2_defaults [--seconds 300]

Each side runs in its own fresh process (so resident memory is its own) in the same run of this command:
- edge: the bundle converted from --run (made with `vibrawatch convert` if --bundle is not given), the
  agent's own Pipeline and Publisher to a local Mosquitto, on one core (``taskset`` when available).
  Reports throughput as a multiple of real time (until the broker has acknowledged every message) split
  into features / inference / publish, CPU of the scoring thread vs the MQTT threads, inference latency
  p50/p99 over single windows, RSS after warm-up, and the time from process start to first score.
- service: the real `vibrawatch-agent run` on one core, fed raw samples over MQTT in real time by a
  simulated sensor node (the gateway layout of the IBM article); its resident and peak memory.
- keras: the run's Keras model, ``model.predict`` on one window at a time (what the articles do in their
  loop), and the same model under ``tf.function``; latency and RSS.
The stream is the built-in bearing simulator, written to a raw float32 file before anything is timed; the
edge process reads it in 2048-sample blocks into one reused buffer, as a driver would, so neither the
simulator nor the whole stream sits in the agent's memory.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' Mosquitto helper

EDGE = r'''
import json, os, sys, time
T_START = float(sys.argv[1])
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
MEM = [("interpreter", rss_mb())]  # resident MB after each component, in load order
import numpy as np
MEM.append(("numpy", rss_mb()))
import paho.mqtt.client
MEM.append(("paho-mqtt", rss_mb()))
from vibrawatch.agent.sources.allocator import keep_large_blocks
keep_large_blocks()  # as the agent service does at start
from vibrawatch.agent.model.bundle import load_bundle
from vibrawatch.agent.config import AgentConfig, AgentSection
from vibrawatch.agent.link.broker import MqttSection
from vibrawatch.agent.pipeline import Pipeline
from vibrawatch.agent.detect.results import Scored
from vibrawatch.agent.link.publish import Publisher
from vibrawatch.agent.sources.source import Chunk
from vibrawatch.agent.link.spool import Spool
from vibrawatch.agent.link.topics import window_messages
MEM.append(("the agent's modules", rss_mb()))

bundle_path, port, stream_path, workdir = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
repeat, mode, profile = int(sys.argv[6]), sys.argv[7], sys.argv[8] == "1"
b = load_bundle(bundle_path, public_key=sys.argv[10] or None)  # signed, as a gateway checks it at start
MEM.append(("the bundle (TFLite interpreter, model, detector)", rss_mb()))
spec = b.detector.spec
fs, n_ch = int(spec.fs_hz), len(spec.channels)
if mode != "plain":  # diagnosis on: healthy envelope statistics measured on the stream's first 10 s
    from dataclasses import replace
    from vibrawatch.agent.detect.diagnosis import Diagnosis, envelope_energies
    from vibrawatch.agent.sources.simulate import BearingGeometry
    defects = BearingGeometry().defect_frequencies(2000.0 / 60.0)
    head = np.fromfile(stream_path, np.float32, count=10 * fs * n_ch).reshape(10, fs, n_ch)
    dg = Diagnosis(defects, (2000.0, 6000.0), 3, np.zeros((n_ch, len(defects))), statistic="peak")
    head = head[:, : spec.frame_length * (fs // spec.frame_length)].reshape(-1, spec.frame_length, n_ch)
    # frame by frame, as a gateway's commissioning measures them (a batch of ten frames at once would leave its
    # tens of MB of temporaries with the allocator, kept for good by keep_large_blocks, and count them here)
    dg = replace(dg, healthy=np.median(np.concatenate([envelope_energies(f[None], spec, dg) for f in head]), axis=0))
    b = replace(b, detector=replace(b.detector, diagnosis=dg))
ALARM_GAIN = 3.0 if mode == "alarm" else None  # channel 0 three times as loud: in alarm from its third window

import threading
from time import perf_counter
_tl = threading.local()
STAGES = {}  # (stage, main thread?) -> [exclusive seconds, calls]

def timed(owner, attr, stage):
    """Wrap owner.attr: its exclusive time (minus the wrapped calls within it) goes to ``stage``."""
    f = getattr(owner, attr)
    def w(*a, **k):
        st = getattr(_tl, "stack", None)
        if st is None:
            st = _tl.stack = []
        st.append(0.0)
        t0 = perf_counter()
        try:
            return f(*a, **k)
        finally:
            d = perf_counter() - t0
            inner = st.pop()
            rec = STAGES.setdefault((stage, threading.current_thread() is threading.main_thread()), [0.0, 0])
            rec[0] += d - inner
            rec[1] += 1
            if st:
                st[-1] += d
    setattr(owner, attr, w)
cfg = AgentConfig(AgentSection("bench", "edge", bundle_path, spool=f"{workdir}/spool.sqlite"),
                  mqtt=MqttSection(port=port))
spool = Spool(cfg.agent.spool)
pub = Publisher(cfg.mqtt, spool, {"model": b.version}, site=cfg.agent.site, device=cfg.agent.device)
pub.start()
while not pub.connected:
    time.sleep(0.01)
MEM.append(("spool and publisher (connected)", rss_mb()))
pipe = Pipeline(b)
MEM.append(("the pipeline", rss_mb()))

def instrument():
    """Name every stage (bench only: the agent's code is not changed by it)."""
    import vibrawatch.agent.pipeline as P, vibrawatch.agent.detect.features as F
    import vibrawatch.agent.detect.diagnosis as D, vibrawatch.agent.detect.healthy as H
    import vibrawatch.agent.detect.measures as M, vibrawatch.agent.detect.frames as FR
    import vibrawatch.agent.detect.window as W, vibrawatch.agent.link.topics as TP
    import vibrawatch.agent.detect.envelope as E
    for owner, attr, stage in [
            (P, "check_chunk", "sensor check"), (FR.Framer, "push", "frames"),
            (P, "extract_spectra", "features (not the FFT)"), (F, "spectrum", "features: FFT"),
            (W.WindowBuffer, "push", "window"), (type(b.detector.scaler), "transform", "scale"),
            (type(b.model), "reconstruct", "inference"), (P, "reconstruction_scores", "scores"),
            (M.Floor, "ratios", "combined: floors"), (M.Floor, "log_level", "combined: floors"),
            (M.PcaResidual, "scores", "combined: PCA residual"), (H, "held", "combined: PCA residual"),
            (M.OwnDeviation, "z", "combined: own deviation"),
            (P, "window_evidence", "combined: evidence (rest)"), (P, "event_inputs", "combined: evidence (rest)"),
            (P.Decider, "window", "decide (rest)"),
            (D.DiagnosisState, "update", "diagnosis"), (D.EnvelopeWindow, "push", "diagnosis"),
            (D, "spectrum", "diagnosis"), (D, "envelope_statistics", "diagnosis"),
            (P.Pipeline, "process", "pipeline (rest)"),
            (Publisher, "enqueue", "publish"), (Spool, "put", "spool"), (Spool, "sent", "spool"),
            (Spool, "ack", "spool"), (Spool, "peek", "spool")]:
        timed(owner, attr, stage)
    if pipe.decider.events is not None:
        timed(type(pipe.decider.events), "update", "combined: events")
    timed(sys.modules[__name__], "window_messages", "publish")
# The sensor: blocks of 2048 samples read from a raw float32 file into one reused buffer, as a driver
# fills its buffer (the stream was generated by the parent, so the simulator is not in this process).
stream = open(stream_path, "rb", buffering=0)
buf = np.empty((2048, n_ch), np.float32)
view = memoryview(buf).cast("B")
pos = 0  # samples read from the file
read_s = [0.0]
t_shift = 0  # samples of signal already played by earlier passes over the same stretch of file

def chunks(seconds):
    global pos
    end = pos + int(seconds * fs)
    while pos < end:
        t0 = perf_counter()
        got = stream.readinto(view[: min(2048, end - pos) * n_ch * 4]) // (4 * n_ch)
        if ALARM_GAIN:
            buf[:got, 0] *= ALARM_GAIN
        read_s[0] += perf_counter() - t0
        yield Chunk(buf[:got], (t_shift + pos) / fs)
        pos += got

def feed(seconds, t_pub=None):
    """Score ``seconds`` of the stream, publishing as the service does; (windows, time to the first)."""
    n, first_at = 0, None
    for c in chunks(seconds):
        for ev in pipe.process(c):
            if isinstance(ev, Scored):
                first_at = first_at or time.time() - T_START
                tp = time.perf_counter()
                for kind, payload in window_messages(ev, spec.channels, b.detector.threshold, b.version):
                    pub.enqueue(kind, payload)
                if t_pub is not None:
                    t_pub[0] += time.perf_counter() - tp
                n += 1
    return n, first_at

# warm-up: the first window (start-up time) and as many again; memory is read after it
_, first = feed(2 * b.detector.window)
if mode != "plain":  # as a commissioning does: this machine's healthy statistics from its first minute
    from vibrawatch.agent.detect.healthy import Evidence, fit
    evs = []
    for c in chunks(60):
        evs += [ev.evidence for ev in pipe.process(c) if isinstance(ev, Scored)]
    pipe.use(fit(pipe.detector, Evidence.concat(evs)))
    pipe._envelope.measured = 0  # count from here: what the fitted detector asked for
pub.wait_drained(30)
rss_warm = rss_mb()
MEM.append(("warm-up (buffers filled, first windows published)", rss_warm))
seconds = min(float(sys.argv[9]), os.path.getsize(stream_path) / (4 * n_ch * fs) - pos / fs)
start = pos
passes = []
for _ in range(repeat):  # the same stretch of signal again (time keeps running on): the best pass counts,
    stream.seek(start * 4 * n_ch)  # as timeit does, since a busy shared host only ever slows a pass down
    t_shift += pos - start
    pos = start
    pipe.times.features = pipe.times.inference = 0.0
    t_pub = [0.0]
    cpu0, main0 = time.process_time(), time.thread_time()
    t0 = time.perf_counter()
    n, _ = feed(seconds, t_pub)
    wall = time.perf_counter() - t0
    pub.wait_drained(30)
    wall_drained = time.perf_counter() - t0
    cpu_all, cpu_main = time.process_time() - cpu0, time.thread_time() - main0
    passes.append({"windows": n, "wall_s": wall_drained, "x_realtime": seconds / wall_drained,
        "x_realtime_loop": seconds / wall, "cpu_main_s": cpu_main, "cpu_other_threads_s": cpu_all - cpu_main,
        "x_realtime_features": seconds / pipe.times.features,
        "x_realtime_inference": seconds / pipe.times.inference, "x_realtime_publish": seconds / t_pub[0]})
best = max(passes, key=lambda r: r["x_realtime"])
rss_end = rss_mb()

def one_pass():
    global t_shift, pos
    stream.seek(start * 4 * n_ch)
    t_shift += pos - start
    pos = start
    t0 = time.perf_counter()
    feed(seconds, [0.0])
    wall = time.perf_counter() - t0
    pub.wait_drained(30)
    return wall

# one more pass with every stage named (the wrappers cost about a microsecond a call, so not the headline)
instrument()
read_s[0] = 0.0
wall_named = one_pass()
# copies: the wrappers stay installed through the profiled pass below, which must not add to this table
stages = {k[0] + ("" if k[1] else " [MQTT thread]"): list(v) for k, v in STAGES.items()}
stages["read"] = [read_s[0], 0]
named_main = sum(v[0] for k, v in STAGES.items() if k[1]) + read_s[0]
stages["unnamed (the bench loop, generators)"] = [wall_named - named_main, 0]
prof = None
if profile:
    import cProfile, io, pstats
    pr = cProfile.Profile()
    pr.enable()
    one_pass()
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(25)
    prof = out.getvalue()
env_measured = 0 if pipe._envelope is None else pipe._envelope.measured
# inference latency of single windows (scale + model), as the agent calls it
x = b.detector.scaler.transform(np.random.default_rng(0).uniform(0, 1, (b.detector.window, spec.n_features)))
x = x.astype(np.float32)
lat = []
for _ in range(2000):
    t = time.perf_counter(); b.model.reconstruct(x); lat.append(time.perf_counter() - t)
pub.stop()
print(json.dumps({"side": "edge", "runtime": b.model.runtime, "signal_s": seconds, "passes": len(passes),
    **best, "x_realtime_all_passes": [round(r["x_realtime"]) for r in passes],
    "infer_p50_us": float(np.percentile(lat, 50) * 1e6), "infer_p99_us": float(np.percentile(lat, 99) * 1e6),
    "rss_mb": rss_warm, "rss_after_run_mb": rss_end, "first_score_s": first, "mode": mode,
    "stages": {k: {"s": v[0], "calls": v[1]} for k, v in sorted(stages.items(), key=lambda kv: -kv[1][0])},
    "wall_named_s": wall_named, "envelopes_measured": env_measured,
    "feature_buffers_mb": pipe._buffers.nbytes / 2**20, "profile": prof,
    "memory": [(k, round(v - (MEM[i - 1][1] if i else 0), 1)) for i, (k, v) in enumerate(MEM)]}))
'''

KERAS = r'''
import json, os, sys, time
T_START = float(sys.argv[1])
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
from vibrawatch.train.run import Run

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

run = Run.open(sys.argv[2])
model = run.keras_model()
import tensorflow as tf
x = np.random.default_rng(0).uniform(0, 1, (1, run.detector.window, run.detector.spec.n_features)).astype(np.float32)
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


def child(code: str, *args: str, python: str = sys.executable) -> dict:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([*pin, python, "-c", code, str(time.time()), *args], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_stream(path: Path, bundle: str, seconds: float) -> None:
    """The sensor's samples for both measurements: the built-in bearing simulator, consecutive 1 s
    snapshots at the bundle's rate and channel count, raw float32 (generated here, outside the agent)."""
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.sources.simulate import BearingSimulator

    spec = load_bundle(bundle).detector.spec
    fs = int(spec.fs_hz)
    sim = BearingSimulator(n_snapshots=int(seconds), snapshot_samples=fs, fs_hz=fs, n_channels=len(spec.channels),
                           seed=5)
    with path.open("wb") as f:
        for i in range(int(seconds)):
            f.write(np.ascontiguousarray(sim.snapshot(i), dtype=np.float32).tobytes())


def service_rss(bundle: str, port: int, workdir: Path, stream: Path, python: str, public_key: str,
                seconds: float = 30.0) -> dict:
    """The real service, `vibrawatch-agent run`, on one core, fed as a gateway is fed: a sensor node
    publishes blocks of raw samples to MQTT in real time (source kind "mqtt", docs/mqtt.md) and the
    agent scores them. Its resident memory (now and peak) after ``seconds``, and the windows it published."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from vibrawatch.agent.model.bundle import load_bundle

    spec = load_bundle(bundle).detector.spec
    fs, n_ch = int(spec.fs_hz), len(spec.channels)
    cfg = workdir / "service.toml"
    cfg.write_text(f'[agent]\nsite = "bench"\ndevice = "service"\nbundle = "{bundle}"\n'
                   + (f'public_key = "{public_key}"\n' if public_key else "")
                   + f'spool = "{workdir}/service-spool.sqlite"\n[source]\nkind = "mqtt"\ntopic = "bench/raw"\n'
                   f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n')
    scores: list[str] = []
    node = mqtt.Client(CallbackAPIVersion.VERSION2)
    node.on_message = lambda c, u, m: scores.append(m.topic)
    node.connect("127.0.0.1", port)
    node.subscribe("vibrawatch/v1/bench/service/score", qos=1)
    node.loop_start()
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    # what the console script `vibrawatch-agent` runs, with the chosen Python (vibrawatch installed there)
    agent = subprocess.Popen([*pin, python, "-m", "vibrawatch.agent.cli", "run", "--config", str(cfg)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)  # connected and subscribed
    samples = np.fromfile(stream, dtype=np.float32, count=int(seconds * fs) * n_ch).reshape(-1, n_ch)
    block = 2048
    t_start = time.time()
    for k in range(0, len(samples), block):  # in real time
        time.sleep(max(0.0, t_start + k / fs - time.time()))
        msg = {"v": 1, "t": t_start + k / fs, "fs_hz": fs, "samples": samples[k:k + block].tolist()}
        node.publish("bench/raw", json.dumps(msg), qos=0)
    time.sleep(1.0)
    status = dict(ln.split(":", 1) for ln in Path(f"/proc/{agent.pid}/status").read_text().splitlines() if ":" in ln)
    agent.terminate()
    agent.wait(timeout=30)
    node.loop_stop()
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
            "windows_published": len(scores), "seconds": seconds}


MODES = {"plain": "default features, combined detector", "healthy": "with [diagnosis], healthy",
         "alarm": "with [diagnosis], a channel in alarm"}


def stage_table(edges: dict[str, dict]) -> None:
    """Milliseconds per second of signal by stage (one pass with every stage named), and memory by component."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    print(f"\nmachine: {cpu}, {os.cpu_count()} cores; edge on one core")
    names = list(dict.fromkeys(k for e in edges.values() for k in e["stages"]))
    print("\n| stage, ms per s of signal | " + " | ".join(MODES[m] for m in edges) + " |")
    print("|---|" + "---|" * len(edges))
    for n in names:
        cells = []
        for e in edges.values():
            v = e["stages"].get(n)
            cells.append("-" if v is None else f"{1e3 * v['s'] / e['signal_s']:.3f}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("| **end to end, x real time (best pass; all passes)** | " + " | ".join(
        f"**{e['x_realtime']:.0f}x** ({', '.join(f'{x}x' for x in e['x_realtime_all_passes'])})"
        for e in edges.values()) + " |")
    print("| envelopes measured (frame x channel) | " + " | ".join(str(e["envelopes_measured"]) for e in edges.values())
          + " |")
    e = edges["plain"]
    print("\n| component (load order) | resident MB added |\n|---|---|")
    for k, v in e["memory"]:
        print(f"| {k} | {v} |")
    print(f"| total after warm-up (feature buffers {e['feature_buffers_mb']:.1f} MB) | {e['rss_mb']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run directory (its Keras model is the comparison)")
    ap.add_argument("--bundle", help="the bundle to bench (default: convert --run into a temporary one, signed with "
                    "a new key, whose public key the edge and the service then check it with, as a gateway does)")
    ap.add_argument("--public-key", default="",
                    help="the public key --bundle is signed with (default: none, unchecked)")
    ap.add_argument("--seconds", type=float, default=300, help="seconds of signal to stream (default 300)")
    ap.add_argument("--edge-python", default=sys.executable,
                    help="the Python of the edge side, e.g. .venv-tflite/bin/python for tflite-runtime 2.14 "
                    "(default: this one)")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over that signal; the best counts (default 3)")
    ap.add_argument("--profile", action="store_true", help="print the edge's top functions (cProfile, by own time)")
    ap.add_argument("--diagnosis", action="store_true",
                    help="also bench with [diagnosis] set: on a healthy machine, and with a channel in alarm")
    ap.add_argument("--no-keras", action="store_true", help="skip the Keras side and the service (the edge only)")
    a = ap.parse_args()
    from mosquitto import Broker

    with tempfile.TemporaryDirectory() as d:
        bundle, public_key = a.bundle or str(Path(d) / "bundle"), a.public_key
        if not a.bundle:
            cli = str(Path(sys.executable).with_name("vibrawatch"))
            subprocess.run([cli, "keys", "new", "--out-dir", f"{d}/keys"], check=True, capture_output=True)
            subprocess.run([cli, "convert", a.run, "--out", bundle, "--sign-key", f"{d}/keys/vibrawatch-signing.key"],
                           check=True, capture_output=True)
            public_key = f"{d}/keys/vibrawatch-signing.pub"
        stream = Path(d) / "stream.f32"
        write_stream(stream, bundle, a.seconds + 100)
        broker = Broker(Path(d)).start()
        try:
            modes = ["plain", "healthy", "alarm"] if a.diagnosis else ["plain"]
            edges = {m: child(EDGE, bundle, str(broker.port), str(stream), d, str(a.repeat), m, str(int(a.profile)),
                              str(a.seconds), public_key, python=a.edge_python) for m in modes}
            edge = edges["plain"]
            service = None if a.no_keras else service_rss(bundle, broker.port, Path(d), stream, a.edge_python,
                                                               public_key)
        finally:
            broker.stop()
        keras = None if a.no_keras else child(KERAS, a.run)
    stage_table(edges)
    for m, e in edges.items():
        if e["profile"]:
            print(f"\n### top functions, {m} (cProfile, one pass)\n```\n{e['profile'].strip()}\n```")
    if keras is None or service is None:
        print(json.dumps({m: {k: v for k, v in e.items() if k not in ("stages", "profile")} for m, e in edges.items()},
                         indent=1))
        return
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    print(json.dumps({"machine": f"{cpu}, {os.cpu_count()} cores", "service": service, "keras": keras,
                      **{f"edge_{m}": {k: v for k, v in e.items() if k not in ("stages", "profile")}
                         for m, e in edges.items()}}, indent=1))
    print(f"\n| measure | edge agent ({edge['runtime']}) | Keras model.predict in the loop |")
    print("|---|---|---|")
    print(f"| throughput, x real time (one core; best of {edge['passes']} passes: "
          f"{', '.join(f'{x}x' for x in edge['x_realtime_all_passes'])}) | {edge['x_realtime']:.0f}x "
          f"(features {edge['x_realtime_features']:.0f}x, "
          f"inference {edge['x_realtime_inference']:.0f}x, publish {edge['x_realtime_publish']:.0f}x) | "
          f"{1e6 / keras['predict_p50_us']:.0f} windows/s |")
    print(f"| CPU: scoring thread / MQTT threads | {edge['cpu_main_s']:.2f} s / {edge['cpu_other_threads_s']:.2f} s "
          f"for {edge['signal_s']:.0f} s of signal | - |")
    print(f"| inference p50 / p99 per window | {edge['infer_p50_us']:.0f} / {edge['infer_p99_us']:.0f} us | "
          f"{keras['predict_p50_us'] / 1000:.1f} / {keras['predict_p99_us'] / 1000:.1f} ms "
          f"(tf.function {keras['tf_function_p50_us'] / 1000:.2f} ms) |")
    print(f"| resident memory after warm-up | {edge['rss_mb']:.0f} MB | {keras['rss_mb']:.0f} MB |")
    print("| the service (`vibrawatch-agent run`, samples over MQTT in real time), resident / peak | "
          f"{service['rss_mb']:.0f} / "
          f"{service['peak_rss_mb']:.0f} MB ({service['windows_published']} windows in "
          f"{service['seconds']:.0f} s) | - |")
    print(f"| start to first score | {edge['first_score_s']:.2f} s | {keras['first_score_s']:.2f} s |")


if __name__ == "__main__":
    main()
