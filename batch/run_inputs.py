"""A run's input rows as the state file keeps them: the annotated frame as Parquet, in parts of bounded size.

The reports are built from these rows (the job's own and `cpis-batch report`'s alike), so a report written
again from the state equals the first. Parts keep every blob far below SQLite's size limit whatever the list's
shape; Parquet keeps every value and type exactly.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import polars as pl

PART_CELLS = 2_000_000
"""Cells (rows × columns) per part."""


def encode(frame: pl.DataFrame) -> list[tuple[int, bytes]]:
    """(rows, Parquet bytes) per part, in order; at least one part, so an empty frame keeps its columns."""
    per_part = max(1, PART_CELLS // max(frame.width, 1))
    parts: list[tuple[int, bytes]] = []
    for offset in range(0, max(frame.height, 1), per_part):
        chunk = frame.slice(offset, per_part)
        buffer = io.BytesIO()
        chunk.write_parquet(buffer)
        parts.append((chunk.height, buffer.getvalue()))
    return parts


def decode(parts: Sequence[bytes]) -> pl.DataFrame:
    """The frame `encode` was given."""
    frames = [pl.read_parquet(io.BytesIO(part)) for part in parts]
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
