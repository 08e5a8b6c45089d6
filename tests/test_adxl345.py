"""The ADXL345 driver against a fake bus implementing the device's register map (no hardware here)."""

from __future__ import annotations

import math
import struct
from collections import deque

import numpy as np
import pytest

from vibrawatch.agent.pipeline import continuity
from vibrawatch.agent.sources.adxl345 import ADXL345, ADXL345Source, full_scale_g
from vibrawatch.agent.sources.sensor_check import SensorLimits, check_chunk


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
        return list(struct.pack("<hhh", x, y, z))


class SimTime:
    """Simulated time for a fake bus: ``sleep`` lets ``s`` seconds pass (plus the scheduler's jitter), during
    which the device converts samples at its own oscillator's rate, ``fs * (1 + drift)``; ``clock`` is the
    gateway's wall clock, read with some noise of its own."""

    def __init__(self, bus: FakeADXL345Bus, fs: float = 3200.0, drift: float = 0.0,
                 jitter: object = None, noise: object = None) -> None:
        self.bus, self.fs, self.drift = bus, fs, drift
        self.t0 = self.t = 1.7e9
        self.made = 0
        self.jitter = jitter or (lambda: 0.0)
        self.noise = noise or (lambda: 0.0)

    def advance(self, s: float) -> None:
        self.t += s
        due = math.floor((self.t - self.t0) * self.fs * (1 + self.drift))
        self.bus.tick(due - self.made)
        self.made = due

    def sleep(self, s: float) -> None:
        self.advance(s + self.jitter())  # type: ignore[operator]

    def clock(self) -> float:
        return self.t + self.noise()  # type: ignore[operator]

    def true_time(self, k: int) -> float:
        """When the device converted its sample k (the first sample came one period after t0)."""
        return self.t0 + (k + 1) / (self.fs * (1 + self.drift))


class EndlessBus(FakeADXL345Bus):
    """A device that never runs out: sample k reads (k mod 8000) - 4000 on x, so order and loss show."""

    def __init__(self) -> None:
        super().__init__(np.zeros((0, 3)))
        self.k = 0

    def tick(self, n: int | None = None) -> None:
        for _ in range(n or 0):
            if len(self.fifo) == 32:
                self.lost += 1
            x = self.k % 8000 - 4000
            self.fifo.append((x, -x, self.k % 50 - 25))
            self.k += 1


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
    sim = SimTime(bus)
    src = ADXL345Source(bus, chunk=256, stop=lambda: not bus.pending and not bus.fifo, sleep=sim.sleep,
                        clock=sim.clock)
    got = list(src.chunks())
    assert all(c.samples.shape == (256, 3) and c.samples.dtype == np.float32 for c in got)
    assert [c.new_segment for c in got] == [True, False, False]
    np.testing.assert_allclose(np.concatenate([c.samples for c in got]), raw[:768] * 0.0039, rtol=1e-6)
    assert src.fs_hz == 3200.0 and src.channels == ("x", "y", "z")


def test_fifo_overrun_starts_a_new_segment() -> None:
    raw = counts(600)
    bus = FakeADXL345Bus(raw, per_wake=16)
    wakes = iter(range(10_000))

    sim = SimTime(bus)

    def sleep(s: float) -> None:
        sim.sleep(s + (0.025 if next(wakes) == 5 else 0.0))  # the reader stalls once: the FIFO overflows

    src = ADXL345Source(bus, chunk=128, stop=lambda: not bus.pending and not bus.fifo, sleep=sleep,
                        clock=sim.clock)
    got = list(src.chunks())
    assert bus.lost > 0
    segs = [c.new_segment for c in got]
    assert segs[0] and sum(segs) == 2  # the start, and once after the hole
    assert sum(len(c.samples) for c in got) <= len(raw) - bus.lost


def test_ten_minutes_with_a_jittery_scheduler_and_a_drifting_oscillator_never_break_continuity() -> None:
    """The pipeline's own continuity rule (pipeline.continuity) over 10 minutes of simulated time at 3200 Hz:
    wake-ups late by up to 3 ms (more than 9 samples), the wall clock read with up to 1 ms of noise, the
    device's oscillator 150 ppm fast. Timestamps from the sample count never jump between chunks, and the
    slow steering keeps them on the wall clock (150 ppm uncorrected would be 90 ms off after 10 minutes)."""
    rng = np.random.default_rng(9)
    bus = EndlessBus()
    sim = SimTime(bus, drift=150e-6, jitter=lambda: min(rng.exponential(0.0008), 0.003),
                  noise=lambda: rng.uniform(0, 0.001))
    src = ADXL345Source(bus, chunk=2048, stop=lambda: sim.t - sim.t0 >= 600, sleep=sim.sleep, clock=sim.clock)
    n, faults, worst, prev = 0, [], 0.0, None
    for c in src.chunks():
        if prev is not None:
            join = continuity(c.t_start, prev.t_start + len(prev.samples) / 3200.0, 3200.0)
            if join is not None or c.new_segment:
                faults.append((n, join, c.new_segment))
        x = np.round(c.samples[:, 0] / 0.0039).astype(int)
        assert np.array_equal(x, (np.arange(n, n + len(x)) % 8000) - 4000), "samples lost or out of order"
        worst = max(worst, abs(c.t_start - sim.true_time(n))) if n > 3200 * 60 else worst
        assert check_chunk(c.samples, SensorLimits(3, 3200.0), c.fs_hz) is None, "a sensor fault"
        n += len(c.samples)
        prev = c
    print(f"ADXL345, 10 min simulated: {len(faults)} continuity faults, worst timestamp error {worst * 1e3:.2f} ms")
    assert bus.lost == 0 and n >= 600 * 3200 - 2048
    assert faults == []
    assert worst < 0.005, f"timestamps {worst * 1e3:.1f} ms off the true sample times after the first minute"


def test_the_configured_range_reaches_the_saturation_check_at_what_the_device_can_report() -> None:
    """Full resolution clips at 4095 LSB = 15.97 g at 16 g (never 16.0), 511 LSB = 1.99 g at 2 g: the limit the
    pipeline's saturation check gets must be reachable, or clipping would never be seen."""
    assert full_scale_g(16) == pytest.approx(4095 * 0.0039) and full_scale_g(2) == pytest.approx(511 * 0.0039)
    assert ADXL345Source(FakeADXL345Bus(counts(1)), range_g=4).full_scale == pytest.approx(1023 * 0.0039)


def test_an_oscillator_far_off_its_nominal_rate_is_a_sensor_fault() -> None:
    """5% fast: the chunks report the rate measured by the wall clock, and the sensor check refuses them
    rather than score a signal whose frequencies are all 5% off."""
    bus = EndlessBus()
    sim = SimTime(bus, drift=0.05)
    src = ADXL345Source(bus, chunk=2048, stop=lambda: sim.t - sim.t0 >= 10, sleep=sim.sleep, clock=sim.clock)
    late = [c for c in src.chunks() if c.fs_hz is not None]
    assert late and all(c.fs_hz == pytest.approx(3360, rel=1e-3) for c in late)
    assert check_chunk(late[-1].samples, SensorLimits(3, 3200.0), late[-1].fs_hz) == \
        "sample rate 3360 Hz, the model expects 3200 Hz"
