"""Helpers for the import-bomb tests: raw zip archives whose central directory says what the
test wants it to say, and a measure of what refusing a bomb cost (time, peak memory)."""
from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import pytest

from datasite.ingest import IngestError


def raw_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip of raw members ``(name, compressed data, crc, uncompressed size, method)``."""
    out, central = bytearray(), bytearray()
    for name, data, crc, usize, method in members:
        n = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc,
                               len(data), usize, len(n), 0, 0, 0, 0, 0, len(out)) + n
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data),
                           usize, len(n), 0) + n + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                      len(out), 0)
    path.write_bytes(bytes(out + central + end))


def vm_bytes(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes; 0 if absent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def refused_measured(fn, *words) -> tuple[str, int, float]:
    """Run ``fn``, which must raise IngestError naming ``words``; return (message, peak bytes
    allocated while it ran, seconds). The peak is the larger of tracemalloc's peak (numpy and
    Python allocations) and the growth of the process's peak RSS (VmHWM, reset first: C-level
    buffers such as zlib's, PIL's or Arrow's are invisible to tracemalloc)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        rss0 = vm_bytes("VmRSS")
    except OSError:
        rss0 = None
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(IngestError) as e:
            fn()
    finally:
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if rss0 is not None:
        peak = max(peak, vm_bytes("VmHWM") - rss0)
    msg = str(e.value)
    for w in words:
        assert w.lower() in msg.lower(), f"{w!r} not in {msg!r}"
    return msg, peak, seconds
