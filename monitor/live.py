"""The live path of `vibrawatch demo`: a broker, a simulated sensor node, the gateway agent, the monitor.

    sensor node --raw samples--> broker --> vibrawatch-agent run (bundle, TFLite) --scores, alarms--> broker
                                                                        --> monitor (store, page, alerts)

The broker is Mosquitto when one is installed, else an embedded amqtt (pure Python, MQTT 3.1.1: the agent
and the monitor fall back to 3.1.1 by themselves), so a fresh machine needs nothing but Python. The agent
runs as a gateway runs it, in its own process; the monitor runs in this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .config import load_monitor_config
from .service import Monitor

SITE, DEVICE = "demo", "machine1"
RAW_TOPIC = "sensors/demo/machine1/raw"


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def wait_listening(port: int, timeout_s: float) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` within ``timeout_s`` (a broker starting)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class LocalBroker:
    """Mosquitto on 127.0.0.1 if installed, else amqtt in a thread of this process. Either one's log goes to
    ``log_path`` (default: in ``workdir``), never to the console: amqtt logs a client that leaves without a word
    as an ERROR with a traceback, which is noise to someone watching the demo."""

    def __init__(self, workdir: Path, log_path: Path | None = None) -> None:
        self.workdir = workdir
        self.log_path = log_path or workdir / "broker.log"
        self.port = free_port()
        self.kind = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log_handler: logging.Handler | None = None
        self._amqtt: Any = None

    def start(self) -> LocalBroker:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary and not os.environ.get("VIBRAWATCH_DEMO_EMBEDDED_BROKER"):
            conf = self.workdir / "mosquitto.conf"
            user = "user root\n" if os.geteuid() == 0 else ""
            conf.write_text(f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                            f"log_dest file {self.log_path}\n")
            self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
            self.kind = "mosquitto"
            if wait_listening(self.port, 15):  # mosquitto takes a connection that closes unsaid quietly
                return self
        else:
            self.kind = "amqtt (embedded, MQTT 3.1.1)"
            if self._start_amqtt(15):
                return self
        raise RuntimeError(f"the {self.kind} broker did not start on 127.0.0.1:{self.port}; see {self.log_path}")

    @property
    def mqtt_311_only(self) -> bool:
        """amqtt speaks MQTT 3.1.1 only, and misreads an MQTT 5 CONNECT (a will's properties as its topic): the
        agent and the monitor speak 3.1.1 to it from the start rather than find out after keepalive seconds."""
        return self.kind.startswith("amqtt")

    def _start_amqtt(self, timeout_s: float) -> bool:
        """Start amqtt in a thread; whether it listens within ``timeout_s``. Known from its own start, not by a
        probe connection (amqtt logs one that closes without a CONNECT as an error)."""
        try:
            from amqtt.broker import Broker
        except ImportError:
            raise RuntimeError("no MQTT broker: install Mosquitto (apt-get install mosquitto) or "
                               "pip install amqtt") from None
        self._quiet_amqtt()
        cfg = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
               "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        loop = asyncio.new_event_loop()
        broker_log = logging.getLogger("amqtt")
        # An exception amqtt leaves to asyncio (a client gone mid-handshake: "Unhandled exception in
        # client_connected_cb ... OSError: [Errno 107]") goes to the broker's log, not to the console.
        loop.set_exception_handler(lambda _loop, ctx: broker_log.error(
            "%s", ctx.get("message"), exc_info=ctx.get("exception")))
        self._loop = loop
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._amqtt = Broker(cfg, loop=loop)
                loop.run_until_complete(self._amqtt.start())
            except Exception:  # noqa: BLE001 - said in the broker's log; start() says the broker did not start
                broker_log.exception("the embedded broker did not start")
                return
            started.set()
            loop.run_forever()

        threading.Thread(target=run, name="amqtt-broker", daemon=True).start()
        return started.wait(timeout_s)

    def _quiet_amqtt(self) -> None:
        """amqtt's loggers (and those of ``transitions``, its state machines) write to the broker's log only."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._log_handler = handler
        for name, level in (("amqtt", logging.INFO), ("transitions", logging.WARNING)):
            lg = logging.getLogger(name)
            lg.addHandler(handler)
            lg.setLevel(level)
            lg.propagate = False

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None
        if self._loop is not None:
            if self._amqtt is not None:  # its own shutdown: else its tasks die with the loop, and say so at exit
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._amqtt.shutdown(), self._loop).result(timeout=10)
                self._amqtt = None
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        if self._log_handler is not None:
            for name in ("amqtt", "transitions"):
                logging.getLogger(name).removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


def sample_messages(snapshots: Iterable[tuple[float, np.ndarray]], fs_hz: float, block: int,
                    anchor: float = 0.0) -> Iterable[bytes]:
    """docs/mqtt.md 'Raw samples in': blocks of at most ``block`` rows, ``t`` the time of each block's first row,
    plus ``anchor`` (a run without dates sent from now on, as a real sensor would: the page shows today's dates)."""
    for t0, data in snapshots:
        for i in range(0, len(data), block):
            rows = np.round(data[i:i + block].astype(np.float64), 6).tolist()
            yield json.dumps({"v": 1, "t": anchor + t0 + i / fs_hz, "fs_hz": fs_hz, "samples": rows},
                             separators=(",", ":")).encode()


class SensorNode:
    """A simulated sensor node: publishes raw samples (QoS 1) at a pace, in a thread."""

    def __init__(self, port: int, topic: str = RAW_TOPIC, protocol: int = mqtt.MQTTv311) -> None:
        self.topic = topic
        self.sent = 0
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sensor-node-{os.getpid()}", protocol=protocol)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, messages: Iterable[bytes], interval_s: float = 0.0) -> None:
        """Publish each message, waiting for the broker's acknowledgement, ``interval_s`` apart."""
        for m in messages:
            if self._stop.is_set():
                return
            self.c.publish(self.topic, m, qos=1).wait_for_publish(timeout=30)
            self.sent += 1
            if interval_s:
                self._stop.wait(interval_s)

    def start(self, messages: Iterable[bytes], interval_s: float, done: Callable[[], None] = lambda: None) -> None:
        def run() -> None:
            self.publish(messages, interval_s)
            done()

        self._thread = threading.Thread(target=run, name="sensor-node", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.c.disconnect()
        self.c.loop_stop()


def agent_config(path: Path, bundle: Path, public_key: Path | None, port: int, spool: Path,
                 mqtt_311: bool = False) -> Path:
    key = f'public_key = "{public_key}"\n' if public_key else ""
    protocol = 'protocol = "3.1.1"\n' if mqtt_311 else ""
    path.write_text(f'[agent]\nsite = "{SITE}"\ndevice = "{DEVICE}"\nbundle = "{bundle}"\n{key}spool = "{spool}"\n\n'
                    f'[source]\nkind = "mqtt"\ntopic = "{RAW_TOPIC}"\n\n'
                    f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive = 5\nmax_backoff_s = 2\n{protocol}')
    return path


def run_live(out: Path, bundle: Path, public_key: Path | None, messages: Iterable[bytes], interval_s: float,
             seconds: float | None, echo: Callable[[str], None], http_port: int = 8080,
             until_alarm: bool = False, anchor: float = 0.0) -> dict[str, object]:
    """Broker, monitor, agent and sensor node until ``seconds`` have passed (None: until Ctrl-C; with
    ``until_alarm``, also once the first alarm is stored); a summary. ``anchor``: what ``sample_messages`` added
    to the run's own times (the summary keeps it, the alarm line counts from it)."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vibrawatch-live-"))
    broker = LocalBroker(work, out / "broker.log").start()
    db = out / "fleet.db"
    cfg = load_monitor_config(None, broker=f"mqtt://127.0.0.1:{broker.port}", db=f"sqlite:///{db.resolve()}",
                              http=f"127.0.0.1:{free_port(http_port)}", client_id="vibrawatch-demo-monitor",
                              min_silent_s=30.0)
    cfg = replace(cfg, mqtt=replace(cfg.mqtt, keepalive=5))
    monitor = Monitor(cfg)
    if broker.mqtt_311_only:
        monitor.ingest.speak_311()
    agent = node = log = None
    summary: dict[str, object] = {"broker": broker.kind, "page": monitor.url, "first_alarm": None, "anchor": anchor}
    runner = threading.Thread(target=monitor.run, name="monitor", daemon=True)
    try:
        runner.start()
        echo(f"    broker: {broker.kind} on 127.0.0.1:{broker.port}")
        echo(f"    page: {monitor.url}  (fleet table; the device page shows score, threshold and alarms)")
        conf = agent_config(out / "agent.toml", bundle.resolve(), public_key.resolve() if public_key else None,
                            broker.port, (out / "spool.sqlite").resolve(), mqtt_311=broker.mqtt_311_only)
        script = Path(sys.executable).with_name("vibrawatch-agent")
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "vibrawatch.agent.cli"]
        log = open(out / "agent.log", "wb")  # noqa: SIM115 - closed below, after the agent
        agent = subprocess.Popen([*cmd, "run", "--config", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        echo(f"    agent: vibrawatch-agent run --config {conf} (log {out / 'agent.log'})")
        _wait_online(monitor, agent, 60 if "amqtt" not in broker.kind else 90)
        node = SensorNode(broker.port)
        finished = threading.Event()
        node.start(messages, interval_s, done=finished.set)
        echo(f"    sensor node publishing raw samples on {RAW_TOPIC}"
             + (f"; running for {seconds:g} s" if seconds else "; Ctrl-C to stop"))
        deadline = None if seconds is None else time.monotonic() + seconds
        announced_end = False
        while deadline is None or time.monotonic() < deadline:
            if summary["first_alarm"] is None:
                raised = monitor.store.query("SELECT ts, channel, level, t FROM alarms WHERE event = 'raised' "
                                             "ORDER BY seq LIMIT 1")
                if raised:
                    a = raised[0]
                    summary["first_alarm"] = a
                    into = a["t"] - anchor  # the run's own time, dated or counted from 0
                    when = f"+{into / 3600:.3f}h into the run ({a['ts']})" if into < 1e9 else a["ts"]
                    echo(f"    ALARM raised on {SITE}/{DEVICE}: channel {a['channel']}, level {a['level']:.2f}, "
                         f"{when}  -> {monitor.url}device?site={SITE}&device={DEVICE}")
                    if until_alarm:
                        break
            if finished.is_set() and not announced_end:
                announced_end = True
                echo(f"    the sensor node has sent the whole run ({node.sent} messages); the page keeps serving")
            if agent.poll() is not None:
                echo(f"    the agent stopped (exit {agent.returncode}); see {out / 'agent.log'}")
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        echo("    stopping")
    finally:
        if node is not None:
            node.stop()
        if agent is not None and agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                agent.kill()
        if log is not None:
            log.close()
        counts = monitor.store.counts()
        rows = monitor.store.devices()
        monitor.stop_event.set()  # its run() stops ingest, page and alerts
        runner.join(timeout=30)
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary.update(scores=counts["scores"], alarms=counts["alarms"], dead_letters=counts["dead_letters"],
                   lost=sum(r["lost"] or 0 for r in rows), db=str(db))
    return summary


def _wait_online(monitor: Monitor, agent: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the agent's retained 'online' status reached the monitor (so it is subscribed to raw samples)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            return
        if monitor.store.query("SELECT 1 AS x FROM devices WHERE state = 'online'"):
            time.sleep(0.5)  # its samples subscription goes out just after the status
            return
        time.sleep(0.2)
