"""Sequences of T consecutive feature frames: the LSTM's input, batch and streaming alike."""

from __future__ import annotations

import numpy as np


def window_ends(n_frames: int, length: int, hop: int) -> np.ndarray:
    """Index of the last frame of every window over ``n_frames`` frames (windows start at frame 0)."""
    if n_frames < length:
        return np.empty(0, dtype=np.int64)
    return np.arange(length - 1, n_frames, hop, dtype=np.int64)


def sliding_windows(features: np.ndarray, length: int, hop: int = 1) -> np.ndarray:
    """(n_frames, F) -> (n_windows, T, F), a read-only view; window i ends at ``window_ends(...)[i]``."""
    if features.ndim != 2:
        raise ValueError(f"expected (frames, features), got shape {features.shape}")
    if len(features) < length:
        return np.empty((0, length, features.shape[1]), dtype=features.dtype)
    view = np.lib.stride_tricks.sliding_window_view(features, length, axis=0)  # (n-T+1, F, T)
    return view[::hop].transpose(0, 2, 1)


class WindowBuffer:
    """Keeps the last T feature rows and says when a window is due, like ``sliding_windows`` on a stream."""

    def __init__(self, length: int, hop: int, n_features: int) -> None:
        self.length = length
        self.hop = hop
        self._rows = np.zeros((length, n_features), dtype=np.float64)
        self._count = 0

    def reset(self) -> None:
        self._count = 0

    def push(self, row: np.ndarray) -> np.ndarray | None:
        """Append one feature row; return the (T, F) window when one ends here, else None."""
        self._rows[:-1] = self._rows[1:]  # shift in place: np.roll would allocate a new array per frame
        self._rows[-1] = row
        self._count += 1
        if self._count >= self.length and (self._count - self.length) % self.hop == 0:
            return self._rows.copy()
        return None
