"""The simulator as a process: `python -m spine_sim`, its options, the arrival log and `running_sim`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from batch.pki import DevPki
from batch.tls import client_context
from spine_sim.jobfile import job_tables, write_job
from spine_sim.process import running_sim
from tests.sim.harness import (
    FLAGGED,
    NOT_ON_CPIS,
    WAIT_S,
    accepted,
    send_query,
    small_dataset,
)

REPO = Path(__file__).resolve().parents[2]


async def test_command_line_runs_until_sigterm_and_writes_stats(pki: DevPki, tmp_path: Path) -> None:
    dataset_path = tmp_path / "dataset.json"
    small_dataset().dump(dataset_path)
    stats_path = tmp_path / "stats.json"
    command = [
        sys.executable, "-m", "spine_sim", "--pki", str(pki.directory), "--dataset", str(dataset_path),
        "--reply-url", "https://127.0.0.1:9/unused", "--fault", "drop_reply=1", "--stats-file", str(stats_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    async with await anyio.open_process(command, cwd=REPO, env=env) as process:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(WAIT_S):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        prefix = "cpis-batch sim listening on https://127.0.0.1:"
        text = line.decode().strip()
        assert text.startswith(prefix) and text.removeprefix(prefix).isdigit()
        verify = client_context(pki.client_cert, pki.client_key, pki.ca_cert)
        async with httpx.AsyncClient(verify=verify, base_url=text.rsplit(" ", 1)[1]) as http:
            accepted(await send_query(http, FLAGGED))
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(WAIT_S):
            assert await process.wait() == 0
    stats = json.loads(stats_path.read_text())
    assert stats["queries_accepted"] == 1
    assert stats["faults_injected"] == {"drop_reply": 1}


async def test_command_line_rejects_bad_options(pki: DevPki, tmp_path: Path) -> None:
    dataset_path = tmp_path / "dataset.json"
    small_dataset().dump(dataset_path)
    command = [
        sys.executable, "-m", "spine_sim", "--pki", str(pki.directory), "--dataset", str(dataset_path),
        "--reply-url", "https://127.0.0.1:9/unused", "--fault", "no_such_fault=1",
    ]  # fmt: skip
    result = await anyio.run_process(command, cwd=REPO, check=False)
    assert result.returncode == 2
    assert b"unknown fault" in result.stderr


async def test_running_sim_reports_arrivals_as_they_come(pki: DevPki, tmp_path: Path) -> None:
    dataset_path = tmp_path / "dataset.json"
    small_dataset().dump(dataset_path)
    options = ["--fault", "drop_reply=1", "--ack-delay-ms", "1", "--reply-connections", "reuse"]
    with running_sim(
        pki_dir=pki.directory,
        dataset=dataset_path,
        reply_url="https://127.0.0.1:9/unused",
        extra_args=options,
    ) as sim:
        with pytest.raises(TimeoutError):
            sim.wait_for_arrivals(1, 0)  # nothing sent yet
        verify = client_context(pki.client_cert, pki.client_key, pki.ca_cert)
        async with httpx.AsyncClient(verify=verify, base_url=sim.url, timeout=WAIT_S) as http:
            first = await send_query(http, FLAGGED)
            second = await send_query(http, NOT_ON_CPIS)
        seen = await anyio.to_thread.run_sync(sim.wait_for_arrivals, 2, WAIT_S)
        copy = sim.arrivals()
        copy.clear()
        stats = sim.stats()
        assert len(sim.arrivals()) == 2
    accepted(first)
    accepted(second)
    assert [(a.message_id, a.nhs_number, a.accepted, a.fault) for a in seen] == [
        (first.message_id, FLAGGED, True, "drop_reply"),
        (second.message_id, NOT_ON_CPIS, True, "drop_reply"),
    ]
    assert seen[0].t <= seen[1].t
    assert stats["queries_accepted"] == 2


def test_demo_refuses_a_job_that_is_not_simulated(tmp_path: Path) -> None:
    tables = job_tables(
        tmp=tmp_path, pki=tmp_path / "pki", inputs="x.csv", spine_url="https://127.0.0.1:1/q", inbound_port=2
    )
    tables["job"]["profile"] = "live"
    job = write_job(tmp_path / "job.toml", tables)
    result = subprocess.run(
        [sys.executable, "-m", "spine_sim.demo", str(job)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "profile" in result.stderr and "simulated" in result.stderr
    assert not (tmp_path / "pki").exists()  # no certificates written


async def test_command_line_refuses_a_missing_pki(tmp_path: Path) -> None:
    dataset_path = tmp_path / "dataset.json"
    small_dataset().dump(dataset_path)
    command = [
        sys.executable, "-m", "spine_sim", "--pki", str(tmp_path / "none"), "--dataset", str(dataset_path),
        "--reply-url", "https://127.0.0.1:9/unused",
    ]  # fmt: skip
    result = await anyio.run_process(command, cwd=REPO, check=False)
    assert result.returncode == 2
    assert b"spine.pem" in result.stderr
