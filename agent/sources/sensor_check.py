"""Is this chunk of samples something a healthy sensor could have produced? (pure numpy)

A faulty sensor must never look like a faulty machine: a chunk that fails a check is reported as a
``sensor`` status and is not scored, and the frames and window around it start afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def two_rates(a: float, b: float) -> tuple[str, str]:
    """Two sample rates printed with as many significant digits (3 at least) as it takes to tell them apart:
    1.03 Hz must never read as '1.0 Hz' beside a model's 1 Hz."""
    def show(x: float, digits: int) -> str:  # never fewer digits than the integer part: 20480, not 2.05e+04
        return f"{x:.{max(digits, len(str(int(abs(x)))) if abs(x) < 1e15 else digits)}g}"

    for digits in range(3, 18):
        sa, sb = show(a, digits), show(b, digits)
        if sa != sb:
            return sa, sb
    return f"{a!r}", f"{b!r}"


@dataclass(frozen=True)
class SensorLimits:
    """What counts as a sensor fault; ``full_scale`` None means the range is unknown (no saturation check)."""

    n_channels: int
    fs_hz: float
    full_scale: float | None = None  # |x| at which the sensor clips
    flatline_range: float = 0.0  # max - min at or below this is a stuck sensor: a live one always has noise
    flatline_samples: int = 64  # shorter chunks are too short to call flat
    saturation_share: float = 0.01  # this share of samples at full scale = clipping
    rate_tolerance: float = 0.02  # measured vs nominal sample rate


def check_chunk(samples: np.ndarray, limits: SensorLimits, measured_fs_hz: float | None = None) -> str | None:
    """None if the chunk looks like a working sensor, else a short reason (the ``sensor`` status detail)."""
    if samples.ndim != 2 or samples.shape[1] != limits.n_channels:
        return f"wrong channel count: got samples shaped {samples.shape}, expected (n, {limits.n_channels})"
    if len(samples) == 0:
        return None
    # Channel-major first: numpy reduces a contiguous row several times faster than a strided column.
    by_channel = np.ascontiguousarray(samples.T)
    lo, hi = by_channel.min(axis=1), by_channel.max(axis=1)  # NaN propagates through both; inf shows in them
    spread = hi - lo  # NaN or inf here iff a channel holds a NaN or an inf: one test for the common case
    if not np.isfinite(spread).all():
        bad = np.flatnonzero(~np.isfinite(spread))
        return f"non-finite samples (NaN/inf) on channel(s) {bad.tolist()}"
    if len(samples) >= limits.flatline_samples and (spread <= limits.flatline_range).any():
        flat = np.flatnonzero(spread <= limits.flatline_range)
        return f"flatline on channel(s) {flat.tolist()}: no variation over {len(samples)} samples"
    if limits.full_scale is not None and max(-lo.min(), hi.max()) >= limits.full_scale:
        clipped = (np.abs(by_channel) >= limits.full_scale).mean(axis=1)
        sat = np.flatnonzero(clipped >= limits.saturation_share)
        if sat.size:
            return f"saturation on channel(s) {sat.tolist()}: {clipped.max():.1%} of samples at full scale"
    if measured_fs_hz is not None and abs(measured_fs_hz - limits.fs_hz) > limits.rate_tolerance * limits.fs_hz:
        got, want = two_rates(measured_fs_hz, limits.fs_hz)
        return f"sample rate {got} Hz, the model expects {want} Hz"
    return None
