"""The built-in simulators: the Lorenz stream reproduces the IBM demo's data; the bearing model behaves like one."""

from __future__ import annotations

import numpy as np
from conftest import shared

from vibrawatch.agent.detect.features import FeatureDef, FeatureSpec, extract
from vibrawatch.agent.sources.simulate import BearingGeometry, BearingSimulator, lorenz


def test_lorenz_reproduces_the_ibm_demo_streams() -> None:
    with np.load(shared("lorenz", "lorenz.npz"), allow_pickle=False) as z:
        for kind in ("healthy", "broken"):
            ref = z[f"{kind}_phase_aligned"]
            np.testing.assert_allclose(lorenz(kind, len(ref)), ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_ims_geometry_gives_the_published_defect_frequencies() -> None:
    f = BearingGeometry().defect_frequencies(2000 / 60)
    # Rexnord ZA-2115 at 2000 rpm: BPFO 236.4 Hz, BPFI 296.9 Hz, BSF 139.9 Hz (Qiu et al. 2006)
    assert abs(f["bpfo"] - 236.4) < 0.5 and abs(f["bpfi"] - 296.9) < 0.5 and abs(f["bsf"] - 139.9) < 0.5


def test_bearing_run_is_seeded_and_degrades_only_the_failing_bearing() -> None:
    sim = BearingSimulator(n_snapshots=20, snapshot_samples=8192, failing_channel=2, onset=0.5, seed=11)
    np.testing.assert_array_equal(sim.snapshot(19), BearingSimulator(**{**sim.__dict__}).snapshot(19))
    assert not np.array_equal(sim.snapshot(19), BearingSimulator(**{**sim.__dict__, "seed": 12}).snapshot(19))
    first, last = sim.snapshot(0), sim.snapshot(19)
    rms = lambda x: np.sqrt((x.astype(np.float64) ** 2).mean(axis=0))  # noqa: E731
    growth = rms(last) / rms(first)
    assert growth[2] > 3 and np.all(np.abs(np.delete(growth, 2) - 1) < 0.2)
    assert list(sim.labels()) == [0] * 10 + [1] * 10


def test_outer_race_defect_shows_at_bpfo_in_the_envelope_spectrum() -> None:
    sim = BearingSimulator(n_snapshots=10, snapshot_samples=20000, fault="outer", onset=0.5, seed=1)
    bpfo = sim.defect_hz
    spec = FeatureSpec(sim.fs_hz, 20000, tuple(f"b{i}" for i in range(4)), (
        FeatureDef("envelope", {"band_hz": [2500, 6000], "defects_hz": {"bpfo": bpfo, "bpfi": 296.9}}),))
    env = extract(sim.snapshot(9)[None], spec)[0].reshape(4, 2)
    assert env[0, 0] > env[0, 1] + 1  # 10x more envelope energy at BPFO than at BPFI on the failing bearing
    assert env[0, 0] > env[1:, 0].max() + 1  # and than at BPFO on the healthy ones


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt((x.astype(np.float64) ** 2).mean(axis=0))


def test_one_channel_transient_jumps_then_relaxes_and_a_held_step_holds() -> None:
    base = dict(n_snapshots=40, snapshot_samples=4096, interval_s=600.0, onset=0.9, seed=5)
    clean = BearingSimulator(**base)
    # the step lands at snapshot 13 (t = 0.33 * 39 * 600 s), relaxes over 3 h = 18 snapshots
    transient = BearingSimulator(**base, step_channel=2, step_at=0.33, step_gain=1.5, step_relax_s=3 * 3600.0)
    held = BearingSimulator(**base, step_channel=2, step_at=0.33, step_gain=1.5)
    ratio = lambda sim, i: _rms(sim.snapshot(i)) / _rms(clean.snapshot(i))  # noqa: E731
    np.testing.assert_allclose(ratio(transient, 12), 1.0, rtol=1e-6)
    assert abs(ratio(transient, 13)[2] - 1.5) < 0.02  # 78 s after the step
    np.testing.assert_allclose(np.delete(ratio(transient, 13), 2), 1.0, rtol=1e-6)  # only its own channel
    assert ratio(transient, 13 + 18)[2] < 1.03  # 95% relaxed after step_relax_s
    assert abs(ratio(held, 13 + 18)[2] - 1.5) < 0.01
    np.testing.assert_array_equal(transient.snapshot(20), BearingSimulator(**transient.__dict__).snapshot(20))


def test_condition_change_moves_every_channel_at_once(tmp_path) -> None:  # noqa: ANN001
    from conftest import cli

    from vibrawatch.agent.sources.loaders import load

    out = tmp_path / "cond.npz"
    cli("simulate", "bearing", "--out", out, "--snapshots", "20", "--samples", "2048", "--onset", "0.9",
        "--condition-at", "0.5", "--condition-gain", "1.4", "--seed", "2")
    plain = tmp_path / "plain.npz"
    cli("simulate", "bearing", "--out", plain, "--snapshots", "20", "--samples", "2048", "--onset", "0.9",
        "--seed", "2")
    a, b = load(out), load(plain)
    r = _rms(a.data.transpose(1, 0, 2)) / _rms(b.data.transpose(1, 0, 2))
    np.testing.assert_allclose(r[:10], 1.0, rtol=1e-5)
    np.testing.assert_allclose(r[10:], 1.4, rtol=1e-5)
