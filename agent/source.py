"""Where samples come from: one small interface, several implementations.

A source yields ``Chunk``s of raw samples (m, C) in time order. ``new_segment`` marks samples that do not
continue the previous chunk (a new snapshot, a gap), so the framer never builds a frame across it.
Implementations: file replay of the training loaders' formats, the built-in simulators, an ADXL345 over
I2C (``agent.adxl345``) and raw samples from an MQTT topic (``agent.mqtt_source``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .recording import FeatureTable, Recording

if TYPE_CHECKING:
    from .simulate import BearingSimulator


@dataclass(frozen=True)
class Chunk:
    samples: np.ndarray  # (m, C) float32
    t_start: float  # time of samples[0], seconds (epoch, or since the start of the run)
    new_segment: bool = False  # does not continue the previous chunk: start a new frame
    fs_hz: float | None = None  # the rate the sensor reports for this chunk, if it reports one (rate check)
    fault: str | None = None  # the source refused what it received (a malformed message): a sensor fault


class Source(Protocol):
    fs_hz: float
    channels: tuple[str, ...]

    def chunks(self) -> Iterator[Chunk]: ...


class Pacer:
    """Sleeps so that data time advances ``speed`` times faster than wall time (0: as fast as possible)."""

    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.speed, self.clock, self.sleep = float(speed), clock, sleep
        self._origin: tuple[float, float] | None = None

    def wait_until(self, t_data: float) -> None:
        if self.speed <= 0:
            return
        if self._origin is None:
            self._origin = (t_data, self.clock())
        due = self._origin[1] + (t_data - self._origin[0]) / self.speed
        delay = due - self.clock()
        if delay > 0:
            self.sleep(delay)


class ReplaySource:
    """A recorded run (IMS directory, .npz archive, CSV feature table, Lorenz JSON) played back in chunks."""

    def __init__(self, path: str | Path, speed: float = 0.0, chunk: int = 2048,
                 stop: Callable[[], bool] = lambda: False) -> None:
        from .loaders import load  # only a replaying agent needs the file formats

        self.data: Recording | FeatureTable = load(path)
        self.path = Path(path)
        self.speed, self.chunk, self.stop = speed, int(chunk), stop
        if isinstance(self.data, FeatureTable):
            self.fs_hz = 1.0
            self.channels = self.data.columns
        else:
            self.fs_hz = self.data.fs_hz
            self.channels = self.data.channels

    def chunks(self) -> Iterator[Chunk]:
        pacer = Pacer(self.speed)
        if isinstance(self.data, FeatureTable):  # rows are already features: one row per chunk, as it happened
            for t, row in zip(self.data.timestamps, self.data.values, strict=True):
                if self.stop():
                    return
                pacer.wait_until(float(t))
                yield Chunk(row[None].astype(np.float32), float(t), new_segment=True)
            return
        rec = self.data
        for i in range(rec.n_snapshots):
            for j in range(0, rec.data.shape[1], self.chunk):
                if self.stop():
                    return
                t = float(rec.timestamps[i] + j / rec.fs_hz)
                pacer.wait_until(t)
                yield Chunk(rec.data[i, j: j + self.chunk], t, new_segment=(j == 0))


class SimulatorSource:
    """The built-in bearing run streamed as it is generated, snapshot by snapshot, in (scaled) real time."""

    def __init__(self, sim: BearingSimulator, speed: float = 1.0, chunk: int = 2048,
                 stop: Callable[[], bool] = lambda: False) -> None:
        self.sim, self.speed, self.chunk, self.stop = sim, speed, int(chunk), stop
        self.fs_hz = sim.fs_hz
        self.channels = tuple(f"bearing{c + 1}" for c in range(sim.n_channels))

    def chunks(self) -> Iterator[Chunk]:
        pacer = Pacer(self.speed)
        for i in range(self.sim.n_snapshots):
            snap = self.sim.snapshot(i)
            for j in range(0, len(snap), self.chunk):
                if self.stop():
                    return
                t = i * self.sim.interval_s + j / self.sim.fs_hz
                pacer.wait_until(t)
                yield Chunk(snap[j: j + self.chunk], t, new_segment=(j == 0))
