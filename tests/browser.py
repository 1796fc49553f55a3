"""Headless Chromium for tests that look at summary.html as a browser shows it, and a small PNG reader.

Chromium is found on PATH (`chromium`, `chromium-browser`) or at /usr/bin/chromium; tests skip with a reason
when there is none (CI installs Debian's `chromium`). It runs without network, sync, updates or a profile of
its own beyond a throw-away folder.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium() -> str:
    """The Chromium binary, or skip the calling test saying how to get one."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.skip("no Chromium installed (apt-get install chromium) to render summary.html")


def _run(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), *_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def screenshot(page: Path, png: Path, profile: Path, size: str = "1280,2000") -> bytes:
    _run(page, profile, f"--screenshot={png}", f"--window-size={size}")
    return png.read_bytes()


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM after Chromium loaded the page, as HTML."""
    return _run(page, profile, "--dump-dom").stdout


@dataclass(frozen=True)
class Pixels:
    width: int
    height: int
    rows: list[bytes]
    """Decoded rows (possibly only the first few), `channels` bytes per pixel."""
    channels: int

    def distinct(self) -> set[bytes]:
        step = self.channels
        return {row[i : i + step] for row in self.rows for i in range(0, len(row), step)}

    def share_unlike(self, background: bytes) -> float:
        step = self.channels
        total = sum(len(row) // step for row in self.rows)
        other = sum(
            1 for row in self.rows for i in range(0, len(row), step) if row[i : i + step] != background
        )
        return other / total


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(data: bytes, max_rows: int | None = None) -> Pixels:
    """Decode an 8-bit, non-interlaced PNG (grey, RGB or RGBA, as Chromium writes) with zlib and struct; only
    the first `max_rows` rows when given (each row needs only the ones above it)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat = 8, bytearray()
    width = height = depth = colour = interlace = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    if depth != 8 or interlace:
        raise ValueError("only 8-bit non-interlaced PNGs are read here")
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(min(height, max_rows) if max_rows else height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif kind == 2:
            line = bytearray((x + up) & 0xFF for x, up in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                corner = previous[i - channels] if i >= channels else 0
                line[i] = (line[i] + paeth(left, previous[i], corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return Pixels(width, height, rows, channels)
