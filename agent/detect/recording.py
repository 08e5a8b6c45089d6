"""In-memory forms of vibration data that every loader and simulator returns.

Two shapes cover every source: raw sample snapshots (``Recording``) and per-snapshot feature rows
(``FeatureTable``, e.g. the IMS article's averaged table). Both keep time, so a healthy period can be
named by time and an alarm by the moment it happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Recording:
    """Snapshots of contiguous raw samples: ``data[i]`` was taken starting at ``timestamps[i]``.

    A continuous stream is one snapshot. Gaps between snapshots are normal (IMS: 1 s every 10 min);
    frames never straddle a snapshot boundary.
    """

    data: np.ndarray  # (n_snapshots, n_samples, n_channels) float32
    timestamps: np.ndarray  # (n_snapshots,) float64 seconds: since the epoch (UTC) or since the start
    fs_hz: float
    channels: tuple[str, ...]
    source: str
    relative_time: bool = False  # True when timestamps count from the start of the run (FEMTO, simulators)
    labels: np.ndarray | None = field(default=None)  # optional (n_snapshots,) 0 healthy / 1 faulty
    rpm: float | None = None  # shaft speed when the file says (Case Western Reserve)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"{self.source}: data must be (snapshots, samples, channels), got {self.data.shape}")
        if self.timestamps.shape != (self.data.shape[0],):
            raise ValueError(f"{self.source}: {self.timestamps.shape[0]} timestamps for {self.data.shape[0]} snapshots")
        if len(self.channels) != self.data.shape[2]:
            raise ValueError(f"{self.source}: {len(self.channels)} channel names for {self.data.shape[2]} channels")

    @property
    def n_snapshots(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[2])


@dataclass(frozen=True)
class FeatureTable:
    """Per-snapshot features computed elsewhere: one row per snapshot, one column per channel feature."""

    values: np.ndarray  # (n_rows, n_columns) float64
    timestamps: np.ndarray  # (n_rows,) float64 seconds, as in Recording
    columns: tuple[str, ...]
    source: str
    relative_time: bool = False
    labels: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.columns):
            raise ValueError(f"{self.source}: values {self.values.shape} do not match {len(self.columns)} columns")
        if self.timestamps.shape != (self.values.shape[0],):
            raise ValueError(f"{self.source}: {self.timestamps.shape[0]} timestamps for {self.values.shape[0]} rows")
