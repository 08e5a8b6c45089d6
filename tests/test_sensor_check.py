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
