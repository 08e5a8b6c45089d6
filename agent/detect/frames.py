"""Cut raw samples into frames of N contiguous samples, never across a gap between snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .recording import Recording


@dataclass(frozen=True)
class FrameBatch:
    """Frames of consecutive snapshots with the time each frame starts and the snapshot it came from."""

    frames: np.ndarray  # (n_frames, N, C), the recording's dtype (a view where possible)
    times: np.ndarray  # (n_frames,) float64 seconds
    snapshot: np.ndarray  # (n_frames,) int64 index into the recording


def frames_per_snapshot(snapshot_samples: int, frame_length: int) -> int:
    """Whole frames in one snapshot; the tail shorter than a frame is dropped, as on the gateway."""
    return snapshot_samples // frame_length


def iter_frames(rec: Recording, frame_length: int, batch_snapshots: int = 32) -> Iterator[FrameBatch]:
    """Frames of a recording in batches of snapshots, so a 300 MB run never needs a float64 copy at once."""
    k = frames_per_snapshot(rec.data.shape[1], frame_length)
    if k == 0:
        raise ValueError(
            f"{rec.source}: snapshots of {rec.data.shape[1]} samples are shorter than one frame "
            f"({frame_length} samples); use a shorter frame_length"
        )
    offsets = np.arange(k) * (frame_length / rec.fs_hz)
    for s0 in range(0, rec.n_snapshots, batch_snapshots):
        s1 = min(rec.n_snapshots, s0 + batch_snapshots)
        block = rec.data[s0:s1, : k * frame_length, :]
        frames = block.reshape((s1 - s0) * k, frame_length, rec.n_channels)
        times = (rec.timestamps[s0:s1, None] + offsets[None, :]).reshape(-1)
        snap = np.repeat(np.arange(s0, s1, dtype=np.int64), k)
        yield FrameBatch(frames, times.astype(np.float64), snap)


class Framer:
    """Streaming counterpart of ``iter_frames``: accepts chunks of any size, emits whole frames.

    ``reset()`` drops a partial frame, which a source calls at a gap (a new snapshot, a sensor fault),
    so a frame always holds contiguous samples.
    """

    def __init__(self, frame_length: int, n_channels: int, fs_hz: float) -> None:
        self.frame_length = frame_length
        self.n_channels = n_channels
        self.fs_hz = fs_hz
        self._buf = np.empty((frame_length, n_channels), dtype=np.float32)  # the partial frame
        self._fill = 0
        self._t0 = 0.0  # time of the partial frame's first sample
        # what most chunks return (they only extend the partial frame): one pair, shared; nothing to write in it
        self._none = (np.empty((0, frame_length, n_channels), np.float32), np.empty(0))

    def reset(self) -> None:
        self._fill = 0

    def push(self, samples: np.ndarray, t_start: float) -> tuple[np.ndarray, np.ndarray]:
        """Add samples (m, C) starting at ``t_start``; return (frames (k, N, C), frame start times (k,)).

        Copies each sample once: into the partial frame, or straight into whole frames (never a view of
        ``samples``: a driver refills its buffer). Runs per chunk, about 10 a second, so the common cases
        allocate little: nothing when the chunk only extends the partial frame, one frame's buffer when it
        completes it (the completed buffer is handed out as is and a fresh one takes its place).
        """
        if samples.ndim != 2 or samples.shape[1] != self.n_channels:
            raise ValueError(f"expected samples of shape (m, {self.n_channels}), got {samples.shape}")
        n, m, fill, dt = self.frame_length, len(samples), self._fill, 1.0 / self.fs_hz
        buf = self._buf
        if fill + m < n:  # no frame completes
            if m:
                if not fill:
                    self._t0 = t_start + 0 * dt  # the first sample's time, as below with pos = 0
                buf[fill : fill + m] = samples
                self._fill = fill + m
            return self._none
        pos, first, first_t = 0, None, None
        if fill:  # complete the partial frame first
            pos = n - fill
            buf[fill:] = samples[:pos]
            first, first_t = buf[None], np.array([self._t0])
            self._buf = buf = np.empty_like(buf)
            self._fill = 0
        k = (m - pos) // n
        if k:  # whole frames straight from the chunk
            whole = np.array(samples[pos : pos + k * n], dtype=np.float32, order="C").reshape(k, n, self.n_channels)
            whole_t = t_start + (pos + np.arange(k) * n) * dt
            pos += k * n
        if pos < m:  # the start of the next frame
            self._t0 = t_start + pos * dt
            self._fill = m - pos
            buf[: self._fill] = samples[pos:]
        if first is None:
            return whole, whole_t  # fill + m >= n with nothing in the partial frame: k >= 1
        if not k:
            return first, first_t
        return np.concatenate([first, whole]), np.concatenate([first_t, whole_t])
