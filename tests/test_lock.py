"""Two runs of one job never overlap: the second exits 75 and touches nothing."""

import os
import stat
from pathlib import Path

import pytest

from batch.config import load_job
from batch.files import UnsafePathError
from batch.lock import LockHeld, job_lock
from batch.pki import make_dev_pki
from spine_sim.jobfile import free_port, job_tables, write_job
from tests.support import run_cli


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
    cfg.lock_path.parent.mkdir(mode=0o700)
    with job_lock(cfg.lock_path):
        completed = run_cli("run", str(job))
    assert completed.returncode == 75, completed.stderr
    assert "another run of this job is in progress" in completed.stderr
    assert not cfg.state.exists()
    assert not cfg.output_dir.exists()


def test_the_lock_is_private_and_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite.lock"
    with job_lock(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(LockHeld, match=rf"in progress \(pid {os.getpid()}\)"), job_lock(path):
            pass


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    link = tmp_path / "state.sqlite.lock"
    link.symlink_to(victim)
    with pytest.raises(UnsafePathError, match="lock file is a symbolic link"), job_lock(link):
        pass
    assert victim.read_bytes() == b"precious\n"


def test_a_hard_linked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious and longer than a pid\n")
    link = tmp_path / "state.sqlite.lock"
    os.link(victim, link)
    with pytest.raises(UnsafePathError, match="not a plain file of ours"), job_lock(link):
        pass
    assert victim.read_bytes() == b"precious and longer than a pid\n"


def test_an_old_lock_file_is_overwritten_in_place_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite.lock"
    path.write_bytes(b"123456789\n")
    with job_lock(path):
        content = path.read_bytes()
    assert content.split() == [str(os.getpid()).encode()]
    assert len(content) == 16
