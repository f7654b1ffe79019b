"""Image files that must be refused, written byte by byte for the reader and command tests; not a test module.

``huge_png(width, height)``: a PNG of a few dozen bytes whose IHDR declares ``width x height`` pixels (8-bit
RGB); its one IDAT chunk is not valid zlib data, so any attempt to decode the pixels fails with a decode error
instead of the size refusal the callers must give first.
"""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, colour type 2 (RGB), no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"not zlib") + _chunk(b"IEND", b"")
