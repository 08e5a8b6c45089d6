"""ADXL345 3-axis accelerometer over I2C (smbus2), read from its 32-entry FIFO in bursts.

Why the FIFO: at the 3200 Hz output rate a sample arrives every 312 us, too often to poll one register
per sample from Python; in stream mode the device buffers up to 32 samples and we drain whatever it
holds each time we wake. A FIFO found full may have overwritten samples, so the next chunk starts a new
segment (the framer never builds a frame across the hole). Samples are in g (full resolution, 3.9 mg/LSB).

Timestamps come from the device's own sample count on one continuous timeline (``Timeline``): sample k is
at ``origin + k / fs``. The wall clock only steers ``origin``, slowly (at most half a sample per chunk), so
scheduling jitter in when we wake never shows up as a gap or as time going backwards between chunks, and
the timeline still follows the wall clock over minutes when the device's oscillator runs a little fast or
slow. Only a lost stretch (a FIFO overrun) or a clock error past ``resync_s`` starts a new timeline.

Only tested against a fake bus that implements the register map (tests/test_adxl345.py); it has not
been run on hardware here. smbus2 is imported only when a real bus is opened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from .source import Chunk, SourceContext

log = logging.getLogger("vibrawatch.source")

DEVID, BW_RATE, POWER_CTL, DATA_FORMAT, DATAX0, FIFO_CTL, FIFO_STATUS = 0x00, 0x2C, 0x2D, 0x31, 0x32, 0x38, 0x39
DEVID_VALUE = 0xE5
MEASURE = 0x08  # POWER_CTL: start measuring
FULL_RES = 0x08  # DATA_FORMAT: 3.9 mg/LSB at every range
FIFO_STREAM = 0x80  # FIFO_CTL: keep the newest 32 samples
FIFO_DEPTH = 32
G_PER_LSB = 0.0039
RANGE_BITS = {2: 0, 4: 1, 8: 2, 16: 3}
RATE_WINDOW_S = 2.0  # the measured rate (sensor check) counts samples over at least this much wall time
RATE_CODES = {3200.0: 0xF, 1600.0: 0xE, 800.0: 0xD, 400.0: 0xC, 200.0: 0xB, 100.0: 0xA}


def full_scale_g(range_g: int) -> float:
    """The largest |x| the device reports at ``range_g`` (full resolution: 10 bits at 2 g up to 13 bits at
    16 g, 3.9 mg/LSB): 511 LSB = 1.99 g at 2 g, 4095 LSB = 15.97 g at 16 g. A clipped sample reads this
    (or one LSB more, negative), never the nominal range, so the saturation check must use it."""
    bits = 10 + RANGE_BITS[range_g]
    return ((1 << (bits - 1)) - 1) * G_PER_LSB


class I2CBus(Protocol):
    """The three smbus2.SMBus calls the driver uses (a fake in tests implements the same)."""

    def read_byte_data(self, addr: int, reg: int) -> int: ...
    def write_byte_data(self, addr: int, reg: int, value: int) -> None: ...
    def read_i2c_block_data(self, addr: int, reg: int, length: int) -> list[int]: ...


class ADXL345:
    """Configures the device and drains its FIFO; raises OSError with what to check if it is not there."""

    def __init__(self, bus: I2CBus, address: int = 0x53, rate_hz: float = 3200.0, range_g: int = 16) -> None:
        if rate_hz not in RATE_CODES:
            raise ValueError(f"ADXL345 rate {rate_hz} Hz: choose one of {sorted(RATE_CODES)}")
        if range_g not in RANGE_BITS:
            raise ValueError(f"ADXL345 range {range_g} g: choose one of {sorted(RANGE_BITS)}")
        self.bus, self.address, self.rate_hz, self.range_g = bus, address, float(rate_hz), range_g
        devid = bus.read_byte_data(address, DEVID)
        if devid != DEVID_VALUE:
            raise OSError(f"I2C address {address:#04x}: DEVID is {devid:#04x}, expected {DEVID_VALUE:#04x} (ADXL345);"
                          " check the wiring and the address (0x53 with SDO low, 0x1D with SDO high)")
        bus.write_byte_data(address, POWER_CTL, 0x00)  # standby while configuring
        bus.write_byte_data(address, BW_RATE, RATE_CODES[self.rate_hz])
        bus.write_byte_data(address, DATA_FORMAT, FULL_RES | RANGE_BITS[range_g])
        bus.write_byte_data(address, FIFO_CTL, FIFO_STREAM)
        bus.write_byte_data(address, POWER_CTL, MEASURE)

    @property
    def full_scale_g(self) -> float:
        """|x| at which the device clips: the saturation check's limit."""
        return full_scale_g(self.range_g)

    def read_fifo(self) -> tuple[np.ndarray, bool]:
        """All samples the FIFO holds now, (n, 3) float32 in g, and whether it was full (samples may be lost)."""
        n = self.bus.read_byte_data(self.address, FIFO_STATUS) & 0x3F
        raw = [self.bus.read_i2c_block_data(self.address, DATAX0, 6) for _ in range(n)]  # each read pops one
        counts = np.frombuffer(bytes(b for r in raw for b in r), dtype="<i2").reshape(n, 3)
        return (counts * G_PER_LSB).astype(np.float32), n >= FIFO_DEPTH

    def close(self) -> None:
        """Back to standby (low power)."""
        self.bus.write_byte_data(self.address, POWER_CTL, 0x00)


class Timeline:
    """Sample count -> time: sample k is at ``origin + k / fs``; the wall clock steers ``origin`` slowly.

    ``observe(count, now)`` says that ``count`` samples had been converted at wall time ``now``; its error
    is smoothed (the wake-up jitter of a busy gateway is milliseconds, far more than a sample) and applied
    at chunk boundaries by ``steer``, at most ``max_step`` samples at a time, well inside the pipeline's
    continuity tolerance of 1.5 samples. An error past ``resync_s`` (the clock was stepped, the device
    stalled) starts a new timeline: the caller starts a new segment.
    """

    def __init__(self, fs_hz: float, max_step: float = 0.5, smoothing: float = 0.02, resync_s: float = 0.25) -> None:
        self.fs, self.max_step, self.smoothing, self.resync_s = float(fs_hz), max_step, smoothing, resync_s
        self.origin: float | None = None  # wall time of sample 0
        self.error = 0.0  # smoothed (wall clock - timeline), seconds

    def time_of(self, k: int) -> float:
        assert self.origin is not None
        return self.origin + k / self.fs

    def start(self, count: int, now: float) -> None:
        """A new timeline: ``count`` samples converted by ``now``."""
        self.origin, self.error = now - count / self.fs, 0.0

    def observe(self, count: int, now: float) -> bool:
        """Feed one reading; False when the timeline is off the clock by more than ``resync_s`` (the caller
        flushes what it has on the old timeline, then calls ``start``)."""
        assert self.origin is not None
        e = now - self.time_of(count)
        if abs(e) > self.resync_s:
            log.warning("ADXL345 timeline off the wall clock by %.3f s: starting a new one", e)
            return False
        self.error += self.smoothing * (e - self.error)
        return True

    def steer(self) -> None:
        """Move ``origin`` toward the wall clock by at most ``max_step`` samples (call between chunks)."""
        limit = self.max_step / self.fs
        step = min(max(self.error, -limit), limit)
        if self.origin is not None:
            self.origin += step
        self.error -= step


@dataclass(frozen=True)
class ADXL345Settings:
    i2c_bus: int = 1
    i2c_address: int = 0x53  # 0x1D with SDO high
    range_g: int = 16  # 2, 4, 8 or 16: also the saturation check's limit
    rate_hz: float = 3200.0  # output data rate: 100, 200, 400, 800, 1600 or 3200; must equal the bundle's
    chunk: int = 2048

    def __post_init__(self) -> None:
        if self.rate_hz not in RATE_CODES:
            raise ValueError(f"rate_hz = {self.rate_hz:g}: choose one of {', '.join(f'{r:g}' for r in RATE_CODES)}")
        if self.range_g not in RANGE_BITS:
            raise ValueError(f"range_g = {self.range_g}: choose one of {', '.join(map(str, RANGE_BITS))}")
        if self.chunk < 1:
            raise ValueError(f"chunk = {self.chunk}: expected a number of samples >= 1")


class ADXL345Source:
    """Chunks of ``chunk`` samples (x, y, z in g) from an ADXL345; a full FIFO starts a new segment."""

    kind: ClassVar[str] = "adxl345"
    description: ClassVar[str] = "an ADXL345 accelerometer on the gateway's I2C bus (x, y, z in g)"
    Settings: ClassVar[type] = ADXL345Settings
    SAMPLE: ClassVar[str] = '''\
[source]
kind = "adxl345"                      # an ADXL345 accelerometer on the gateway's I2C bus (x, y, z in g)
i2c_bus = 1                           # /dev/i2c-1
i2c_address = 0x53                    # 0x1D with SDO high
range_g = 16                          # 2, 4, 8 or 16; clipping at this range is a `sensor` fault
rate_hz = 3200                        # 100 ... 3200; must equal the bundle's fs_hz
chunk = 2048                          # samples handed to the pipeline at a time (0.64 s at 3200 Hz)
'''
    channels = ("x", "y", "z")
    provides = "samples"

    def __init__(self, bus: int | I2CBus = 1, address: int = 0x53, rate_hz: float = 3200.0, range_g: int = 16,
                 chunk: int = 2048, stop: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], Any] = time.sleep) -> None:
        if rate_hz not in RATE_CODES:
            raise ValueError(f"ADXL345 rate {rate_hz} Hz: choose one of {sorted(RATE_CODES)}")
        if range_g not in RANGE_BITS:
            raise ValueError(f"ADXL345 range {range_g} g: choose one of {sorted(RANGE_BITS)}")
        self._bus: Any = bus
        self.address, self.fs_hz, self.range_g = address, float(rate_hz), range_g
        self.chunk, self.stop, self.clock, self.sleep = int(chunk), stop, clock, sleep
        self.full_scale: float | None = full_scale_g(range_g)

    @classmethod
    def open(cls, s: ADXL345Settings, ctx: SourceContext) -> ADXL345Source:
        try:
            return cls(s.i2c_bus, s.i2c_address, s.rate_hz, s.range_g, s.chunk, ctx.stop, sleep=ctx.sleep)
        except ValueError as e:
            from ..errors import ConfigError

            raise ConfigError(f"[source] {e}") from None

    def _open(self) -> ADXL345:
        bus = self._bus
        if isinstance(bus, int):
            from smbus2 import SMBus  # lazily: only gateways with the sensor need it

            bus = SMBus(bus)
        return ADXL345(bus, self.address, self.fs_hz, self.range_g)

    def chunks(self) -> Iterator[Chunk]:
        dev = self._open()
        period = FIFO_DEPTH / 2 / self.fs_hz  # wake when the FIFO is about half full
        timeline = Timeline(self.fs_hz)
        parts: list[np.ndarray] = []
        count = 0  # samples read on this timeline
        first = 0  # count of parts[0][0]
        have, new_segment = 0, True
        total, since = 0, None  # samples read, and (wall time, total) where the rate measurement began
        measured: float | None = None  # the device's rate by the wall clock, once 2 s are measured
        try:
            while not self.stop():
                now = self.clock()  # before reading: the FIFO's newest sample was converted just before this
                samples, overrun = dev.read_fifo()
                if overrun:  # samples were lost: the count no longer tells the time; flush, then a new timeline
                    if have:
                        yield Chunk(np.concatenate(parts), timeline.time_of(first), new_segment, measured)
                    parts, have, new_segment, timeline.origin = [], 0, True, None
                    since = None
                total += len(samples)
                if since is None:
                    since = (now, total) if len(samples) else None
                elif now - since[0] >= RATE_WINDOW_S:  # an oscillator far off nominal becomes a `sensor` status
                    measured = (total - since[1]) / (now - since[0])
                if len(samples):
                    if timeline.origin is not None and not timeline.observe(count + len(samples), now):
                        if have:  # what we hold belongs to the old timeline
                            yield Chunk(np.concatenate(parts), timeline.time_of(first), new_segment, measured)
                        parts, have, new_segment, timeline.origin = [], 0, True, None
                    if timeline.origin is None:
                        count = first = 0
                        timeline.start(len(samples), now)
                    parts.append(samples)
                    have += len(samples)
                    count += len(samples)
                while have >= self.chunk:
                    block = np.concatenate(parts)
                    yield Chunk(block[: self.chunk], timeline.time_of(first), new_segment, measured)
                    rest = block[self.chunk:]
                    first += self.chunk
                    timeline.steer()  # between chunks only: a chunk's samples stay evenly spaced
                    parts, have, new_segment = ([rest] if len(rest) else []), len(rest), False
                if not len(samples) or len(samples) < FIFO_DEPTH // 2:
                    self.sleep(period)
        finally:
            dev.close()
