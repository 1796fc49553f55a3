"""The rows read from the lists and the numbers to query are each handed over once, and nothing else keeps them."""

from __future__ import annotations

import gc
import weakref

import polars as pl
import pytest

from batch.job import InputRows, taken


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


def test_fresh_children_are_taken_in_order_and_the_list_let_go_of() -> None:
    # The pipeline's queue is then the only holder of a run's numbers, and lets each go when it is done.
    numbers = ["9990000018", "9990000026", "9990000034"]
    given = taken(numbers)
    assert next(given) == "9990000018"
    assert numbers == ["9990000034", "9990000026"]
    assert list(given) == ["9990000026", "9990000034"]
    assert numbers == []
