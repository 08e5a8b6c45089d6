"""A replay that loops (``[source] loop = true``): a demo gateway keeps running after its data, time only goes on."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
from test_agent_e2e import Subscriber, broker, start_agent, write_config  # noqa: F401 (broker: a fixture)

from vibrawatch.agent.sources.loaders import load
from vibrawatch.agent.sources.source import ReplaySource, loop_offsets


def test_each_pass_is_later_by_the_run_s_length_and_a_step() -> None:
    times = np.array([0.0, 600.0, 1200.0, 1800.0])
    offsets = loop_offsets(times, loop=True)
    assert [next(offsets) for _ in range(3)] == [0.0, 2400.0, 4800.0]
    assert list(loop_offsets(times, loop=False)) == [0.0]


def test_a_looping_replay_plays_the_run_again_later_and_resumes_in_a_later_pass(tiny_data: Path) -> None:
    rec = load(tiny_data)
    per_pass = rec.n_snapshots * -(-rec.data.shape[1] // 4096)
    src = ReplaySource(tiny_data, speed=0, chunk=4096, loop=True)
    got = []
    for c in src.chunks():
        got.append(c)
        if len(got) == 2 * per_pass + 1:
            break
    t = np.array([c.t_start for c in got])
    assert np.all(np.diff(t) > 0)  # never backwards: the pipeline sees a gap, not a sensor fault
    span = rec.timestamps[-1] - rec.timestamps[0] + np.median(np.diff(rec.timestamps))
    np.testing.assert_allclose(t[per_pass] - t[0], span)
    np.testing.assert_array_equal(got[per_pass].samples, got[0].samples)
    assert got[per_pass].new_segment
    # a restart that had reached the second pass resumes there, not at the start of the data
    again = ReplaySource(tiny_data, speed=0, chunk=4096, loop=True, start_at=float(t[per_pass + 3]))
    first = next(iter(again.chunks()))
    assert first.t_start == t[per_pass + 3] and first.new_segment


def test_a_looping_agent_keeps_scoring_after_its_data_and_stops_cleanly(tiny_bundle: Path, tiny_data: Path,
                                                                        tmp_path: Path, broker) -> None:  # noqa: F811
    cfg = write_config(tmp_path, broker.port, tiny_bundle, tiny_data)
    cfg.write_text(cfg.read_text().replace("speed = 0", "speed = 0\nloop = true"))
    end = float(load(tiny_data).timestamps[-1])
    sub = Subscriber(broker.port, "plant1", "press7")
    agent = start_agent(cfg, tmp_path)
    try:
        deadline_scores = sub.wait_for("score", 400, timeout=120)
        later = [s for s in deadline_scores if s["t"] > end]
        assert later, f"no score after the data's end ({len(deadline_scores)} scores)"
        assert agent.poll() is None, "the agent ended with its data although it loops"
        seqs = [s["seq"] for s in deadline_scores]
        assert len(seqs) == len(set(seqs))
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            out, _ = agent.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            out, _ = agent.communicate()
        sub.close()
    assert agent.returncode == 0, out
    assert "Traceback" not in out
