"""Fleet monitor benchmark: 1,000 simulated gateways publishing scores through one Mosquitto, on loopback.

    .venv/bin/python bench/monitor.py [--gateways 1000] [--per-gateway 100] [--pairs 3] [--skip-postgres]
                                      [--live-rate 1000,2000,5000] [--latency-only] [--json FILE]

What it measures, each in the same run, on the same broker and the same messages:
- ingest rate of one `vibrawatch monitor` process into SQLite: the messages are published while the monitor
  is stopped (they wait in its persistent session), then the monitor starts and drains them: rate = messages
  / (last row stored - first row stored), schema-validated, batched, acknowledged after each commit;
- the reference: a bare paho QoS 1 subscriber writing (topic, payload) batches to SQLite, no validation, no
  state, the same drain; reference and one monitor alternate ``--pairs`` times, each pair's ratio reported;
- CPU per message of every consumer: its whole life's user + system time (all threads, from ``wait4``)
  draining, minus the same consumer's whole life with nothing to drain, over the messages; and, per drain,
  the broker's and PostgreSQL's CPU seconds and how busy the whole machine was (/proc);
- two monitor processes in one shared-subscription group into one SQLite file; then the same into PostgreSQL
  (a throwaway cluster, as in the tests) with one and with two monitors;
- end-to-end latency with the monitor running while the gateways publish live at each ``--live-rate``: a probe
  message every 20 ms carries its publish time; the bench polls the database for it (publish -> row
  visible), p50/p99;
- after every run: rows == messages published, every device's seq 1..N present once (0 lost, 0 duplicated).

At the end each target (>= 10,000 msg/s into SQLite, CPU per message <= 1.15x the reference, p99 <= 1 s) is
printed as met or MISSED; a run that lost, duplicated or misplaced a message makes the bench exit 1.

Gateways are real MQTT connections (1,000 client ids, QoS 1, each message acknowledged by the broker),
spread over a few publisher processes. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
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

from vibrawatch.agent.link.topics import encode, score_payload  # noqa: E402

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


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
    """SIGTERM, wait for the exit; the CPU seconds (user + system, every thread) the process used in its life."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            deadline = time.monotonic() + 30
        time.sleep(0.02)


def wait_log(log: Path, text: str, n: int = 1) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count(text) >= n:
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {text!r} in {log}:\n{log.read_text(errors='replace')[-2000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used (Linux /proc), children not included; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its direct children, live or ended (PostgreSQL: the postmaster and its backends)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # its own and its ended children's
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks[:8]) - idle) / hz, sum(ticks[:8]) / hz


class Others:
    """CPU the broker, the database server and the whole machine spend over a span (who else wants the cores)."""

    def __init__(self, broker_pid: int, db_pid: int | None) -> None:
        self.broker_pid, self.db_pid = broker_pid, db_pid
        self.start = self._now()

    def _now(self) -> tuple[float, float, float, float]:
        busy, total = machine_busy()
        return (cpu_seconds(self.broker_pid), tree_cpu_seconds(self.db_pid) if self.db_pid else 0.0, busy, total)

    def since(self) -> dict[str, float]:
        end = self._now()
        broker, db, busy, total = (b - a for a, b in zip(self.start, end, strict=True))
        out = {"broker_cpu_s": round(broker, 2), "machine_busy": round(busy / max(total, 1e-9), 2)}
        if self.db_pid:
            out["db_cpu_s"] = round(db, 2)
        return out


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


def drain(count: Counter, total: int) -> dict[str, float]:
    """Poll until ``total`` rows: the rate between the first and the last row seen."""
    deadline = time.monotonic() + DEADLINE_S
    first_t = None
    n = 0
    while time.monotonic() < deadline:
        n = count()
        now = time.monotonic()
        if n > 0 and first_t is None:
            first_t, first_n = now, n
        if n >= total:
            break
        time.sleep(0.05 if self_is_cheap(count) else 0.25)
    if n < total:
        raise SystemExit(f"only {n} of {total} rows after {DEADLINE_S} s")
    seconds = max(now - first_t, 1e-6)
    return {"rows": n, "seconds": round(seconds, 2), "rate": round((n - first_n) / seconds)}


def per_message(drain_cpu: float, idle_cpu: float, messages: int) -> float:
    """CPU microseconds per message: a consumer's whole life draining ``messages`` minus the same consumer's
    whole life with nothing to drain (start-up, imports, connect, stop), so neither start-up nor when the
    first row became visible enters the figure, and the other engineers' load on the cores only as much as
    it slows the same work (caches, the scheduler)."""
    return round((drain_cpu - idle_cpu) / messages * 1e6, 1)


def end_session(port: int, client_id: str) -> None:
    """Connect once with a clean start and go: the broker drops the session and stops queueing for it (a
    stopped consumer's persistent session would otherwise collect every later run's messages)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port, clean_start=True)
    c.loop_start()
    deadline = time.monotonic() + 10
    while not c.is_connected() and time.monotonic() < deadline:
        time.sleep(0.02)
    c.disconnect()
    c.loop_stop()


def median_run(runs: list[dict]) -> dict:
    """The run with the median CPU per message (the table's row; every run is in the JSON)."""
    return sorted(runs, key=lambda r: r["cpu_us_per_msg"])[len(runs) // 2]


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


def run_monitors(broker: Mosquitto, db: str, n_mon: int, args: argparse.Namespace, work: Path, tag: str,
                 db_pid: int | None = None) -> dict:
    """Pre-load every gateway's messages into the group's sessions, then let ``n_mon`` monitors drain them."""
    logs = [work / f"{tag}-m{i}.log" for i in range(n_mon)]
    ids = [f"bench-{tag}-{i}" for i in range(n_mon)]
    # Create the sessions (and the schema) once, stop, publish, start again: a drain of a full queue. The
    # first start, with nothing to drain, is also the idle CPU subtracted from the drain's.
    subprocess.run(vibrawatch("fleet", "--db", db, "--json"), check=True, stdout=subprocess.DEVNULL)
    ms = [start_monitor(broker.port, db, ids[i], logs[i], tag) for i in range(n_mon)]
    for log in logs:
        wait_log(log, "subscribing to")
    idle = [stop(m) for m in ms]
    total = args.gateways * args.per_gateway
    publish_s = publish_all(broker.port, args.gateways, 1, args.per_gateway, args.publishers)
    t0 = time.monotonic()
    others = Others(broker.proc.pid, db_pid)
    ms = [start_monitor(broker.port, db, ids[i], logs[i], tag) for i in range(n_mon)]
    res = drain(Counter(db, "scores"), total)
    load = others.since()
    wall = time.monotonic() - t0
    cpu = [stop(m) for m in ms]
    for client_id in ids:
        end_session(broker.port, client_id)
    stored = [_stopped_counts(log) for log in logs]
    rows = check_monitor_rows(db, args.gateways, args.per_gateway)
    return {"monitors": n_mon, "messages": total, "publish_rate": round(total / publish_s), **res,
            "cpu_us_per_msg": per_message(sum(cpu), sum(idle), total),
            "cpu_s_per_monitor": [round(c - i, 2) for c, i in zip(cpu, idle, strict=True)], **load,
            "wall_incl_start_s": round(wall, 2), "per_monitor_stored": [s["stored"] for s in stored],
            "repeats_dropped": sum(s["repeats"] for s in stored), "lost": rows["lost"],
            "devices_not_exact": rows["devices_not_exact"], "rows_check": rows["rows"] == total}


def _stopped_counts(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace")
    line = [ln for ln in text.splitlines() if "stopped:" in ln][-1].split("stopped:", 1)[1]
    nums = [int(w) for w in line.replace(",", " ").split() if w.isdigit()]
    return {"received": nums[0], "stored": nums[1], "repeats": nums[2]}


def reference_subscriber(broker: Mosquitto, args: argparse.Namespace, work: Path, tag: str = "") -> dict:
    """A bare paho QoS 1 subscriber (auto-ack) writing (topic, payload) batches to SQLite, in its own process."""
    path = work / f"reference{tag}.db"
    client_id = f"bench-reference{tag}"
    cmd = [sys.executable, __file__, "--reference", str(broker.port), str(path), client_id]
    proc = subprocess.Popen(cmd)  # its persistent session; also its idle CPU (nothing queued yet)
    time.sleep(2.0)
    idle = stop(proc)
    total = args.gateways * args.per_gateway
    publish_all(broker.port, args.gateways, 1, args.per_gateway, args.publishers)
    others = Others(broker.proc.pid, None)
    proc = subprocess.Popen(cmd)
    res = drain(Counter(f"sqlite:///{path}", "messages"), total)
    load = others.since()
    cpu = stop(proc)
    end_session(broker.port, client_id)
    return {"messages": total, **res, "cpu_us_per_msg": per_message(cpu, idle, total), "cpu_s": round(cpu - idle, 2),
            **load}


def reference_process(port: int, path: Path, client_id: str) -> None:
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
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                        clean_session=False)
        c.on_message = on_message
        c.max_inflight_messages_set(65535)
        c.connect("127.0.0.1", port)
        c.subscribe("vibrawatch/v1/+/+/#", qos=1)
        return c

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


def _timed_publish_all(done: mp.Queue, *args: object) -> None:
    done.put(publish_all(*args))  # type: ignore[arg-type]


def latency(broker: Mosquitto, db: str, args: argparse.Namespace, work: Path, live_rate: float) -> dict:
    """The monitor running while the gateways publish live at ``live_rate``; a probe every 20 ms carries its
    publish time, and the database is polled for every probe (publish -> row visible), whether or not the
    monitor keeps up. ``db`` is a fresh database: every gateway's seq starts at 1 in it."""
    log = work / f"latency-{live_rate:.0f}-m.log"
    m = start_monitor(broker.port, db, "bench-latency", log, "latency")
    wait_log(log, "subscribing to")
    per = max(1, int(live_rate * (args.live_seconds + 3) / args.gateways))  # lasts the whole probe run
    took: mp.Queue = mp.Queue()
    load = mp.Process(target=_timed_publish_all, args=(took, broker.port, args.gateways, 1, per, args.publishers,
                                                       live_rate))
    load.start()
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe", protocol=mqtt.MQTTv5)
    probe.connect("127.0.0.1", broker.port)
    probe.loop_start()
    conn = sqlite3.connect(db[len("sqlite:///"):], timeout=30)
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}

    def poll() -> None:
        with contextlib.suppress(sqlite3.OperationalError):  # the table not created yet
            for (q,) in conn.execute("SELECT seq FROM scores WHERE site = 'probe'").fetchall():
                seen.setdefault(q, time.time())

    time.sleep(2.0)  # let the load get going
    t_end = time.monotonic() + args.live_seconds
    next_probe = time.monotonic()
    while time.monotonic() < t_end:
        if time.monotonic() >= next_probe:
            seq = len(sent) + 1
            sent[seq] = time.time()
            probe.publish("vibrawatch/v1/probe/p1/score", payload(seq, sent[seq]), qos=1)
            next_probe += 0.02
        poll()
        time.sleep(0.005)
    deadline = time.monotonic() + 120
    while len(seen) < len(sent) and time.monotonic() < deadline:
        poll()
        time.sleep(0.01)
    load.join(timeout=DEADLINE_S)
    publish_s = took.get(timeout=10) if not took.empty() else None  # None: the load process died
    drain(Counter(db, "scores"), args.gateways * per + len(sent))
    probe.disconnect()
    probe.loop_stop()
    stop(m)
    end_session(broker.port, "bench-latency")
    samples = sorted(seen[q] - sent[q] for q in seen if q in sent)
    q = statistics.quantiles(samples, n=100, method="inclusive") if len(samples) > 2 else [float("nan")] * 99
    load_rows = check_monitor_rows(db, args.gateways, per)
    return {"live_rate_target": live_rate,
            "live_rate_achieved": round(per * args.gateways / publish_s) if publish_s else None,
            "live_messages": per * args.gateways, "lost": load_rows["lost"],
            "devices_not_exact": load_rows["devices_not_exact"], "probes": len(sent), "probes_seen": len(samples),
            "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
            "max_ms": round(max(samples) * 1000, 1) if samples else None}


def latency_runs(broker: Mosquitto, args: argparse.Namespace, work: Path) -> list[dict]:
    """One latency run per ``--live-rate``, each into a fresh database."""
    runs = []
    for i, rate in enumerate(args.live_rate):
        runs.append(latency(broker, f"sqlite:///{work / f'lat-{i}.db'}", args, work, rate))
        print("latency", runs[-1], flush=True)
    return runs


def latency_wrong(lats: list[dict]) -> list[str]:
    """What went wrong with the data of the latency runs (their load's messages lost or misplaced)."""
    return [f"latency at {lat['live_rate_target']:.0f} msg/s: {lat['lost']} lost, {lat['devices_not_exact']} "
            "devices not exactly 1..N" for lat in lats if lat["lost"] or lat["devices_not_exact"]]


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
    ap.add_argument("--live-rate", type=lambda v: [float(x) for x in v.split(",")], default=[1000.0, 2000.0, 5000.0],
                    help="messages/s of live load during the latency runs, one run per rate (default 1000,2000,5000: "
                    "1,000 gateways scoring a window a second publish 1,000 msg/s)")
    ap.add_argument("--live-seconds", type=float, default=12.0)
    ap.add_argument("--pairs", type=int, default=3, help="reference and one monitor into SQLite, alternated this "
                    "many times (the CPU ratio of each pair is reported, and their median)")
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--latency-only", action="store_true", help="only the latency runs (no drains, no targets); "
                    "exits 1 if one lost or misplaced a message")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--reference", nargs=3, metavar=("PORT", "DB", "CLIENT_ID"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        reference_process(int(args.reference[0]), Path(args.reference[1]), args.reference[2])
        return
    work = Path(tempfile.mkdtemp(prefix="vibrawatch-bench-monitor-"))
    mosq = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    results: dict = {"machine": f"{platform.node()}: {os.cpu_count()} CPUs ({_cpu_model()}), Python "
                                f"{platform.python_version()}, {mosq}, load average at start "
                                f"{os.getloadavg()[0]:.1f}",
                     "gateways": args.gateways, "per_gateway": args.per_gateway}
    print(f"# {results['machine']}; work dir {work}", flush=True)
    broker = Mosquitto(work)
    if args.latency_only:
        try:
            lats = latency_runs(broker, args, work)
        finally:
            broker.stop()
        for lat in lats:
            print_latency(lat)
        sys.exit(1 if latency_wrong(lats) else 0)
    pg = None
    try:
        refs, mons = [], []
        for i in range(max(args.pairs, 1)):  # alternated: both see the same neighbours' load, pair by pair
            refs.append(reference_subscriber(broker, args, work, f"-{i}"))
            print("reference", refs[-1], flush=True)
            mons.append(run_monitors(broker, f"sqlite:///{work / f'one-{i}.db'}", 1, args, work, f"s1-{i}"))
            print("monitor sqlite x1", mons[-1], flush=True)
            print(f"pair {i + 1}: CPU per message, monitor / reference = "
                  f"{mons[-1]['cpu_us_per_msg'] / refs[-1]['cpu_us_per_msg']:.2f}", flush=True)
        results["pairs"] = [{"reference": r, "monitor": m,
                             "cpu_ratio": round(m["cpu_us_per_msg"] / r["cpu_us_per_msg"], 3)}
                            for r, m in zip(refs, mons, strict=True)]
        results["reference_paho_sqlite"] = median_run(refs)
        results["monitor_sqlite_1"] = median_run(mons)
        results["latency_sqlite"] = latency_runs(broker, args, work)
        results["monitor_sqlite_2"] = run_monitors(broker, f"sqlite:///{work / 'two.db'}", 2, args, work, "s2")
        print("monitor sqlite x2", results["monitor_sqlite_2"], flush=True)
        if not args.skip_postgres:
            from postgres import Postgres, postgres_bin

            if postgres_bin() is None:
                print("PostgreSQL not installed: skipping its rows", flush=True)
            else:
                pg = Postgres().start()
                db1, db2 = pg.fresh_database("bench1"), pg.fresh_database("bench2")
                pg_pid = int((pg.data / "postmaster.pid").read_text().split()[0])
                results["monitor_postgres_1"] = run_monitors(broker, db1, 1, args, work, "p1", pg_pid)
                print("monitor postgres x1", results["monitor_postgres_1"], flush=True)
                results["monitor_postgres_2"] = run_monitors(broker, db2, 2, args, work, "p2", pg_pid)
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
    ratios = [p["cpu_ratio"] for p in results["pairs"]]
    print(f"\nCPU per message, monitor / reference, pair by pair: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.2f})")
    print("\nwho used the cores during each drain (CPU seconds; machine busy = share of all cores):")
    for key in ("reference_paho_sqlite", "monitor_sqlite_1", "monitor_sqlite_2", "monitor_postgres_1",
                "monitor_postgres_2"):
        if key in results:
            r = results[key]
            mine = r.get("cpu_s_per_monitor", [r.get("cpu_s")])
            print(f"  {key}: consumer(s) {mine}, broker {r['broker_cpu_s']}, database server "
                  f"{r.get('db_cpu_s', '-')}, drain {r['seconds']} s, machine busy {r['machine_busy']:.0%}")
    for key in ("monitor_sqlite_2", "monitor_postgres_2"):
        if key in results:
            print(f"  {key}: messages stored by each monitor of the group {results[key]['per_monitor_stored']}")
    for lat in results["latency_sqlite"]:
        print_latency(lat)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    wrong = verdict(results)
    sys.exit(1 if wrong else 0)


def print_latency(lat: dict) -> None:
    print(f"\nlatency publish -> row visible (SQLite, one monitor, {lat['live_rate_target']:.0f} msg/s live "
          f"load asked, {lat['live_rate_achieved']} msg/s published, {lat['probes_seen']} of {lat['probes']} "
          f"probes seen): p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms"
          f"; lost {lat['lost']}, not exact {lat['devices_not_exact']}", flush=True)


def verdict(results: dict) -> list[str]:
    """Print each target against what was measured; what went wrong with the data (lost, duplicated, rows not
    as published) makes the bench exit 1, a missed target is said."""
    runs = [k for k in ("monitor_sqlite_1", "monitor_sqlite_2", "monitor_postgres_1", "monitor_postgres_2")
            if k in results]
    wrong = [f"{k}: {results[k]['lost']} lost, {results[k]['devices_not_exact']} devices not exactly 1..N"
             for k in runs if results[k]["lost"] or results[k]["devices_not_exact"] or not results[k]["rows_check"]]
    wrong += latency_wrong(results["latency_sqlite"])
    ratio = statistics.median(p["cpu_ratio"] for p in results["pairs"])
    targets = [(">= 10,000 msg/s into SQLite, one monitor", results["monitor_sqlite_1"]["rate"] >= 10_000,
                f"{results['monitor_sqlite_1']['rate']} msg/s"),
               ("CPU per message <= 1.15x the bare subscriber (median of pairs)", ratio <= 1.15, f"{ratio:.2f}x"),
               *((f"p99 <= 1 s at {lat['live_rate_target']:.0f} msg/s live", lat["p99_ms"] <= 1000,
                  f"{lat['p99_ms']} ms") for lat in results["latency_sqlite"])]
    print()
    for what, ok, got in targets:
        print(f"target {what}: {'met' if ok else 'MISSED'} ({got})")
    for w in wrong:
        print(f"WRONG: {w}")
    print("0 lost, 0 duplicated in every run" if not wrong else "data went wrong: exit 1")
    return wrong


if __name__ == "__main__":
    main()
