"""Take a signed model bundle over the agent's own MQTT connection, swap it in atomically, keep it only if it
works (docs/deploy.md).

A deploy reads top to bottom as named steps, each refusal its own error class (as ``load_bundle`` does):

    receive       the signed request, retained on vibrawatch/v1/<site>/<device>/deploy; paho's thread only
                  queues it, everything below runs on the agent loop's thread, at every turn
    authenticate  the request's Ed25519 signature with [agent] public_key, this site and device, a deployment
                  id newer than the last one applied here, an announced size within [deploy] max_bundle_kb
                  (``deploy_request``)
    fetch         only then subscribe to .../deploy/bundle (retained, the raw .tar): an oversized bundle is
                  never downloaded; the bytes must have the request's sha256
    verify        stage the bytes in the state directory and run ``load_bundle`` on them (layout, checksums,
                  bundle signature, runtime, golden self-test) (``deploy_state``)
    apply         the agent's all-or-nothing ``Agent.apply`` runs it (a bundle that does not fit the source
                  is refused here, nothing changed)
    swap          bundles/<sha256>.tar; the state file records the probation, then ``previous`` -> the
                  running bundle and ``current`` -> the new one, each an atomic rename of a symbolic link
    probation     the new model scores ``probation_windows`` real windows: finite scores, mean inference time
                  within ``latency_budget_ms``, no exception; the agent dying more than ``probation_restarts``
                  times meanwhile is counted in the state file, so a crash loop under systemd is seen
                  (``probation``)
    commit | rollback

Each outcome (``received``, ``verified``, ``applied``, ``rolled_back``, ``refused``, with a reason) goes out in
the retained status message. A refused request changes nothing on disk; the retained copy of a deployment
already handled is ignored silently (it comes again on every reconnect).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bundle import Bundle, BundleError, load_bundle
from .deploy_inbox import Inbox, Subscriptions
from .deploy_request import AlreadyHandled, DeployRefused, FetchError, Request, authenticate, check_fetched
from .deploy_state import DeploySection, StateDir, outcome_payload, stage, swap, verify
from .probation import Probation, Scoring

if TYPE_CHECKING:
    from ..detect.results import Scored

log = logging.getLogger("vibrawatch.deploy")


@dataclass(frozen=True)
class DeploySettings:
    """What a deploy needs of the agent's config: ``[deploy]``, and from ``[agent]`` this gateway's identity, the
    key requests and bundles are signed with, and the bundle it runs until a deploy happened."""

    section: DeploySection
    site: str
    device: str
    public_key: str
    bundle: str


class Deployer:
    """Owns the state directory and one deploy at a time. The agent calls ``open_bundle`` at start, then, on
    its own loop's thread, ``step`` at every turn (chunk or not), ``check`` on each scored window and ``fail``
    with an exception of the pipeline; the deployer calls ``apply(bundle)`` (``Agent.apply``) to switch."""

    def __init__(self, settings: DeploySettings, report: Callable[[dict[str, Any]], None] = lambda o: None,
                 apply: Callable[[Bundle], None] = lambda b: None) -> None:
        self.report, self.apply = report, apply
        self.dir = StateDir(settings.section.state_dir)  # opened once: a reload does not move it
        self.inbox = Inbox()
        self._use(settings)
        self._handled: set[int] = set()  # deployments acted on in this process (their retained copies come again)
        self._refused: set[tuple[int | None, str]] = set()
        self._load: Callable[[Path], Bundle] = lambda p: load_bundle(p, self.settings.public_key)
        self.probation = Probation(self.dir, self._say, self._back)
        self.last: dict[str, Any] | None = None
        self.running: Bundle | None = None

    def _use(self, settings: DeploySettings) -> None:
        """Settings and topics (at start, and after a reload)."""
        self.settings = settings
        self.inbox.use(settings.site, settings.device)

    # -- start -------------------------------------------------------------------------------------------
    def open_bundle(self, load: Callable[[Path], Bundle]) -> Bundle:
        """At start: a probation the agent died in is judged (``Probation.resume``), then what ``current``
        names is loaded."""
        self._load = load
        self.dir.make()
        state = self.dir.read_state()
        self.last = state.get("last")
        self.running = self.probation.resume(state, self.settings.section,
                                             lambda: load(self.dir.current(self.settings.bundle)))
        return self.running

    def close(self) -> None:
        """A clean stop during probation is not a death."""
        self.probation.close()

    # -- every turn of the agent loop ---------------------------------------------------------------------
    def step(self, scoring: Scoring | None, connection: Subscriptions | None, settings: DeploySettings) -> None:
        """One turn of the agent's loop: follow a reload, judge the probation, act on what arrived."""
        if settings != self.settings:
            self._use(settings)
        if connection is not None and connection is not self.inbox.connection:
            self.inbox.attach(connection)  # a new connection (at start, or a reload that moved it)
        if self.probation.record is not None:
            if scoring is not None:
                self.probation.judge(scoring, self.settings.section)
            return
        while (message := self.inbox.take()) is not None:
            kind, payload = message
            if kind == "request":
                self._receive(payload)
            elif self.inbox.pending is not None and self._fetched(payload):
                return
        timeout = self.settings.section.fetch_timeout_s
        if (req := self.inbox.overdue(timeout)) is not None:
            self._handled.discard(req.deployment)  # its retained copy, after a reconnect, may bring the bundle
            self._refuse(FetchError(f"bundle did not arrive on {self.inbox.bundle_topic} within {timeout:g} s",
                                    req.deployment), req)

    def check(self, ev: Scored) -> None:
        """Before a score leaves: on probation, a non-finite score is the new model failing."""
        self.probation.check(ev)

    def fail(self, error: Exception) -> bool:
        """An exception while scoring: on probation, roll back (True); else False, and the caller re-raises."""
        return self.probation.fail(error)

    # -- the steps, in order ------------------------------------------------------------------------------
    def _receive(self, payload: bytes) -> None:
        state = self.dir.read_state()
        try:
            req = authenticate(payload, self.settings.public_key, self.settings.site, self.settings.device,
                               int(state.get("last_deployment", 0)), self._handled,
                               int(self.settings.section.max_bundle_kb) * 1024)
        except AlreadyHandled:
            return
        except DeployRefused as e:
            self._refuse(e)
            return
        self._handled.add(req.deployment)
        log.info("deployment %d received: %s (%d bytes), fetching", req.deployment, req.version, req.bundle_bytes)
        self._outcome("received", req)
        self.inbox.fetch(req)

    def _fetched(self, data: bytes) -> bool:
        """The bundle's bytes arrived: verify, apply, swap on disk; True once the new model runs."""
        assert self.inbox.pending is not None
        req = self.inbox.pending[0]
        try:
            check_fetched(req, data)
        except FetchError as e:  # most often the retained bundle of an earlier deploy: ours follows
            log.info("waiting for deployment %d's bundle: %s", req.deployment, e)
            return False
        self.inbox.stop_fetching()
        staged = stage(self.dir, req, data)
        try:
            bundle = verify(staged, self.settings.public_key)
        except BundleError as e:
            staged.unlink(missing_ok=True)
            self._refuse(DeployRefused(f"bundle verification failed: {e}", req.deployment), req)
            return False
        assert self.running is not None
        bundle = replace(bundle, path=self.dir.bundles / staged.name)
        try:
            self.apply(bundle)  # all or nothing: on failure the old model still runs, nothing changed on disk
        except Exception as e:  # noqa: BLE001 - any reason the agent cannot run it is a refusal, said in one line
            staged.unlink(missing_ok=True)
            self._refuse(DeployRefused(f"the agent cannot run it: {str(e).splitlines()[0]}", req.deployment), req)
            return False
        state = self.dir.read_state()
        record = {"deployment": req.deployment, "from": self.running.version, "to": req.version,
                  "sha256": req.bundle_sha256, "previous": str(self.dir.current(self.settings.bundle)),
                  "deaths": 0, "running": True}
        swap(self.dir, staged, state, record)
        self.probation.begin(record)
        self._outcome("verified", req)  # said once the new model runs, so the status names it
        self.running = bundle
        log.info("deployment %d: now running %s on probation (%d windows)", req.deployment, req.version,
                 self.settings.section.probation_windows)
        return True

    def _back(self) -> None:
        """A rollback's switch: the bundle ``current`` names again, loaded and applied."""
        self.running = self._load(self.dir.current(self.settings.bundle))
        self.apply(self.running)

    # -- helpers ------------------------------------------------------------------------------------------
    def _refuse(self, e: DeployRefused, req: Request | None = None) -> None:
        key = (e.deployment, str(e))
        if key in self._refused:  # its retained copy again: reported once per process
            return
        self._refused.add(key)
        log.warning("deployment %s refused: %s", e.deployment, e)
        self._outcome("refused", req, reason=str(e), deployment=e.deployment)

    def _outcome(self, outcome: str, req: Request | None, reason: str = "", deployment: int | None = None) -> None:
        frm = self.running.version if self.running is not None else None
        self._say(outcome_payload(outcome, req.deployment if req else deployment, reason, frm,
                                  req.version if req else None, req.bundle_sha256 if req else None))

    def _say(self, outcome: dict[str, Any]) -> None:
        """An outcome: kept for the agent's status (``last``) and reported."""
        self.last = outcome
        self.report(outcome)
