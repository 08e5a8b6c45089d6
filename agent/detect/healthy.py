"""Fit a detector's healthy statistics: every number that describes one machine's healthy state, from what
its healthy windows showed.

Training (train/product.py) fits them on the reference machine's healthy period; commissioning
(agent/model/commission.py) fits them again on the gateway's own machine; both call ``fit`` here on the same
per-window ``Evidence``, so the two cannot disagree. What is refitted: the autoencoder's thresholds (overall
and per channel), the level floors' thresholds, healthy median and step sizes, the PCA residual's thresholds,
each channel's own-deviation centre and spread, and the diagnosis's healthy envelope energies. What is kept:
the model, the scaler, the PCA's mean and axes (they are the model's), the rules and margins.

Floors and diagnosis energies are read on each window's last frame (what the gateway has per window), so
training fits them on its healthy windows' end frames too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from .decide import alarm_levels
from .detector import Detector
from .events import EventRule
from .measures import Floor, OwnDeviation, signed_centers
from .threshold import ThresholdRule, fit_channel_thresholds, fit_threshold

MIN_STEP = math.log(1.2)  # no level change below 20% is ever called a step
_TINY = 1e-12


@dataclass(frozen=True)
class Evidence:
    """What each of n windows showed, the parts a detector needs (None where it has no such part)."""

    t: np.ndarray  # (n,) time of the window's last frame
    score: np.ndarray  # (n,) the autoencoder's score
    contributions: np.ndarray  # (n, C) its per-channel shares
    pca_score: np.ndarray | None = None  # (n,) the PCA residual's score
    pca_contributions: np.ndarray | None = None  # (n, C)
    pca_held: np.ndarray | None = None  # (n,) the PCA score held over the window and the k-1 before it (``held``)
    floors: np.ndarray | None = None  # (n, K, C) floor values of the window's last frame
    means: np.ndarray | None = None  # (n, F) window means of the scaled features
    energies: np.ndarray | None = None  # (n, C, D) log10 envelope energies of the window's last frame

    def __len__(self) -> int:
        return len(self.score)

    def finite(self) -> bool:
        """Is every number of every window finite?"""
        return all(v is None or bool(np.isfinite(v).all()) for v in (getattr(self, k) for k in _EVIDENCE_FIELDS))

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict (lists of numbers) per window: a line of the commissioning's windows file."""
        present = [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]
        return [{k: (v[i].tolist() if v.ndim > 1 else float(v[i])) for k, v in present} for i in range(len(self))]

    def window(self, which: slice | np.ndarray) -> Evidence:
        """Some of the windows (``slice(-3, None)``: the last three; or an array of indices)."""
        return replace(self, **{f.name: getattr(self, f.name)[which] for f in fields(self)
                                if getattr(self, f.name) is not None})

    def tail(self, k: int) -> Evidence:
        """The last ``k`` windows (none for k <= 0)."""
        return self.window(slice(max(len(self) - k, 0), None) if k > 0 else slice(0, 0))

    @classmethod
    def concat(cls, parts: Sequence[Evidence]) -> Evidence:
        """Several Evidence with the same parts as one, in order."""
        return replace(parts[0], **{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                                    for f in fields(cls) if getattr(parts[0], f.name) is not None})

    @classmethod
    def stack(cls, rows: Sequence[Mapping[str, Any]]) -> Evidence:
        """Windows' rows (``rows()`` or the pipeline's per-window ``Evidence``) as one Evidence; ValueError when
        they do not all have the same parts and shapes."""
        names = [f.name for f in fields(cls)]
        keys = [k for k in names if rows and k in rows[0]]
        if any(set(r) - set(names) or [k for k in names if k in r] != keys for r in rows):
            raise ValueError("windows differ in their parts")
        cols = {k: np.asarray([r[k] for r in rows], dtype=np.float64) for k in keys}
        if not rows:
            cols = {"t": np.zeros(0), "score": np.zeros(0), "contributions": np.zeros((0, 0))}
        return cls(**cols)


_EVIDENCE_FIELDS = tuple(f.name for f in fields(Evidence))


@dataclass(frozen=True)
class Extremes:
    """Each number's largest and smallest value over every window a commissioning saw, kept or not: what makes
    the statistics that are maxima (the ``max`` threshold rule, the own-deviation spread) exact on a subsample."""

    hi: Evidence  # one row: the elementwise maximum
    lo: Evidence  # one row: the elementwise minimum

    @classmethod
    def of(cls, ev: Evidence) -> Extremes:
        """The extremes of ``ev``'s windows (at least one)."""
        return cls(_reduce(ev, np.max), _reduce(ev, np.min))

    def merge(self, other: Extremes) -> Extremes:
        both = [Evidence.concat([self.hi, other.hi]), Evidence.concat([self.lo, other.lo])]
        return Extremes(_reduce(both[0], np.max), _reduce(both[1], np.min))

    def to_dict(self) -> dict[str, Any]:
        return {"hi": self.hi.rows()[0], "lo": self.lo.rows()[0]}

    @classmethod
    def from_dict(cls, d: Any, like: Evidence) -> Extremes:
        """Parse what ``to_dict`` wrote; ValueError unless both rows have ``like``'s parts and shapes."""
        if not isinstance(d, Mapping) or not isinstance(d.get("hi"), Mapping) or not isinstance(d.get("lo"), Mapping):
            raise ValueError("extremes: expected {hi: {...}, lo: {...}}")
        rows = [d["hi"], d["lo"]]
        if like.pca_held is not None:  # saved before the held PCA score was kept: its single score stands in
            rows = [r if "pca_held" in r or "pca_score" not in r else {**r, "pca_held": r["pca_score"]} for r in rows]
        try:
            hi, lo = Evidence.stack([rows[0]]), Evidence.stack([rows[1]])
        except (TypeError, KeyError) as e:
            raise ValueError(f"extremes: {e}") from None
        if not (hi.finite() and lo.finite()):
            raise ValueError("extremes: every number must be finite")
        for row in (hi, lo):
            for f in fields(like):
                a, b = getattr(row, f.name), getattr(like, f.name)
                if (a is None) != (b is None) or (a is not None and a.shape[1:] != b.shape[1:]):
                    raise ValueError(f"extremes.{f.name}: not this detector's shape")
        return cls(hi, lo)


def _reduce(ev: Evidence, how: Any) -> Evidence:
    return replace(ev, **{f.name: how(getattr(ev, f.name), axis=0, keepdims=True) for f in fields(ev)
                          if getattr(ev, f.name) is not None})


def stride_for(seen: int, keep: int | None) -> int:
    """The stride ``EvidenceLog`` has after ``seen`` windows with room for ``keep``: the smallest power of two
    that leaves at most ``keep`` windows (1 when ``keep`` is None: every window)."""
    s = 1
    while keep is not None and -(-seen // s) > keep:
        s *= 2
    return s


@dataclass
class EvidenceLog:
    """Windows' evidence appended one window at a time into float64 arrays (8 bytes a number; a list of Python
    floats takes about 32), holding at most ``keep`` windows whatever the commissioning's length.

    It keeps an evenly spaced subsample of every window it has seen, in order: window i (counting from 0) is
    kept when ``i % stride == 0``. When it is full and a window to keep arrives it drops every second kept
    window and doubles the stride, so it never holds more than ``keep`` windows (``stride_for`` says which
    stride a count of windows ends with: the batch twin). The arrays are allocated for ``keep`` rows at the
    first window (np.empty: the system commits their pages as they fill), so filling them never copies."""

    keep: int | None = None  # the most windows held (None: every one)
    stride: int = 1
    seen: int = 0  # windows offered so far, kept or not
    extremes: Extremes | None = None  # over every window offered, kept or not
    _cols: dict[str, np.ndarray] = field(default_factory=dict)
    _n: int = 0

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes its arrays hold (allocated: at most ``keep`` rows)."""
        return sum(c.nbytes for c in self._cols.values())

    @property
    def t0(self) -> float:
        """The time of the first window (always kept)."""
        return float(self._cols["t"][0])

    def append(self, ev: Evidence) -> np.ndarray:
        """Offer ``ev``'s windows in order (every window must have the same parts); the indices into ``ev`` of
        the ones kept. ``stride`` changes when the log was full and halved."""
        if len(ev):
            ext = Extremes.of(ev)
            self.extremes = ext if self.extremes is None else self.extremes.merge(ext)
        kept = []
        for j in range(len(ev)):
            i, self.seen = self.seen, self.seen + 1
            if i % self.stride:
                continue
            if self.keep is not None and self._n >= self.keep:
                self._halve()
                if i % self.stride:
                    continue
            self._put(ev, j)
            kept.append(j)
        return np.asarray(kept, dtype=np.intp)

    @classmethod
    def restore(cls, ev: Evidence, stride: int, seen: int, keep: int | None, extremes: Extremes | None = None
                ) -> EvidenceLog:
        """A log holding ``ev`` (the windows a log with ``stride`` kept of ``seen`` windows, in order, and the
        ``extremes`` of all of them as saved), halved until it fits ``keep`` (a config whose ``keep`` went down)."""
        log = cls(keep=None if keep is None else max(keep, len(ev)), stride=stride)
        for j in range(len(ev)):
            log._put(ev, j)
        log.keep, log.seen = keep, seen
        if len(ev):
            log.extremes = Extremes.of(ev) if extremes is None else extremes.merge(Extremes.of(ev))
        if keep is not None and log._n > keep:
            while log._n > keep:
                log._halve()
            log._cols = {k: c[:keep].copy() for k, c in log._cols.items()}
        return log

    def _put(self, ev: Evidence, j: int) -> None:
        for f in fields(ev):
            v = getattr(ev, f.name)
            if v is None:
                continue
            col = self._cols.get(f.name)
            if col is None or self._n >= len(col):
                size = max(64, 2 * self._n) if self.keep is None else self.keep  # no copy as it fills
                grown = np.empty((size, *np.shape(v)[1:]))
                if col is not None:
                    grown[: self._n] = col[: self._n]
                col = self._cols[f.name] = grown
            col[self._n] = v[j]
        self._n += 1

    def _halve(self) -> None:
        """Drop every second kept window (the kept ones stay those with ``i % stride == 0``, stride doubled)."""
        m = (self._n + 1) // 2
        for col in self._cols.values():
            col[:m] = col[: self._n: 2].copy()
        self._n, self.stride = m, self.stride * 2

    def evidence(self) -> Evidence:
        """Every window kept so far (views, valid until the next ``append``)."""
        if not self._n:
            return Evidence(np.zeros(0), np.zeros(0), np.zeros((0, 0)))
        return Evidence(**{k: c[: self._n] for k, c in self._cols.items()})


def held(scores: np.ndarray, k: int, before: Sequence[float] = ()) -> np.ndarray:
    """Each of n consecutive windows' score held over it and the k - 1 windows before it (their smallest;
    ``before``: the scores of the windows just before the first, oldest first): what an alarm rule that needs k
    windows in a row above sees. A threshold over the healthy windows' held scores is the lowest that keeps the
    healthy period free of alarms; one over their single scores also covers a single window that the k-of-k
    rule would never alarm on (a start-up, one noisy snapshot)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if k <= 1:
        return s.copy()
    if len(s) == 1 and math.isfinite(s[0]) and all(map(math.isfinite, before)):  # the gateway: one window
        return np.array([min((s[0], *before[max(len(before) - (k - 1), 0):]))])
    lead = np.asarray(before, dtype=np.float64).reshape(-1)[-(k - 1):]
    padded = np.concatenate([np.full(k - 1 - len(lead), np.inf), lead, s])  # no window before: not a minimum
    n = len(s)
    return np.min(np.stack([padded[k - 1 - lag: k - 1 - lag + n] for lag in range(k)]), axis=0)


def window_evidence(detector: Detector, t: np.ndarray, x_scaled: np.ndarray, score: np.ndarray,
                    contributions: np.ndarray, floors: np.ndarray | None = None,
                    energies: np.ndarray | None = None, pca_before: Sequence[float] = ()) -> Evidence:
    """n consecutive windows (n, T, F) scaled, with their autoencoder scores, contributions, and (combined
    detector) the floor values and envelope energies of each one's last frame -> what ``fit`` and the decisions
    read. ``pca_before``: the PCA scores of the windows before these (a gateway scores one window at a time)."""
    t, score = np.asarray(t, np.float64).reshape(-1), np.asarray(score, np.float64).reshape(-1)
    contributions = np.asarray(contributions, np.float64)
    if not detector.combined:
        return Evidence(t, score, contributions)
    x = np.asarray(x_scaled, dtype=np.float64)
    ps = pc = ph = None
    if detector.pca is not None:
        ps, pc = detector.pca.scores(x, len(detector.channels))
        ph = held(ps, detector.rule.raise_after, pca_before)
    return Evidence(t, score, contributions, pca_score=ps, pca_contributions=pc, pca_held=ph,
                    floors=np.asarray(floors, np.float64), means=x.mean(axis=-2),
                    energies=None if detector.diagnosis is None or energies is None else np.asarray(energies))


def event_inputs(d: Detector, ev: Evidence) -> tuple[np.ndarray, ...]:
    """What the event layer (agent/detect/events.py) reads per window, as ``EventState.update`` takes it: the models'
    score level (n,) and channel levels (n, C), the floor ratios, own deviation, log levels and blame levels
    (n, C): each channel's share of whichever score (autoencoder or PCA residual) is the larger; and each channel's
    own deviation over its level-free features alone (n, C), how far its signal's shape moved."""
    assert d.floor is not None and d.own is not None and ev.floors is not None and ev.means is not None
    sl = ev.score / d.threshold
    cl = ev.contributions / d.channel_thresholds
    blame = cl
    if d.pca is not None and ev.pca_score is not None and ev.pca_contributions is not None:
        pl = ev.pca_score / d.pca.threshold
        # its channel shares spread too much to be a channel's evidence, but they say which moved channel
        # the residual's score belongs to
        blame = np.where((pl > sl)[:, None], ev.pca_contributions / d.pca.channel_thresholds, cl)
        sl = np.maximum(sl, pl)
    z, shape = d.own.z_and_shape(ev.means, len(d.channels), d.spec.level_free)
    return sl, cl, d.floor.ratios(ev.floors), z, d.floor.log_level(ev.floors), blame, shape


def levels(d: Detector, ev: Evidence) -> tuple[np.ndarray, np.ndarray]:
    """How far each window (n,) and each channel (n, C) sit from ``d``'s healthy state, in units of its
    thresholds (> 1 is above): the autoencoder's (and PCA's) score level and each channel's share of the
    models' error, and with the combined detector each channel's own level against its floor."""
    per_channel = ev.contributions / d.channel_thresholds
    if not d.combined:
        return alarm_levels(ev.score, d.threshold, ev.contributions, d.channel_thresholds), per_channel
    sl, cl, ratios, *_ = event_inputs(d, ev)
    per_channel = np.maximum(cl, ratios)
    return np.maximum(sl, per_channel.max(axis=1)), per_channel


def level_drift(levels: np.ndarray) -> np.ndarray | None:
    """(n, C) a level per healthy window (RMS, say), in time order -> (C,) log of the median of the last fifth
    over that of the first fifth: how far the healthy period moved from its start to its end. The thresholds
    assume one steady condition (any healthy window as likely as another to be the largest); a drift beyond
    ``MIN_STEP`` says it was not one. None under 10 windows (a fifth of two is no median)."""
    lv = np.asarray(levels, dtype=np.float64)
    if len(lv) < 10:
        return None
    k = len(lv) // 5
    first, last = np.median(lv[:k], axis=0), np.median(lv[-k:], axis=0)
    return np.log(np.maximum(last, _TINY) / np.maximum(first, _TINY))


def step_sizes(log_level: np.ndarray, history: int) -> np.ndarray:
    """(n, C) healthy log levels per window -> (C,) the smallest jump called a step: 1.5x any healthy jump."""
    if len(log_level) <= history:
        return np.full(log_level.shape[1], MIN_STEP * 2)
    base = np.stack([np.median(log_level[i - history:i], axis=0) for i in range(history, len(log_level))])
    jumps = log_level[history:] - base
    return np.maximum(MIN_STEP, 1.5 * jumps.max(axis=0))


def fit_floor(floor: Floor, floors: np.ndarray, rule: ThresholdRule, history: int,
              lowest: np.ndarray | None = None) -> Floor:
    """Floor thresholds (by the threshold rule), healthy median and step sizes from healthy windows' floor
    values (n, K, C), all on their levels (a signed column's |distance from its healthy median|). ``lowest``
    (1, K, C): the smallest values of every healthy window, when ``floors`` are a subsample of them."""
    shaped = replace(floor, center=signed_centers(floors, lowest))
    lv = shaped.levels(floors)
    thresholds = np.stack([fit_channel_thresholds(lv[:, k, :], rule) for k in range(lv.shape[1])])
    median = np.median(lv, axis=0)
    log_lv = np.log(np.maximum(lv[:, 0, :], _TINY) / np.maximum(np.abs(median[0]), _TINY))
    return replace(shaped, thresholds=np.maximum(thresholds, _TINY), median=median,
                   step=step_sizes(log_lv, history), high=log_lv.max(axis=0))


def fit(detector: Detector, ev: Evidence, extremes: Extremes | None = None) -> Detector:
    """``detector`` with every healthy statistic refitted on ``ev`` (healthy windows) by its own threshold rule.

    ``extremes`` (of every window, when ``ev`` is a subsample of them) make the maxima exact: with the ``max``
    rule each threshold is the largest value seen, and the own-deviation spread is the farthest any window's
    mean went from the centre; medians, quantiles and step sizes come from ``ev``."""
    rule = detector.threshold_rule

    def col(name: str) -> np.ndarray:
        v = getattr(ev, name)
        if extremes is None or rule.method != "max":
            return v
        return np.concatenate([v, getattr(extremes.hi, name)])  # max of (kept + every window's max) = exact

    d = detector.with_thresholds(fit_threshold(col("score"), rule), fit_channel_thresholds(col("contributions"), rule))
    if not detector.combined:
        return d
    assert d.floor is not None and ev.floors is not None and ev.means is not None
    floor = fit_floor(d.floor, ev.floors, rule, (d.events or EventRule()).history,
                      None if extremes is None else extremes.lo.floors)
    if extremes is not None and rule.method == "max":
        # a level |v - center| is largest at one of the value's extremes: the highest or the lowest
        hv = floor.levels(np.concatenate([ev.floors, extremes.hi.floors, extremes.lo.floors]))
        thr = np.stack([fit_channel_thresholds(hv[:, k, :], rule) for k in range(hv.shape[1])])
        hi = np.maximum(floor.levels(extremes.hi.floors)[:, 0, :],
                        floor.levels(extremes.lo.floors)[:, 0, :]).max(axis=0)
        high = np.log(np.maximum(hi, _TINY) / np.maximum(np.abs(floor.median[0]), _TINY))
        floor = replace(floor, thresholds=np.maximum(thr, _TINY), high=np.maximum(floor.high, high))
    parts: dict[str, Any] = {"floor": floor}
    if d.pca is not None and ev.pca_score is not None and ev.pca_contributions is not None:
        # over the held scores (windows files from before they were kept: the single ones, never lower)
        held_col = col("pca_held" if ev.pca_held is not None else "pca_score")
        parts["pca"] = replace(d.pca, threshold=max(fit_threshold(held_col, rule), _TINY),
                               channel_thresholds=np.maximum(fit_channel_thresholds(col("pca_contributions"), rule),
                                                             _TINY))
    center = np.median(ev.means, axis=0)
    means = ev.means if extremes is None else np.concatenate([ev.means, extremes.hi.means, extremes.lo.means])
    parts["own"] = OwnDeviation(center, np.maximum(np.abs(means - center).max(axis=0), 1e-6))
    if d.diagnosis is not None and ev.energies is not None:
        parts["diagnosis"] = replace(d.diagnosis, healthy=np.median(ev.energies, axis=0))
    return replace(d, **parts)
