"""Where samples come from: one small interface, several implementations, each with its own settings.

A source yields ``Chunk``s of raw samples (m, C) in time order. ``new_segment`` marks samples that do not
continue the previous chunk (a new snapshot, a gap), so the framer never builds a frame across it.
Implementations: file replay of the training loaders' formats, the built-in simulator, an ADXL345 over
I2C (``agent.adxl345``) and raw samples from an MQTT topic (``agent.mqtt_source``).

As a Telegraf input does, every source kind carries three things besides ``chunks()``: its ``kind`` (the
``[source] kind`` that selects it), its ``Settings`` dataclass (the keys it accepts in ``[source]``, nothing
else) with a commented ``SAMPLE`` of them, and ``open(settings, ctx)``. ``agent.sources`` maps kind -> class;
adding a sensor is one new file and one line there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from ..detect.recording import FeatureTable, Recording

if TYPE_CHECKING:
    from .simulate import BearingSimulator

PATH = {"path": True}  # field metadata: a file name, relative to the config file that names it
_ANCHOR: list[float] = []


def wall_anchor() -> float:
    """The wall clock (whole epoch seconds) when this process first asked: the agent's start, near enough. A
    recording that counts from its run's start (simulated, FEMTO) is published as this plus its own seconds, so
    the monitor, its page and tables show today's dates, not 1970. The same for every source the process opens:
    a reload that resumes at ``start_at`` (an anchored time) finds its place in the recording again."""
    if not _ANCHOR:
        _ANCHOR.append(float(round(time.time())))
    return _ANCHOR[0]


def check_pace(speed: float, chunk: int) -> None:
    """``speed`` and ``chunk`` of a paced source; ValueError naming the key (the config loader adds the file)."""
    if not speed >= 0 or speed == float("inf"):
        raise ValueError(f"speed = {speed}: expected a finite number >= 0 (1 = real time, 0 = as fast as possible)")
    if chunk < 1:
        raise ValueError(f"chunk = {chunk}: expected a number of samples >= 1")


@dataclass(frozen=True)
class Chunk:
    samples: np.ndarray  # (m, C) float32
    t_start: float  # time of samples[0], seconds (epoch, or since the start of the run)
    new_segment: bool = False  # does not continue the previous chunk: start a new frame
    fs_hz: float | None = None  # the rate the sensor reports for this chunk, if it reports one (rate check)
    fault: str | None = None  # the source refused what it received (a malformed message): a sensor fault


@dataclass(frozen=True)
class SourceContext:
    """What the agent hands a source it opens: when to stop, how to wait, and (MQTT) how to subscribe.

    ``sleep`` returns early when the agent stops, so a source paced at real time (600 s between simulator
    snapshots) never holds up a SIGTERM; ``fs_hz``/``channels`` are the bundle's, for sources that cannot know
    their own (a sensor node on MQTT reports its rate per message).
    """

    stop: Callable[[], bool] = lambda: False
    sleep: Callable[[float], Any] = time.sleep
    subscribe: Callable[[str, Callable[[bytes], None]], None] | None = None
    fs_hz: float = 0.0
    channels: tuple[str, ...] = ()
    start_at: float | None = None  # data time to resume from (a reload that changed only the pace)


class Source(Protocol):
    """What the agent reads: chunks, at a nominal rate, on named channels; ``provides`` is "samples" (raw
    samples at ``fs_hz``) or "table" (rows that already are feature vectors, one per snapshot)."""

    fs_hz: float
    channels: tuple[str, ...]
    provides: str
    full_scale: float | None  # |x| at which the sensor clips (saturation check); None = unknown

    def chunks(self) -> Iterator[Chunk]: ...


class Pacer:
    """Sleeps so that data time advances ``speed`` times faster than wall time (0: as fast as possible)."""

    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
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


@dataclass(frozen=True)
class ReplaySettings:
    path: str = field(default="", metadata=PATH)  # the data file or IMS directory
    speed: float = 1.0  # 1 = real time, 100 = 100x faster, 0 = as fast as possible
    chunk: int = 2048  # samples per chunk handed to the pipeline
    full_scale: float | None = None  # |x| at which the recording's sensor clipped; None = no saturation check
    loop: bool = False  # at the end start again, later in time by the run's length: a demo gateway keeps running
    # A recording without dates (its times count from the run's start): published from the agent's start on
    # (t = start + its seconds); false: its raw seconds, as evaluate counts them (the page then reads 1970).
    anchor: bool = True

    def __post_init__(self) -> None:
        check_pace(self.speed, self.chunk)
        if self.full_scale is not None and not 0 < self.full_scale < float("inf"):
            raise ValueError(f"full_scale = {self.full_scale}: expected |x| at which the sensor clips, > 0")


def loop_offsets(times: np.ndarray, loop: bool) -> Iterator[float]:
    """How far each pass over a recording is moved in time: 0 once, or (looping) by the run's length plus one
    step per pass, so time only ever goes forward and the pipeline sees a gap, never a time going back."""
    yield 0.0
    if not loop or len(times) == 0:
        return
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    span = float(times[-1] - times[0]) + max(step, 1e-3)
    k = 1
    while True:
        yield k * span
        k += 1


class ReplaySource:
    """A recorded run (IMS directory, .npz archive, CSV feature table, Lorenz JSON) played back in chunks."""

    kind: ClassVar[str] = "replay"
    description: ClassVar[str] = "a recorded run played back (IMS directory, .npz, CSV feature table, Lorenz JSON)"
    Settings: ClassVar[type] = ReplaySettings
    SAMPLE: ClassVar[str] = '''\
[source]
kind = "replay"                       # play a recorded run back, as if a sensor produced it now
path = "data/run.npz"                 # an IMS directory, .npz, .csv feature table or Lorenz .json (relative
                                      # to this file)
speed = 1                             # 1 = real time: the first score comes after one full window of data
                                      # time (IMS/simulated runs: a snapshot every 10 min, so hours);
                                      # 100 = 100x faster; 0 = as fast as possible
chunk = 2048                          # samples handed to the pipeline at a time
# full_scale = 16.0                   # |x| at which the recording's sensor clipped (saturation check)
# loop = true                         # at the end, play it again (later in time by the run's length)
# anchor = false                      # a recording without dates keeps its raw seconds (default: it is
                                      # published from the agent's start on, so the page shows real dates)
'''

    def __init__(self, path: str | Path, speed: float = 0.0, chunk: int = 2048,
                 stop: Callable[[], bool] = lambda: False, sleep: Callable[[float], Any] = time.sleep,
                 full_scale: float | None = None, start_at: float | None = None, loop: bool = False,
                 anchor: bool = False) -> None:
        """``anchor``: a recording with relative times is played from ``wall_anchor()`` on (the agent's way);
        without, its times are its own (as evaluate and the demo's edge check read them)."""
        from .loaders import load  # only a replaying agent needs the file formats

        self.data: Recording | FeatureTable = load(path)
        self.path = Path(path)
        self.speed, self.chunk, self.stop, self.sleep = speed, int(chunk), stop, sleep
        self.full_scale, self.start_at, self.loop = full_scale, start_at, loop
        self.anchor = wall_anchor() if anchor and self.data.relative_time else 0.0  # added to every time
        if isinstance(self.data, FeatureTable):
            self.fs_hz, self.provides = 1.0, "table"
            self.channels = self.data.columns
        else:
            self.fs_hz, self.provides = self.data.fs_hz, "samples"
            self.channels = self.data.channels
        self.snapshot_samples: int | None = None if isinstance(self.data, FeatureTable) else self.data.data.shape[1]

    @classmethod
    def open(cls, s: ReplaySettings, ctx: SourceContext) -> ReplaySource:
        return cls(s.path, s.speed, s.chunk, ctx.stop, ctx.sleep, s.full_scale, ctx.start_at, s.loop, s.anchor)

    def chunks(self) -> Iterator[Chunk]:
        pacer = Pacer(self.speed, sleep=self.sleep)
        skip = self.start_at
        times = np.asarray(self.data.timestamps, dtype=float)
        for offset in loop_offsets(times, self.loop):
            offset += self.anchor
            if skip is not None and len(times) and skip > times[-1] + offset:
                continue  # a restart resumes in a later pass
            for chunk in self._pass(pacer, skip, offset):
                if chunk is None:
                    return
                skip = None
                yield chunk
            skip = None

    def _pass(self, pacer: Pacer, skip: float | None, offset: float) -> Iterator[Chunk | None]:
        """One pass over the recording, its times moved by ``offset``; None when asked to stop."""
        if isinstance(self.data, FeatureTable):  # rows are already features: one row per chunk, as it happened
            for t0, row in zip(self.data.timestamps, self.data.values, strict=True):
                t = float(t0) + offset
                if skip is not None and t < skip - 0.5:  # (half a row: the rows' own float times)
                    continue
                pacer.wait_until(t)
                if self.stop():
                    yield None
                    return
                yield Chunk(row[None].astype(np.float32), t, new_segment=True)
            return
        rec = self.data
        for i in range(rec.n_snapshots):
            for j in range(0, rec.data.shape[1], self.chunk):
                t = float(rec.timestamps[i] + j / rec.fs_hz) + offset
                if skip is not None and t < skip - 0.5 / rec.fs_hz:  # half a sample: float sums differ
                    continue
                pacer.wait_until(t)
                if self.stop():
                    yield None
                    return
                yield Chunk(rec.data[i, j: j + self.chunk], t, new_segment=(j == 0 or skip is not None))
                skip = None


@dataclass(frozen=True)
class SimulatorSettings:
    snapshots: int = 200  # run length
    samples: int = 20480  # samples per snapshot
    fs_hz: float = 20000.0  # must equal the bundle's rate
    interval_s: float = 600.0  # data time between snapshots
    onset: float = 0.7  # share of the run after which the outer-race defect grows
    seed: int = 0
    speed: float = 1.0  # 1 = real time, 100 = 100x faster, 0 = as fast as possible
    chunk: int = 2048
    anchor: bool = True  # published from the agent's start on (t = start + data time); false: from 0 (1970)

    def __post_init__(self) -> None:
        check_pace(self.speed, self.chunk)
        if self.snapshots < 1 or self.samples < 1 or not self.fs_hz > 0 or not self.interval_s > 0:
            raise ValueError("snapshots, samples, fs_hz and interval_s must be > 0")


class SimulatorSource:
    """The built-in bearing run streamed as it is generated, snapshot by snapshot, in (scaled) real time."""

    kind: ClassVar[str] = "simulator"
    description: ClassVar[str] = "the built-in bearing run to failure, generated as it streams (no hardware)"
    Settings: ClassVar[type] = SimulatorSettings
    SAMPLE: ClassVar[str] = '''\
[source]
kind = "simulator"                    # the built-in bearing run to failure (4 channels), no hardware needed
snapshots = 200                       # run length
samples = 20480                       # samples per snapshot
fs_hz = 20000.0                       # must equal the bundle's rate (vibrawatch-agent check says so)
interval_s = 600                      # data time between snapshots
onset = 0.7                           # share of the run after which bearing1's outer-race defect grows
seed = 0
speed = 1                             # 1 = real time: a snapshot every interval_s (10 min), so the first
                                      # score and READY=1 come after a full window of snapshots (hours);
                                      # 600 = a snapshot a second; 0 = as fast as possible
chunk = 2048                          # samples handed to the pipeline at a time
# anchor = false                      # times from 0 (the page reads 1970); default: from the agent's start
'''
    provides = "samples"
    full_scale = None

    def __init__(self, sim: BearingSimulator, speed: float = 1.0, chunk: int = 2048,
                 stop: Callable[[], bool] = lambda: False, sleep: Callable[[float], Any] = time.sleep,
                 start_at: float | None = None, anchor: bool = False) -> None:
        self.sim, self.speed, self.chunk, self.stop, self.sleep = sim, speed, int(chunk), stop, sleep
        self.start_at = start_at
        self.anchor = wall_anchor() if anchor else 0.0  # added to every time (see ReplaySource)
        self.fs_hz = sim.fs_hz
        self.channels = tuple(f"bearing{c + 1}" for c in range(sim.n_channels))
        self.snapshot_samples: int | None = int(sim.snapshot_samples)  # frames never straddle two snapshots

    @classmethod
    def open(cls, s: SimulatorSettings, ctx: SourceContext) -> SimulatorSource:
        from .simulate import BearingSimulator

        try:
            sim = BearingSimulator(n_snapshots=s.snapshots, snapshot_samples=s.samples, fs_hz=s.fs_hz,
                                   interval_s=s.interval_s, onset=s.onset, seed=s.seed)
        except ValueError as e:
            from ..errors import ConfigError

            raise ConfigError(f"[source] simulator: {e}") from None
        return cls(sim, s.speed, s.chunk, ctx.stop, ctx.sleep, ctx.start_at, s.anchor)

    def chunks(self) -> Iterator[Chunk]:
        pacer = Pacer(self.speed, sleep=self.sleep)
        skip = None if self.start_at is None else self.start_at - self.anchor  # in the simulator's own time
        for i in range(self.sim.n_snapshots):
            if skip is not None and (i + 1) * self.sim.interval_s <= skip:
                continue
            snap = self.sim.snapshot(i)
            for j in range(0, len(snap), self.chunk):
                t = i * self.sim.interval_s + j / self.sim.fs_hz
                if skip is not None and t < skip - 0.5 / self.sim.fs_hz:
                    continue
                pacer.wait_until(t)
                if self.stop():
                    return
                yield Chunk(snap[j: j + self.chunk], t + self.anchor, new_segment=(j == 0 or skip is not None))
                skip = None
