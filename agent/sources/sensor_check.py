"""Is this chunk of samples something a healthy sensor could have produced? (pure numpy)

A faulty sensor must never look like a faulty machine: a chunk that fails a check is reported as a
``sensor`` status and is not scored, and the frames and window around it start afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MIN, _MAX = np.minimum.reduce, np.maximum.reduce  # the ufuncs' own reduce: no Python wrapper per call
_SAFE = float(np.finfo(np.float32).max) / 2  # every |sample| below this: no channel's max - min overflows
_TINY = 1e-30  # a max - min this large stays > 0 in float32, even with denormals flushed to zero


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
    m = len(samples)
    if m == 0:
        return None
    if not _plainly_healthy(samples, m, limits):
        reason = _channel_checks(samples, m, limits)
        if reason is not None:
            return reason
    if measured_fs_hz is not None and abs(measured_fs_hz - limits.fs_hz) > limits.rate_tolerance * limits.fs_hz:
        got, want = two_rates(measured_fs_hz, limits.fs_hz)
        return f"sample rate {got} Hz, the model expects {want} Hz"
    return None


def _plainly_healthy(samples: np.ndarray, m: int, limits: SensorLimits) -> bool:
    """True if a few whole-chunk numbers prove that ``_channel_checks`` finds nothing; False: not proven.

    Every chunk (about 10 a second) takes this path and nearly every healthy one ends here, for about 60% of
    what the per-channel checks cost (they transpose the chunk): the chunk's extremes are finite and far from
    overflow (so is every channel's max - min), four rows already differ on every channel (not flat), and
    nothing reaches full scale.
    """
    if samples.dtype.char not in "fd":  # float32/float64 only: other types round or wrap differently
        return False
    lo, hi = _MIN(samples, axis=None), _MAX(samples, axis=None)  # NaN propagates and fails the test below
    if not -_SAFE < lo <= hi < _SAFE:
        return False
    if m >= limits.flatline_samples:
        if limits.flatline_range != 0:  # left to the per-channel test, which compares as numpy does
            return False
        for channel in samples[:: max((m - 1) // 3, 1)].T.tolist():  # four rows: the first, ..., near the last
            if max(channel) - min(channel) <= _TINY:
                return False
    return limits.full_scale is None or max(-lo, hi) < limits.full_scale  # the test below, as numpy compares it


def _channel_checks(samples: np.ndarray, m: int, limits: SensorLimits) -> str | None:
    """Non-finite, flatline and saturation, per channel: the reason, or None."""
    # Channel-major first: numpy reduces a contiguous row several times faster than a strided column.
    by_channel = np.ascontiguousarray(samples.T)
    lo, hi = by_channel.min(axis=1), by_channel.max(axis=1)  # NaN propagates through both; inf shows in them
    spread = hi - lo  # NaN or inf here iff a channel holds a NaN or an inf: one test for the common case
    if not np.isfinite(spread).all():
        bad = np.flatnonzero(~np.isfinite(spread))
        return f"non-finite samples (NaN/inf) on channel(s) {bad.tolist()}"
    if m >= limits.flatline_samples and (spread <= limits.flatline_range).any():
        flat = np.flatnonzero(spread <= limits.flatline_range)
        return f"flatline on channel(s) {flat.tolist()}: no variation over {m} samples"
    if limits.full_scale is not None and max(-lo.min(), hi.max()) >= limits.full_scale:
        clipped = (np.abs(by_channel) >= limits.full_scale).mean(axis=1)
        sat = np.flatnonzero(clipped >= limits.saturation_share)
        if sat.size:
            return f"saturation on channel(s) {sat.tolist()}: {clipped.max():.1%} of samples at full scale"
    return None
