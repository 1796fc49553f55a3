"""`InputRows`: the rows read from the lists are handed to the run once, and nothing else keeps them."""

from __future__ import annotations

import gc
import weakref

import polars as pl
import pytest

from batch.job import InputRows


def test_the_rows_are_taken_once_and_then_held_by_no_one() -> None:
    frame = pl.DataFrame({"NHS No": ["9990000018"]})
    gone = weakref.ref(frame)
    rows = InputRows(frame)
    del frame
    taken = rows.take()
    assert taken.height == 1
    del taken
    gc.collect()
    assert gone() is None
    with pytest.raises(RuntimeError, match="taken already"):
        rows.take()
