"""``vibrawatch-agent run``: the gateway's service loop (and ``check``, what it verifies before it starts).

Load the config and verify the bundle, open the spool, connect, then: source -> pipeline -> publish, until
the source ends or a signal comes. SIGTERM (and SIGINT) stop reading, drain the spool to the broker for
up to ``drain_timeout_s`` and exit 0 (what is not drained stays in the spool for the next start). SIGHUP
reloads the config and the bundle at the next chunk. With ``NOTIFY_SOCKET`` set (systemd Type=notify) it
sends READY=1 after the first scored window and WATCHDOG=1 only while windows are being scored, so a
stalled sensor lets systemd's watchdog restart the service. One log line per event, no per-sample noise.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .allocator import keep_large_blocks
from .bundle import Bundle, load_bundle
from .config import AgentConfig, load_agent_config
from .pipeline import Pipeline, Scored, SensorStatus
from .publish import Publisher
from .source import Chunk, ReplaySource, SimulatorSource
from .spool import Spool
from .topics import topic, window_messages

log = logging.getLogger("vibrawatch.agent")


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) how the service is doing; silent when not run by systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())


def make_source(cfg: AgentConfig, stop: Any, publisher: Publisher | None = None,
                bundle: Bundle | None = None) -> Any:
    """The configured source (see agent.source); the MQTT one shares the publisher's connection."""
    s = cfg.source
    if s.kind == "replay":
        return ReplaySource(s.path or "", speed=s.speed, chunk=s.chunk, stop=stop)
    if s.kind == "simulator":
        from .simulate import BearingSimulator

        return SimulatorSource(BearingSimulator(n_snapshots=s.snapshots, seed=s.seed), s.speed, s.chunk, stop)
    if s.kind == "adxl345":
        from .adxl345 import ADXL345Source

        return ADXL345Source(bus=s.i2c_bus, address=s.i2c_address, range_g=s.range_g, chunk=s.chunk, stop=stop)
    from .mqtt_source import MqttSampleSource

    if publisher is None or bundle is None:
        raise ValueError("an MQTT samples source needs the publisher and the bundle")
    spec = bundle.detector.spec
    return MqttSampleSource(s.topic or "", publisher.subscribe, spec.fs_hz, spec.channels, stop=stop,
                            max_message_bytes=s.max_message_bytes)


class Agent:
    def __init__(self, config_path: str | Path) -> None:
        if not keep_large_blocks():
            log.info("allocator tuning not available here (not glibc, or 32-bit): features run slower")
        self.config_path = Path(config_path)
        self._stop = False
        self._reload = False
        self.cfg = load_agent_config(self.config_path)
        self.bundle = self._load_bundle()
        self.spool = Spool(self.cfg.agent.spool, int(self.cfg.agent.spool_max_mb * 1024 * 1024))

        self.publisher = Publisher(self.cfg, self.spool, self._birth())
        self._ready = False
        self._last_watchdog = 0.0

    def _load_bundle(self) -> Bundle:
        b = load_bundle(self.cfg.agent.bundle, self.cfg.agent.public_key)
        log.info("bundle %s verified (%s, signature %s), runtime %s", b.version, b.path,
                 "ok" if self.cfg.agent.public_key else "not configured", b.model.runtime)
        return b

    def _birth(self) -> dict[str, Any]:
        return {"agent": __version__, "model": self.bundle.version, "runtime": self.bundle.model.runtime,
                "numpy": np.__version__, "channels": list(self.bundle.detector.spec.channels)}

    def stop(self, *_: Any) -> None:
        self._stop = True

    def reload(self, *_: Any) -> None:
        self._reload = True

    def _apply_reload(self) -> Pipeline:
        self._reload = False
        try:
            cfg = load_agent_config(self.config_path)
            self.cfg = cfg
            self.bundle = self._load_bundle()
            self.publisher.birth = self._birth()
            self.publisher.set_status("online", event="reloaded")
            log.info("reloaded %s", self.config_path)
        except Exception as e:  # noqa: BLE001 - a bad reload must keep the running model, not stop the service
            log.error("reload failed, keeping the running config and bundle: %s", e)
        return Pipeline(self.bundle, self.cfg.source.full_scale)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, self.reload)
        self.publisher.start()
        pipeline = Pipeline(self.bundle, self.cfg.source.full_scale)
        source = make_source(self.cfg, lambda: self._stop or self._reload, self.publisher, self.bundle)
        log.info("scoring %s from %s; %d message(s) waiting in the spool", ",".join(self.bundle.detector.spec.channels),
                 self.cfg.source.kind, len(self.spool))
        windows = 0
        try:
            while not self._stop:
                for chunk in source.chunks():
                    windows += self._handle(pipeline, chunk)
                if self._reload and not self._stop:
                    pipeline = self._apply_reload()
                    source = make_source(self.cfg, lambda: self._stop or self._reload, self.publisher, self.bundle)
                    continue
                break
        finally:
            log.info("stopping after %d windows; draining %d spooled message(s)", windows, len(self.spool))
            drained = self.publisher.wait_drained(self.cfg.agent.drain_timeout_s)
            if not drained:
                log.warning("%d message(s) stay in the spool for the next start", len(self.spool))
            self.publisher.stop("stopped")
            self.spool.close()
        return 0

    def _handle(self, pipeline: Pipeline, chunk: Chunk) -> int:
        n = 0
        names = self.bundle.detector.spec.channels
        for ev in pipeline.process(chunk):
            if isinstance(ev, SensorStatus):
                if ev.reason is None:
                    log.info("sensor ok again")
                    self.publisher.set_status("online")
                else:
                    log.warning("sensor fault: %s (windows not scored)", ev.reason)
                    self.publisher.set_status("sensor", fault=ev.reason)
                continue
            n += 1
            self._publish(ev, names)
        if n:
            self._alive()
        return n

    def _publish(self, ev: Scored, names: tuple[str, ...]) -> None:
        b = self.bundle
        for kind, payload in window_messages(ev, names, b.detector.threshold, b.version):
            if kind == "alarm":
                log.warning("alarm %s: channel %s, score %.4g (level %.2f)", payload["event"], payload["channel"],
                            ev.score, ev.level)
            self.publisher.enqueue(kind, payload)

    def _alive(self) -> None:
        if not self._ready:
            sd_notify("READY=1")
            self._ready = True
            log.info("first window scored; ready")
        now = time.monotonic()
        if now - self._last_watchdog >= 1.0:
            sd_notify("WATCHDOG=1")
            self._last_watchdog = now


def check(config_path: str | Path) -> str:
    """Verify the config and the bundle as ``run`` does at start (nothing connects, nothing is scored);
    a summary of what would run, or a VibrawatchError saying what is wrong."""
    cfg = load_agent_config(config_path)
    b = load_bundle(cfg.agent.bundle, cfg.agent.public_key)
    spec = b.detector.spec
    signature = "verified" if cfg.agent.public_key else "not checked (no public_key in [agent])"
    return "\n".join([
        f"config   {config_path}: ok",
        f"bundle   {b.path}: {b.version}, checksums ok, signature {signature}, golden self-test ok",
        f"runtime  {b.model.runtime}",
        f"model    {len(spec.channels)} channel(s) {', '.join(spec.channels)} at {spec.fs_hz:g} Hz, "
        f"{spec.n_features} features, window {b.detector.window}, threshold {b.detector.threshold:.6g}",
        f"source   {cfg.source.kind}; broker {cfg.mqtt.host}:{cfg.mqtt.port} (tls {'on' if cfg.mqtt.tls else 'off'})",
        f"topics   {topic(cfg.agent.site, cfg.agent.device, '{score,alarm,status}')}",
    ])


def run(config_path: str | Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Agent(config_path).run()
