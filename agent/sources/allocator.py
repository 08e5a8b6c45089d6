"""Let the C allocator reuse the large per-frame arrays instead of returning them to the kernel each frame.

One 1 s frame of 4 channels at 20 kHz makes a few 0.3-0.6 MB numpy temporaries (the float64 copy, the
spectrum, the squared deviations). glibc serves blocks above its mmap threshold with a fresh ``mmap``
and unmaps them on ``free``, so every frame page-faults ~4 MB of zeroed memory back in: on the benchmark
machine that took as long as the features themselves (bench/agent.py: features 390x real time with
the default allocator, 900x with this). Raising the mmap and trim thresholds keeps freed blocks in the
heap for the next frame; resident memory stays within a few MB of what it was.

glibc only (Raspberry Pi OS, Debian, Ubuntu). Elsewhere, or where glibc refuses the values (32-bit
builds cap the mmap threshold at 512 KiB), it changes nothing and says so.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_large_blocks(mmap_threshold: int = 8 << 20, trim_threshold: int = 32 << 20) -> bool:
    """Serve blocks up to ``mmap_threshold`` bytes from the heap and keep up to ``trim_threshold`` free
    at its top; True if glibc took both values."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: libc is already loaded
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def release_free_memory() -> bool:
    """Hand the heap's free memory back to the kernel (glibc's ``malloc_trim``); False where unavailable.

    The thresholds above keep up to 32 MB of freed blocks for the next frame. A large samples message
    (paho's read buffer, the payload, the parsed lists) leaves tens of MB of them behind, which would then
    stay resident for good: after one, the source asks for them back, once.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
