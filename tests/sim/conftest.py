"""Fixtures shared by the simulator's tests."""

from __future__ import annotations

import pytest

from batch.pki import DevPki


@pytest.fixture(scope="session")
def pki(dev_pki: DevPki) -> DevPki:
    return dev_pki
