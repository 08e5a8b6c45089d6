"""ADXL345 3-axis accelerometer over I2C (smbus2), read from its 32-entry FIFO in bursts.

Why the FIFO: at the 3200 Hz output rate a sample arrives every 312 us, too often to poll one register
per sample from Python; in stream mode the device buffers up to 32 samples and we drain whatever it
holds each time we wake. A FIFO found full may have overwritten samples, so the next chunk starts a new
segment (the framer never builds a frame across the hole). Samples are in g (full resolution, 3.9 mg/LSB).

Only tested against a fake bus that implements the register map (tests/test_adxl345.py); it has not
been run on hardware here. smbus2 is imported only when a real bus is opened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from .source import Chunk

DEVID, BW_RATE, POWER_CTL, DATA_FORMAT, DATAX0, FIFO_CTL, FIFO_STATUS = 0x00, 0x2C, 0x2D, 0x31, 0x32, 0x38, 0x39
DEVID_VALUE = 0xE5
MEASURE = 0x08  # POWER_CTL: start measuring
FULL_RES = 0x08  # DATA_FORMAT: 3.9 mg/LSB at every range
FIFO_STREAM = 0x80  # FIFO_CTL: keep the newest 32 samples
FIFO_DEPTH = 32
G_PER_LSB = 0.0039
RANGE_BITS = {2: 0, 4: 1, 8: 2, 16: 3}
RATE_CODES = {3200.0: 0xF, 1600.0: 0xE, 800.0: 0xD, 400.0: 0xC, 200.0: 0xB, 100.0: 0xA}


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
        return float(self.range_g)

    def read_fifo(self) -> tuple[np.ndarray, bool]:
        """All samples the FIFO holds now, (n, 3) float32 in g, and whether it was full (samples may be lost)."""
        n = self.bus.read_byte_data(self.address, FIFO_STATUS) & 0x3F
        raw = [self.bus.read_i2c_block_data(self.address, DATAX0, 6) for _ in range(n)]  # each read pops one
        counts = np.frombuffer(bytes(b for r in raw for b in r), dtype="<i2").reshape(n, 3)
        return (counts * G_PER_LSB).astype(np.float32), n >= FIFO_DEPTH

    def close(self) -> None:
        """Back to standby (low power)."""
        self.bus.write_byte_data(self.address, POWER_CTL, 0x00)


class ADXL345Source:
    """Chunks of ``chunk`` samples (x, y, z in g) from an ADXL345; a full FIFO starts a new segment."""

    channels = ("x", "y", "z")

    def __init__(self, bus: int | I2CBus = 1, address: int = 0x53, rate_hz: float = 3200.0, range_g: int = 16,
                 chunk: int = 2048, stop: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self._bus: Any = bus
        self.address, self.fs_hz, self.range_g = address, float(rate_hz), range_g
        self.chunk, self.stop, self.clock, self.sleep = int(chunk), stop, clock, sleep

    def _open(self) -> ADXL345:
        bus = self._bus
        if isinstance(bus, int):
            from smbus2 import SMBus  # lazily: only gateways with the sensor need it

            bus = SMBus(bus)
        return ADXL345(bus, self.address, self.fs_hz, self.range_g)

    def chunks(self) -> Iterator[Chunk]:
        dev = self._open()
        period = FIFO_DEPTH / 2 / self.fs_hz  # wake when the FIFO is about half full
        parts: list[np.ndarray] = []
        have, t_start, new_segment = 0, None, True
        try:
            while not self.stop():
                samples, overrun = dev.read_fifo()
                now = self.clock()
                if overrun and have:  # the hole is between what we have and what follows: flush, restart
                    yield Chunk(np.concatenate(parts), t_start or now, new_segment)
                    parts, have, new_segment = [], 0, True
                elif overrun:
                    new_segment = True
                if len(samples):
                    if not have:
                        t_start = now - len(samples) / self.fs_hz
                    parts.append(samples)
                    have += len(samples)
                if have >= self.chunk:
                    block = np.concatenate(parts)
                    yield Chunk(block[: self.chunk], t_start or now, new_segment)
                    rest = block[self.chunk:]
                    t_start = (t_start or now) + self.chunk / self.fs_hz
                    parts, have, new_segment = ([rest] if len(rest) else []), len(rest), False
                if not len(samples) or len(samples) < FIFO_DEPTH // 2:
                    self.sleep(period)
        finally:
            dev.close()
