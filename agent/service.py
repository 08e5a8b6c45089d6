"""``vibrawatch-agent run``: the gateway's service loop (and ``check``, what it verifies before it starts).

Load the config, verify the bundle, open the source and check that it fits the bundle (kind of input,
channels, sample rate), open the spool, connect, then: source -> pipeline -> publish, until the source
ends or a signal comes. The source runs in its own thread (``SourceReader``) and the loop waits for its
chunks with a short timeout, so signals are answered within a fraction of a second whatever the source is
waiting for (a real-time replay sleeps 10 minutes between IMS snapshots).

- SIGTERM (and SIGINT) stop reading, drain the spool to the broker for up to ``drain_timeout_s`` and exit
  0 (what is not drained stays in the spool for the next start).
- SIGHUP reloads the config and the bundle, all or nothing (``Agent.apply``): the config, the bundle, the
  source and the publisher's settings (broker, TLS, credentials, site, device) change together, or nothing
  changes and the log and the retained status (``event: reload_failed``, ``error``) say why. An unchanged
  source keeps running (a replay does not start again); a replay whose pace changed resumes where it was.
- An exception in the loop is a crash: the retained status says ``offline``, reason ``crashed``, with the
  error's one line, and the process exits 1 (systemd's Restart=on-failure restarts it); the last will
  (``connection lost``) stays for a process that vanished without a word.
- With ``[commissioning]`` (agent/model/commission.py) every scored window goes through the commissioning (the
  pipeline's ``Decider`` calls it), whichever detector the bundle uses, and the pipeline decides with the
  detector it holds (this machine's once commissioned); every ``Agent.apply`` (SIGHUP, a deploy's apply or
  rollback) saves the running commissioning and reopens it for the new bundle: another bundle version starts
  a new one.

With ``NOTIFY_SOCKET`` set (systemd Type=notify) it sends READY=1 after the first scored window and
WATCHDOG=1 only while windows are being scored, so a stalled sensor lets systemd's watchdog restart the
service. One log line per event, no per-sample noise. State the agent creates (the spool and its
directory) is owner-only: the process runs with umask 077.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import AgentConfig, load_agent_config
from .detect.detector import Detector
from .detect.results import Scored, SensorStatus
from .errors import ConfigError, VibrawatchError
from .link.publish import Publisher
from .link.spool import Spool
from .link.topics import topic, window_messages
from .model.bundle import Bundle, load_bundle
from .model.commission import Commissioning, describe, open_commissioning, status
from .model.deploy import Deployer, bundle_path
from .pipeline import Pipeline
from .sources.allocator import keep_large_blocks
from .sources.registry import source_class
from .sources.sensor_check import two_rates
from .sources.source import Chunk, Source, SourceContext

log = logging.getLogger("vibrawatch.agent")

_POLL_S = 0.1  # the loop's longest wait for a chunk before it looks at the signal flags again
PACE_ONLY = frozenset({"speed", "chunk", "full_scale"})  # settings a replay can change and resume where it was


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


def one_line(e: BaseException) -> str:
    """An error as one status-sized line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300].rstrip(": ")


def fit_problem(kind: str, source: Source, bundle: Bundle) -> str | None:
    """Why this source cannot feed this bundle's model (None if it can): the kind of input, the channel
    count and the sample rate must match, or the model would score the wrong thing without a word."""
    spec = bundle.detector.spec
    if spec.input == "table" and source.provides != "table":
        return (f"source {kind} gives raw samples at {two_rates(source.fs_hz, 1)[0]} Hz, but bundle {bundle.version} "
                f"was trained on a feature table (one row of {spec.n_features} features per snapshot): it would "
                "score raw samples as features; train on raw samples, or replay a feature table")
    if spec.input != "table" and source.provides == "table":
        return (f"source {kind} gives rows of a feature table, but bundle {bundle.version} computes its features from "
                f"raw samples at {two_rates(spec.fs_hz, 1)[0]} Hz; replay raw samples (.npz, an IMS directory)")
    if len(source.channels) != len(spec.channels):
        return (f"source {kind} has {len(source.channels)} channel(s) ({', '.join(source.channels)}), bundle "
                f"{bundle.version} expects {len(spec.channels)} ({', '.join(spec.channels)})")
    if spec.input != "table" and abs(source.fs_hz - spec.fs_hz) > 1e-6 * spec.fs_hz:
        got, want = two_rates(source.fs_hz, spec.fs_hz)
        return (f"source {kind} samples at {got} Hz, bundle {bundle.version} expects {want} Hz (its features.fs_hz); "
                "set the source's rate or use a bundle trained at this rate")
    return None


class _End:
    """The source has no more chunks."""


END = _End()


class SourceReader:
    """A source's ``chunks()`` in its own thread, handed over through a short queue.

    Why a thread: the agent's loop then waits at most ``_POLL_S`` for a chunk before it looks at its
    signal flags, whatever the source waits for (a pacer's sleep, an idle MQTT topic, the I2C bus), and a
    reload does not disturb a running source at all. The source waits with ``halt.wait``, so ``close``
    ends even a 10-minute pacer sleep at once. An exception in the source reaches the loop from ``get``.
    """

    def __init__(self, kind: str, depth: int = 4) -> None:
        self.kind = kind
        self.halt = threading.Event()
        self.source: Any = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"vibrawatch-source-{self.kind}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        chunks = self.source.chunks()
        try:
            for chunk in chunks:
                if not self._put(chunk):
                    return
            self._put(END)
        except BaseException as e:  # noqa: BLE001 - handed to the agent's loop, which reports it as a crash
            self._put(e)
        finally:
            chunks.close()  # a source's own cleanup (the ADXL345 back to standby) runs in this thread

    def _put(self, item: Any) -> bool:
        while not self.halt.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float) -> Chunk | _End | None:
        """The next chunk, END, or None if none came within ``timeout``; re-raises the source's exception."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, timeout: float = 1.0) -> None:
        """Stop the source; wait up to ``timeout`` for its thread (a daemon: it never holds up the exit)."""
        self.halt.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("source %s did not stop within %.1f s (blocked in a read?)", self.kind, timeout)


def open_source(cfg: AgentConfig, bundle: Bundle, subscribe: Callable[[str, Callable[[bytes], None]], None],
                start_at: float | None = None) -> SourceReader:
    """The configured source (not started) in its reader, checked against the bundle: a ConfigError naming
    the config file when it does not fit."""
    spec = bundle.detector.spec
    reader = SourceReader(cfg.source.kind)
    ctx = SourceContext(stop=reader.halt.is_set, sleep=reader.halt.wait, subscribe=subscribe, fs_hz=spec.fs_hz,
                        channels=tuple(spec.channels), start_at=start_at)
    try:
        reader.source = source_class(cfg.source.kind).open(cfg.source.resolved(), ctx)
    except ConfigError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None
    problem = fit_problem(cfg.source.kind, reader.source, bundle)
    if problem:
        raise ConfigError(f"{cfg.path}: [source] does not fit the bundle {bundle.path}: {problem}")
    return reader


def _file_bytes(path: str | None) -> bytes:
    try:
        return Path(path).read_bytes() if path else b""
    except OSError:
        return b""  # the publisher's own check says what is wrong with it


@dataclass
class _Plan:
    """Everything a config and bundle need, built before anything running is touched (see ``Agent.apply``)."""

    cfg: AgentConfig
    bundle: Bundle
    reader: SourceReader  # the running one when it can stay
    publisher: Publisher  # the running one when its settings did not change
    publisher_key: str
    pipeline: Pipeline
    routes: dict[str, Callable[[bytes], None]]


class Agent:
    def __init__(self, config_path: str | Path) -> None:
        if not keep_large_blocks():
            log.info("allocator tuning not available here (not glibc, or 32-bit): features run slower")
        self.config_path = Path(config_path)
        self._stop = False
        self._reload = False
        signal.signal(signal.SIGTERM, self.stop)  # from the start: a stop while the bundle loads is still clean
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, self.reload)
        self._ready = False
        self._last_watchdog = 0.0
        self._resume_t: float | None = None  # data time just after the last chunk scored
        self._routes: dict[str, Callable[[bytes], None]] = {}  # MQTT topic -> the current source's handler
        self._subscribed: set[str] = set()  # topics the current publisher subscribes for us
        self.reader: SourceReader | None = None
        self.publisher: Publisher | None = None
        self.publisher_key = ""
        self.pipeline: Pipeline | None = None
        self.commission: Commissioning | None = None  # opened by each _commit: a new bundle version starts over
        cfg = load_agent_config(self.config_path)
        self.deploy = Deployer(cfg, self._deploy_report, lambda b: self.apply(self.cfg, b)) if cfg.deploy.enabled \
            else None  # model deploys over MQTT (agent/model/deploy.py): it calls apply() with a verified bundle
        bundle = self.deploy.open_bundle(lambda p: self._load_bundle(cfg, p)) if self.deploy else self._load_bundle(cfg)
        self.cfg, self.bundle = cfg, bundle
        self.spool = Spool(cfg.agent.spool, int(cfg.agent.spool_max_mb * 1024 * 1024))
        _owner_only(Path(cfg.agent.spool))
        self._first = self._prepare(cfg, bundle)  # a source that does not fit the bundle stops us here (exit 2)

    @staticmethod
    def _load_bundle(cfg: AgentConfig, path: Path | None = None) -> Bundle:
        b = load_bundle(path or bundle_path(cfg), cfg.agent.public_key)  # once deployed to: the `current` link
        log.info("bundle %s verified (%s, signature %s), runtime %s", b.version, b.path,
                 "ok" if cfg.agent.public_key else "not configured", b.model.runtime)
        return b

    def _birth(self, bundle: Bundle) -> dict[str, Any]:
        deploy = {"deploy": self.deploy.last} if self.deploy and self.deploy.last else {}
        return {"agent": __version__, "model": bundle.version, "model_sha256": _model_sha256(bundle),
                "runtime": bundle.model.runtime, "numpy": np.__version__,
                "channels": list(bundle.detector.spec.channels), **deploy}

    def _deploy_report(self, outcome: dict[str, Any]) -> None:
        """A deploy's outcome, in the retained status; before the publisher exists (a rollback at start) it
        goes out with the first status."""
        if self.publisher is not None:
            self.publisher.birth = self._birth(self.bundle)
            self._set_status("deploy")

    def _set_status(self, event: str) -> None:
        """An ``online`` status with ``event``, or, while this machine is being commissioned (or its
        calibration could not be read), the commissioning's state with the event: the retained status keeps
        saying where the thresholds come from."""
        assert self.publisher is not None
        state, fields = (status(self.commission) if self.commission is not None else None) or ("online", {})
        self.publisher.set_status(state, **{"event": event, **fields})

    def stop(self, *_: Any) -> None:
        self._stop = True

    def reload(self, *_: Any) -> None:
        self._reload = True

    # -- all or nothing -------------------------------------------------------------------------------------
    def apply(self, cfg: AgentConfig, bundle: Bundle) -> None:
        """Switch to ``cfg`` and ``bundle`` completely, or raise with nothing changed.

        Everything new (source, pipeline, publisher) is built and checked first; only then are the running
        parts swapped, by steps that do not fail. This is the one place a config or a bundle changes: SIGHUP
        calls it, and so can a deploy that has verified a new bundle. Call it from the agent's loop (as the
        SIGHUP flag is handled), never from another thread: the loop owns the pipeline.
        """
        self._commit(self._prepare(cfg, bundle))

    def _prepare(self, cfg: AgentConfig, bundle: Bundle) -> _Plan:
        old = self.cfg
        if self.publisher is not None and (cfg.agent.spool, cfg.agent.spool_max_mb) != (
                old.agent.spool, old.agent.spool_max_mb):
            raise ConfigError(f"{cfg.path}: [agent] spool or spool_max_mb changed: the spool is opened once, at "
                              "start; restart the service to move or resize it")
        key = self._publisher_key(cfg)
        publisher = self.publisher
        if publisher is None or key != self.publisher_key:
            topic(cfg.agent.site, cfg.agent.device, "status")  # a bad site/device is refused here, not later
            publisher = Publisher(cfg, self.spool, self._birth(bundle))  # reads the password, checks TLS files
        spec_now = (bundle.detector.spec.fs_hz, tuple(bundle.detector.spec.channels))
        running = self.reader is not None and self.pipeline is not None
        routes: dict[str, Callable[[bytes], None]] = dict(self._routes)
        if running and cfg.source == old.source and spec_now == (
                self.bundle.detector.spec.fs_hz, tuple(self.bundle.detector.spec.channels)):
            reader = self.reader
            assert reader is not None
            problem = fit_problem(cfg.source.kind, reader.source, bundle)
            if problem:
                raise ConfigError(f"{cfg.path}: [source] does not fit the bundle {bundle.path}: {problem}")
        else:
            routes = {}
            start_at = self._resume_t if running and _same_stream(cfg, old) else None
            reader = open_source(cfg, bundle, routes.__setitem__, start_at)
        pipeline = self.pipeline
        full_scale = reader.source.full_scale
        if pipeline is None or bundle.version != self.bundle.version or full_scale != pipeline.full_scale:
            pipeline = Pipeline(bundle, full_scale)
        return _Plan(cfg, bundle, reader, publisher, key, pipeline, routes)

    def _commit(self, plan: _Plan) -> None:
        if plan.reader is not self.reader:
            if self.reader is not None:
                self.reader.close()
            plan.reader.start()
        if plan.publisher is not self.publisher:
            if self.publisher is not None:
                self.publisher.stop("reconfigured")  # the old identity's retained status says why it went
            plan.publisher.start()
            self._subscribed = set()
        self._routes = plan.routes
        for t in set(self._routes) - self._subscribed:
            plan.publisher.subscribe(t, lambda payload, t=t: self._route(t, payload))
            self._subscribed.add(t)
        self.cfg, self.bundle, self.reader, self.pipeline = plan.cfg, plan.bundle, plan.reader, plan.pipeline
        self.publisher, self.publisher_key = plan.publisher, plan.publisher_key
        self.publisher.birth = self._birth(plan.bundle)
        # Commissioning follows the swap (a reload, a deploy's apply or rollback): the running one's progress is
        # saved first; another bundle version, or `recalibrate`, starts a new one (agent.commission). It does
        # not fail: an unreadable or unwritable state file falls back to the bundle's thresholds and says so.
        self.commission = open_commissioning(plan.cfg, plan.bundle, self.commission)
        plan.pipeline.attach(self.commission)  # the pipeline decides with the detector the commissioning holds

    def _route(self, t: str, payload: bytes) -> None:
        """paho's thread: hand a message to the current source's handler (a replaced source gets nothing)."""
        handler = self._routes.get(t)
        if handler is not None:
            handler(payload)

    def _publisher_key(self, cfg: AgentConfig) -> str:
        """What the MQTT connection depends on: settings, identity, the password and the TLS files' contents
        (a rotated certificate at the same path counts as a change)."""
        m = cfg.mqtt
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        files = (m.password_file, creds and str(Path(creds) / "mqtt-password"), m.ca_file, m.cert_file, m.key_file)
        parts = [repr(m), cfg.agent.site, cfg.agent.device, *(_file_bytes(f).hex() for f in files)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _reload_now(self) -> None:
        self._reload = False
        assert self.publisher is not None
        try:
            cfg = load_agent_config(self.config_path)
            self.apply(cfg, self._load_bundle(cfg))
        except Exception as e:  # noqa: BLE001 - a bad reload keeps everything running as it was, and says why
            log.error("reload failed, nothing changed (still bundle %s, the config as loaded before): %s",
                      self.bundle.version, one_line(e) if not isinstance(e, VibrawatchError) else e,
                      exc_info=not isinstance(e, VibrawatchError | OSError))
            self.publisher.set_status("online", event="reload_failed", error=one_line(e))
            return
        log.info("reloaded %s: bundle %s, source %s, broker %s:%d", self.config_path, self.bundle.version,
                 self.cfg.source.kind, self.cfg.mqtt.host, self.cfg.mqtt.port)
        self._set_status("reloaded")

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> int:
        self._commit(self._first)
        assert self.reader is not None and self.publisher is not None and self.commission is not None
        if (news := status(self.commission)) is not None:
            self.publisher.set_status(news[0], **news[1])
        log.info("scoring %s from %s; %d message(s) waiting in the spool", ",".join(self.bundle.detector.spec.channels),
                 self.cfg.source.kind, len(self.spool))
        if (usec := os.environ.get("WATCHDOG_USEC", "")).isdigit() and self.cfg.source.kind in LIVE_SOURCES:
            fits, text = watchdog_fit(self.bundle.detector, int(usec) / 1e6)
            if not fits:
                log.warning("watchdog: %s", text)
        windows = 0
        crash: Exception | None = None
        try:
            while not self._stop:
                if self._reload:
                    self._reload_now()
                    continue
                if self.deploy:
                    self.deploy.step(self.pipeline, self.publisher, self.cfg)
                item = self.reader.get(_POLL_S)
                if item is None:
                    continue
                if isinstance(item, _End):
                    break
                try:
                    windows += self._handle(item)
                except Exception as e:
                    if not (self.deploy and self.deploy.fail(e)):  # on probation: the new model failed, roll back
                        raise
        except Exception as e:  # noqa: BLE001 - a crash: said on the status topic, then exit 1
            crash = e
            log.critical("crashed: %s", one_line(e), exc_info=True)
        finally:
            self.reader.close()
            log.info("stopping after %d windows; draining %d spooled message(s)", windows, len(self.spool))
            drained = self.publisher.wait_drained(self.cfg.agent.drain_timeout_s)
            if not drained:
                log.warning("%d message(s) stay in the spool for the next start", len(self.spool))
            if self.commission is not None:
                self.commission.save()
            if crash is None:
                self.publisher.stop("stopped")
                if self.deploy:
                    self.deploy.close()  # a clean stop during probation is not a death; a crash is
            else:
                self.publisher.stop("crashed", error=one_line(crash))
            self.spool.close()
        return 0 if crash is None else 1

    def _handle(self, chunk: Chunk) -> int:
        assert self.pipeline is not None and self.publisher is not None and self.reader is not None
        assert self.commission is not None
        n = 0
        names = self.bundle.detector.spec.channels
        for ev in self.pipeline.process(chunk):
            if isinstance(ev, SensorStatus):
                if ev.reason is None:
                    log.info("sensor ok again")
                    self.publisher.set_status("online")
                else:
                    log.warning("sensor fault: %s (windows not scored)", ev.reason)
                    self.publisher.set_status("sensor", fault=ev.reason)
                continue
            n += 1
            if self.deploy:
                self.deploy.check(ev)
            self._publish(ev, names)
            if ev.calibration is not None:  # this window completed the commissioning: the pipeline decides with it
                state, fields = status(self.commission, ev.calibration) or ("online", {})
                self.publisher.set_status(state, **fields)
        self._resume_t = chunk.t_start + len(chunk.samples) / self.reader.source.fs_hz
        if n:
            self._alive()
        return n

    def _publish(self, ev: Scored, names: tuple[str, ...]) -> None:
        assert self.publisher is not None and self.commission is not None
        b = self.bundle
        for kind, payload in window_messages(ev, names, ev.threshold, b.version, _model_sha256(b)):
            if kind == "score":
                payload["threshold_source"] = ev.source
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


def _model_sha256(b: Bundle) -> str:
    """The sha256 of the model file that scores, as the verified manifest pins it."""
    return str(b.manifest["files"]["model.tflite"])


def _same_stream(new: AgentConfig, old: AgentConfig) -> bool:
    """Do two source configs read the same data, differing at most in pace (a replay resumes then)?"""
    if new.source.kind != old.source.kind:
        return False
    a, b = dataclasses.asdict(new.source.resolved()), dataclasses.asdict(old.source.resolved())
    return all(a[k] == b[k] for k in a if k not in PACE_ONLY)


def _owner_only(spool: Path) -> None:
    """The spool (and SQLite's -wal/-shm beside it) readable by the agent's user only, even if an older
    version or another umask created them wider (the umask covers what is created from now on)."""
    for p in (spool, spool.with_name(spool.name + "-wal"), spool.with_name(spool.name + "-shm")):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            os.chmod(p, 0o600)
            log.info("%s was mode %04o: now 0600 (owner only)", p, st.st_mode & 0o777)


def check(config_path: str | Path) -> str:
    """Verify the config, the bundle and that the source fits it, as ``run`` does at start (nothing connects,
    nothing is scored); a summary of what would run, or a VibrawatchError saying what is wrong."""
    cfg = load_agent_config(config_path)
    b = load_bundle(bundle_path(cfg), cfg.agent.public_key)
    reader = open_source(cfg, b, lambda _topic, _handler: None)
    src = reader.source
    spec = b.detector.spec
    signature = "verified" if cfg.agent.public_key else "not checked (no public_key in [agent])"
    rate = "feature-table rows" if src.provides == "table" else f"{two_rates(src.fs_hz, 1)[0]} Hz"
    return "\n".join([
        f"config   {config_path}: ok",
        f"bundle   {b.path}: {b.version}, checksums ok, signature {signature}, golden self-test ok",
        f"runtime  {b.model.runtime}",
        f"model    {len(spec.channels)} channel(s) {', '.join(spec.channels)} at {spec.fs_hz:g} Hz, "
        f"{spec.n_features} features, window {b.detector.window}, threshold {b.detector.threshold:.6g}",
        f"source   {cfg.source.kind}: {len(src.channels)} channel(s), {rate}: fits the model",
        f"broker   {cfg.mqtt.host}:{cfg.mqtt.port} (tls {'on' if cfg.mqtt.tls else 'off'})",
        f"topics   {topic(cfg.agent.site, cfg.agent.device, '{score,alarm,status}')}",
        f"thresholds {describe(cfg, b)}",
        f"watchdog {watchdog_fit(b.detector)[1]}",
    ])


UNIT_WATCHDOG_S, UNIT_START_S = 60.0, 120.0  # the shipped units' WatchdogSec= and TimeoutStartSec=
LIVE_SOURCES = ("adxl345", "mqtt")  # paced by the sensor, not by a replay's speed


def window_seconds(d: Detector) -> tuple[float, float]:
    """Seconds of real-time samples to the first window and between windows: READY=1 waits for the first,
    each pings the watchdog."""
    frame_s = d.spec.frame_length / d.spec.fs_hz
    return d.window * frame_s, d.hop * frame_s


def watchdog_fit(d: Detector, watchdog_s: float = UNIT_WATCHDOG_S, start_s: float = UNIT_START_S
                 ) -> tuple[bool, str]:
    """Whether a live sensor's windows come often enough for the unit's watchdog and start timeout, and why."""
    if d.spec.input == "table":
        return True, "feature-table rows: one window per row"
    first, every = window_seconds(d)
    text = f"at the sensor's rate a window every {every:.3g} s, the first after {first:.3g} s"
    if every > watchdog_s / 2 or first > start_s:
        return False, (f"{text}: too slow for WatchdogSec={watchdog_s:g} / TimeoutStartSec={start_s:g}: raise them "
                       "in a drop-in (systemctl edit), or systemd will restart the agent between windows")
    return True, f"{text}: within WatchdogSec={watchdog_s:g} and TimeoutStartSec={start_s:g}"


def run(config_path: str | Path) -> int:
    os.umask(0o077)  # the spool, its directory and anything else we create: owner only, whatever umask we got
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Agent(config_path).run()
