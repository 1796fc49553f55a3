"""`make bench` at a tiny size: every figure the performance issue asks for is in bench/results.json's shape.

Speed is never asserted here (figures at this size mean nothing); only that the bench runs end to end and
writes every key as a number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
PY_SPY = REPO / ".venv-tools" / "profile" / "bin" / "py-spy"

RATE_KEYS = {"ratio", "max_in_1s"}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.skipif(
    not PY_SPY.exists(), reason="py-spy is not installed: `make test` installs it into .venv-tools"
)
def test_the_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--output", str(out)],
        env={**os.environ, "BENCH_SIZE": "0.01"},
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = json.loads(out.read_text())
    for key in ("client_cpu_ms_per_child", "client_cpu_ms_per_child_keepalive", "sim_cpu_ms_per_child"):
        assert _number(results[key]), key
    assert results["cpu_breakdown_ms_per_child"] and all(
        _number(ms) for ms in results["cpu_breakdown_ms_per_child"].values()
    )
    assert set(results["rates"]) == {"5", "20", "50", "100", "200"}
    for rate in results["rates"].values():
        assert RATE_KEYS <= set(rate) and all(_number(rate[k]) for k in RATE_KEYS)
    assert RATE_KEYS <= set(results["rates_ack_200ms"]["50"])
    assert all(_number(results["restart"][k]) for k in ("first_fresh_query_s", "ratio_first_10s"))
    assert all(_number(results["memory_mib"][k]) for k in ("read_validate_1m", "run_10k", "run_100k"))
    assert all(_number(results["nhs_check"][k]) for k in ("rows_per_s", "ratio_vs_nhs_number_package"))
    connection = results["detail"]["inbound_connection_ms"]
    assert all(
        _number(connection[k]) for k in ("endpoint_cpu_ms", "endpoint_nagle_peer_cpu_ms", "floor_cpu_ms")
    )
