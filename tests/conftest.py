"""Fixtures shared by the whole suite: one development PKI per session, and simulated Spines as processes.

One CA per test session, as trustme does it: every test that needs certificates trusts the same CA, and
making keys (the slow part) happens once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from batch.pki import DevPki, make_dev_pki
from spine_sim.process import SimProcess, running_sim

StartSim = Callable[..., SimProcess]


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """The session's development PKI: a CA, Spine's certificate and cpis-batch's."""
    return make_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_sim(dev_pki: DevPki) -> Iterator[StartSim]:
    """Start a simulated Spine process (stopped at the end of the test): `start_sim(dataset=..., reply_url=...,
    extra_args=[...])` returns it once it is listening."""
    with ExitStack() as stack:

        def start(
            *, dataset: Path, reply_url: str, extra_args: tuple[str, ...] | list[str] = ()
        ) -> SimProcess:
            return stack.enter_context(
                running_sim(
                    pki_dir=dev_pki.directory, dataset=dataset, reply_url=reply_url, extra_args=extra_args
                )
            )

        yield start
