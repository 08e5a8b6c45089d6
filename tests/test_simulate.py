"""The built-in simulators: the Lorenz stream reproduces the IBM demo's data; the bearing model behaves like one."""

from __future__ import annotations

import numpy as np
from conftest import shared

from vibrawatch.agent.features import FeatureDef, FeatureSpec, extract
from vibrawatch.agent.simulate import BearingGeometry, BearingSimulator, lorenz


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
