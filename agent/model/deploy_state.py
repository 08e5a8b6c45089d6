"""Where deploys live on a gateway, and what ``[deploy]`` configures (docs/deploy.md).

``state_dir`` holds ``bundles/<sha256>.tar``, ``staging/``, the ``current`` and ``previous`` links and ``state.json``
(the last deployment applied, the probation under way, the last outcome). Every change is fsynced and each link
moves by one atomic rename, so an agent killed at any point restarts on a bundle that loads and knows from the
state file whether a swap happened.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import fsync_dir
from ..link.topics import iso
from ..sections import checked, within
from .bundle import Bundle, load_bundle
from .deploy_request import Request

CRASH_AT = "VIBRAWATCH_DEPLOY_CRASH_AT"  # tests only: SIGKILL this process at the named point of the swap
OUTCOMES = ("received", "verified", "applied", "rolled_back", "refused")


@dataclass(frozen=True)
class DeploySection:
    """Model deploys over MQTT (agent.model.deploy, docs/deploy.md); off unless ``enabled``."""

    enabled: bool = False  # needs [agent] public_key: only signed requests and bundles are accepted
    state_dir: str = "/var/lib/vibrawatch/deploy"  # received bundles, the current/previous links, deploy state
    # a request announcing a larger bundle is refused before the bundle is fetched
    max_bundle_kb: int = checked(1024, within(1, 1 << 30), "a size in KB, at least 1")
    # real windows the new model must score (finite, in budget) before it is kept
    probation_windows: int = checked(20, within(1, 1 << 30), "a number of windows, at least 1")
    # mean inference time per window allowed during probation
    latency_budget_ms: float = checked(250.0, lambda v: math.isfinite(v) and v > 0, "milliseconds above 0")
    # the agent dying more often than this during probation rolls back
    probation_restarts: int = checked(2, within(0, 1000), "a number of restarts, 0 to 1000")
    # how long to wait for the bundle after its request
    fetch_timeout_s: float = checked(120.0, within(1e-3, 86400), "seconds above 0, at most a day")


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
        """The directory and its two subdirectories, at start (nothing in them yet is fine)."""
        for d in (self.root, self.bundles, self.staging):
            d.mkdir(parents=True, exist_ok=True)

    def link(self, name: str) -> Path | None:
        """Where ``current`` or ``previous`` points; None before the first deploy."""
        p = self.root / name
        return Path(os.readlink(p)) if p.is_symlink() else None

    def current(self, configured: str | Path) -> Path:
        """What the agent runs: the ``current`` link's target once a deploy happened, else ``configured``."""
        return self.link("current") or Path(configured)

    def set_link(self, name: str, target: Path) -> None:
        """Point ``name`` at ``target`` in one atomic rename: a reader sees the old or the new link, never none."""
        tmp = self.root / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    def read_state(self) -> dict[str, Any]:
        """``state.json``, or the state of a gateway that never took a deploy."""
        if not self.state_file.exists():
            return {"last_deployment": 0, "probation": None, "last": None}
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.state_file}: unreadable deploy state ({e}); move it away to start over") from None

    def write_state(self, state: dict[str, Any]) -> None:
        """Replace ``state.json`` atomically and durably: a power cut leaves the old state or the new one."""
        tmp = self.state_file.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_file)
        fsync_dir(self.root)


def bundle_path(section: DeploySection, configured: str | Path) -> Path:
    """The bundle the agent runs: once a deploy happened, what the state directory's ``current`` names, else
    ``configured`` ([agent] bundle)."""
    return StateDir(section.state_dir).current(configured) if section.enabled else Path(configured)


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
    fsync_dir(sd.bundles)
    _crash_point("staged")
    record["path"] = str(final)
    sd.write_state({**state, "last_deployment": record["deployment"], "probation": record})
    _crash_point("recorded")
    sd.set_link("previous", Path(record["previous"]))
    _crash_point("linked_previous")
    sd.set_link("current", final)
    _crash_point("linked_current")
    return final


def collect(sd: StateDir) -> None:
    """Keep current and previous; older received bundles go."""
    keep = {sd.link("current"), sd.link("previous")}
    for p in sd.bundles.glob("*.tar"):
        if p not in keep:
            p.unlink(missing_ok=True)


def outcome_payload(outcome: str, deployment: int | None, reason: str, frm: str | None, to: str | None,
                    sha: str | None) -> dict[str, Any]:
    """A deploy's outcome as the retained status carries it and the state file keeps it (``last``)."""
    return {"deployment": deployment, "outcome": outcome, "reason": reason, "from": frm, "to": to,
            "sha256": sha, "timestamp": iso(time.time())}
