"""Patient data at rest, end to end: private modes, no symlinks followed, formula-safe CSV, retention, exit 70.

Real processes against the simulated Spine: the CLI writes what a user's run writes, and the tests look at the
files it left.
"""

from __future__ import annotations

import grp
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from batch.config import load_job
from batch.pki import DevPki
from spine_sim.dataset import generate_dataset
from spine_sim.jobfile import free_port, job_tables, write_job
from spine_sim.process import SimProcess, running_sim
from tests.support import run_cli

pytestmark = pytest.mark.e2e

NAMES = ['=HYPERLINK("http://x","click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "Ann Smith", "Bo"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPki) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("privacy")
    dataset = generate_dataset(len(NAMES), seed=3)
    dataset.dump(tmp / "dataset.json")
    flagged = sorted(dataset.flagged_numbers())
    others = sorted(set(dataset.nhs_numbers()) - set(flagged))
    numbers = (flagged + others)[: len(NAMES)]
    pki = dev_pki.directory
    port = free_port()
    with running_sim(
        pki_dir=pki, dataset=tmp / "dataset.json", reply_url=f"https://127.0.0.1:{port}/cpis/replies"
    ) as sim:
        yield {"tmp": tmp, "pki": pki, "port": port, "sim": sim, "numbers": numbers}


def _job(world: dict, name: str, **job: object) -> Path:
    folder = world["tmp"] / name
    folder.mkdir()
    pl.DataFrame(
        {"NHS No": world["numbers"], "Name": NAMES, "Appointment Date": ["15/01/2027"] * len(NAMES)}
    ).write_csv(folder / "list.csv")
    sim: SimProcess = world["sim"]
    tables = job_tables(
        tmp=folder,
        pki=world["pki"],
        inputs="list.csv",
        spine_url=f"{sim.url}/reliablemessaging/reliablerequest",
        inbound_port=world["port"],
    )
    tables["job"].update(job)
    return write_job(folder / "job.toml", tables)


def _modes(*roots: Path) -> tuple[set[int], set[int]]:
    """Permission bits of every folder and file under the roots (the roots included)."""
    folders, files = set(), set()
    for root in roots:
        folders.add(stat.S_IMODE(root.lstat().st_mode) & 0o777)
        for path in root.rglob("*"):
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                folders.add(stat.S_IMODE(mode) & 0o777)
            elif not stat.S_ISLNK(mode):
                files.add(stat.S_IMODE(mode))
    return folders, files


def test_a_run_leaves_only_private_folders_and_files(world: dict) -> None:
    job = _job(world, "private")
    completed = run_cli("run", str(job))
    assert completed.returncode in (0, 1), completed.stderr
    folders, files = _modes(job.parent / "out", job.parent / "state")
    assert folders == {0o700}
    assert files == {0o600}
    names = {p.name for p in (job.parent / "state").iterdir()}
    assert names == {"state.sqlite", "state.sqlite.lock"}  # the WAL is checkpointed away at the end


def test_a_named_group_may_read(world: dict) -> None:
    others = [g for g in grp.getgrall() if g.gr_gid != os.getegid()]
    if not others or os.geteuid() != 0:
        pytest.skip("needs root and a group other than the test's own, to give files to it")
    group = others[0]
    job = _job(world, "group", group=group.gr_name)
    completed = run_cli("run", str(job))
    assert completed.returncode in (0, 1), completed.stderr
    folders, files = _modes(job.parent / "out", job.parent / "state")
    assert folders == {0o750}
    assert files == {0o640}
    for path in [*(job.parent / "out").rglob("*"), *(job.parent / "state").rglob("*")]:
        if not path.is_symlink():
            assert path.stat().st_gid == group.gr_gid, path.name


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_an_output_folder_others_may_write_is_refused_and_nothing_written(world: dict, mode: int) -> None:
    job = _job(world, f"open-{mode:o}")
    out = job.parent / "out"
    out.mkdir()
    out.chmod(mode)
    completed = run_cli("run", str(job))
    assert completed.returncode == 2
    assert f"{out}: the output folder is writable by other users" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert list(out.iterdir()) == []
    assert not (job.parent / "state").exists()


def test_a_symlinked_run_folder_is_refused_and_its_target_untouched(world: dict) -> None:
    job = _job(world, "linked-run")
    # Stop the first run before its reports, so its run folder's name is known and can be planted.
    killed = run_cli("run", str(job), env={"CPIS_BATCH_FAILPOINT": "reports_staged:1:raise"})
    assert killed.returncode == 70, killed.stderr
    cfg = load_job(job)
    run_dir = next(cfg.output_dir.glob("run-*"))
    for leftover in run_dir.iterdir():
        leftover.unlink()
    run_dir.rmdir()
    victim = job.parent / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    run_dir.symlink_to(victim)
    completed = run_cli("run", str(job))
    assert completed.returncode == 2
    assert f"{run_dir}: the run folder is a symbolic link" in completed.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert (victim / "keep.txt").read_text() == "precious"


def test_formula_cells_are_defused_in_csv_and_exact_in_parquet(world: dict) -> None:
    job = _job(world, "formulas")
    completed = run_cli("run", str(job))
    assert completed.returncode in (0, 1), completed.stderr
    latest = job.parent / "out" / "latest"
    flagged_csv = pl.read_csv(latest / "flagged.csv", infer_schema=False)
    flagged_parquet = pl.read_parquet(latest / "flagged.parquet")
    names_csv = set(flagged_csv.get_column("Name").to_list())
    names_parquet = set(flagged_parquet.get_column("Name").to_list())
    assert names_parquet and names_parquet <= set(NAMES)
    assert names_csv == {("'" + n) if n[0] in "=+-@" else n for n in names_parquet}
    results = pl.read_parquet(latest / "results.parquet")
    assert sorted(results.get_column("Name").to_list()) == sorted(NAMES)
    for csv in latest.glob("*.csv"):
        for row in pl.read_csv(csv, infer_schema=False).iter_rows():
            assert not any(cell and cell[0] in "=+-@\t\r" for cell in row), csv.name


def test_an_internal_failure_exits_70_and_the_rerun_resumes(world: dict) -> None:
    job = _job(world, "internal")
    failed = run_cli("run", str(job), env={"CPIS_BATCH_FAILPOINT": "query_accepted:2:raise"})
    assert failed.returncode == 70
    errors = [line for line in failed.stderr.splitlines() if line.startswith("cpis-batch: error:")]
    assert len(errors) == 1 and "internal failure (FailpointError at failpoints.py:" in errors[0]
    assert "Traceback" not in failed.stderr
    cfg = load_job(job)
    statuses = sqlite3.connect(cfg.state).execute("SELECT status FROM runs").fetchall()
    assert statuses == [("failed",)]
    resumed = run_cli("run", str(job))
    assert resumed.returncode in (0, 1), resumed.stderr
    assert "resumed run" in resumed.stderr
    assert sqlite3.connect(cfg.state).execute("SELECT status FROM runs").fetchall() == [("complete",)]


def test_purge_drops_old_raw_replies_and_keeps_outcomes(world: dict) -> None:
    job = _job(world, "purge")
    assert run_cli("run", str(job)).returncode in (0, 1)
    cfg = load_job(job)
    conn = sqlite3.connect(cfg.state)
    raw = conn.execute("SELECT COUNT(*) FROM inbound WHERE length(raw) > 0").fetchone()[0]
    assert raw > 0
    # Nothing is old enough yet; then the run is made 31 days old.
    assert "of 0 replies" in run_cli("purge", str(job)).stdout
    conn.execute("UPDATE runs SET started_at = '2000-01-01T00:00:00.000+00:00'")
    conn.commit()
    purged = run_cli("purge", str(job))
    assert purged.returncode == 0 and f"of {raw} replies older than 30 days" in purged.stdout
    assert conn.execute("SELECT COUNT(*) FROM inbound WHERE length(raw) > 0").fetchone()[0] == 0
    outcomes = conn.execute("SELECT COUNT(*) FROM queries WHERE outcome IS NOT NULL").fetchone()[0]
    assert outcomes == len(NAMES)
    audit = conn.execute("SELECT detail FROM audit WHERE event = 'raw_purged' ORDER BY id").fetchall()
    assert [d.split()[0] for (d,) in audit][-1] == f"messages={raw}"
