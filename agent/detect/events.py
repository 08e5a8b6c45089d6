"""The combined detector's event layer: what is combined, who is named, what is not a failure.

Each window, ``EventState`` takes the models' scores over their thresholds and the measures (``measures``:
floor ratios, own deviation, log levels) and decides each channel's alarm on its own evidence:

- ``EventRule``: an abrupt jump of one channel's level (a step larger than any healthy one) holds that
  channel's alarm for ``transient_s``: if the level relaxes back, a ``transient`` event says when, which
  channel and how large; if it holds or keeps growing, the alarm is raised. Severity comes before patience:
  a held channel beyond ``Floor.severe_levels`` (the healthy maximum exceeded again by the healthy range, at
  least a doubling) or beyond the configured absolute ``EventRule.absolute`` is not held: the alarm rule's k
  windows judge it like any level (a one-window spike that falls back still raises nothing). The same jump
  on every channel in one window is a ``condition_change`` (load, speed, remounting): published once, after
  which levels are read relative to the new condition and the models' scores (trained on the old one) are
  not used; "the same" = the median jump removed, every channel is left within its own step
  (``shared_shift``). Severity comes before that reading too: a shift that takes any channel beyond its
  severe level is not a condition change but judged as a step (a zone limit is read whatever the cause).
  Across a recording gap (a pause of more than ``GAP`` times the recent spacing) nothing
  links the windows on either side: there every channel need only have moved up ``ALIKE`` (half) of its
  own step, alike in the same sense.
- ``Verdict``: the decision about one window, per channel, with the events decided in it.

``EventState`` is the streaming object (one window at a time, the gateway); ``run_events`` its batch twin.
What a raised alarm's defect is: ``diagnosis``.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .decide import AlarmRule, ChannelAlarms
from .manifest_fields import number_field

GAP = 4.0  # a pause longer than this many times the recent spacing of windows is a recording gap
# A held step whose channel's shape (its level-free features: crest, kurtosis) moved more than this many times as far
# as the healthy period ever did is not waited on: a transient of level (load, a louder neighbour) leaves the shape
# as it was, the impacts of a new defect raise it. Twice the healthy extreme, as the severe level is the healthy
# maximum exceeded again by the healthy range.
SHAPE_SEVERE = 2.0
ALIKE = 0.5  # across a gap, a shared shift moved every channel at least this share of its own step


@dataclass(frozen=True)
class EventRule:
    """When a jump is a transient and when every channel moving at once is a condition change."""

    transient_s: float = 12 * 3600.0  # a step that relaxes back within this is a transient, not a failure
    relaxed: float = 0.5  # ... relaxed back = less than this share of the step left
    grows: float = 2.0  # a step whose log level reaches this many times its size is growing: alarm at once
    history: int = 6  # windows before a jump that give the level it jumped from
    share: float = 0.8  # a channel counts if it moved at least this share of the most-moved one
    # Per channel, a level (the first floor feature's, e.g. RMS in the data's units) beyond which a step alarms
    # at once and a level alarms whatever the healthy period showed, as ISO 10816/20816 zone limits are used;
    # None: off (the healthy statistics alone decide).
    absolute: tuple[float, ...] | None = None
    # Per channel, the bearing it measures (an index; channels with the same one are directions of one bearing's
    # housing: horizontal, vertical, axial). Attribution compares bearings, so two directions of the failing
    # bearing never mask each other; None: every channel a bearing of its own.
    bearings: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not (self.transient_s > 0 and 0 < self.relaxed < 1 and self.grows > 1 and self.history >= 1
                and 0 < self.share <= 1):
            raise ConfigError("events: need transient_s > 0, 0 < relaxed < 1, grows > 1, history >= 1, "
                              "0 < share <= 1")
        if self.absolute is not None and (not self.absolute or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in self.absolute)):
            raise ConfigError(f"events.absolute: expected one finite number > 0 per channel, got "
                              f"{str(self.absolute)[:60]}")
        if self.bearings is not None and (not self.bearings or not all(
                isinstance(b, int) and not isinstance(b, bool) and 0 <= b < len(self.bearings)
                for b in self.bearings)):
            raise ConfigError(f"events.bearings: expected one bearing index (0 .. channels - 1) per channel, got "
                              f"{str(self.bearings)[:60]}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"transient_s": self.transient_s, "relaxed": self.relaxed, "grows": self.grows,
                               "history": self.history, "share": self.share}
        if self.absolute is not None:
            out["absolute"] = list(self.absolute)
        if self.bearings is not None:
            out["bearings"] = list(self.bearings)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EventRule:
        if not isinstance(d, Mapping):
            raise ConfigError(f"events: expected an object, got {type(d).__name__}")
        extra = set(d) - {"transient_s", "relaxed", "grows", "history", "share", "absolute", "bearings"}
        if extra:
            raise ConfigError(f"events: unknown key(s) {sorted(extra)}")
        h = d.get("history", 6)
        if isinstance(h, bool) or not isinstance(h, int):
            raise ConfigError(f"events.history: expected int, got {h!r}")
        a = d.get("absolute")
        if a is not None and not isinstance(a, list):
            raise ConfigError(f"events.absolute: expected a list of numbers, got {str(a)[:60]}")
        b = d.get("bearings")
        if b is not None and not isinstance(b, list):
            raise ConfigError(f"events.bearings: expected a list of bearing indices, got {str(b)[:60]}")
        return cls(number_field(d, "transient_s", "events", 0.0, 12 * 3600.0),
                   number_field(d, "relaxed", "events", 0.0, 0.5), number_field(d, "grows", "events", 1.0, 2.0), h,
                   number_field(d, "share", "events", 0.0, 0.8), None if a is None else tuple(a),
                   None if b is None else tuple(b))


@dataclass(frozen=True)
class Event:
    """Something to publish besides the alarm state: a transient or a condition change."""

    kind: str  # "transient" or "condition_change"
    t: float  # when the jump happened (the window it was seen in)
    channels: tuple[int, ...]
    ratio: tuple[float, ...]  # level after / before the jump, per channel
    until: float | None = None  # transient: when it was seen to have relaxed back


@dataclass(frozen=True)
class Step:
    """A pending jump on one channel."""

    t: float
    base: float  # log level before the jump
    size: float  # log jump


@dataclass(frozen=True)
class Verdict:
    """The product's decision about one window. Every channel has its own alarm (k-of-k with hysteresis on
    its own evidence), so an alarm names only channels whose own behaviour changed."""

    level: float  # the largest channel evidence (> 1: above), after masking transients and condition changes
    above: bool
    active: tuple[int, ...]  # channels in alarm after this window
    raised: tuple[int, ...]  # channels whose alarm was raised in this window, strongest first
    cleared: tuple[int, ...]  # channels whose alarm cleared in this window
    evidence: np.ndarray  # (C,) each channel's own evidence in threshold units
    events: tuple[Event, ...]  # transients and condition changes decided in this window

    @property
    def event(self) -> str | None:
        """"raised" when any channel raised, else "cleared" when any cleared (the single-alarm view)."""
        return "raised" if self.raised else "cleared" if self.cleared else None

    @property
    def channel(self) -> int:
        """The channel of ``event`` (strongest raised, or first cleared), -1 if none."""
        return self.raised[0] if self.raised else self.cleared[0] if self.cleared else -1


def shared_shift(jump: np.ndarray, step: np.ndarray, least: float = 1.0) -> bool:
    """Is ``jump`` (C,) one shift of the whole machine: every channel up by at least ``least`` of its own step,
    and what is left of each after removing the median shift within that channel's step (what it does when
    healthy)? A fault on one bearing reaches the others through the housing attenuated: its own channel is then
    left far above the rest (x7.4 drive end, x2.8 fan end on a seeded inner-race fault), not a shared shift."""
    return bool(np.all(jump > least * step) and np.all(np.abs(jump - np.median(jump)) < step))


@dataclass
class ScoreRun:
    """The whole-window score's own alarm rule across channels. The window's blame can move between two channels
    that moved alike (window by window, whichever has the larger share), and then neither channel's own k-of-k
    sees k windows in a row although the score did: k consecutive windows above on the score raise the alarm of
    the channel blamed most often over them (the latest on a tie), unless one of the channels blamed over them is
    already in alarm (the score is then already explained)."""

    k: int
    _blamed: deque[int] = field(init=False)  # the channel each of the last windows in a row was blamed on

    def __post_init__(self) -> None:
        self._blamed = deque(maxlen=self.k)

    def update(self, blame: int | None, active: np.ndarray) -> int | None:
        """``blame``: the channel this window's score counts against (None: the window does not count, and the
        run starts again); ``active`` (C,): which channels are in alarm. The channel to raise, or None."""
        if blame is None:
            self._blamed.clear()
            return None
        self._blamed.append(blame)
        if len(self._blamed) < self.k or any(active[b] for b in self._blamed):
            return None
        counts = np.bincount(np.asarray(self._blamed), minlength=len(active))
        return next(b for b in reversed(self._blamed) if counts[b] == counts.max())


@dataclass
class EventState:
    """Streaming: feed ``update`` one window at a time; masks transients, names channels, finds shared changes."""

    rule: EventRule
    alarm: AlarmRule
    n_channels: int
    step: np.ndarray  # (C,) from Floor.step
    severe: np.ndarray | None = None  # (C,) log level (against healthy, current condition): a step alarms at once
    ceiling: np.ndarray | None = None  # (C,) log level (against healthy) of ``EventRule.absolute``: always an alarm
    _alarms: ChannelAlarms = field(init=False)  # each channel's k-of-k on its own evidence
    _history: deque[np.ndarray] = field(init=False)
    _times: deque[float] = field(init=False)  # the recent windows' times: their spacing tells a gap
    _pending: dict[int, Step] = field(default_factory=dict, init=False)
    _offset: np.ndarray | None = field(default=None, init=False)  # log level of the current condition
    _relaxing: dict[int, tuple[float, float]] = field(default_factory=dict, init=False)  # c -> (log level, size)
    _score_run: ScoreRun = field(init=False)  # the whole-window score's own k windows in a row

    def __post_init__(self) -> None:
        self._alarms = ChannelAlarms(self.alarm, self.n_channels)
        self._history = deque(maxlen=self.rule.history)
        self._times = deque(maxlen=self.rule.history + 1)
        self._score_run = ScoreRun(self.alarm.raise_after)
        b = self.rule.bearings
        if b is not None and len(b) != self.n_channels:
            raise ConfigError(f"events.bearings: {len(b)} entries, expected one per channel ({self.n_channels})")
        self._bearing = None if b is None else np.asarray(b, dtype=np.intp)

    def update(self, t: float, score_level: float, channel_level: np.ndarray, own: np.ndarray, z: np.ndarray,
               log_level: np.ndarray, blame_level: np.ndarray | None = None, shape: np.ndarray | None = None
               ) -> Verdict:
        """One window. ``score_level``: the models' whole-window score over its threshold; ``channel_level``
        (C,): each channel's share of the models' error over its own threshold; ``own``: each channel's floor
        ratio; ``z``: own deviation; ``log_level``: log level against healthy; ``blame_level`` (C,): each
        channel's share of the score that set ``score_level`` (default ``channel_level``); ``shape`` (C,): own
        deviation over the level-free features alone (None: not known, a step is judged by its level alone).
        Levels > 1 are above."""
        own = np.asarray(own, dtype=np.float64)
        lv = np.asarray(log_level, dtype=np.float64)
        raw = lv  # against healthy, whatever the condition: what an absolute limit is read on
        events: list[Event] = []
        if self._offset is not None:
            own = own / np.exp(self._offset)  # read relative to the condition the machine is in now
            lv = lv - self._offset
        gap = self._gap(t)
        if len(self._history) == self._history.maxlen:
            base = _median_rows(self._history)
            jump = lv - base
            # abrupt: above every healthy jump against the recent level, and most of it since the last window
            # (a fault that grows fast but steadily is not a step and is never held)
            abrupt = (jump > self.step) & (lv - self._history[-1] > 0.75 * self.step)
            # a channel already in alarm is not held: its alarm stands until its own evidence clears it
            new = [c for c in (abrupt & ~self._alarms.active).nonzero()[0].tolist() if c not in self._pending]
            # severity before a shared reading: a shift that takes a channel beyond its severe level is judged
            # by that level, whatever moved with it (as a zone limit is read, whatever the cause)
            alike = self.n_channels > 1 and (bool(abrupt.all()) and shared_shift(jump, self.step)
                                             or gap and shared_shift(jump, self.step, ALIKE))
            if alike and not self._severe(lv, raw).any():
                shared = float(np.median(jump))
                events.append(Event("condition_change", t, tuple(range(self.n_channels)),
                                    tuple(float(np.exp(j)) for j in jump)))
                self._offset = (self._offset if self._offset is not None else 0.0) + np.full(self.n_channels, shared)
                own, lv = own / math.exp(shared), lv - shared
                self._history.clear()
                new = []
            for c in new:
                self._pending[c] = Step(t, float(base[c]), float(jump[c]))
        for c, s in list(self._pending.items()):
            left = (lv[c] - s.base) / s.size
            if left < self.rule.relaxed:
                events.append(Event("transient", s.t, (c,), (float(math.exp(s.size)),), until=t))
                del self._pending[c]
                self._relaxing[c] = (float(lv[c]), s.size)  # its tail stays masked while it keeps relaxing
            elif left >= self.rule.grows or t - s.t >= self.rule.transient_s:
                del self._pending[c]  # it holds or grows: a real change, alarm as usual
        self._history.append(lv)
        # Each channel's own evidence: its floor ratio and its share of the models' error, counted only where the
        # channel moved at least ``share`` as much as the most-moved one, "moved" being the geometric mean of
        # how far its own inputs rose (z) and its share of the models' error: a fault's vibration and a model's
        # error both spread to the other channels, which then move much less on both counts. The whole-window
        # score goes to the moved channel with the largest share of that score (the PCA residual's own shares
        # when it is the larger: the autoencoder's may favour a channel the residual does not).
        zz = np.asarray(z, dtype=np.float64)
        cl = np.asarray(channel_level, dtype=np.float64)
        m = np.sqrt(np.maximum(zz, 0.0) * np.maximum(cl, 0.0)) if self._offset is None else zz
        moved = attributed(m, self._bearing, self.rule.share, self._alarms.active, [*self._pending, *self._relaxing])
        evidence = np.where(moved, own, 0.0)
        # Severity before patience: a held channel now beyond its severe level, or whose shape moved beyond
        # SHAPE_SEVERE, is not waited on but judged by the alarm rule's k windows like any level (a spike of one
        # window that falls back stays quiet), if it is the channel that moved: one that moved less than another is
        # most likely that one's vibration reaching it.
        held_moved = [c for c in self._pending if moved[c]]
        severe_now = self._severe(lv, raw, shape).nonzero()[0].tolist() if held_moved else []
        blame = -1
        if self._offset is None and self.n_channels:
            evidence = np.maximum(evidence, np.where(moved, cl, 0.0))
            bl = cl if blame_level is None else np.asarray(blame_level, dtype=np.float64)
            blame = int(np.argmax(np.where(moved, bl, -np.inf)))
            evidence[blame] = max(evidence[blame], float(score_level))
        for c, (at, size) in list(self._relaxing.items()):
            if evidence[c] <= 1.0 or lv[c] > at + 0.5 * size:
                del self._relaxing[c]  # back within its limits, or rising again: judged as usual from now on
            else:
                evidence[c] = 0.0
        for c in self._pending:
            # held: a jump is not a failure until it has shown it does not relax, unless it is severe
            evidence[c] = max(evidence[c], own[c], 1.0 + 1e-9) if c in held_moved and c in severe_now else 0.0
        if self.ceiling is not None:  # beyond the configured absolute level: an alarm, whatever else holds it
            evidence = np.maximum(evidence, np.exp(raw - self.ceiling))
        raised_now, cleared_now = self._alarms.update(evidence)
        raised = raised_now.nonzero()[0].tolist()  # (C,) arrays: not flatnonzero's ravel
        for c in raised:
            self._pending.pop(c, None)  # a severe step that raised its alarm is no longer a transient candidate
        # Windows whose blamed channel is held (a step, a relaxing transient: its evidence was zeroed) or that
        # come after a condition change (no blame) do not count for the whole-window score's k in a row.
        scored = blame >= 0 and score_level > 1.0 and evidence[blame] >= score_level
        c = self._score_run.update(blame if scored else None, self._alarms.active)
        if c is not None:
            self._alarms.raise_now(c)
            raised.append(c)
        raised.sort(key=lambda c: -evidence[c])
        return Verdict(
            level=float(evidence.max()) if len(evidence) else 0.0,
            above=bool((evidence > 1.0).any()),
            active=tuple(self._alarms.active.nonzero()[0].tolist()),
            raised=tuple(raised),
            cleared=tuple(cleared_now.nonzero()[0].tolist()),
            evidence=evidence,
            events=tuple(events),
        )

    def _gap(self, t: float) -> bool:
        """Is window ``t`` the first after a recording gap (a pause of more than GAP times the recent spacing)?"""
        times = self._times
        gap = len(times) >= 3 and t - times[-1] > GAP * _median(b - a for a, b in itertools.pairwise(times))
        times.append(t)
        return bool(gap)

    def _severe(self, lv: np.ndarray, raw: np.ndarray, shape: np.ndarray | None = None) -> np.ndarray:
        """(C,) which channels are beyond their severe level (healthy, current condition) or their absolute one,
        or (``shape`` given) whose shape moved beyond SHAPE_SEVERE."""
        out = np.zeros(self.n_channels, bool) if self.severe is None else lv > self.severe
        if shape is not None:
            out = out | (np.asarray(shape) > SHAPE_SEVERE)
        return out if self.ceiling is None else out | (raw > self.ceiling)


def attributed(m: np.ndarray, bearing: np.ndarray | None, share: float, active: np.ndarray, held: list[int]
               ) -> np.ndarray:
    """(C,) the channels whose own evidence counts this window: those that moved at least ``share`` of the most
    (``moved_channels``), and a channel in alarm (``active``) that did so among the channels not ``held``: an
    alarm stands until its own evidence clears it, and a step held on another channel (not yet a change at all)
    does not out-move it, as a held channel is not held itself once in alarm."""
    if not len(m):
        return np.zeros(0, bool)
    moved = moved_channels(m, bearing, share)
    if held and active.any():
        free = m.copy()
        free[held] = 0.0
        moved |= active & moved_channels(free, bearing, share)
    return moved


def moved_channels(m: np.ndarray, bearing: np.ndarray | None, share: float) -> np.ndarray:
    """(C,) did each channel move at least ``share`` of the most-moved one: by bearing when the rule says which
    channels are directions of one bearing (its most-moved direction speaks for all of them)."""
    if bearing is not None:
        by_bearing = np.zeros(len(m))
        np.maximum.at(by_bearing, bearing, m)
        m = by_bearing[bearing]
    return m >= share * m.max()


def _median(values: Iterable[float]) -> float:
    """The median of a few numbers, as np.median gives it (the mean of the middle two for an even count); not
    ``statistics.median``, whose module costs the gateway half a megabyte resident."""
    v = sorted(values)
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2


def _median_rows(rows: deque[np.ndarray]) -> np.ndarray:
    """``np.median(np.stack(rows), axis=0)``, the same numbers, for a few short rows: a sort costs a tenth of
    np.median's general machinery at this size. Rows are finite (the decider refuses any other window)."""
    s = np.sort(np.array(rows), axis=0)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2.0


def run_events(
    times: np.ndarray, score_level: np.ndarray, channel_level: np.ndarray, own: np.ndarray, z: np.ndarray,
    log_level: np.ndarray, rule: EventRule, alarm: AlarmRule, step: np.ndarray, blame_level: np.ndarray | None = None,
    severe: np.ndarray | None = None, ceiling: np.ndarray | None = None, shape: np.ndarray | None = None,
) -> list[Verdict]:
    """The batch twin of ``EventState``: a whole run, window by window, exactly as the gateway decides it."""
    state = EventState(rule, alarm, own.shape[1], step, severe, ceiling)
    return [state.update(float(times[i]), float(score_level[i]), channel_level[i], own[i], z[i], log_level[i],
                         None if blame_level is None else blame_level[i], None if shape is None else shape[i])
            for i in range(len(times))]
