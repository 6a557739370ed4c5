"""Raw zip archives for bomb tests: the central directory says what the test wants it to say."""
from __future__ import annotations

import struct
from pathlib import Path


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
