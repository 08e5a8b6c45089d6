"""Built-in data, so a fresh clone runs end to end without downloads: the IBM article's Lorenz attractor and
a rolling-bearing run to failure. Both are seeded: the same arguments give the same numbers.

Bearing model (per snapshot, per accelerometer):
- shaft harmonics (1x, 2x: imbalance, misalignment) and broadband Gaussian noise;
- a localised defect on one bearing hits the rolling elements at its characteristic frequency
  (BPFO outer race, BPFI inner race, BSF ball), each hit ringing the housing's structural resonance
  (a damped sine, ``resonance_hz``, ``damping``); inner-race and ball hits are amplitude-modulated by the
  shaft (cage) rotation as the defect passes through the load zone; hit times jitter by ~1% (slip);
- a degradation schedule: no defect before ``onset`` (share of the run), then the impact amplitude grows
  exponentially to ``severity`` at the end, and in the last 5% its noise floor rises (spalling).
Optional disturbances, for testing what must *not* be called a failure (all seeded, all off by default):
- a one-channel step (``step_channel``, ``step_at`` share of the run, ``step_gain`` e.g. 1.33 for a level
  jump by a third): the channel's whole signal is scaled; with ``step_relax_s`` > 0 the step relaxes
  exponentially back to 1 (5% of it left after ``step_relax_s``: a transient), with 0 it holds;
- a shared condition change (``condition_at``, ``condition_gain``): every channel is scaled at once from
  then on (a load or speed change, a remounting);
- a recording gap with a shared shift (``gap_at``, ``gap_s``, ``gap_gain``, ``gap_spread``): the recording
  pauses for ``gap_s`` before snapshot ``gap_at`` and the machine comes back with every channel scaled by
  ``gap_gain``, channel c by ``gap_gain * (1 + gap_spread * (2c / (C - 1) - 1))`` (e.g. 1.22 +- 4%: the
  channels alike but not equal, as after a stop, a remounting or a new load).
Defect frequencies use the classic kinematics with ``n_balls``, ball and pitch diameters, contact angle;
the defaults are the IMS Rexnord ZA-2115 (16 rollers, 0.331", 2.815", 15.17 deg) at 2000 rpm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..detect.recording import Recording
from ..errors import ConfigError

LORENZ_PARAMS = {"healthy": (10.0, 28.0, 8.0 / 3.0), "broken": (30.0, 128.0, 28.0 / 3.0)}
LORENZ_STEP = 0.008
LORENZ_START = (2.0, 3.0, 4.0)


def lorenz(kind: str = "healthy", n: int = 3000, h: float = LORENZ_STEP,
           start: tuple[float, float, float] = LORENZ_START) -> np.ndarray:
    """Euler Lorenz trajectory (n, 3), the states after steps 1..n, as the IBM demo's Node-RED flow integrates it.

    The flow updates x, then y with the new x, then z with the new x and y (a semi-implicit Euler step);
    that order is what keeps the 'broken' parameters bounded at h = 0.008 and what reproduces its data.
    """
    if kind not in LORENZ_PARAMS:
        raise ValueError(f"kind {kind!r}: expected one of {sorted(LORENZ_PARAMS)}")
    sigma, rho, beta = LORENZ_PARAMS[kind]
    out = np.empty((n, 3))
    x, y, z = start
    for i in range(n):  # a recurrence: each step needs the previous one, so no vectorising
        x = x + h * sigma * (y - x)
        y = y + h * (x * (rho - z) - y)
        z = z + h * (x * y - beta * z)
        out[i] = (x, y, z)
    return out


def simulate_lorenz(kind: str = "healthy", n: int = 3000) -> Recording:
    """A Lorenz stream as a one-snapshot Recording, one Euler step per sample; labels 1 for 'broken'."""
    traj = lorenz(kind, n)
    return Recording(traj[None].astype(np.float32), np.zeros(1), 1.0, ("x", "y", "z"), f"simulated lorenz {kind}",
                     relative_time=True, labels=np.array([int(kind == "broken")]))


@dataclass(frozen=True)
class BearingGeometry:
    """Rolling-bearing kinematics; defaults: Rexnord ZA-2115 as in the IMS test rig."""

    n_balls: int = 16
    ball_diameter: float = 0.331
    pitch_diameter: float = 2.815
    contact_angle_deg: float = 15.17

    def defect_frequencies(self, shaft_hz: float) -> dict[str, float]:
        """BPFO, BPFI, BSF and FTF (cage) in Hz for a shaft turning at ``shaft_hz``."""
        r = self.ball_diameter / self.pitch_diameter * np.cos(np.radians(self.contact_angle_deg))
        return {
            "bpfo": self.n_balls / 2.0 * shaft_hz * (1 - r),
            "bpfi": self.n_balls / 2.0 * shaft_hz * (1 + r),
            "bsf": self.pitch_diameter / (2.0 * self.ball_diameter) * shaft_hz * (1 - r * r),
            "ftf": shaft_hz / 2.0 * (1 - r),
        }


FAULT_KEYS = {"outer": "bpfo", "inner": "bpfi", "ball": "bsf"}


@dataclass(frozen=True)
class BearingSimulator:
    """One machine with ``n_channels`` bearings; ``snapshot(i)`` is snapshot i of an ``n_snapshots`` run."""

    n_snapshots: int = 200
    snapshot_samples: int = 20480
    fs_hz: float = 20000.0
    interval_s: float = 600.0
    n_channels: int = 4
    failing_channel: int = 0
    fault: str = "outer"
    onset: float = 0.7
    severity: float = 2.0
    shaft_hz: float = 2000.0 / 60.0
    resonance_hz: float = 4000.0
    damping: float = 0.05
    noise: float = 0.07
    seed: int = 0
    geometry: BearingGeometry = BearingGeometry()
    step_channel: int | None = None  # a one-channel step on this channel (None: no step)
    step_at: float = 0.5  # share of the run
    step_gain: float = 1.33
    step_relax_s: float = 0.0  # 0: the step holds; > 0: 95% of it is gone after this long (a transient)
    condition_at: float | None = None  # share of the run where every channel changes at once (None: never)
    condition_gain: float = 1.3
    gap_at: float | None = None  # share of the run where the recording pauses (None: never)
    gap_s: float = 86400.0  # how long it pauses
    gap_gain: float = 1.22  # every channel's factor after the gap ...
    gap_spread: float = 0.0  # ... channel by channel within +- this share of it

    def __post_init__(self) -> None:
        if self.fault not in FAULT_KEYS:
            raise ValueError(f"fault {self.fault!r}: expected one of {sorted(FAULT_KEYS)}")
        if not 0 <= self.failing_channel < self.n_channels:
            raise ValueError(f"failing_channel {self.failing_channel} must be in 0..{self.n_channels - 1}")
        if not 0 < self.onset < 1:
            raise ValueError(f"onset {self.onset} must be a share of the run in (0, 1)")
        if self.resonance_hz >= self.fs_hz / 2:
            raise ValueError(f"resonance_hz {self.resonance_hz} must be below fs/2 = {self.fs_hz / 2}")
        if self.step_channel is not None and not 0 <= self.step_channel < self.n_channels:
            raise ConfigError(f"step_channel {self.step_channel} must be in 0..{self.n_channels - 1}")
        for name in ("step_at", "condition_at", "gap_at"):
            v = getattr(self, name)
            if v is not None and not 0 < v < 1:
                raise ConfigError(f"{name} {v} must be a share of the run in (0, 1)")
        if not (self.step_gain > 0 and self.condition_gain > 0 and self.step_relax_s >= 0):
            raise ConfigError("step_gain and condition_gain must be > 0, step_relax_s >= 0")
        if not (self.gap_s >= 0 and self.gap_gain > 0 and 0 <= self.gap_spread < 1):
            raise ConfigError("gap_s must be >= 0, gap_gain > 0 and 0 <= gap_spread < 1")

    def gains(self, i: int) -> np.ndarray:
        """(C,) factor on each channel's signal in snapshot i from the optional step and condition change."""
        g = np.ones(self.n_channels)
        t = i * self.interval_s
        span = max(self.n_snapshots - 1, 1) * self.interval_s
        if self.step_channel is not None and t >= self.step_at * span:
            left = 1.0 if self.step_relax_s == 0 else np.exp(-3.0 * (t - self.step_at * span) / self.step_relax_s)
            g[self.step_channel] *= 1 + (self.step_gain - 1) * left
        if self.condition_at is not None and t >= self.condition_at * span:
            g *= self.condition_gain
        if self.after_gap(i):
            pos = 2 * np.arange(self.n_channels) / max(self.n_channels - 1, 1) - 1
            g *= self.gap_gain * (1 + self.gap_spread * pos)
        return g

    def after_gap(self, i: int | np.ndarray) -> np.ndarray:
        """True for snapshot(s) i recorded after the gap (never without ``gap_at``)."""
        i = np.asarray(i)
        if self.gap_at is None:
            return np.zeros(i.shape, bool)
        return i >= int(np.ceil(self.gap_at * max(self.n_snapshots - 1, 1)))

    def times(self) -> np.ndarray:
        """(n_snapshots,) seconds since the first snapshot: ``interval_s`` apart, ``gap_s`` more after the gap."""
        i = np.arange(self.n_snapshots)
        return i * float(self.interval_s) + np.where(self.after_gap(i), self.gap_s, 0.0)

    @property
    def defect_hz(self) -> float:
        return self.geometry.defect_frequencies(self.shaft_hz)[FAULT_KEYS[self.fault]]

    def defect_level(self, i: int | np.ndarray) -> np.ndarray:
        """Impact amplitude of snapshot(s) i: 0 until the onset, then growing exponentially to ``severity``."""
        u = np.asarray(i, dtype=np.float64) / max(self.n_snapshots - 1, 1)
        grow = np.clip((u - self.onset) / (1 - self.onset), 0.0, 1.0)
        return np.where(u > self.onset, self.severity * np.expm1(4.0 * grow) / np.expm1(4.0), 0.0)

    def labels(self) -> np.ndarray:
        """1 for snapshots where the defect exists (after the onset), 0 before."""
        return (self.defect_level(np.arange(self.n_snapshots)) > 0).astype(np.int64)

    def snapshot(self, i: int) -> np.ndarray:
        """Snapshot i (samples, channels) float32; depends only on the seed and i."""
        rng = np.random.default_rng([self.seed, i])
        n, fs = self.snapshot_samples, self.fs_hz
        t = np.arange(n) / fs
        u = i / max(self.n_snapshots - 1, 1)
        speed = self.shaft_hz * (1 + 0.002 * rng.standard_normal())  # small speed wander between snapshots
        phase = rng.uniform(0, 2 * np.pi, size=(2, self.n_channels))
        amp1 = 0.05 * (1 + 0.3 * np.arange(self.n_channels) / max(self.n_channels, 1))
        x = (amp1 * np.sin(2 * np.pi * speed * t[:, None] + phase[0])
             + 0.5 * amp1 * np.sin(4 * np.pi * speed * t[:, None] + phase[1]))
        noise_scale = self.noise * (1 + 0.15 * np.arange(self.n_channels))
        late = np.zeros(self.n_channels)  # spalling: the failing bearing's broadband floor rises at the end
        late[self.failing_channel] = np.clip((u - 0.95) / 0.05, 0, 1) if u > self.onset else 0.0
        x = x + rng.standard_normal((n, self.n_channels)) * noise_scale * (1 + 2.0 * late)
        level = float(self.defect_level(i))
        if level > 0:
            x[:, self.failing_channel] += level * self._impacts(t, speed, rng)
        return (x * self.gains(i)).astype(np.float32)

    def _impacts(self, t: np.ndarray, speed: float, rng: np.random.Generator) -> np.ndarray:
        """Unit-amplitude train of resonance rings at the defect rate (with slip), modulated for inner/ball."""
        n, fs = len(t), self.fs_hz
        f_def = self.defect_hz * speed / self.shaft_hz
        period = 1.0 / f_def
        hits = np.arange(rng.uniform(0, period), t[-1], period)
        hits = hits + rng.normal(0, 0.01 * period, size=hits.shape)
        idx = np.clip(np.round(hits * fs).astype(np.int64), 0, n - 1)
        train = np.zeros(n)
        amp = np.ones(len(idx))
        if self.fault == "inner":
            amp = 0.5 * (1 + np.cos(2 * np.pi * speed * hits))  # defect passes through the load zone
        elif self.fault == "ball":
            ftf = self.geometry.defect_frequencies(speed)["ftf"]
            amp = 0.5 * (1 + np.cos(2 * np.pi * ftf * hits))
        np.add.at(train, idx, amp)
        L = int(min(n, 8 / (self.damping * 2 * np.pi * self.resonance_hz) * fs))
        tau = np.arange(L) / fs
        ring = np.exp(-self.damping * 2 * np.pi * self.resonance_hz * tau) * np.sin(2 * np.pi * self.resonance_hz * tau)
        m = n + L
        return np.fft.irfft(np.fft.rfft(train, m) * np.fft.rfft(ring, m), m)[:n]

    def run(self) -> Recording:
        """The whole run as a Recording, with per-snapshot labels (defect present)."""
        data = np.stack([self.snapshot(i) for i in range(self.n_snapshots)])
        times = self.times()
        names = tuple(f"bearing{c + 1}" for c in range(self.n_channels))
        return Recording(data, times, float(self.fs_hz), names, f"simulated bearing run (seed {self.seed})",
                         relative_time=True, labels=self.labels())


def simulate_bearing_run(**kwargs: object) -> Recording:
    """``BearingSimulator(**kwargs).run()``: a seeded rolling-bearing run to failure."""
    return BearingSimulator(**kwargs).run()  # type: ignore[arg-type]
