"""The ADXL345 driver against a fake bus implementing the device's register map (no hardware here)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from vibrawatch.agent.adxl345 import ADXL345, ADXL345Source


class FakeADXL345Bus:
    """Registers DEVID 0x00, BW_RATE 0x2C, POWER_CTL 0x2D, DATA_FORMAT 0x31, DATAX0..DATAZ1 0x32-0x37, FIFO_CTL
    0x38, FIFO_STATUS 0x39; a 32-entry stream-mode FIFO; reading 6 bytes from 0x32 pops one entry."""

    def __init__(self, samples: np.ndarray, per_wake: int = 16, devid: int = 0xE5, address: int = 0x53) -> None:
        self.regs = dict.fromkeys(range(0x40), 0)
        self.regs[0x00] = devid
        self.regs[0x2C] = 0x0A
        self.address = address
        self.pending = deque(map(tuple, samples.astype(np.int16).tolist()))
        self.fifo: deque[tuple[int, int, int]] = deque(maxlen=32)  # stream mode: oldest overwritten
        self.per_wake = per_wake
        self.lost = 0

    def tick(self, n: int | None = None) -> None:
        """Time passes: the device converts ``n`` more samples into its FIFO (only while measuring)."""
        if not self.regs[0x2D] & 0x08 or self.regs[0x38] & 0xC0 != 0x80:
            return
        for _ in range(self.per_wake if n is None else n):
            if not self.pending:
                return
            if len(self.fifo) == 32:
                self.lost += 1
            self.fifo.append(self.pending.popleft())

    def _check(self, addr: int) -> None:
        if addr != self.address:
            raise OSError(121, "Remote I/O error")

    def read_byte_data(self, addr: int, reg: int) -> int:
        self._check(addr)
        if reg == 0x39:
            return len(self.fifo) & 0x3F
        return self.regs[reg]

    def write_byte_data(self, addr: int, reg: int, value: int) -> None:
        self._check(addr)
        assert reg in (0x2C, 0x2D, 0x31, 0x38), f"write to read-only/unused register {reg:#x}"
        self.regs[reg] = value & 0xFF

    def read_i2c_block_data(self, addr: int, reg: int, length: int) -> list[int]:
        self._check(addr)
        assert reg == 0x32 and length == 6, "the driver reads all three axes in one burst"
        x, y, z = self.fifo.popleft() if self.fifo else (0, 0, 0)
        return list(np.array([x, y, z], dtype="<i2").tobytes())


def counts(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-4000, 4000, size=(n, 3))


def test_configures_the_device_for_3200_hz_full_resolution_stream_fifo() -> None:
    bus = FakeADXL345Bus(counts(10))
    dev = ADXL345(bus, range_g=16)
    assert bus.regs[0x2C] & 0x0F == 0x0F  # 3200 Hz
    assert bus.regs[0x31] == 0x08 | 0x03  # FULL_RES, +-16 g
    assert bus.regs[0x38] & 0xC0 == 0x80  # stream mode
    assert bus.regs[0x2D] == 0x08  # measuring
    dev.close()
    assert bus.regs[0x2D] == 0x00


def test_wrong_device_says_what_to_check() -> None:
    with pytest.raises(OSError, match="DEVID is 0x12.*wiring and the address"):
        ADXL345(FakeADXL345Bus(counts(1), devid=0x12))
    with pytest.raises(ValueError, match="rate 5000"):
        ADXL345(FakeADXL345Bus(counts(1)), rate_hz=5000)


def test_fifo_burst_reads_every_sample_in_order_in_g() -> None:
    raw = counts(1000)
    bus = FakeADXL345Bus(raw, per_wake=16)
    src = ADXL345Source(bus, chunk=256, stop=lambda: not bus.pending and not bus.fifo, sleep=lambda s: bus.tick(),
                        clock=lambda: 0.0)
    got = list(src.chunks())
    assert all(c.samples.shape == (256, 3) and c.samples.dtype == np.float32 for c in got)
    assert [c.new_segment for c in got] == [True, False, False]
    np.testing.assert_allclose(np.concatenate([c.samples for c in got]), raw[:768] * 0.0039, rtol=1e-6)
    assert src.fs_hz == 3200.0 and src.channels == ("x", "y", "z")


def test_fifo_overrun_starts_a_new_segment() -> None:
    raw = counts(600)
    bus = FakeADXL345Bus(raw, per_wake=16)
    wakes = iter(range(10_000))

    def sleep(_: float) -> None:
        bus.tick(80 if next(wakes) == 5 else None)  # the reader stalls once: the FIFO overflows

    src = ADXL345Source(bus, chunk=128, stop=lambda: not bus.pending and not bus.fifo, sleep=sleep,
                        clock=lambda: 0.0)
    got = list(src.chunks())
    assert bus.lost > 0
    segs = [c.new_segment for c in got]
    assert segs[0] and sum(segs) == 2  # the start, and once after the hole
    assert sum(len(c.samples) for c in got) <= len(raw) - bus.lost
