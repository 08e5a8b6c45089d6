"""``vibrawatch-agent run``: the gateway's service loop (``check``, what it verifies before it starts, is in
agent/checks.py).

Load the config, verify the bundle, open the source and check that it fits the bundle (kind of input,
channels, sample rate), open the spool, connect, then: source -> pipeline -> publish, until the source
ends or a signal comes. The source runs in its own thread (``SourceReader``, agent/reader.py) and the loop
waits for its chunks with a short timeout, so signals are answered within a fraction of a second whatever the
source is waiting for (a real-time replay sleeps 10 minutes between IMS snapshots).

- SIGTERM (and SIGINT) stop reading, drain the spool to the broker for up to ``drain_timeout_s`` and exit
  0 (what is not drained stays in the spool for the next start).
- SIGHUP reloads the config and the bundle, all or nothing (``Agent.apply``, agent/reconfigure.py): the config,
  the bundle, the source and the publisher's settings (broker, TLS, credentials, site, device) change together,
  or nothing changes and the log and the retained status (``event: reload_failed``, ``error``) say why. An
  unchanged source keeps running (a replay does not start again); a replay whose pace changed resumes where it was.
- An exception in the loop is a crash: the retained status says ``offline``, reason ``crashed``, with the
  error's one line, and the process exits 1 (systemd's Restart=on-failure restarts it); the last will
  (``connection lost``) stays for a process that vanished without a word.
- With ``[commissioning]`` (agent/model/commission.py) every scored window goes through the commissioning (the
  pipeline's ``Decider`` calls it), whichever detector the bundle uses, and the pipeline decides with the
  detector it holds (this machine's once commissioned); every ``Agent.apply`` (SIGHUP, a deploy's apply or
  rollback) saves the running commissioning and reopens it for the new bundle: another bundle version starts
  a new one.
- With ``[deploy]`` (agent/model/deploy.py) models come over MQTT: the deployer calls ``Agent.apply`` with a
  verified bundle, and judges it on the windows scored here.
- With ``[remote] recalibrate`` (agent/model/command.py) a signed ``vibrawatch recalibrate`` over MQTT calls
  ``recalibrate`` (agent/reconfigure.py): the commissioning starts over without a restart. Every status says
  what the agent accepts (``accepts``), so senders answer at once for a device that does not.

With ``NOTIFY_SOCKET`` set (systemd Type=notify) it sends READY=1 after the first scored window and
WATCHDOG=1 only while windows are being scored, so a stalled sensor lets systemd's watchdog restart the
service. One log line per event, no per-sample noise. State the agent creates (the spool and its
directory) is owner-only: the process runs with umask 077.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .checks import warn_watchdog
from .config import AgentConfig, load_agent_config
from .detect.results import Scored, SensorStatus
from .errors import VibrawatchError
from .link.publish import Publisher
from .link.spool import Spool
from .link.topics import window_messages
from .model.bundle import Bundle, load_bundle
from .model.command import Commands, CommandSettings
from .model.commission import status
from .model.commission_store import state_file_for
from .model.deploy import Deployer, DeploySettings
from .model.deploy_state import bundle_path
from .reader import END, POLL_S, DropCount
from .reconfigure import Reconfigurable
from .sources.allocator import keep_large_blocks
from .sources.source import Chunk

log = logging.getLogger("vibrawatch.agent")


class Agent(Reconfigurable):
    """The service: what one config and bundle run (``apply``, agent/reconfigure.py, changes both, all or
    nothing), the loop that scores and publishes, and the status it keeps on the broker."""

    def __init__(self, config_path: str | Path, held: Sequence[int] = ()) -> None:
        """``held``: the signals that came during start-up, before these handlers (cli._hold_signals)."""
        if not keep_large_blocks():
            log.info("allocator tuning not available here (not glibc, or 32-bit): features run slower")
        self.config_path = Path(config_path)
        self._stop = False
        self._reload = False
        signal.signal(signal.SIGTERM, self.stop)  # from the start: a stop while the bundle loads is still clean
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, self.reload)
        self._stop = self._stop or _stop_held(held)
        self.notify = Notifier()
        super().__init__()  # nothing runs yet: run() commits the first plan
        cfg = load_agent_config(self.config_path)
        # first: a second copy of this agent (the same spool) stops here, before it loads or verifies anything
        self.spool = Spool(cfg.agent.spool, int(cfg.agent.spool_max_mb * 1024 * 1024))
        _owner_only(Path(cfg.agent.spool))
        # model deploys over MQTT: the deployer calls apply() with a verified bundle
        self.deploy = Deployer(deploy_settings(cfg), lambda _: self._news("deploy"),
                               lambda b: self.apply(self.cfg, b)) if cfg.deploy.enabled else None
        self.remote = Commands(command_settings(cfg), self.recalibrate, self._news) \
            if cfg.remote.recalibrate else None  # signed `vibrawatch recalibrate` over MQTT: it calls recalibrate()
        bundle = self.deploy.open_bundle(lambda p: load_configured(cfg, p)) if self.deploy else load_configured(cfg)
        self.cfg, self.bundle = cfg, bundle
        self._first = self._prepare(cfg, bundle)  # a source that does not fit the bundle stops us here (exit 2)

    def _birth(self, bundle: Bundle) -> dict[str, Any]:
        accepts = {"deploy": self.deploy is not None, "recalibrate": self.remote is not None}
        return birth(bundle, self.deploy.last if self.deploy else None, accepts,
                     self.remote.last if self.remote else None)

    def _news(self, event: str) -> None:
        """A deploy's or a command's outcome, in the retained status; before the publisher exists (a rollback at
        start) it goes out with the first status."""
        if self.publisher is not None:
            self.publisher.birth = self._birth(self.bundle)
            self._set_status(event)

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

    def _reload_now(self) -> None:
        """SIGHUP: the config and the bundle again, all or nothing; a bad one changes nothing and says why."""
        self._reload = False
        assert self.publisher is not None
        try:
            cfg = load_agent_config(self.config_path)
            self.apply(cfg, load_configured(cfg))
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
        warn_watchdog(self.cfg.source.kind, self.bundle.detector)
        windows = 0
        drops = DropCount()  # samples messages dropped when scoring falls behind: in the status
        crash: Exception | None = None
        try:
            while not self._stop:
                if self._reload:
                    self._reload_now()
                    continue
                if self.deploy:
                    self.deploy.step(self.pipeline, self.publisher, deploy_settings(self.cfg))
                if self.remote:
                    self.remote.step(self.publisher, command_settings(self.cfg))
                item = self.reader.get(POLL_S)
                drops.update(self.reader.source, self.publisher.status)
                if item is None:
                    continue
                if item is END:
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
            self._finish(windows, crash)
        return 0 if crash is None else 1

    def _handle(self, chunk: Chunk) -> int:
        assert self.pipeline is not None and self.publisher is not None and self.reader is not None
        assert self.commission is not None
        n = 0
        for ev in self.pipeline.process(chunk):
            if isinstance(ev, SensorStatus):
                sensor_status(self.publisher, ev)
                continue
            n += 1
            if self.deploy:
                self.deploy.check(ev)
            publish_window(self.publisher, ev, self.bundle)
            if ev.calibration is not None:  # this window completed the commissioning: the pipeline decides with it
                state, fields = status(self.commission, ev.calibration) or ("online", {})
                self.publisher.set_status(state, **fields)
        self._resume_t = chunk.t_start + len(chunk.samples) / self.reader.source.fs_hz
        if n:
            self.notify.alive()
        return n

    def _finish(self, windows: int, crash: Exception | None) -> None:
        """Stop reading, drain the spool, save the commissioning, say why the agent went."""
        assert self.reader is not None and self.publisher is not None
        self.reader.close()
        log.info("stopping after %d windows; draining %d spooled message(s)", windows, len(self.spool))
        drained = self.publisher.wait_drained(self.cfg.agent.drain_timeout_s)
        if not drained:
            log.warning("%d message(s) %s", len(self.spool), "lost: held in memory, the spool's file is read-only"
                        if self.spool.file.in_memory else "stay in the spool for the next start")
        if self.commission is not None:
            self.commission.save()
        if crash is None:
            self.publisher.stop("stopped")
            if self.deploy:
                self.deploy.close()  # a clean stop during probation is not a death; a crash is
        else:
            self.publisher.stop("crashed", error=one_line(crash))
        self.spool.close()


def deploy_settings(cfg: AgentConfig) -> DeploySettings:
    """What a deploy needs of the config: the deployer reads values, never the config (it is a room below)."""
    return DeploySettings(cfg.deploy, cfg.agent.site, cfg.agent.device, cfg.agent.public_key or "", cfg.agent.bundle)


def command_settings(cfg: AgentConfig) -> CommandSettings:
    """What remote commands need of the config: the last id acted on is kept beside the calibration."""
    state = state_file_for(cfg.commissioning, cfg.agent.spool)
    return CommandSettings(cfg.agent.site, cfg.agent.device, cfg.agent.public_key or "",
                           state.parent if state is not None else Path(cfg.agent.spool).parent)


def load_configured(cfg: AgentConfig, path: Path | None = None) -> Bundle:
    """``path``, or what the config names (once deployed to: the `current` link), verified."""
    b = load_bundle(path or bundle_path(cfg.deploy, cfg.agent.bundle), cfg.agent.public_key)
    log.info("bundle %s verified (%s, signature %s), runtime %s", b.version, b.path,
             "ok" if cfg.agent.public_key else "not configured", b.model.runtime)
    return b


def birth(bundle: Bundle, deploy: dict[str, Any] | None, accepts: dict[str, bool] | None = None,
          command: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the retained ``online`` status says about this agent and its model, what it accepts over MQTT (so a
    sender can answer at once for a device that does not), and the last deploy's and command's outcomes."""
    last = {**({"deploy": deploy} if deploy else {}), **({"command": command} if command else {})}
    return {"agent": __version__, "model": bundle.version, "model_sha256": _model_sha256(bundle),
            "runtime": bundle.model.runtime, "numpy": np.__version__,
            "channels": list(bundle.detector.spec.channels), **({"accepts": accepts} if accepts else {}), **last}


def sensor_status(publisher: Publisher, ev: SensorStatus) -> None:
    """A sensor fault, or its end, in the log and the retained status (its windows are not scored meanwhile)."""
    if ev.reason is None:
        log.info("sensor ok again")
        publisher.set_status("online")
    else:
        log.warning("sensor fault: %s (windows not scored)", ev.reason)
        publisher.set_status("sensor", fault=ev.reason)


def publish_window(publisher: Publisher, ev: Scored, b: Bundle) -> None:
    """A scored window's messages into the spool (an alarm is logged too)."""
    for kind, payload in window_messages(ev, b.detector.spec.channels, ev.threshold, b.version, _model_sha256(b)):
        if kind == "score":
            payload["threshold_source"] = ev.source
        if kind == "alarm":
            log.warning("alarm %s: channel %s, score %.4g (level %.2f)", payload["event"], payload["channel"],
                        ev.score, ev.level)
        publisher.enqueue(kind, payload)


class Notifier:
    """systemd's Type=notify: READY=1 after the first scored window, WATCHDOG=1 at most once a second while
    windows are scored, so a stalled sensor lets the watchdog restart the service."""

    def __init__(self) -> None:
        self.ready = False
        self._last_watchdog = 0.0

    def alive(self) -> None:
        """Windows were scored just now."""
        if not self.ready:
            sd_notify("READY=1")
            self.ready = True
            log.info("first window scored; ready")
        now = time.monotonic()
        if now - self._last_watchdog >= 1.0:
            sd_notify("WATCHDOG=1")
            self._last_watchdog = now


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


def _model_sha256(b: Bundle) -> str:
    """The sha256 of the model file that scores, as the verified manifest pins it."""
    return str(b.manifest["files"]["model.tflite"])


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


def _stop_held(held: Sequence[int]) -> bool:
    """Whether a signal that came during start-up (cli._hold_signals) asks to stop; a reload then changes nothing
    (the config just read is the newest). Said in the log either way."""
    stop = any(s != signal.SIGHUP for s in held)
    if held:
        log.info("%s during start-up: %s", ", ".join(signal.Signals(s).name for s in held),
                 "stopping once started" if stop else "the config as read now stands")
    return stop


def run(config_path: str | Path, held: Sequence[int] = ()) -> int:
    os.umask(0o077)  # the spool, its directory and anything else we create: owner only, whatever umask we got
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Agent(config_path, held).run()
