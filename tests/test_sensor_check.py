"""A faulty sensor never looks like a faulty machine: it yields a `sensor` status and no score, never a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vibrawatch.agent.detect.results import Scored, SensorStatus
from vibrawatch.agent.model.bundle import load_bundle
from vibrawatch.agent.pipeline import Pipeline
from vibrawatch.agent.sources.sensor_check import SensorLimits, check_chunk
from vibrawatch.agent.sources.source import Chunk, ReplaySource

LIM = SensorLimits(n_channels=2, fs_hz=1000.0, full_scale=4.0)
GOOD = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)


@pytest.mark.parametrize(
    ("samples", "measured", "expect"),
    [
        (GOOD, None, None),
        (np.where(np.arange(256)[:, None] == 7, np.nan, GOOD), None, "non-finite samples (NaN/inf) on channel(s)"),
        (np.column_stack([GOOD[:, 0], np.full(256, 0.3)]), None, "flatline on channel(s) [1]"),
        (np.clip(GOOD * 10, -4, 4), None, "saturation on channel(s) [0, 1]"),
        (GOOD[:, :1], None, "wrong channel count"),
        (GOOD, 800.0, "sample rate 800 Hz, the model expects 1000 Hz"),
    ],
)
def test_each_fault_is_named(samples: np.ndarray, measured: float | None, expect: str | None) -> None:
    got = check_chunk(np.asarray(samples, np.float32), LIM, measured)
    assert got == expect if expect is None else expect in got


def test_faults_in_a_stream_give_status_not_scores(tiny_bundle: Path, tiny_data: Path) -> None:
    chunks = list(ReplaySource(tiny_data, chunk=1024).chunks())
    clean = Pipeline(load_bundle(tiny_bundle))
    clean_scores = [e for c in chunks for e in clean.process(c) if isinstance(e, Scored)]

    p = Pipeline(load_bundle(tiny_bundle))
    events: list[SensorStatus | Scored] = []
    for i, c in enumerate(chunks):
        if 100 <= i < 110:  # a loose cable: ten chunks of NaN, then a stuck ADC, mid-run
            bad = np.full_like(c.samples, np.nan) if i < 105 else np.full_like(c.samples, 0.25)
            c = Chunk(bad, c.t_start, c.new_segment)
        events.extend(p.process(c))
    status = [e for e in events if isinstance(e, SensorStatus)]
    assert [s.reason is None for s in status] == [False, False, True]  # NaN, then flatline, then ok again
    assert "non-finite" in status[0].reason and "flatline" in status[1].reason
    scores = [e for e in events if isinstance(e, Scored)]
    bad_t = (chunks[100].t_start, chunks[110].t_start)
    assert not any(bad_t[0] <= s.t < bad_t[1] + 0.0 for s in scores)  # nothing scored on bad samples
    # the windows that never touched a bad sample score exactly as without the fault
    clean_by_t = {s.t: s.score for s in clean_scores}
    before = [s for s in scores if s.t < bad_t[0]]
    assert before and all(clean_by_t[s.t] == s.score for s in before)
    # and no alarm was raised by the fault: the first alarm is where the clean run has it
    first = next(s.t for s in scores if s.decision.event == "raised")
    assert first == next(s.t for s in clean_scores if s.decision.event == "raised")


def _awkward_chunks(rng: np.random.Generator) -> list[np.ndarray]:
    """Chunks at the edges of the quick test in check_chunk: ADC-quantized samples that repeat, rows that agree
    where it looks, tiny spans, extremes near float32 overflow, non-finite values, float64."""
    out = []
    for i in range(600):
        m = int(rng.choice([1, 63, 64, 65, 256, 2048]))
        x = rng.normal(size=(m, 2)) * rng.choice([1e-3, 1.0, 3.9, 1e-38, 1.6e38, 1.8e38])
        if i % 3 == 0:
            x = np.round(x * rng.choice([0.3, 1.0])) * rng.choice([1.0, 0.004, 1e-40])
        kind = i % 7
        if kind == 1:
            x[rng.integers(0, m), rng.integers(0, 2)] = rng.choice([np.nan, np.inf, -np.inf])
        elif kind == 2:
            x[:: max((m - 1) // 3, 1), rng.integers(0, 2)] = x[0, 0]  # the rows the quick test looks at agree
        elif kind == 3:
            x[:, rng.integers(0, 2)] = x[0, 0]
        elif kind == 4:
            x[rng.integers(0, m, size=3), rng.integers(0, 2)] = 4.0 * rng.choice([1.0, -1.0])
        elif kind == 5:  # finite samples, but max - min overflows float32 on a channel
            x = rng.uniform(-3.3e38, 3.3e38, size=(m, 2))
        with np.errstate(over="ignore", invalid="ignore"):
            out.append(x.astype(np.float64 if i % 5 == 0 else np.float32))
    return out


@pytest.mark.parametrize(("limits", "quick"), [
    (LIM, True), (SensorLimits(2, 1000.0), True),
    (SensorLimits(2, 1000.0, flatline_range=0.1), False),  # a range other than 0: always per channel
    (SensorLimits(2, 1000.0, full_scale=0.1000000015, saturation_share=0.0), False),  # at full scale
])
def test_the_quick_test_never_changes_an_answer(limits: SensorLimits, quick: bool) -> None:
    """check_chunk skips the per-channel checks when a few whole-chunk numbers prove they pass: it answers
    as they do on every chunk, and skips them on plain noise."""
    from vibrawatch.agent.sources.sensor_check import _channel_checks, _plainly_healthy

    for x in _awkward_chunks(np.random.default_rng(3)):
        with np.errstate(over="ignore", invalid="ignore"):
            assert check_chunk(x, limits) == _channel_checks(x, len(x), limits)
    assert _plainly_healthy(GOOD, len(GOOD), limits) == quick
