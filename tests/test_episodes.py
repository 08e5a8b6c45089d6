"""Episode scoring: a warning is an alarm that lasts until the failure; everything else is a nuisance alarm."""

from __future__ import annotations

import numpy as np
import pytest

from vibrawatch.agent.detect.episodes import (
    Episode,
    Scoring,
    auc,
    cadence,
    format_time,
    from_active,
    from_single,
    merge_time,
    score,
)

H = 3600.0
T = np.arange(0, 100 * H + 1, H)  # one window an hour, 0..100 h: 101 windows


def active(*spans: tuple[int, int, int], n_channels: int = 2) -> np.ndarray:
    """Alarm state per window from (channel, first hour active, first hour clear again) spans."""
    a = np.zeros((len(T), n_channels), bool)
    for c, s, e in spans:
        a[s:e, c] = True
    return a


def run(failure_h: float | None = 100, failed: set[int] | None = None, healthy_h: float | None = None,
        merge_h: float = 6, n_channels: int = 2) -> Scoring:
    return Scoring(0.0, float(T[-1]), n_channels, merge_h * H, None if failure_h is None else failure_h * H,
                   None if failed is None else frozenset(failed), None if healthy_h is None else healthy_h * H)


def test_episodes_from_per_channel_state() -> None:
    eps = from_active(T, active((0, 10, 12), (1, 5, 7), (0, 90, 101)))
    assert [(e.channel, e.raised / H, None if e.cleared is None else e.cleared / H) for e in eps] == [
        (1, 5, 7), (0, 10, 12), (0, 90, None)]
    assert eps[-1].cleared_index is None and eps[0].raised_index == 5


def test_a_single_alarm_state_names_the_channel_it_was_raised_on() -> None:
    on = np.zeros(len(T), bool)
    on[20:30] = True
    channel = np.zeros(len(T), int)
    channel[25:] = 1  # the blame moves while the alarm is on: the episode keeps the channel it was raised on
    (e,) = from_single(T, on, channel)
    assert (e.channel, e.raised, e.cleared) == (0, 20 * H, 30 * H)


def test_a_brief_early_crossing_that_clears_is_a_nuisance_not_a_lead() -> None:
    # the case: an alarm weeks early on the bearing that later fails, cleared, then the real one
    sc = score(from_active(T, active((0, 20, 22), (0, 80, 101))), run(failed={0}))
    assert sc.warning is not None and sc.warning.raised == 80 * H
    assert sc.lead_s == 20 * H
    assert [e.raised / H for e in sc.nuisance] == [20]


def test_a_gap_shorter_than_the_merge_time_keeps_the_warning_a_longer_one_does_not() -> None:
    short = score(from_active(T, active((0, 70, 80), (0, 85, 101))), run(failed={0}, merge_h=6))  # gap 5 h
    assert short.warning is not None and short.warning.raised == 70 * H and not short.nuisance
    assert len(short.warned) == 2
    long = score(from_active(T, active((0, 70, 80), (0, 87, 101))), run(failed={0}, merge_h=6))  # gap 7 h
    assert long.warning is not None and long.warning.raised == 87 * H
    assert [e.raised / H for e in long.nuisance] == [70]


def test_an_alarm_that_cleared_before_the_failure_is_no_warning() -> None:
    sc = score(from_active(T, active((0, 50, 80))), run(failed={0}, merge_h=6))  # quiet the last 20 h
    assert sc.warning is None and sc.lead_s is None and len(sc.nuisance) == 1
    near = score(from_active(T, active((0, 50, 97))), run(failed={0}, merge_h=6))  # cleared 3 h before: merged
    assert near.warning is not None and near.lead_s == 50 * H


def test_alarms_on_a_channel_that_did_not_fail_are_nuisance() -> None:
    sc = score(from_active(T, active((0, 80, 101), (1, 60, 101))), run(failed={0}))
    assert sc.warning is not None and sc.warning.channel == 0 and sc.lead_s == 20 * H
    assert [(e.channel, e.raised / H) for e in sc.nuisance] == [(1, 60)]
    # without --failed any channel may be the one that failed: the earliest lasting alarm is the warning
    anyone = score(from_active(T, active((0, 80, 101), (1, 60, 101))), run(failed=None))
    assert anyone.warning is not None and anyone.warning.channel == 1 and not anyone.nuisance


def test_a_machine_level_alarm_counts_for_any_failed_channel() -> None:
    eps = [Episode(-1, 75 * H, None, 75, None)]
    sc = score(eps, run(failed={1}))
    assert sc.warning == eps[0] and sc.lead_s == 25 * H


def test_healthy_until_makes_alarms_in_the_healthy_part_nuisance_without_failed() -> None:
    eps = from_active(T, active((0, 1, 3), (1, 2, 101)))
    # the channel-1 alarm from hour 2 lasts to the end, but the run is known healthy up to hour 50
    sc = score(eps, run(failed=None, healthy_h=50))
    assert sc.warning is None and sc.lead_s is None and len(sc.nuisance) == 2
    assert sc.nuisance_in_healthy == 2
    # the same alarms with nothing known about the run read as a 98 h lead: what the healthy part prevents
    blind = score(eps, run(failed=None))
    assert blind.lead_s == 98 * H
    # a warning after the healthy part still counts; the alarm that crossed into it from before does not
    later = score(from_active(T, active((0, 40, 101), (1, 60, 101))), run(failed=None, healthy_h=50))
    assert later.warning is not None and later.warning.channel == 1 and later.lead_s == 40 * H
    assert [(e.channel, e.raised / H) for e in later.nuisance] == [(0, 40)]


def test_alarms_after_the_failure_are_not_scored() -> None:
    sc = score(from_active(T, active((0, 60, 101), (1, 95, 98))), run(failure_h=90, failed={0}))
    assert sc.lead_s == 30 * H and not sc.nuisance
    assert sc.kind(sc.episodes[-1]) == "after failure"


def test_a_run_without_failure_has_only_nuisance() -> None:
    sc = score(from_active(T, active((0, 60, 101))), run(failure_h=None))
    assert sc.warning is None and len(sc.nuisance) == 1


def test_nuisance_per_1000_machine_hours() -> None:
    # 3 nuisance alarms in a 50 h healthy part of a 4-channel machine: 3 / (50 x 4) x 1000 = 15 per 1,000 h
    eps = from_active(T, active((0, 5, 6), (1, 10, 12), (2, 30, 31), (3, 60, 62), (0, 80, 101), n_channels=4))
    sc = score(eps, run(failed={0}, healthy_h=50, n_channels=4))
    assert sc.healthy_h == 50 and sc.machine_h == 200
    assert len(sc.nuisance) == 4 and sc.nuisance_in_healthy == 3  # the one at 60 h is after the healthy part
    assert sc.per_1000_h == 15.0
    # without a known healthy part the span runs to the failure: 4 / (90 h x 4) x 1000
    assert score(eps, run(failure_h=90, failed={0}, n_channels=4)).per_1000_h == pytest.approx(4000 / 360, abs=1e-3)


def test_merge_time_is_the_rules_clear_time_in_the_datas_steps() -> None:
    t = np.r_[np.arange(10) * 600.0, 1e5 + np.arange(10) * 600.0]  # 10-min snapshots with a recording gap
    assert cadence(t) == 600.0
    assert merge_time(6, cadence(t)) == 3600.0


def test_auc_counts_ties_half() -> None:
    assert auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert auc(np.array([0.1, 0.5]), np.array([0.3])) == 0.5
    assert auc(np.array([]), np.array([1.0])) is None


def test_times_to_the_second() -> None:
    assert format_time(3723.4, True) == "+1:02:03"
    assert format_time(100 * H + 5, True) == "+100:00:05"
    assert format_time(1076581959.6, False) == "2004-02-12 10:32:40"
