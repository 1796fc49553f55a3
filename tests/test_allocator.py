"""Importing `batch` sets the allocator default polars reads when it starts (docs/decisions.md#d27)."""

from __future__ import annotations

import os
import subprocess
import sys

SHOW = "import batch, os, polars; print(os.environ['_RJEM_MALLOC_CONF'])"


def _conf(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


# polars puts its own defaults first and what it finds after them; jemalloc takes the last value of each option.


def test_freed_memory_is_returned_at_once_by_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    assert _conf(env).endswith(",dirty_decay_ms:0,muzzy_decay_ms:0")


def test_polars_own_setting_inherited_from_a_parent_process_is_not_an_operators() -> None:
    # A parent that imported polars (a test runner, the bench) passes polars' default on to its children.
    conf = _conf({**os.environ, "_RJEM_MALLOC_CONF": "dirty_decay_ms:500,muzzy_decay_ms:1000"})
    assert conf.endswith(",dirty_decay_ms:0,muzzy_decay_ms:0")


def test_an_operators_own_setting_wins() -> None:
    conf = _conf({**os.environ, "_RJEM_MALLOC_CONF": "dirty_decay_ms:5000"})
    assert conf.endswith(",dirty_decay_ms:5000")
    assert "dirty_decay_ms:0" not in conf
