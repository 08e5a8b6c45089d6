"""Fleet monitor benchmark: 1,000 simulated gateways publishing scores through one Mosquitto, on loopback.

    .venv/bin/python bench/monitor.py [--gateways 1000] [--per-gateway 100] [--skip-postgres] [--json FILE]

What it measures, each in the same run, on the same broker and the same messages:
- ingest rate of one `vibrawatch monitor` process into SQLite: the messages are published while the monitor
  is stopped (they wait in its persistent session), then the monitor starts and drains them: rate = messages
  / (last row stored - first row stored), schema-validated, batched, acknowledged after each commit;
- the reference: a bare paho QoS 1 subscriber writing (topic, payload) batches to SQLite, no validation, no
  state, the same drain;
- two monitor processes in one shared-subscription group into one SQLite file; then the same into PostgreSQL
  (a throwaway cluster, as in the tests) with one and with two monitors;
- end-to-end latency with the monitor running while the gateways publish live: a probe message every 20 ms
  carries its publish time; the bench polls the database for it (publish -> row visible), p50/p99;
- after every run: rows == messages published, every device's seq 1..N present once (0 lost, 0 duplicated).

Gateways are real MQTT connections (1,000 client ids, QoS 1, each message acknowledged by the broker),
spread over a few publisher processes. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import paho.mqtt.client as mqtt  # noqa: E402
from mosquitto import free_port, mosquitto_binary  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from vibrawatch.agent.topics import encode, score_payload  # noqa: E402

DEADLINE_S = 600


def gateway_ids(n: int) -> list[tuple[str, str]]:
    return [(f"site{i // 50:02d}", f"gw{i:04d}") for i in range(n)]


def payload(seq: int, t: float) -> bytes:
    contributions = {"bearing1": 0.05, "bearing2": 0.03, "bearing3": 0.02, "bearing4": 0.02}
    return encode({**score_payload(t=t, score=0.12, threshold=0.21, level=0.57, contributions=contributions,
                                   model="ims2-none-f845fe5516"), "seq": seq})


def publisher(port: int, ids: list[tuple[str, str]], first: int, count: int, rate: float, probe: bool,
              ready: mp.Event, go: mp.Event, done: mp.Queue) -> None:
    """One process: one MQTT connection per gateway; publishes seq first..first+count-1 of each, round-robin."""
    clients = []
    for site, dev in ids:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{site}-{dev}", protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(100)
        c.connect("127.0.0.1", port, keepalive=120)
        c.loop_start()
        clients.append((c, f"vibrawatch/v1/{site}/{dev}/score"))
    ready.set()
    go.wait(DEADLINE_S)
    start = time.monotonic()
    sent = 0
    infos = []
    for k in range(count):
        for c, topic in clients:
            infos.append(c.publish(topic, payload(first + k, time.time()), qos=1))
            sent += 1
            if rate:
                due = start + sent / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        if len(infos) > 5000:
            for i in infos:
                i.wait_for_publish(timeout=60)
            infos = []
    for i in infos:
        i.wait_for_publish(timeout=60)
    for c, _ in clients:
        c.disconnect()
        c.loop_stop()
    done.put(sent)


def publish_all(port: int, n_gateways: int, first: int, count: int, procs: int, rate: float = 0.0) -> float:
    """All gateways publish ``count`` messages each (seq from ``first``); seconds it took."""
    ids = gateway_ids(n_gateways)
    ready = [mp.Event() for _ in range(procs)]
    go, done = mp.Event(), mp.Queue()
    ps = [mp.Process(target=publisher, args=(port, ids[i::procs], first, count, rate / procs, False, ready[i], go,
                                             done)) for i in range(procs)]
    for p in ps:
        p.start()
    for r in ready:
        r.wait(120)
    t0 = time.monotonic()
    go.set()
    total = sum(done.get(timeout=DEADLINE_S) for _ in ps)
    for p in ps:
        p.join(timeout=60)
    assert total == n_gateways * count
    return time.monotonic() - t0


class Mosquitto:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        user = "user root\n" if os.geteuid() == 0 else ""
        # max_queued_messages 0: no limit on what waits for a stopped monitor (the default, 1000, drops the rest).
        (workdir / "mosquitto.conf").write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
            f"max_inflight_messages 0\nlog_dest file {workdir}/mosquitto.log\n")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(workdir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def vibrawatch(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("vibrawatch")), *args]


def start_monitor(port: int, db: str, client_id: str, log: Path, group: str) -> subprocess.Popen[bytes]:
    """One monitor process. Each run has its own group: a stopped monitor's session stays in its group and
    keeps being handed its share (queued for it) until it expires."""
    with open(log, "ab") as f:
        return subprocess.Popen(vibrawatch("monitor", "--broker", f"mqtt://127.0.0.1:{port}", "--db", db, "--http",
                                           "off", "--client-id", client_id, "--group", group, "--verbose"), stdout=f,
                                stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_log(log: Path, text: str, n: int = 1) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count(text) >= n:
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {text!r} in {log}:\n{log.read_text(errors='replace')[-2000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used (Linux /proc), children not included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Counter:
    """Counts rows in a table, from SQLite or PostgreSQL, cheaply and repeatedly."""

    def __init__(self, db: str, table: str) -> None:
        self.db, self.table = db, table
        self.conn = None

    def __call__(self) -> int:
        try:
            if self.conn is None:
                if self.db.startswith("sqlite:///"):
                    self.conn = sqlite3.connect(self.db[len("sqlite:///"):], timeout=30)
                else:
                    import psycopg

                    self.conn = psycopg.connect(self.db, autocommit=True)
            # SQLite: the largest rowid is the row count here (nothing is deleted, a skipped repeat takes no
            # rowid) and costs a b-tree descent, where COUNT(*) would scan the table under the writer's feet.
            sql = (f"SELECT COALESCE(MAX(rowid), 0) FROM {self.table}" if self.db.startswith("sqlite:///")
                   else f"SELECT COUNT(*) FROM {self.table}")
            return int(self.conn.execute(sql).fetchone()[0])
        except Exception:  # noqa: BLE001 - the table may not exist yet
            self.conn = None
            return 0


def self_is_cheap(count: Counter) -> bool:
    return count.db.startswith("sqlite:///")


def drain(count: Counter, total: int, pids: list[int] | None = None) -> dict[str, float]:
    """Poll until ``total`` rows: rate between the first and the last row seen, and the CPU the consumer
    processes ``pids`` used over that span, per message (start-up and imports excluded)."""
    deadline = time.monotonic() + DEADLINE_S
    first_t = None
    n = 0
    cpu0 = 0.0
    while time.monotonic() < deadline:
        n = count()
        now = time.monotonic()
        if n > 0 and first_t is None:
            first_t, first_n = now, n
            cpu0 = sum(cpu_seconds(p) for p in pids or [])
        if n >= total:
            break
        time.sleep(0.05 if self_is_cheap(count) else 0.25)
    if n < total:
        raise SystemExit(f"only {n} of {total} rows after {DEADLINE_S} s")
    seconds = max(now - first_t, 1e-6)
    out = {"rows": n, "seconds": round(seconds, 2), "rate": round((n - first_n) / seconds)}
    if pids:
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        out["cpu_us_per_msg"] = round(cpu / max(n - first_n, 1) * 1e6, 1)
    return out


def check_monitor_rows(db: str, n_gateways: int, per: int) -> dict[str, int]:
    """Every device holds seq 1..per once: rows, lost, and devices whose rows are not exactly that."""
    sql = ("SELECT COUNT(*), COALESCE(SUM(lost), 0), COALESCE(SUM(CASE WHEN received = ? AND first_seq = 1 AND "
           "last_seq = ? THEN 0 ELSE 1 END), 0) FROM devices WHERE site <> 'probe'")
    if db.startswith("sqlite:///"):
        with sqlite3.connect(db[len("sqlite:///"):]) as c:
            devices, lost, bad = c.execute(sql, (per, per)).fetchone()
            rows = c.execute("SELECT COUNT(*) FROM scores WHERE site <> 'probe'").fetchone()[0]
    else:
        import psycopg

        with psycopg.connect(db) as c:
            devices, lost, bad = c.execute(sql.replace("?", "%s"), (per, per)).fetchone()
            rows = c.execute("SELECT COUNT(*) FROM scores WHERE site <> 'probe'").fetchone()[0]
    return {"rows": int(rows), "devices": int(devices), "lost": int(lost), "devices_not_exact": int(bad)}


def run_monitors(broker: Mosquitto, db: str, n_mon: int, args: argparse.Namespace, work: Path, tag: str) -> dict:
    """Pre-load every gateway's messages into the group's sessions, then let ``n_mon`` monitors drain them."""
    logs = [work / f"{tag}-m{i}.log" for i in range(n_mon)]
    ids = [f"bench-{tag}-{i}" for i in range(n_mon)]
    # Create the sessions (and the schema) once, stop, publish, start again: a drain of a full queue.
    subprocess.run(vibrawatch("fleet", "--db", db, "--json"), check=True, stdout=subprocess.DEVNULL)
    ms = [start_monitor(broker.port, db, ids[i], logs[i], tag) for i in range(n_mon)]
    for log in logs:
        wait_log(log, "subscribing to")
    for m in ms:
        stop(m)
    total = args.gateways * args.per_gateway
    publish_s = publish_all(broker.port, args.gateways, 1, args.per_gateway, args.publishers)
    t0 = time.monotonic()
    ms = [start_monitor(broker.port, db, ids[i], logs[i], tag) for i in range(n_mon)]
    res = drain(Counter(db, "scores"), total, [m.pid for m in ms])
    wall = time.monotonic() - t0
    for m in ms:
        stop(m)
    stored = [_stopped_counts(log) for log in logs]
    rows = check_monitor_rows(db, args.gateways, args.per_gateway)
    return {"monitors": n_mon, "messages": total, "publish_rate": round(total / publish_s), **res,
            "wall_incl_start_s": round(wall, 2), "per_monitor_stored": [s["stored"] for s in stored],
            "repeats_dropped": sum(s["repeats"] for s in stored), "lost": rows["lost"],
            "devices_not_exact": rows["devices_not_exact"], "rows_check": rows["rows"] == total}


def _stopped_counts(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace")
    line = [ln for ln in text.splitlines() if "stopped:" in ln][-1].split("stopped:", 1)[1]
    nums = [int(w) for w in line.replace(",", " ").split() if w.isdigit()]
    return {"received": nums[0], "stored": nums[1], "repeats": nums[2]}


def reference_subscriber(broker: Mosquitto, args: argparse.Namespace, work: Path) -> dict:
    """A bare paho QoS 1 subscriber (auto-ack) writing (topic, payload) batches to SQLite, in its own process."""
    path = work / "reference.db"
    cmd = [sys.executable, __file__, "--reference", str(broker.port), str(path)]
    subprocess.run([*cmd, "--session-only"], check=True)  # its persistent session, then publish into it
    total = args.gateways * args.per_gateway
    publish_all(broker.port, args.gateways, 1, args.per_gateway, args.publishers)
    proc = subprocess.Popen(cmd)
    res = drain(Counter(f"sqlite:///{path}", "messages"), total, [proc.pid])
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return {"messages": total, **res}


def reference_process(port: int, path: Path, session_only: bool) -> None:
    """The reference consumer: what a bare paho QoS 1 subscriber writing batches to SQLite costs."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS messages (topic TEXT, payload BLOB, received REAL)")
    lock, buf = threading.Lock(), []

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        with lock:
            buf.append((m.topic, m.payload, time.time()))

    def make() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-reference", protocol=mqtt.MQTTv311,
                        clean_session=False)
        c.on_message = on_message
        c.max_inflight_messages_set(65535)
        c.connect("127.0.0.1", port)
        c.subscribe("vibrawatch/v1/+/+/#", qos=1)
        return c

    if session_only:
        c = make()
        c.loop_start()
        time.sleep(0.5)
        c.disconnect()
        c.loop_stop()
        return
    stop_flag = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_flag.set())

    def writer() -> None:
        while not stop_flag.is_set():
            with lock:
                batch, buf[:] = list(buf), []
            if batch:
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO messages VALUES (?, ?, ?)", batch)
                conn.execute("COMMIT")
            else:
                time.sleep(0.005)

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    c = make()
    c.loop_start()
    stop_flag.wait(DEADLINE_S)
    w.join(timeout=30)
    c.disconnect()
    c.loop_stop()


def latency(broker: Mosquitto, db: str, args: argparse.Namespace, work: Path) -> dict:
    """The monitor running while the gateways publish live at ``--live-rate``; probes timed publish -> row."""
    log = work / "latency-m.log"
    m = start_monitor(broker.port, db, "bench-latency", log, "latency")
    wait_log(log, "subscribing to")
    first = args.per_gateway + 1
    per = max(1, int(args.live_rate * (args.live_seconds + 3) / args.gateways))  # lasts the whole probe run
    load = mp.Process(target=publish_all, args=(broker.port, args.gateways, first, per, args.publishers,
                                                args.live_rate))
    load.start()
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe", protocol=mqtt.MQTTv5)
    probe.connect("127.0.0.1", broker.port)
    probe.loop_start()
    conn = sqlite3.connect(db[len("sqlite:///"):], timeout=30)
    samples = []
    seq = 0
    time.sleep(2.0)  # let the load get going
    t_end = time.monotonic() + args.live_seconds
    while time.monotonic() < t_end:
        seq += 1
        sent = time.time()
        probe.publish("vibrawatch/v1/probe/p1/score", payload(seq, sent), qos=1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM scores WHERE site = 'probe' AND seq = ?", (seq,)).fetchone():
                samples.append(time.time() - sent)
                break
            time.sleep(0.002)
        time.sleep(0.02)
    load.join(timeout=DEADLINE_S)
    drain(Counter(db, "scores"), args.gateways * (args.per_gateway + per) + seq)
    probe.disconnect()
    probe.loop_stop()
    stop(m)
    samples.sort()
    q = statistics.quantiles(samples, n=100, method="inclusive") if len(samples) > 2 else [float("nan")] * 99
    load_rows = check_monitor_rows(db, args.gateways, args.per_gateway + per)
    return {"live_rate_target": args.live_rate, "live_messages": per * args.gateways, "lost": load_rows["lost"],
            "devices_not_exact": load_rows["devices_not_exact"], "probes": len(samples),
            "p50_ms": round(q[49] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1), "max_ms": round(max(samples) * 1000, 1) if samples else None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--per-gateway", type=int, default=100, help="messages each gateway publishes per drain run")
    ap.add_argument("--publishers", type=int, default=4, help="publisher processes (gateways spread over them)")
    ap.add_argument("--live-rate", type=float, default=2000.0, help="messages/s during the latency run")
    ap.add_argument("--live-seconds", type=float, default=12.0)
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--reference", nargs=2, metavar=("PORT", "DB"), help=argparse.SUPPRESS)
    ap.add_argument("--session-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        reference_process(int(args.reference[0]), Path(args.reference[1]), args.session_only)
        return
    work = Path(tempfile.mkdtemp(prefix="vibrawatch-bench-monitor-"))
    mosq = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    results: dict = {"machine": f"{platform.node()}: {os.cpu_count()} CPUs ({_cpu_model()}), Python "
                                f"{platform.python_version()}, {mosq}, load average at start "
                                f"{os.getloadavg()[0]:.1f}",
                     "gateways": args.gateways, "per_gateway": args.per_gateway}
    print(f"# {results['machine']}; work dir {work}", flush=True)
    broker = Mosquitto(work)
    pg = None
    try:
        results["reference_paho_sqlite"] = reference_subscriber(broker, args, work)
        print("reference", results["reference_paho_sqlite"], flush=True)
        results["monitor_sqlite_1"] = run_monitors(broker, f"sqlite:///{work / 'one.db'}", 1, args, work, "s1")
        print("monitor sqlite x1", results["monitor_sqlite_1"], flush=True)
        results["latency_sqlite"] = latency(broker, f"sqlite:///{work / 'one.db'}", args, work)
        print("latency", results["latency_sqlite"], flush=True)
        results["monitor_sqlite_2"] = run_monitors(broker, f"sqlite:///{work / 'two.db'}", 2, args, work, "s2")
        print("monitor sqlite x2", results["monitor_sqlite_2"], flush=True)
        if not args.skip_postgres:
            from postgres import Postgres, postgres_bin

            if postgres_bin() is None:
                print("PostgreSQL not installed: skipping its rows", flush=True)
            else:
                pg = Postgres().start()
                db1, db2 = pg.fresh_database("bench1"), pg.fresh_database("bench2")
                results["monitor_postgres_1"] = run_monitors(broker, db1, 1, args, work, "p1")
                print("monitor postgres x1", results["monitor_postgres_1"], flush=True)
                results["monitor_postgres_2"] = run_monitors(broker, db2, 2, args, work, "p2")
                print("monitor postgres x2", results["monitor_postgres_2"], flush=True)
    finally:
        broker.stop()
        if pg is not None:
            pg.remove()
    ref = results["reference_paho_sqlite"]["rate"]
    ref_cpu = results["reference_paho_sqlite"]["cpu_us_per_msg"]
    print("\n| run | monitors | messages | rate (msg/s) | vs bare paho+SQLite | CPU us/msg (all monitors) | "
          "vs bare | lost | not exact | repeats dropped |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| bare paho QoS 1 -> SQLite batches (reference) | 1 | {results['reference_paho_sqlite']['messages']} | "
          f"{ref} | 1.00 | {ref_cpu} | 1.00 | - | - | - |")
    for key, name in (("monitor_sqlite_1", "vibrawatch monitor -> SQLite"),
                      ("monitor_sqlite_2", "vibrawatch monitor -> SQLite"),
                      ("monitor_postgres_1", "vibrawatch monitor -> PostgreSQL"),
                      ("monitor_postgres_2", "vibrawatch monitor -> PostgreSQL")):
        if key in results:
            r = results[key]
            print(f"| {name} | {r['monitors']} | {r['messages']} | {r['rate']} | {r['rate'] / ref:.2f} | "
                  f"{r['cpu_us_per_msg']} | {r['cpu_us_per_msg'] / ref_cpu:.2f} | {r['lost']} | "
                  f"{r['devices_not_exact']} | {r['repeats_dropped']} |")
    lat = results["latency_sqlite"]
    print(f"\nlatency publish -> row visible (SQLite, one monitor, {lat['live_rate_target']:.0f} msg/s live load, "
          f"{lat['probes']} probes): p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
