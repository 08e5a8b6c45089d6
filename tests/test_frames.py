"""The streaming Framer at chunk boundaries of every kind: iter_frames' frames bit-exact, each frame timed by its
first sample as the chunk holding it gives it, and frames handed out never change afterwards."""

from __future__ import annotations

import numpy as np

from vibrawatch.agent.detect.frames import Framer, iter_frames
from vibrawatch.agent.detect.recording import Recording

FS, N = 3200.0, 64


def _chunk_sizes(rng: np.random.Generator, total: int) -> list[int]:
    """Sizes summing to ``total`` that take each path of ``Framer.push``: empty, inside the partial frame,
    completing it exactly, completing it and starting the next, whole frames straight from the chunk, both."""
    sizes: list[int] = []
    while sum(sizes) < total:
        m = int(rng.choice([0, 1, 7, N - 1, N, N + 1, 2 * N, 3 * N + 5, int(rng.integers(0, 5 * N))]))
        sizes.append(min(m, total - sum(sizes)))
    return sizes


def test_odd_chunk_boundaries_give_iter_frames_frames() -> None:
    rng = np.random.default_rng(7)
    rec = Recording(rng.normal(size=(3, 1000, 2)).astype(np.float32), np.array([0.0, 600.0, 1200.25]), FS,
                    ("a", "b"), "mem", relative_time=True)
    batch = list(iter_frames(rec, N))
    framer = Framer(N, 2, FS)
    buf = np.empty((1000, 2), np.float32)  # one buffer, refilled for every chunk, as a driver does
    held, copies, times = [], [], []
    for i in range(rec.n_snapshots):
        framer.reset()  # a new snapshot
        pos = 0
        for m in _chunk_sizes(rng, 1000):
            buf[:m] = rec.data[i, pos : pos + m]
            frames, t = framer.push(buf[:m], float(rec.timestamps[i]) + pos / FS)
            assert frames.shape == (len(t), N, 2) and frames.dtype == np.float32 and t.dtype == np.float64
            held.append(frames)
            copies.append(frames.copy())
            times.append(t)
            buf[:] = np.nan  # the driver's next read
            pos += m
    for h, c in zip(held, copies, strict=True):  # neither the driver's buffer nor later chunks changed them
        np.testing.assert_array_equal(h, c)
    np.testing.assert_array_equal(np.concatenate(held), np.concatenate([b.frames for b in batch]))
    np.testing.assert_allclose(np.concatenate(times), np.concatenate([b.times for b in batch]), rtol=0, atol=1e-9)


def test_a_frame_starts_at_its_chunk_start_plus_its_offset_exactly() -> None:
    """Bit-exact: t_start + offset * (1 / fs), the offset counted in the chunk holding the frame's first sample,
    also for a frame completed by a later chunk."""
    rng = np.random.default_rng(8)
    total = 5000
    x = rng.normal(size=(total, 3)).astype(np.float32)
    t0 = 1.7e9 + 0.123  # an epoch time: any other rounding shows
    framer = Framer(N, 3, FS)
    pos, got, want = 0, [], {}
    for m in _chunk_sizes(rng, total):
        t_chunk = t0 + pos / FS
        got.extend(framer.push(x[pos : pos + m], t_chunk)[1].tolist())
        for s in range(-(-pos // N) * N, pos + m, N):  # frames whose first sample is in this chunk
            want[s] = t_chunk + (s - pos) * (1.0 / FS)
        pos += m
    starts = range(0, total - N + 1, N)
    assert got == [want[s] for s in starts]
