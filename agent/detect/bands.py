"""Band energies from a spectrum: which rfft bins each band holds, and how a frame's band powers are summed from
the one transform every spectral feature shares (agent/detect/features.py): the spectrum cut once into
segments at every band edge, each band the sum of its own few segments."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np


def segment_powers(spec_x: np.ndarray, segments: tuple[slice, ...]) -> np.ndarray:
    """Unscaled power |X|^2 of spectra (n_frames, C, K) summed per segment -> (n_frames, C, len(segments)).
    ``segments`` slice the interleaved re/im view (a bin is two entries): each a sum of squares along the
    contiguous axis, read once with no squares written (einsum, not BLAS: a BLAS dot this long may wake
    threads, whose hand-off costs more than the sum on a busy gateway)."""
    v = spec_x.view(np.float64)
    out = np.empty(spec_x.shape[:-1] + (len(segments),))
    for j, seg in enumerate(segments):
        np.einsum("fcn,fcn->fc", v[..., seg], v[..., seg], out=out[..., j])
    return out


@lru_cache(maxsize=32)
def power_plan(fs_hz: float, n: int, bands: tuple[tuple[tuple[float, float], ...], ...]
               ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Bin edges cutting the one-sided spectrum into segments at every band edge, with the DC and (even n)
    Nyquist bins segments of their own (Parseval counts them once, the others twice); and per band_energy
    feature a 0/1 matrix (segments, bands) / n^2 that sums each band's segments. A band is the sum of its own
    few segments, never a difference of running sums, so a loud band (or DC offset) does not take a quiet
    one's digits. The same for every frame of a spec, so it is worked out once."""
    k = n // 2 + 1
    los, his = zip(*(band_bins(fs_hz, n, b) for b in bands), strict=True)
    edges = np.unique(np.concatenate([[0, 1, k - 1 if n % 2 == 0 else k, k], *los, *his]))  # sorted, in 0..k
    sums = []
    for lo_idx, hi_idx in zip(los, his, strict=True):
        m = np.zeros((len(edges) - 1, len(lo_idx)))
        for b, (lo, hi) in enumerate(zip(np.searchsorted(edges, lo_idx), np.searchsorted(edges, hi_idx), strict=True)):
            m[lo:hi, b] = 1.0 / float(n) ** 2
        sums.append(m)
    return edges, tuple(sums)


def band_bins(fs_hz: float, n: int, bands: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last rfft bin of each band [lo, hi) Hz; a band reaching fs/2 includes the top bin."""
    freqs = np.fft.rfftfreq(n, 1.0 / fs_hz)
    lo_idx = np.searchsorted(freqs, [lo for lo, _ in bands], side="left")
    hi_idx = np.array(
        [len(freqs) if hi >= fs_hz / 2.0 else np.searchsorted(freqs, hi, side="left") for _, hi in bands]
    )
    return lo_idx, hi_idx
