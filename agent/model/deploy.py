"""Take a signed model bundle over the agent's own MQTT connection, swap it in atomically, keep it only if it
works (docs/deploy.md).

A deploy reads top to bottom as named steps, each refusal its own error class (as ``load_bundle`` does):

    receive       the signed request, retained on vibrawatch/v1/<site>/<device>/deploy; paho's thread only
                  queues it, everything below runs on the agent loop's thread, at every turn
    authenticate  the request's Ed25519 signature with [agent] public_key, this site and device, a deployment
                  id newer than the last one applied here, an announced size within [deploy] max_bundle_kb
    fetch         only then subscribe to .../deploy/bundle (retained, the raw .tar): an oversized bundle is
                  never downloaded; the bytes must have the request's sha256
    verify        stage the bytes in the state directory and run ``load_bundle`` on them (layout, checksums,
                  bundle signature, runtime, golden self-test)
    apply         the agent's all-or-nothing ``Agent.apply`` runs it (a bundle that does not fit the source
                  is refused here, nothing changed)
    swap          bundles/<sha256>.tar; the state file records the probation, then ``previous`` -> the
                  running bundle and ``current`` -> the new one, each an atomic rename of a symbolic link
    probation     the new model scores ``probation_windows`` real windows: finite scores, mean inference time
                  within ``latency_budget_ms``, no exception; the agent dying more than ``probation_restarts``
                  times meanwhile is counted in the state file, so a crash loop under systemd is seen
    commit | rollback

Each outcome (``received``, ``verified``, ``applied``, ``rolled_back``, ``refused``, with a reason) goes out in
the retained status message. A refused request changes nothing on disk; the retained copy of a deployment
already handled is ignored silently (it comes again on every reconnect).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, VibrawatchError
from ..link.topics import iso, topic
from .bundle import Bundle, BundleError, load_bundle, sha256

if TYPE_CHECKING:
    from ..config import AgentConfig
    from ..detect.results import Scored
    from ..link.publish import Publisher
    from ..pipeline import Pipeline

log = logging.getLogger("vibrawatch.deploy")

REQUEST_SCHEMA = "vibrawatch.deploy/1"
REQUEST_KIND, BUNDLE_KIND = "deploy", "deploy/bundle"
OUTCOMES = ("received", "verified", "applied", "rolled_back", "refused")
CRASH_AT = "VIBRAWATCH_DEPLOY_CRASH_AT"  # tests only: SIGKILL this process at the named point of the swap


# -- errors: one per refusal --------------------------------------------------------------------------------
class DeployRefused(VibrawatchError):
    """A deploy request this gateway will not act on; the subclass says which check failed."""

    def __init__(self, message: str, deployment: int | None = None) -> None:
        super().__init__(message)
        self.deployment = deployment


class RequestFormatError(DeployRefused):
    """The message is not a deploy request of a schema this agent reads."""


class RequestSignatureError(DeployRefused):
    """Unsigned, or not signed with the key in [agent] public_key."""


class WrongTarget(DeployRefused):
    """Signed, but for another site or device."""


class Replayed(DeployRefused):
    """Signed, but not newer than the last deployment applied here: a replayed or older request."""


class TooLarge(DeployRefused):
    """The announced bundle is larger than [deploy] max_bundle_kb: refused before it is fetched."""


class FetchError(DeployRefused):
    """The bundle never came, or its bytes are not the ones the request announced."""


class ProbationFailed(VibrawatchError):
    """The new model misbehaved on real windows: a non-finite score, too slow, an exception."""


class _AlreadyHandled(Exception):
    """The retained copy of a deployment this agent already acted on: not news, not a refusal."""


@dataclass(frozen=True)
class Request:
    """An authenticated deploy request."""

    site: str
    device: str
    deployment: int
    bundle_sha256: str
    bundle_bytes: int
    version: str


# -- receive and authenticate ------------------------------------------------------------------------------
def read_envelope(payload: bytes) -> tuple[bytes, bytes | None]:
    """The request's exact bytes and its signature (None when unsigned) from ``{"v":1,"request":..,"signature":..}``."""
    try:
        env = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestFormatError(f"deploy message is not JSON ({e})") from None
    if not isinstance(env, dict) or env.get("v") != 1 or not isinstance(env.get("request"), str):
        raise RequestFormatError('deploy message: expected {"v": 1, "request": "<JSON text>", "signature": "<base64>"}')
    sig = env.get("signature")
    if sig is not None and not isinstance(sig, str):
        raise RequestFormatError("deploy message: field 'signature' must be a base64 string")
    return env["request"].encode(), None if sig is None else sig.encode()


def claimed_deployment(request: bytes) -> int | None:
    """The deployment id a request claims, for reporting a refusal; not trusted for anything else."""
    try:
        d = json.loads(request).get("deployment")
    except (ValueError, AttributeError):
        return None
    return d if isinstance(d, int) and not isinstance(d, bool) else None


def verify_request_signature(request: bytes, signature: bytes | None, public_key: str | Path) -> None:
    """Ed25519 over the request's exact bytes, with the key gateways already use for bundle signatures."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    claimed = claimed_deployment(request)
    if signature is None:
        raise RequestSignatureError("deploy request is unsigned; sign it with `vibrawatch deploy --sign-key`", claimed)
    try:
        key = load_pem_public_key(Path(public_key).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{public_key}: not a readable PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{public_key}: not an Ed25519 public key; make keys with `vibrawatch keys new`")
    try:
        key.verify(base64.b64decode(signature, validate=True), request)
    except (InvalidSignature, ValueError):
        raise RequestSignatureError(
            f"deploy request signature does not verify with {public_key}: signed with another key, or altered",
            claimed) from None


def parse_request(request: bytes) -> Request:
    """The signed request's fields, each checked for type; names the field that is wrong."""
    try:
        r = json.loads(request)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestFormatError(f"deploy request is not JSON ({e})") from None
    if not isinstance(r, dict) or r.get("schema") != REQUEST_SCHEMA:
        raise RequestFormatError(f"deploy request schema {r.get('schema') if isinstance(r, dict) else r!r}; this "
                                 f"agent reads {REQUEST_SCHEMA!r}")
    types = {"site": str, "device": str, "deployment": int, "bundle_sha256": str, "bundle_bytes": int, "version": str}
    for key, kind in types.items():
        if not isinstance(r.get(key), kind) or isinstance(r.get(key), bool):
            raise RequestFormatError(f"deploy request field {key!r} is {r.get(key)!r}, expected {kind.__name__}",
                                     claimed_deployment(request))
    return Request(**{k: r[k] for k in types})


def check_target(req: Request, site: str, device: str) -> None:
    if (req.site, req.device) != (site, device):
        raise WrongTarget(f"deploy request is for {req.site}/{req.device}, this gateway is {site}/{device}",
                          req.deployment)


def check_newer(req: Request, last: int, handled: set[int]) -> None:
    if req.deployment == last or req.deployment in handled:
        raise _AlreadyHandled
    if req.deployment < last:
        raise Replayed(f"deployment {req.deployment} is older than deployment {last} applied here: a replayed or "
                       "out-of-date request", req.deployment)


def check_size(req: Request, max_bytes: int) -> None:
    if req.bundle_bytes > max_bytes:
        raise TooLarge(f"bundle of {req.bundle_bytes} bytes is larger than this gateway's limit of {max_bytes} "
                       "([deploy] max_bundle_kb); not fetched", req.deployment)


def authenticate(payload: bytes, public_key: str | Path, site: str, device: str, last: int, handled: set[int],
                 max_bytes: int) -> Request:
    """Every check a request passes before this gateway downloads anything."""
    request, signature = read_envelope(payload)
    verify_request_signature(request, signature, public_key)
    req = parse_request(request)
    check_target(req, site, device)
    check_newer(req, last, handled)
    check_size(req, max_bytes)
    return req


# -- fetch, verify, swap: on disk ---------------------------------------------------------------------------
def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _crash_point(name: str) -> None:
    """Fault injection for the tests: die here as a power cut or the OOM killer would."""
    if os.environ.get(CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class StateDir:
    """``bundles/<sha256>.tar``, ``staging/``, the ``current`` and ``previous`` links and ``state.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.bundles, self.staging = self.root / "bundles", self.root / "staging"
        self.state_file = self.root / "state.json"

    def make(self) -> None:
        for d in (self.root, self.bundles, self.staging):
            d.mkdir(parents=True, exist_ok=True)

    def link(self, name: str) -> Path | None:
        p = self.root / name
        return Path(os.readlink(p)) if p.is_symlink() else None

    def set_link(self, name: str, target: Path) -> None:
        """Point ``name`` at ``target`` in one atomic rename: a reader sees the old or the new link, never none."""
        tmp = self.root / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, self.root / name)
        _fsync_dir(self.root)

    def read_state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {"last_deployment": 0, "probation": None, "last": None}
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.state_file}: unreadable deploy state ({e}); move it away to start over") from None

    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_file)
        _fsync_dir(self.root)


def bundle_path(cfg: AgentConfig) -> Path:
    """The bundle the agent runs: once a deploy happened, what the state directory's ``current`` names."""
    if cfg.deploy.enabled:
        current = StateDir(cfg.deploy.state_dir).link("current")
        if current is not None:
            return current
    return Path(cfg.agent.bundle)


def check_fetched(req: Request, data: bytes) -> None:
    if len(data) != req.bundle_bytes or sha256(data) != req.bundle_sha256:
        raise FetchError(f"bundle received has {len(data)} bytes and sha256 {sha256(data)[:16]}..., the request "
                         f"announced {req.bundle_bytes} bytes and {req.bundle_sha256[:16]}...", req.deployment)


def stage(sd: StateDir, req: Request, data: bytes) -> Path:
    """The received bytes on disk (fsynced) in the staging directory, not yet anywhere the agent looks."""
    p = sd.staging / f"{req.bundle_sha256}.tar"
    with open(p, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return p


def verify(staged: Path, public_key: str | Path) -> Bundle:
    """Everything the agent checks at start (``load_bundle``), on the staged copy."""
    return load_bundle(staged, public_key)


def swap(sd: StateDir, staged: Path, state: dict[str, Any], record: dict[str, Any]) -> Path:
    """Move the verified bundle in and point ``current`` at it; ``previous`` keeps the running one. The state
    file names the probation before the link changes, so a restart at any point finds a loadable bundle and
    knows whether the swap happened."""
    final = sd.bundles / staged.name
    os.replace(staged, final)
    _fsync_dir(sd.bundles)
    _crash_point("staged")
    record["path"] = str(final)
    sd.write_state({**state, "last_deployment": record["deployment"], "probation": record})
    _crash_point("recorded")
    sd.set_link("previous", Path(record["previous"]))
    _crash_point("linked_previous")
    sd.set_link("current", final)
    _crash_point("linked_current")
    return final


# -- the deployer: what the service loop calls ----------------------------------------------------------------
class Deployer:
    """Owns the state directory and one deploy at a time. The agent calls ``open_bundle`` at start, then, on
    its own loop's thread, ``step`` at every turn (chunk or not), ``check`` on each scored window and ``fail``
    with an exception of the pipeline; the deployer calls ``apply(bundle)`` (``Agent.apply``) to switch."""

    def __init__(self, cfg: AgentConfig, report: Callable[[dict[str, Any]], None] = lambda o: None,
                 apply: Callable[[Bundle], None] = lambda b: None) -> None:
        self.report, self.apply = report, apply
        self.dir = StateDir(cfg.deploy.state_dir)  # opened once: a reload does not move it
        self._use(cfg)
        self._inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._publisher: Publisher | None = None
        self._pending: tuple[Request, float] | None = None
        self._handled: set[int] = set()  # deployments acted on in this process (their retained copies come again)
        self._refused: set[tuple[int | None, str]] = set()
        self._load: Callable[[Path], Bundle] = lambda p: load_bundle(p, self.public_key)
        self.probation: dict[str, Any] | None = None
        # the pipeline probation counts on, and its counts at the start (windows, inference s, non-finite windows:
        # all of them, and those where the bundle failed on sane features)
        self._base: tuple[Pipeline, int, float, int, int] | None = None
        self.last: dict[str, Any] | None = None
        self.running: Bundle | None = None

    def _use(self, cfg: AgentConfig) -> None:
        """Settings and topics of ``cfg`` (at start, and after a reload)."""
        self.cfg = cfg
        self.max_bytes = int(cfg.deploy.max_bundle_kb) * 1024
        self.public_key = cfg.agent.public_key or ""
        self.request_topic = topic(cfg.agent.site, cfg.agent.device, REQUEST_KIND)
        self.bundle_topic = topic(cfg.agent.site, cfg.agent.device, BUNDLE_KIND)

    # -- start -------------------------------------------------------------------------------------------
    def current_path(self) -> Path:
        """What the agent runs: the ``current`` link's target once a deploy happened, else the configured bundle."""
        return self.dir.link("current") or Path(self.cfg.agent.bundle)

    def open_bundle(self, load: Callable[[Path], Bundle]) -> Bundle:
        """At start: count a death during probation, roll back after too many or after a swap that was cut
        short, then load what ``current`` names."""
        self._load = load
        self.dir.make()
        state = self.dir.read_state()
        self.last = state.get("last")
        rec = state.get("probation")
        if rec is not None:
            if self.dir.link("current") != Path(rec["path"]):
                self._end(state, "rolled_back", f"the agent stopped in the middle of the swap; still on {rec['from']}")
                rec = None
            elif rec.get("running"):
                rec["deaths"] = int(rec.get("deaths", 0)) + 1
                self.dir.write_state(state)  # now: a model that kills the process while loading is counted too
                log.warning("the agent died during the probation of %s (%d time(s))", rec["to"], rec["deaths"])
                if rec["deaths"] > self.cfg.deploy.probation_restarts:
                    self._relink_previous(rec)
                    self._end(state, "rolled_back", f"the agent died {rec['deaths']} times during probation")
                    rec = None
        try:
            bundle = load(self.current_path())
        except BundleError as e:
            if rec is None:
                raise
            self._relink_previous(rec)
            self._end(state, "rolled_back", f"the new bundle does not load: {e}")
            rec = None
            bundle = load(self.current_path())
        if rec is not None:
            rec["running"] = True
            self.dir.write_state(state)
            self.probation = rec
            log.info("on probation: %s must score %d windows", rec["to"], self.cfg.deploy.probation_windows)
        self.running = bundle
        return bundle

    def attach(self, publisher: Publisher) -> None:
        """Listen for requests (retained: one sent while this gateway was offline arrives now); again on
        every new publisher (a reload that moved the connection)."""
        self._publisher = publisher
        publisher.subscribe(self.request_topic, lambda payload: self._inbox.put(("request", payload)))
        if self._pending is not None:
            publisher.subscribe(self.bundle_topic, lambda payload: self._inbox.put(("bundle", payload)))

    def close(self) -> None:
        """A clean stop during probation is not a death."""
        if self.probation is not None:
            state = self.dir.read_state()
            if state.get("probation") is not None:
                state["probation"]["running"] = False
                self.dir.write_state(state)

    # -- every turn of the agent loop ---------------------------------------------------------------------
    def step(self, pipeline: Pipeline | None, publisher: Publisher | None, cfg: AgentConfig) -> None:
        """One turn of the agent's loop: follow a reload, judge the probation, act on what arrived."""
        if cfg is not self.cfg:
            self._use(cfg)
        if publisher is not None and publisher is not self._publisher:
            self.attach(publisher)
        if self.probation is not None:
            if pipeline is not None:
                self._judge(pipeline)
            return
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "request":
                self._receive(payload)
            elif self._pending is not None and self._fetched(payload):
                return
        if self._pending is not None and time.monotonic() - self._pending[1] > self.cfg.deploy.fetch_timeout_s:
            req = self._pending[0]
            self._stop_fetching()
            self._handled.discard(req.deployment)  # its retained copy, after a reconnect, may bring the bundle
            self._refuse(FetchError(f"bundle did not arrive on {self.bundle_topic} within "
                                    f"{self.cfg.deploy.fetch_timeout_s:g} s", req.deployment), req)

    def check(self, ev: Scored) -> None:
        """Before a score leaves: on probation, a non-finite score is the new model failing."""
        if self.probation is not None and not (np.isfinite(ev.score) and np.all(np.isfinite(ev.contributions))):
            raise ProbationFailed(f"window at t={ev.t:.3f} scored {ev.score} (not finite)")

    def fail(self, error: Exception) -> bool:
        """An exception while scoring: on probation, roll back (True); else False, and the caller re-raises (a
        failure of a committed model is not the deploy's to hide)."""
        if self.probation is None:
            return False
        reason = str(error) if isinstance(error, ProbationFailed) else f"{type(error).__name__}: {error}"
        self._rollback(f"failed on real windows: {reason}")
        return True

    # -- the steps, in order ------------------------------------------------------------------------------
    def _receive(self, payload: bytes) -> None:
        state = self.dir.read_state()
        try:
            req = authenticate(payload, self.public_key, self.cfg.agent.site, self.cfg.agent.device,
                               int(state.get("last_deployment", 0)), self._handled, self.max_bytes)
        except _AlreadyHandled:
            return
        except DeployRefused as e:
            self._refuse(e)
            return
        self._handled.add(req.deployment)
        log.info("deployment %d received: %s (%d bytes), fetching", req.deployment, req.version, req.bundle_bytes)
        self._outcome("received", req)
        self._pending = (req, time.monotonic())
        assert self._publisher is not None
        self._publisher.subscribe(self.bundle_topic, lambda payload: self._inbox.put(("bundle", payload)))

    def _fetched(self, data: bytes) -> bool:
        """The bundle's bytes arrived: verify, apply, swap on disk; True once the new model runs."""
        assert self._pending is not None
        req = self._pending[0]
        try:
            check_fetched(req, data)
        except FetchError as e:  # most often the retained bundle of an earlier deploy: ours follows
            log.info("waiting for deployment %d's bundle: %s", req.deployment, e)
            return False
        self._stop_fetching()
        staged = stage(self.dir, req, data)
        try:
            bundle = verify(staged, self.public_key)
        except BundleError as e:
            staged.unlink(missing_ok=True)
            self._refuse(DeployRefused(f"bundle verification failed: {e}", req.deployment), req)
            return False
        assert self.running is not None
        final = self.dir.bundles / staged.name
        bundle = replace(bundle, path=final)
        try:
            self.apply(bundle)  # all or nothing: on failure the old model still runs, nothing changed on disk
        except Exception as e:  # noqa: BLE001 - any reason the agent cannot run it is a refusal, said in one line
            staged.unlink(missing_ok=True)
            self._refuse(DeployRefused(f"the agent cannot run it: {str(e).splitlines()[0]}", req.deployment), req)
            return False
        state = self.dir.read_state()
        record = {"deployment": req.deployment, "from": self.running.version, "to": req.version,
                  "sha256": req.bundle_sha256, "previous": str(self.current_path()), "deaths": 0, "running": True}
        swap(self.dir, staged, state, record)
        self.probation, self._base = record, None
        self._outcome("verified", req)  # said once the new model runs, so the status names it
        self.running = bundle
        log.info("deployment %d: now running %s on probation (%d windows)", req.deployment, req.version,
                 self.cfg.deploy.probation_windows)
        return True

    def _judge(self, pipeline: Pipeline) -> None:
        """Windows scored by the pipeline since probation began (a new pipeline, after a reload, starts over)."""
        t, d = pipeline.times, self.cfg.deploy
        if self._base is None or self._base[0] is not pipeline:
            self._base = (pipeline, t.windows, t.inference, t.non_finite, t.model_non_finite)
        windows, inference = t.windows - self._base[1], t.inference - self._base[2]
        failed = t.model_non_finite - self._base[4]
        if failed:  # the pipeline withholds a non-finite score as a sensor fault: check() never sees it
            self._rollback(f"failed on real windows: {failed} window(s) of sane samples scored not finite (NaN/inf)")
            return
        if windows == 0:
            return
        mean_ms = 1000.0 * inference / windows
        scored = windows - (t.non_finite - self._base[3])  # absurd samples' windows: not scored, do not count
        if windows >= min(5, d.probation_windows) and mean_ms > d.latency_budget_ms:
            self._rollback(f"mean inference {mean_ms:.1f} ms per window over {windows} windows, budget "
                           f"{d.latency_budget_ms:g} ms")
        elif scored >= d.probation_windows:
            state = self.dir.read_state()
            self._end(state, "applied", f"{scored} windows scored, mean inference {mean_ms:.2f} ms")
            self._collect(state)

    def _rollback(self, reason: str) -> None:
        """The previous bundle back: on disk first (so a crash from here on restarts on it), then running."""
        assert self.probation is not None
        rec = self.probation
        self._relink_previous(rec)
        self.running = self._load(self.current_path())
        self.apply(self.running)
        self._end(self.dir.read_state(), "rolled_back", reason)  # after apply: the status names the old model

    # -- helpers ------------------------------------------------------------------------------------------
    def _relink_previous(self, rec: dict[str, Any]) -> None:
        self.dir.set_link("current", Path(rec["previous"]))

    def _end(self, state: dict[str, Any], outcome: str, reason: str) -> None:
        """Close the probation in the state file with its outcome (applied or rolled_back) and report it."""
        rec = state.get("probation") or self.probation or {}
        state["probation"] = None
        state["last"] = self._payload(outcome, rec.get("deployment"), reason, rec.get("from"), rec.get("to"),
                                      rec.get("sha256"))
        self.dir.write_state(state)
        self.probation = None
        self.last = state["last"]
        log.log(logging.ERROR if outcome == "rolled_back" else logging.INFO, "deployment %s %s: %s",
                rec.get("deployment"), outcome, reason)
        self.report(self.last)

    def _collect(self, state: dict[str, Any]) -> None:
        """Keep current and previous; older received bundles go."""
        keep = {self.dir.link("current"), self.dir.link("previous")}
        for p in self.dir.bundles.glob("*.tar"):
            if p not in keep:
                p.unlink(missing_ok=True)

    def _stop_fetching(self) -> None:
        self._pending = None
        if self._publisher is not None:
            self._publisher.unsubscribe(self.bundle_topic)

    def _refuse(self, e: DeployRefused, req: Request | None = None) -> None:
        key = (e.deployment, str(e))
        if key in self._refused:  # its retained copy again: reported once per process
            return
        self._refused.add(key)
        log.warning("deployment %s refused: %s", e.deployment, e)
        self._outcome("refused", req, reason=str(e), deployment=e.deployment)

    def _outcome(self, outcome: str, req: Request | None, reason: str = "", deployment: int | None = None) -> None:
        frm = self.running.version if self.running is not None else None
        self.last = self._payload(outcome, req.deployment if req else deployment, reason, frm,
                                  req.version if req else None, req.bundle_sha256 if req else None)
        self.report(self.last)

    @staticmethod
    def _payload(outcome: str, deployment: int | None, reason: str, frm: str | None, to: str | None,
                 sha: str | None) -> dict[str, Any]:
        return {"deployment": deployment, "outcome": outcome, "reason": reason, "from": frm, "to": to,
                "sha256": sha, "timestamp": iso(time.time())}
