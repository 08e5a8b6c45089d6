"""From reconstructions to scores, from scores to alarms: the same rule on the workstation and the gateway.

score          = mean |x - x_hat| over the window's T frames and F features (the articles' MAE)
contribution_c = sum of |x - x_hat| over channel c's features / (T * F); contributions add up to the score
A window is *above* when its score exceeds the threshold or, where per-channel thresholds are known, any
channel's contribution exceeds that channel's healthy threshold (``AlarmState.level``). An alarm is raised
after ``raise_after`` consecutive windows above and cleared after ``clear_after`` consecutive windows below
``hysteresis`` times every threshold: one noisy window neither raises nor clears it. The channel an alarm
names is the one whose contribution is largest relative to its own healthy level, so a naturally noisy
bearing is not blamed for another's fault.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..sections import check_fields, checked


def reconstruction_scores(
    x: np.ndarray, x_hat: np.ndarray, n_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n, T, F) inputs and reconstructions -> scores (n,) and per-channel contributions (n, C)."""
    if x.shape != x_hat.shape or x.ndim != 3:
        raise ValueError(f"input {x.shape} and reconstruction {x_hat.shape} must both be (n, T, F)")
    n, t, f = x.shape
    if f % n_channels:
        raise ValueError(f"{f} features do not split into {n_channels} channels")
    err = np.abs(np.asarray(x, np.float64) - np.asarray(x_hat, np.float64))
    per_channel = err.reshape(n, t, n_channels, f // n_channels).sum(axis=(1, 3)) / (t * f)
    return per_channel.sum(axis=1), per_channel


def alarm_levels(
    scores: np.ndarray,
    threshold: float,
    contributions: np.ndarray | None = None,
    channel_thresholds: np.ndarray | None = None,
) -> np.ndarray:
    """How far windows are from healthy, in units of their thresholds (> 1 is above), shape (n,).

    The larger of score / threshold and, where channel thresholds are known, the largest
    contribution_c / channel_threshold_c: a defect on one bearing moves that bearing's share long
    before it moves the mean over every channel's features.
    """
    lv = np.asarray(scores, dtype=np.float64) / threshold
    if contributions is not None and channel_thresholds is not None:
        ratio = np.asarray(contributions, dtype=np.float64) / np.maximum(channel_thresholds, 1e-12)
        lv = np.maximum(lv, ratio.max(axis=-1))
    return lv


@dataclass(frozen=True)
class AlarmRule:
    """k-of-k debouncing with hysteresis; defaults suit windows that overlap (hop < T). Also the ``[alarm]``
    section of a training config (``agent.sections.parse_section``): each key typed and checked."""

    raise_after: int = checked(3, lambda v: v >= 1, "a whole number >= 1")
    clear_after: int = checked(6, lambda v: v >= 1, "a whole number >= 1")
    hysteresis: float = checked(0.8, lambda v: math.isfinite(v) and 0 < v <= 1, "a number in (0, 1]")

    def __post_init__(self) -> None:
        check_fields(self, "alarm")

    def to_dict(self) -> dict[str, Any]:
        return {"raise_after": self.raise_after, "clear_after": self.clear_after, "hysteresis": self.hysteresis}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlarmRule:
        """From a manifest's or a run's ``alarm``: whole numbers stay whole numbers, nothing is coerced."""
        known = {"raise_after", "clear_after", "hysteresis"}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"alarm: unknown key(s) {sorted(extra)}; known: {sorted(known)}")
        for k, v in d.items():
            number = isinstance(v, int | float) and not isinstance(v, bool)
            if not number or (k != "hysteresis" and not isinstance(v, int)):
                raise ConfigError(f"alarm.{k}: {v!r} must be {'a number' if k == 'hysteresis' else 'a whole number'}")
        return cls(**{k: (float(v) if k == "hysteresis" else v) for k, v in d.items()})


@dataclass(frozen=True)
class Decision:
    """What the alarm state machine says about one window."""

    above: bool  # this window exceeds the threshold or a channel threshold
    active: bool  # an alarm is active after this window
    event: str | None  # "raised", "cleared" or None
    channel: int  # index of the channel most responsible (relative to its healthy level)
    level: float  # the window's alarm level (see alarm_levels): above when > 1


@dataclass
class AlarmState:
    """Streaming alarm state: feed it one window at a time (the gateway) or a whole run (evaluation)."""

    threshold: float
    rule: AlarmRule
    channel_thresholds: np.ndarray | None = None  # (C,) healthy level of each channel's contribution
    active: bool = False
    since_index: int | None = None
    _above_run: int = 0
    _below_run: int = 0
    _index: int = field(default=-1)

    def level(self, score: float, contributions: np.ndarray | None = None) -> float:
        """This window's ``alarm_levels``: how far it is from healthy, in units of its thresholds."""
        c = None if contributions is None else np.asarray(contributions)[None]
        return float(alarm_levels(np.array([score]), self.threshold, c, self.channel_thresholds)[0])

    def update(self, score: float, contributions: np.ndarray | None = None) -> Decision:
        self._index += 1
        lv = self.level(score, contributions)
        above = lv > 1.0
        event = None
        if above:
            self._above_run += 1
            self._below_run = 0
        else:
            self._above_run = 0
            self._below_run = self._below_run + 1 if lv < self.rule.hysteresis else 0
        if not self.active and self._above_run >= self.rule.raise_after:
            self.active, event, self.since_index = True, "raised", self._index
        elif self.active and self._below_run >= self.rule.clear_after:
            self.active, event, self.since_index = False, "cleared", None
        channel = blame(contributions, self.channel_thresholds) if contributions is not None else -1
        return Decision(above, self.active, event, channel, lv)

    def raise_now(self) -> None:
        """Raise the alarm at the current window on evidence this state did not see (another rule's k-of-k)."""
        if not self.active:
            self.active, self.since_index, self._below_run = True, self._index, 0


@dataclass
class ChannelAlarms:
    """``AlarmState``'s rule (threshold 1, no contributions) for every channel at once, in arrays: the event
    layer decides C channels per window, and C small state machines in Python cost more than the window's
    numbers. ``update`` says which channels raised and which cleared, exactly as C ``AlarmState``s would."""

    rule: AlarmRule
    n_channels: int
    active: np.ndarray = field(init=False)  # (C,) bool
    _above_run: np.ndarray = field(init=False)
    _below_run: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.active = np.zeros(self.n_channels, bool)
        self._above_run = np.zeros(self.n_channels, np.int64)
        self._below_run = np.zeros(self.n_channels, np.int64)

    def update(self, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One window's level per channel (> 1: above) -> (raised, cleared), (C,) bool each."""
        above = level > 1.0
        self._above_run = np.where(above, self._above_run + 1, 0)
        self._below_run = np.where(above | ~(level < self.rule.hysteresis), 0, self._below_run + 1)
        raised = ~self.active & (self._above_run >= self.rule.raise_after)
        cleared = self.active & (self._below_run >= self.rule.clear_after)
        self.active = (self.active | raised) & ~cleared
        return raised, cleared

    def raise_now(self, c: int) -> None:
        """Raise channel c's alarm on evidence its own runs did not see (``AlarmState.raise_now``)."""
        if not self.active[c]:
            self.active[c], self._below_run[c] = True, 0


def blame(contributions: np.ndarray, channel_thresholds: np.ndarray | None) -> int:
    """Channel with the largest contribution relative to its healthy threshold (or absolute if none)."""
    c = np.asarray(contributions, dtype=np.float64)
    if channel_thresholds is not None:
        c = c / np.maximum(channel_thresholds, 1e-12)
    return int(np.argmax(c))


def run_alarms(
    scores: np.ndarray,
    threshold: float,
    rule: AlarmRule,
    contributions: np.ndarray | None = None,
    channel_thresholds: np.ndarray | None = None,
) -> list[Decision]:
    """The alarm state machine over a whole run: exactly what the gateway would have decided."""
    state = AlarmState(threshold, rule, channel_thresholds)
    return [
        state.update(float(s), None if contributions is None else contributions[i]) for i, s in enumerate(scores)
    ]


def alarm_events(decisions: Sequence[Decision]) -> list[tuple[int, str, int]]:
    """(window index, "raised"/"cleared", channel) for every change of alarm state."""
    return [(i, d.event, d.channel) for i, d in enumerate(decisions) if d.event]
