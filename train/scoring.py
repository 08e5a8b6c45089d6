"""How `vibrawatch evaluate` scores a detector on a run: episodes, warning, lead, nuisance alarms and AUC, by the
definitions of ``vibrawatch.agent.detect.episodes`` (docs/detection.md, "Scoring"), as report fields."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vibrawatch.agent.detect.decide import Decision
from vibrawatch.agent.detect.episodes import Episode, Score, Scoring, auc, format_time, from_single, score


@dataclass(frozen=True)
class Detection:
    """One detector's view of a run: the level its alarm rule saw per window (> 1: above) and its episodes."""

    times: np.ndarray
    levels: np.ndarray
    episodes: list[Episode]
    threshold: float

    def alarm_levels(self) -> np.ndarray:
        """The level each decision was taken on (1 = at a threshold), for the plots."""
        return self.levels


def single_detection(times: np.ndarray, decisions: Sequence[Decision], threshold: float) -> Detection:
    """A detector with one alarm state that names a channel when raised (the autoencoder, PCA, IsolationForest)."""
    return Detection(times, np.array([d.level for d in decisions]),
                     from_single(times, np.array([d.active for d in decisions], bool),
                                 np.array([d.channel for d in decisions])), threshold)


@dataclass(frozen=True)
class RunFacts:
    """What the report knows about the evaluated run, shared by every detector scored on it."""

    scoring: Scoring
    channels: Sequence[str]
    relative: bool
    auc_until: float | None = None  # AUC: healthy up to here, not healthy after it up to the failure
    label_t: np.ndarray | None = None  # ... or the data's own labels: snapshot times
    label_v: np.ndarray | None = None  # ... and their labels (0 healthy, 1 faulty)

    def auc_masks(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(healthy, not healthy) masks over ``times`` for the AUC, or None when nothing says which is which."""
        t = np.asarray(times, dtype=np.float64)
        if self.label_t is not None and self.label_v is not None:
            lab = np.asarray(self.label_v)[np.clip(np.searchsorted(self.label_t, t, "right") - 1, 0, None)]
            return lab == 0, lab > 0
        if self.auc_until is None:
            return None
        end = self.scoring.failure_t if self.scoring.failure_t is not None else np.inf
        return t <= self.auc_until, (t > self.auc_until) & (t <= end)

    def time(self, t: float | None) -> str | None:
        return None if t is None else format_time(t, self.relative)

    def name(self, c: int) -> str | None:
        return self.channels[c] if c >= 0 else None


def episode_fields(e: Episode, sc: Score, f: RunFacts) -> dict[str, Any]:
    return {"channel": f.name(e.channel), "raised": f.time(e.raised), "cleared": f.time(e.cleared),
            "raised_s": e.raised, "cleared_s": e.cleared, "kind": sc.kind(e)}


def detector_report(det: Detection, f: RunFacts) -> dict[str, Any]:
    """The report fields of one detector. ``first_alarm``, ``lead_hours``, ``alarm_channel`` and ``false_alarms``
    are the warning, its lead and the nuisance count under their earlier names (scripts read them)."""
    sc = score(det.episodes, f.scoring)
    w = sc.warning
    out: dict[str, Any] = {
        "warning": None if w is None else {"start": f.time(w.raised), "start_s": w.raised,
                                           "channel": f.name(w.channel),
                                           "episodes": sum(1 for e in sc.warned if e.channel == w.channel)},
        "lead_s": None if sc.lead_s is None else round(sc.lead_s, 3),
        "lead_h": None if sc.lead_s is None else round(sc.lead_s / 3600.0, 2),
        "nuisance": {"count": len(sc.nuisance), "in_healthy": sc.nuisance_in_healthy,
                     "healthy_h": round(sc.healthy_h, 3), "machine_h": round(sc.machine_h, 3),
                     "per_1000_h": sc.per_1000_h},
        "auc": None,
        "first_alarm": f.time(w.raised) if w else None,
        "first_alarm_s": w.raised if w else None,
        "first_alarm_index": w.raised_index if w else None,
        "lead_hours": None if sc.lead_s is None else round(sc.lead_s / 3600.0, 3),
        "alarm_channel": f.name(w.channel) if w else None,
        "false_alarms": len(sc.nuisance),
        "false_alarm_times": [f.time(e.raised) for e in sc.nuisance],
        "alarms_before_failure": sum(1 for e in sc.episodes if sc.kind(e) != "after failure"),
        "threshold": det.threshold,
        "episodes": [episode_fields(e, sc, f) for e in sc.episodes],
    }
    masks = f.auc_masks(det.times)
    if masks is not None:
        a = auc(det.levels[masks[0]], det.levels[masks[1]])
        out["auc"] = None if a is None else round(a, 4)
    return out


def scoring_fields(f: RunFacts, healthy_from: str | None, auc_basis: str | None) -> dict[str, Any]:
    """How the run was scored, once for every detector: the failure, the healthy part, the merge time."""
    s = f.scoring
    return {"failure_at": f.time(s.failure_t), "failed": "any channel" if s.failed is None
            else [f.channels[c] for c in sorted(s.failed)], "healthy_until": f.time(s.healthy_until),
            "healthy_from": healthy_from, "merge_s": s.merge_s, "machine_channels": s.n_channels,
            "auc_basis": auc_basis}


def abs_if_signed(values: np.ndarray, healthy: np.ndarray) -> np.ndarray:
    """Floor values (n, C) as a level to put a threshold on: a column with a value <= 0 in its healthy part (a
    signed feature: a mean, a skewness) becomes its |deviation from the healthy median|; a level that can
    drift either way from a centre has no upper floor of its own. Columns of positive values stay as they are."""
    v = np.asarray(values, dtype=np.float64)
    signed = (v[healthy] <= 0).any(axis=0)
    if not signed.any():
        return v
    out = v.copy()
    out[:, signed] = np.abs(v[:, signed] - np.median(v[healthy][:, signed], axis=0))
    return out
