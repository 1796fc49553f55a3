"""Reading a state file (report, status) never creates files beside it, which the next run would refuse."""

from __future__ import annotations

from pathlib import Path

from batch.ids import new_id
from batch.store import Store
from batch.store.uri import read_only_uri

RUN_ID = new_id()


async def _finished_state(tmp_path: Path) -> Path:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as store:
        await store.begin_or_resume_run(
            run_id=RUN_ID, job_name="job", input_fingerprint="f", reference_date="2026-12-04"
        )
    assert not path.with_name("state.sqlite-wal").exists()  # the writer's close checkpoints and removes it
    return path


async def test_reading_a_closed_state_file_creates_nothing_beside_it(tmp_path: Path) -> None:
    path = await _finished_state(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    async with Store.open_read_only(path) as store:
        assert await store.find_run("job", RUN_ID) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == before == ["state.sqlite"]


async def test_a_live_state_file_is_read_through_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with Store.open(path) as writer:
        await writer.begin_or_resume_run(
            run_id=RUN_ID, job_name="job", input_fingerprint="f", reference_date="2026-12-04"
        )
        assert read_only_uri(path).endswith("?mode=ro")
        async with Store.open_read_only(path) as reader:
            assert await reader.find_run("job", RUN_ID) is not None  # committed, still in the WAL
    assert read_only_uri(path).endswith("?mode=ro&immutable=1")
