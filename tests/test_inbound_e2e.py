"""The real job against the simulated Spine while someone else attacks the reply endpoint.

The CLI and the simulator run as processes; the attacker runs here, in this test's event loop, and acts once
the simulator has seen the queries (its arrival log), so it is on time without sleeping.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
import pytest

from batch.correlate import SIDE_RAW_LIMIT
from batch.nhs_number import validate
from spine_sim.arrivals import Arrival
from spine_sim.dataset import RecordsFound, load_dataset
from spine_sim.jobfile import free_port, job_tables, write_job
from spine_sim.process import SimProcess, running_sim
from spine_sim.replies import build_query_failed
from tests.expectations import expected_outcomes, reported_outcomes
from tests.inbound_support import (
    InboundCa,
    client_tls,
    closed_by_peer,
    connect_tls,
    make_inbound_ca,
    read_response,
    reply,
    request_head,
)
from tests.support import SAMPLE_DATA, SAMPLE_DATASET, run_cli

pytestmark = pytest.mark.e2e

ARRIVAL_WAIT_S = 60.0


def _lists(tmp: Path) -> list[Path]:
    folder = tmp / "lists"
    folder.mkdir()
    return [
        Path(shutil.copy(source, folder / source.name)) for source in sorted(SAMPLE_DATA.glob("clinic-*"))
    ]


def _children(lists: list[Path]) -> set[str]:
    numbers = set()
    for path in lists:
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
        for value in frame.get_column("NHS No").to_list():
            checked = validate(value)
            if checked.number is not None:
                numbers.add(checked.number)
    return numbers


def _job(tmp: Path, ca: InboundCa, sim: SimProcess, port: int, *, allowed: list[str]) -> Path:
    tables = job_tables(
        tmp=tmp,
        pki=ca.pki.directory,
        inputs=str(tmp / "lists" / "clinic-*"),
        spine_url=f"{sim.url}/reliablemessaging/reliablerequest",
        inbound_port=port,
    )
    tables["inbound"]["allowed_peers"] = allowed
    return write_job(tmp / "job.toml", tables)


class Attack:
    """What the attacker did, and what it saw: each refusal is the server's answer, not a guess."""

    def __init__(self) -> None:
        self.forged_refused = 0
        self.too_large = 0
        self.too_many_parts = 0
        self.orphans_acknowledged = 0
        self.http2_closed = 0
        self.idle: list[anyio.abc.ByteStream] = []


async def _attack(ca: InboundCa, sim: SimProcess, port: int, children: int, attack: Attack) -> None:
    arrivals = await anyio.to_thread.run_sync(sim.wait_for_arrivals, children, ARRIVAL_WAIT_S)
    # Spine is held still while the attack runs: no genuine reply can come, so the run cannot end before
    # the attack has (and the forged answers come first).
    sim.process.send_signal(signal.SIGSTOP)
    try:
        await _flood(ca, arrivals, port, attack)
    finally:
        sim.process.send_signal(signal.SIGCONT)


async def _flood(ca: InboundCa, arrivals: list[Arrival], port: int, attack: Attack) -> None:
    url = f"https://127.0.0.1:{port}/cpis/replies"
    # 300 connections that never start TLS.
    attack.idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(300)]
    # A certificate from the same CA, not Spine's: a forged "no record" for every query, before Spine answers.
    dataset = load_dataset(SAMPLE_DATASET)
    async with httpx.AsyncClient(verify=client_tls(ca, ca.intruder)) as intruder:
        for arrival in arrivals:
            assert arrival.message_id is not None and arrival.nhs_number is not None
            if not isinstance(dataset.answer(arrival.nhs_number), RecordsFound):
                continue
            hl7 = build_query_failed(
                reply_id=arrival.message_id,
                message_ref=arrival.message_id,
                spine_asid="999000000001",
                client_asid="999000000101",
                now=datetime.now(UTC),
                issue_code="NHSNCC002",
                issue_display="No Record Found",
            )
            headers, body, _ = reply(hl7=hl7, ref_to=arrival.message_id)
            try:
                await intruder.post(url, content=body, headers=headers)
            except httpx.TransportError:
                attack.forged_refused += 1
    # Spine's own certificate, misbehaving: a declared 2 MiB body, 10,000 parts, 200 orphans, HTTP/2.
    spine = client_tls(ca, ca.spine)
    stream = await connect_tls(port, spine)
    await stream.send(request_head(2 << 20))
    if (await read_response(stream)).status == 413:
        attack.too_large += 1
    await stream.aclose()
    async with httpx.AsyncClient(verify=spine) as client:
        parts = b"--b\r\n\r\n\r\n" * 10_000 + b"--b--\r\n"
        response = await client.post(
            url, content=parts, headers={"Content-Type": 'multipart/related; boundary="b"'}
        )
        if response.status_code == 500:
            attack.too_many_parts += 1
        hl7 = (
            b"<QUQI_IN010000UK14 xmlns='urn:hl7-org:v3'><!--"
            + b"o" * (100 << 10)
            + b"--></QUQI_IN010000UK14>"
        )
        for _ in range(200):
            headers, body, _ = reply(hl7=hl7)
            response = await client.post(url, content=body, headers=headers)
            if response.status_code == 200 and b"Acknowledgment" in response.content:
                attack.orphans_acknowledged += 1
    stream = await connect_tls(port, spine)
    await stream.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    if await closed_by_peer(stream) == b"":
        attack.http2_closed += 1


def _run_in_thread(job: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("run", str(job))


async def test_the_run_is_right_while_an_intruder_and_a_flood_hit_the_endpoint(tmp_path: Path) -> None:
    ca = make_inbound_ca(tmp_path / "ca")
    lists = _lists(tmp_path)
    children = len(_children(lists))
    port = free_port()
    reply_url = f"https://127.0.0.1:{port}/cpis/replies"
    attack = Attack()
    # Spine answers 5 s after each query: the attack happens while the run waits for its replies.
    with running_sim(
        pki_dir=ca.pki.directory,
        dataset=SAMPLE_DATASET,
        reply_url=reply_url,
        extra_args=["--latency-ms", "5000"],
    ) as sim:
        job = _job(tmp_path, ca, sim, port, allowed=[ca.spine.pin])
        result: dict[str, Any] = {}

        async def run() -> None:
            result["completed"] = await anyio.to_thread.run_sync(_run_in_thread, job)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await _attack(ca, sim, port, children, attack)
        stats = sim.stats()
        for stream in attack.idle:
            await stream.aclose()
    completed = result["completed"]
    dataset = load_dataset(SAMPLE_DATASET)
    expected = expected_outcomes(dataset, lists)
    has_errors = any(outcome in ("error", "no_reply") for outcome, _ in expected.values())
    assert completed.returncode == (1 if has_errors else 0), completed.stderr[-3000:]
    run_dir = (tmp_path / "out" / "latest").resolve()
    results = pl.read_parquet(run_dir / "results.parquet")
    reported = reported_outcomes(results)
    assert {key: outcome for key, (outcome, _) in reported.items()} == {
        key: outcome for key, (outcome, _) in expected.items()
    }
    assert stats["notifications"] == 0

    # Every forged answer was refused at the door, and the flood was refused or bounded, as counted.
    flagged = sum(isinstance(dataset.answer(n), RecordsFound) for n in _children(lists))
    assert attack.forged_refused == flagged > 0
    assert (attack.too_large, attack.too_many_parts, attack.orphans_acknowledged, attack.http2_closed) == (
        1,
        1,
        200,
        1,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    refused = summary["this_process"]["inbound_refused"]
    assert refused["peer_not_allowed"] == flagged
    assert refused["too_large"] == 1 and refused["http2"] == 1
    inbound = summary["this_process"]["inbound"]
    assert inbound["orphan"] == 200 and inbound["too_many_parts"] == 1
    with sqlite3.connect(tmp_path / "state" / "state.sqlite") as state:
        sizes = state.execute(
            "SELECT length(raw), raw_size FROM inbound WHERE disposition = 'orphan'"
        ).fetchall()
    assert len(sizes) == 200 and all(stored == SIDE_RAW_LIMIT < size for stored, size in sizes)


async def test_a_run_with_kept_alive_reply_connections_ends_when_its_children_are_answered(
    tmp_path: Path,
) -> None:
    ca = make_inbound_ca(tmp_path / "ca")
    lists = _lists(tmp_path)
    port = free_port()
    with running_sim(
        pki_dir=ca.pki.directory,
        dataset=SAMPLE_DATASET,
        reply_url=f"https://127.0.0.1:{port}/cpis/replies",
        extra_args=["--reply-connections", "reuse"],
    ) as sim:
        job = _job(tmp_path, ca, sim, port, allowed=[ca.spine.subject])
        completed = await anyio.to_thread.run_sync(_run_in_thread, job)
        stats = sim.stats()
    expected = expected_outcomes(load_dataset(SAMPLE_DATASET), lists)
    has_errors = any(outcome in ("error", "no_reply") for outcome, _ in expected.values())
    assert completed.returncode == (1 if has_errors else 0), completed.stderr[-3000:]
    assert stats["replies_failed"] == 0
    # The endpoint stopped with nothing left open: idle kept-alive connections were closed, not waited for.
    stopped = [line for line in completed.stderr.splitlines() if "inbound endpoint stopped" in line]
    assert len(stopped) == 1 and stopped[0].endswith(", 0 still open")
    summary = json.loads(((tmp_path / "out" / "latest").resolve() / "summary.json").read_text())
    assert summary["this_process"]["inbound_refused"] == {}
