"""Two runs of one job never overlap: the second exits 75 and touches nothing."""

from pathlib import Path

from batch.config import load_job
from batch.lock import job_lock
from batch.pki import make_dev_pki
from tests.support import free_port, job_tables, run_cli, write_job


def test_second_run_of_the_same_job_exits_75(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki").directory
    (tmp_path / "list.csv").write_text("NHS No,Appointment Date\n9991234012,01/12/2026\n")
    job = write_job(
        tmp_path / "job.toml",
        job_tables(
            tmp=tmp_path,
            pki=pki,
            inputs="list.csv",
            spine_url="https://127.0.0.1:9/reliablemessaging/reliablerequest",
            inbound_port=free_port(),
        ),
    )
    cfg = load_job(job)
    # The test process itself holds the job's lock, exactly as a running first run would.
    with job_lock(cfg.lock_path):
        completed = run_cli("run", str(job))
    assert completed.returncode == 75, completed.stderr
    assert "another run of this job is in progress" in completed.stderr
    assert not cfg.state.exists()
    assert not cfg.output_dir.exists()
