"""Fixtures shared by the simulator's tests."""

from __future__ import annotations

import pytest

from batch.pki import DevPki, make_dev_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_dev_pki(tmp_path_factory.mktemp("pki"))
