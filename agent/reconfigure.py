"""How the running agent changes its config or its bundle, all or nothing (``Agent.apply``: SIGHUP, a deploy's
apply or rollback).

``prepare`` builds and checks everything new (source, pipeline, publisher) while the running parts keep running,
and reuses each running part whose inputs did not change: an unchanged source keeps running (a replay does not
start again), a replay whose pace changed resumes where it was, an unchanged connection stays up. Only then does
``switch`` start the new parts and stop the ones they replace, by steps that do not fail. ``Reconfigurable``
holds what runs and is the agent's one way to change it (``apply``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import AgentConfig
from .errors import ConfigError
from .link.publish import Publisher
from .link.spool import Spool
from .link.topics import topic
from .model.bundle import Bundle
from .model.commission import Commissioning, open_commissioning
from .model.commission_store import request_recalibration, state_file_for
from .pipeline import Pipeline
from .reader import SourceReader, fit_problem, open_source

PACE_ONLY = frozenset({"speed", "chunk", "full_scale"})  # settings a replay can change and resume where it was


@dataclass
class Plan:
    """Everything a config and bundle need, built before anything running is touched; once committed, what runs."""

    cfg: AgentConfig
    bundle: Bundle
    reader: SourceReader  # the running one when it can stay
    publisher: Publisher  # the running one when its settings did not change
    publisher_key: str
    pipeline: Pipeline
    routes: dict[str, Callable[[bytes], None]]  # MQTT topic -> the source's handler


def prepare(cfg: AgentConfig, bundle: Bundle, running: Plan | None, spool: Spool, birth: dict[str, Any],
            resume_t: float | None) -> Plan:
    """The parts ``cfg`` and ``bundle`` need, next to ``running`` (None at start); raises with nothing touched.

    ``birth`` is a new publisher's first status, ``resume_t`` the data time just after the last chunk scored."""
    if running is not None and (cfg.agent.spool, cfg.agent.spool_max_mb) != (
            running.cfg.agent.spool, running.cfg.agent.spool_max_mb):
        raise ConfigError(f"{cfg.path}: [agent] spool or spool_max_mb changed: the spool is opened once, at "
                          "start; restart the service to move or resize it")
    key = publisher_key(cfg)
    if running is not None and key == running.publisher_key:
        publisher = running.publisher
    else:
        topic(cfg.agent.site, cfg.agent.device, "status")  # a bad site/device is refused here, not later
        publisher = Publisher(cfg.mqtt, spool, birth, site=cfg.agent.site,
                              device=cfg.agent.device, password=cfg.password)  # reads the password and TLS files
    spec_now = (bundle.detector.spec.fs_hz, tuple(bundle.detector.spec.channels))
    routes: dict[str, Callable[[bytes], None]] = dict(running.routes) if running is not None else {}
    if running is not None and cfg.source == running.cfg.source and spec_now == (
            running.bundle.detector.spec.fs_hz, tuple(running.bundle.detector.spec.channels)):
        reader = running.reader
        problem = fit_problem(cfg.source.kind, reader.source, bundle)
        if problem:
            raise ConfigError(f"{cfg.path}: [source] does not fit the bundle {bundle.path}: {problem}")
    else:
        routes = {}
        start_at = resume_t if running is not None and same_stream(cfg, running.cfg) else None
        reader = open_source(cfg, bundle, routes.__setitem__, start_at)
    full_scale = reader.source.full_scale
    if running is not None and bundle.version == running.bundle.version and full_scale == running.pipeline.full_scale:
        pipeline = running.pipeline  # the same model on the same scale: its window buffer and alarm state go on
    else:
        pipeline = Pipeline(bundle, full_scale)
    return Plan(cfg, bundle, reader, publisher, key, pipeline, routes)


def switch(plan: Plan, running: Plan | None) -> bool:
    """Start the parts of ``plan`` that are new and stop the running ones they replace (steps that do not fail);
    True when the connection is new, so the source's subscriptions start over."""
    if running is None or plan.reader is not running.reader:
        if running is not None:
            running.reader.close()
        plan.reader.start()
    if running is not None and plan.publisher is running.publisher:
        return False
    if running is not None:
        running.publisher.stop("reconfigured")  # the old identity's retained status says why it went
    plan.publisher.start()
    return True


class Routes:
    """The MQTT topics the running source listens to (kind ``mqtt``), on the agent's connection: paho's thread
    hands each message to the handler of the source running now (a replaced source gets nothing)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[bytes], None]] = {}
        self._subscribed: set[str] = set()  # topics the current publisher subscribes for us

    def use(self, handlers: dict[str, Callable[[bytes], None]], publisher: Publisher, new_connection: bool) -> None:
        """Route to ``handlers`` from now on; subscribe the topics this connection does not carry yet."""
        if new_connection:
            self._subscribed = set()
        self.handlers = handlers
        for t in set(handlers) - self._subscribed:
            publisher.subscribe(t, lambda payload, t=t: self.deliver(t, payload))
            self._subscribed.add(t)

    def deliver(self, t: str, payload: bytes) -> None:
        """paho's thread: a message to the current source's handler."""
        handler = self.handlers.get(t)
        if handler is not None:
            handler(payload)


class Reconfigurable:
    """What one config and bundle run (the source's reader, the publisher, the pipeline, the commissioning), and
    the one way to change them, all or nothing (``apply``). The agent is one: it sets ``cfg``, ``bundle`` and
    ``spool`` at start, says what a new publisher's status starts with (``_birth``) and commits its first plan."""

    cfg: AgentConfig
    bundle: Bundle
    spool: Spool

    def __init__(self) -> None:
        self.reader: SourceReader | None = None
        self.publisher: Publisher | None = None
        self.publisher_key = ""
        self.pipeline: Pipeline | None = None
        self.commission: Commissioning | None = None  # opened by each _commit: a new bundle version starts over
        self.routes = Routes()  # MQTT topic -> the current source's handler
        self._resume_t: float | None = None  # data time just after the last chunk scored: a replay resumes there

    def _birth(self, bundle: Bundle) -> dict[str, Any]:
        """The retained status a publisher starts with, for ``bundle``."""
        raise NotImplementedError

    def apply(self, cfg: AgentConfig, bundle: Bundle) -> None:
        """Switch to ``cfg`` and ``bundle`` completely, or raise with nothing changed.

        Everything new (source, pipeline, publisher) is built and checked first; only then are the running
        parts swapped, by steps that do not fail. This is the one place a config or a bundle changes: SIGHUP
        calls it, and so can a deploy that has verified a new bundle. Call it from the agent's loop (as the
        SIGHUP flag is handled), never from another thread: the loop owns the pipeline.
        """
        self._commit(self._prepare(cfg, bundle))

    def recalibrate(self, *_: Any) -> None:
        """Commission this machine again without a restart, as `vibrawatch-agent recalibrate` and a reload would
        (a signed remote request calls it): the state file marked, then the running config and bundle applied
        again, so the commissioning starts over. Raises with the reason when this gateway has none to restart."""
        c = self.cfg.commissioning
        path = state_file_for(c, self.cfg.agent.spool)
        if c is None or path is None:
            raise ConfigError(f"{self.cfg.path}: no [commissioning] section: nothing to recalibrate")
        request_recalibration(path, self.bundle.version)
        self.apply(self.cfg, self.bundle)

    def _prepare(self, cfg: AgentConfig, bundle: Bundle) -> Plan:
        return prepare(cfg, bundle, self._running(), self.spool, self._birth(bundle), self._resume_t)

    def _running(self) -> Plan | None:
        """What runs, as the plan that made it; None before the first commit."""
        if self.reader is None or self.publisher is None or self.pipeline is None:
            return None
        return Plan(self.cfg, self.bundle, self.reader, self.publisher, self.publisher_key, self.pipeline,
                    self.routes.handlers)

    def _commit(self, plan: Plan) -> None:
        self.routes.use(plan.routes, plan.publisher, switch(plan, self._running()))
        self.cfg, self.bundle, self.reader, self.pipeline = plan.cfg, plan.bundle, plan.reader, plan.pipeline
        self.publisher, self.publisher_key = plan.publisher, plan.publisher_key
        self.publisher.birth = self._birth(plan.bundle)
        # Commissioning follows the swap (a reload, a deploy's apply or rollback): the running one's progress is
        # saved first; another bundle version, or `recalibrate`, starts a new one (agent.commission). It does
        # not fail: an unreadable or unwritable state file falls back to the bundle's thresholds and says so.
        c = plan.cfg.commissioning
        self.commission = open_commissioning(c, state_file_for(c, plan.cfg.agent.spool), plan.bundle, self.commission)
        plan.pipeline.attach(self.commission)  # the pipeline decides with the detector the commissioning holds


def publisher_key(cfg: AgentConfig) -> str:
    """What the MQTT connection depends on: settings, identity, the password and the TLS files' contents
    (a rotated certificate at the same path counts as a change)."""
    m = cfg.mqtt
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    files = (m.password_file, creds and str(Path(creds) / "mqtt-password"), m.ca_file, m.cert_file, m.key_file)
    parts = [repr(m), cfg.agent.site, cfg.agent.device, *(_file_bytes(f).hex() for f in files)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _file_bytes(path: str | None) -> bytes:
    try:
        return Path(path).read_bytes() if path else b""
    except OSError:
        return b""  # the publisher's own check says what is wrong with it


def same_stream(new: AgentConfig, old: AgentConfig) -> bool:
    """Do two source configs read the same data, differing at most in pace (a replay resumes then)?"""
    if new.source.kind != old.source.kind:
        return False
    a, b = dataclasses.asdict(new.source.resolved()), dataclasses.asdict(old.source.resolved())
    return all(a[k] == b[k] for k in a if k not in PACE_ONLY)
