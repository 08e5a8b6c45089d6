"""A replay of a recording without dates (the simulator's), published by the real agent through a real Mosquitto:
its times start at the agent's start (t = start + the recording's own seconds), so the monitor, its page and
tables show today's dates, not 1970; a looped replay goes on forward in time. Evaluate keeps the raw seconds."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from mosquitto import Broker
from test_agent_e2e import Subscriber, start_agent

from vibrawatch.agent.sources.loaders import load


def test_a_looped_replay_of_a_simulated_run_is_published_from_now_on_and_keeps_going_forward(
        tiny_bundle: Path, tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    ends = np.load(tiny_run / "windows.npz")["end_times"]  # the windows' times as evaluate counts them (from 0)
    times = load(tiny_data).timestamps
    assert ends[0] < 1e9  # the recording has no dates
    span = float(times[-1] - times[0]) + float(np.median(np.diff(times)))  # one pass, as loop_offsets moves it
    n = len(ends)
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "plant1", "press7")
    cfg = tmp_path / "agent.toml"  # the default: anchor = true
    cfg.write_text(f'[agent]\nsite = "plant1"\ndevice = "press7"\nbundle = "{tiny_bundle}"\n'
                   f'spool = "{tmp_path / "spool.sqlite"}"\n\n[source]\nkind = "replay"\npath = "{tiny_data}"\n'
                   f'speed = 0\nloop = true\n\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nmax_backoff_s = 1\n')
    started = time.time()
    agent = start_agent(cfg, tmp_path)
    try:
        scores = sub.wait_for("score", n + 5, timeout=180)
    finally:
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=60)
        sub.close()
        broker.stop()
    assert len(scores) >= n + 5, out
    scores = sorted(scores, key=lambda p: p["seq"])
    t = np.array([p["t"] for p in scores])
    anchor = t[0] - ends[0]
    assert abs(anchor - started) < 60, (anchor, started)  # from the agent's start on, not from 1970
    np.testing.assert_allclose(t[:n] - anchor, ends, atol=1e-3)  # the recording's own spacing, unchanged
    again = t[n:] - anchor - span  # the next pass: the recording's times again, one pass later, after the first
    assert t[n] > t[n - 1] and np.all((again >= times[0] - 1e-3) & (again <= ends[-1] + 1e-3)), again
    assert np.all(np.diff(t) > 0)
    year = datetime.fromtimestamp(started, UTC).year
    assert all(p["timestamp"].startswith(str(year)) or p["timestamp"].startswith(str(year + 1)) for p in scores)


def test_an_anchored_source_resumes_a_reload_at_the_anchored_time_it_was_given(tiny_data: Path) -> None:
    """A reload hands the new source the (anchored) time just after the last chunk scored: it resumes there, in
    the same pass of a looped replay, and the simulator likewise; without anchor the times stay the recording's."""
    from vibrawatch.agent.sources.simulate import BearingSimulator
    from vibrawatch.agent.sources.source import ReplaySource, SimulatorSource, wall_anchor

    plain = list(ReplaySource(tiny_data, speed=0, chunk=4096, loop=False).chunks())
    assert plain[0].t_start == load(tiny_data).timestamps[0]  # unanchored: as evaluate reads it
    a = wall_anchor()
    got = ReplaySource(tiny_data, speed=0, chunk=4096, loop=True, anchor=True).chunks()
    first = [next(got) for _ in range(len(plain) + 3)]
    assert first[0].t_start == a + plain[0].t_start
    resume = first[len(plain) + 1].t_start  # in the second pass
    again = next(ReplaySource(tiny_data, speed=0, chunk=4096, loop=True, anchor=True, start_at=resume).chunks())
    assert again.t_start == resume and again.new_segment

    sim = BearingSimulator(n_snapshots=3, snapshot_samples=2048, fs_hz=20000.0, interval_s=600.0)
    chunks = list(SimulatorSource(sim, speed=0, chunk=1024, anchor=True).chunks())
    np.testing.assert_allclose([c.t_start - a for c in chunks][:3], [0.0, 1024 / 20000.0, 600.0], atol=1e-6)
    later = next(SimulatorSource(sim, speed=0, chunk=1024, anchor=True, start_at=chunks[3].t_start).chunks())
    assert later.t_start == chunks[3].t_start
