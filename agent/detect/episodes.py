"""Alarm episodes and how a run's alarms are scored: the one definition `evaluate`, the benchmark, the gateway's
alarm messages and the monitor's alarm history share (docs/detection.md, "Scoring").

- An *episode* is one alarm on one channel: the window it was raised in and the window it cleared in (None:
  still active when the data ends). Channel -1: a detector that names no channel (a whole-machine score).
- The *warning* is the first episode on a failed channel from which the detector stays in alarm on that channel
  until the failure, gaps between its episodes shorter than ``merge_s`` allowed (a final gap before the failure
  too). It may not start in the known-healthy part. *Lead* = failure time - the warning's start.
- Every other episode raised before the failure is a *nuisance alarm*: those before the warning, those on a
  channel that did not fail, and every one raised in the known-healthy part.
- Nuisance alarms per 1,000 healthy machine-hours: the nuisance alarms raised in the healthy span over the
  healthy span x the machine's channels, the healthy span running from the first window to ``healthy_until``
  when it is known, else to the failure (else to the end of the data).
- ``merge_s``: the alarm rule's own clear time, ``clear_after`` x the data's step (``merge_time``).

Pure numpy and the standard library, so the gateway may import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

MACHINE = -1  # the channel of an episode whose detector names none


@dataclass(frozen=True)
class Episode:
    """One alarm on one channel, from the window that raised it to the window that cleared it."""

    channel: int
    raised: float  # time of the raising window, seconds
    cleared: float | None  # time of the clearing window; None: still active at the end of the data
    raised_index: int
    cleared_index: int | None


def from_active(times: np.ndarray, active: np.ndarray) -> list[Episode]:
    """Episodes from the per-channel alarm state after each window, ``active`` (n, C) (or (n,), one channel),
    ordered by when they were raised. A channel's episode starts at the first window it is active and ends at
    the first window it is not."""
    t = np.asarray(times, dtype=np.float64)
    a = np.asarray(active, dtype=bool)
    if a.ndim == 1:
        a = a[:, None]
    if a.shape[0] != len(t):
        raise ValueError(f"{a.shape[0]} alarm states for {len(t)} window times")
    pad = np.zeros((1, a.shape[1]), dtype=np.int8)
    edges = np.diff(np.vstack([pad, a.astype(np.int8), pad]), axis=0)  # (n + 1, C): +1 raised, -1 cleared
    out: list[Episode] = []
    for c in range(a.shape[1]):
        starts, ends = np.flatnonzero(edges[:, c] == 1), np.flatnonzero(edges[:, c] == -1)
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            done = e < len(t)
            out.append(Episode(c, float(t[s]), float(t[e]) if done else None, s, e if done else None))
    return sorted(out, key=lambda e: (e.raised, e.channel))


def from_single(times: np.ndarray, active: np.ndarray, channel: np.ndarray) -> list[Episode]:
    """Episodes of one alarm state that names a channel when it is raised (``channel`` per window, -1: none)."""
    ch = np.asarray(channel, dtype=np.int64)
    eps = from_active(times, np.asarray(active, dtype=bool))
    return [Episode(int(ch[e.raised_index]), e.raised, e.cleared, e.raised_index, e.cleared_index) for e in eps]


def cadence(times: np.ndarray) -> float:
    """The typical time between consecutive readings: the median of the positive steps (0 if none)."""
    d = np.diff(np.asarray(times, dtype=np.float64))
    d = d[d > 0]
    return float(np.median(d)) if d.size else 0.0


def merge_time(clear_after: int, step_s: float) -> float:
    """The merge time: the alarm rule's clear time, ``clear_after`` steps of the data. An alarm that returns
    sooner than the rule took to clear it was, to the rule, one dip no longer than twice its own debouncing."""
    return float(clear_after) * float(step_s)


@dataclass(frozen=True)
class Scoring:
    """What is known about a run: when (and on which channels) it failed, how long it was surely healthy."""

    start_t: float  # the first window
    end_t: float  # the last window
    n_channels: int
    merge_s: float
    failure_t: float | None = None  # None: no failure in the data (every alarm is a nuisance)
    failed: frozenset[int] | None = None  # None: any channel may be the one that failed
    healthy_until: float | None = None  # alarms raised up to here are nuisance, whatever they name

    @property
    def healthy_end(self) -> float:
        """The end of the span the nuisance rate is counted over."""
        if self.healthy_until is not None:
            return self.healthy_until
        return self.failure_t if self.failure_t is not None else self.end_t


@dataclass(frozen=True)
class Score:
    """A detector's alarms on one run, scored (see the module docstring)."""

    episodes: tuple[Episode, ...]  # every episode, in raise order
    warning: Episode | None  # the warning's first episode
    warned: tuple[Episode, ...]  # the warning's episodes and those of every other failed channel's persisting alarm
    nuisance: tuple[Episode, ...]
    nuisance_in_healthy: int
    healthy_h: float
    machine_h: float
    lead_s: float | None

    @property
    def per_1000_h(self) -> float | None:
        """Nuisance alarms in the healthy span per 1,000 machine-hours of it (None for an empty span)."""
        return round(1000.0 * self.nuisance_in_healthy / self.machine_h, 3) if self.machine_h > 0 else None

    def kind(self, e: Episode) -> str:
        """"warning", "nuisance" or "after failure" (raised after the failure: not scored)."""
        return "warning" if e in self.warned else "nuisance" if e in self.nuisance else "after failure"


def _persisting(eps: Sequence[Episode], s: Scoring) -> list[Episode]:
    """The episodes of one channel (raise order) that together stay in alarm until the failure, or []."""
    assert s.failure_t is not None
    if not eps:
        return []
    last = eps[-1]
    if last.cleared is not None and last.cleared < s.failure_t and s.failure_t - last.cleared >= s.merge_s:
        return []
    block: list[Episode] = []
    for e in reversed(eps):
        if block and (e.cleared is None or block[0].raised - e.cleared >= s.merge_s):
            break
        if s.healthy_until is not None and e.raised <= s.healthy_until:
            break  # an alarm in the known-healthy part is a nuisance, never the start of a warning
        block.insert(0, e)
    return block


def score(episodes: Sequence[Episode], s: Scoring) -> Score:
    """Warning, lead and nuisance alarms of ``episodes`` on the run ``s`` describes."""
    eps = sorted(episodes, key=lambda e: (e.raised, e.channel))
    scored = [e for e in eps if s.failure_t is None or e.raised <= s.failure_t]
    warned: list[Episode] = []
    if s.failure_t is not None:
        channels = sorted({e.channel for e in scored})
        for c in channels:
            if c == MACHINE or s.failed is None or c in s.failed:
                warned += _persisting([e for e in scored if e.channel == c], s)
    warned.sort(key=lambda e: (e.raised, e.channel))
    warning = warned[0] if warned else None
    nuisance = [e for e in scored if e not in warned]
    healthy_s = max(0.0, s.healthy_end - s.start_t)
    lead = None if warning is None or s.failure_t is None else s.failure_t - warning.raised
    return Score(tuple(eps), warning, tuple(warned), tuple(nuisance),
                 sum(1 for e in nuisance if e.raised <= s.healthy_end), healthy_s / 3600.0,
                 healthy_s / 3600.0 * s.n_channels, lead)


def auc(negatives: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of a score: the chance a positive window scores above a negative one (ties count
    half; the Mann-Whitney statistic). None when either side is empty or a score is not finite."""
    neg, pos = np.asarray(negatives, np.float64).ravel(), np.asarray(positives, np.float64).ravel()
    if not neg.size or not pos.size or not (np.isfinite(neg).all() and np.isfinite(pos).all()):
        return None
    both = np.concatenate([neg, pos])
    uniq, inv, counts = np.unique(both, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = (first + (counts + 1) / 2.0)[inv]  # average rank of each value, from 1
    u = ranks[neg.size:].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (neg.size * pos.size))


def format_time(t: float, relative: bool) -> str:
    """A time to the second: ``2004-02-19 06:22:39`` (UTC) for dated data, ``+H:MM:SS`` from the start else."""
    if relative:
        sec = int(math.floor(float(t) + 0.5))
        sign = "-" if sec < 0 else "+"
        h, rem = divmod(abs(sec), 3600)
        return f"{sign}{h}:{rem // 60:02d}:{rem % 60:02d}"
    return datetime.fromtimestamp(round(float(t)), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
