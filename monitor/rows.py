"""The rows a batch carries: what ingest hands the store (``Batch``) and what the store says it changed
(``Written``).

The lowest module of the monitor's write path: decoding builds these, the device state reads them, the
store writes them; none of those is imported here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from . import bounds


@dataclass(slots=True)
class Score:
    site: str
    device: str
    seq: int
    t: float
    ts: str
    score: float
    threshold: float
    level: float
    contributions: dict[str, float]
    model: str
    received: float
    threshold_source: str | None = None  # bundle | commissioning | commissioned; None from older agents (bundle)
    model_sha256: str | None = None  # the model file that scored it; None from agents older than deploys


@dataclass(slots=True)
class Alarm:
    site: str
    device: str
    seq: int
    t: float
    ts: str
    event: str
    channel: str | None
    score: float
    level: float
    since: str | None
    model: str
    received: float
    diagnosis: dict[str, Any] | None = None  # a combined detector's, on a raised alarm: the defect that stands out
    channels: list[str] | None = None  # a combined detector's channels in alarm after it (None: one alarm a device)


@dataclass(slots=True)
class Status:
    site: str
    device: str
    ts: str
    state: str
    payload: dict[str, Any]
    received: float


@dataclass(slots=True)
class Event:
    """A combined detector's ``transient``, ``condition_change`` or ``diagnosis``: numbered by the agent's spool
    like scores and alarms, so it is keyed by (site, device, seq) and counts in the device's seq (no false gap)."""

    site: str
    device: str
    seq: int
    t: float
    ts: str
    kind: str
    payload: dict[str, Any]
    received: float


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be stored, as kept: its topic and an excerpt of its payload escaped and cut to
    their bounds (bounds.py), its full size, why, and a digest of the whole message (a redelivery is kept once)."""

    topic: str
    excerpt: str
    size: int
    reason: str
    received: float
    digest: str

    @classmethod
    def of(cls, topic: str, payload: bytes, reason: str, received: float) -> DeadLetter:
        """The bounded dead letter of a message: nothing of it is kept whole but its digest."""
        digest = hashlib.sha256(topic.encode("utf-8", "surrogateescape") + b"\0" + payload).hexdigest()
        return cls(bounds.escape(topic, bounds.MAX_TOPIC_CHARS), bounds.excerpt(payload), len(payload),
                   bounds.escape(reason, bounds.MAX_REASON_CHARS, backslash=False), received, digest)


@dataclass
class Batch:
    scores: list[Score] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores) + len(self.alarms) + len(self.statuses) + len(self.events) + len(self.dead)


@dataclass
class Written:
    """What a batch changed: new rows per kind (repeats are not counted), alerts raised, seqs found missing,
    redeliveries of rows retention rolled up."""

    scores: int = 0
    alarms: int = 0
    statuses: int = 0
    events: int = 0
    dead: int = 0
    duplicates: int = 0
    alerts: int = 0
    lost: int = 0
    expired: int = 0  # scores redelivered after retention rolled them up: dropped, neither stored nor counted
