"""Private folders, no symlinks followed, atomic staging; and CSV cells a spreadsheet will not run."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import polars as pl
import pytest

from batch.csvsafe import excel_safe, write_csv
from batch.files import (
    Privacy,
    UnsafePathError,
    check_not_link,
    clear_staged,
    point_link,
    private_dir,
    stage,
)

OWNER = Privacy()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _other_group() -> grp.struct_group:
    groups = [g for g in grp.getgrall() if g.gr_gid != os.getegid()]
    if not groups:
        pytest.skip("this machine has no group other than the test's own")
    return groups[0]


def test_a_new_folder_is_private_with_its_parents(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        made = private_dir(tmp_path / "a" / "b", OWNER)
    finally:
        os.umask(old)
    assert _mode(made) == 0o700 and _mode(made.parent) == 0o700


def test_a_group_may_be_given_read_access(tmp_path: Path) -> None:
    group = _other_group()
    privacy = Privacy(group.gr_gid)
    made = private_dir(tmp_path / "out", privacy)
    assert _mode(made) & 0o777 == 0o750
    assert made.stat().st_gid == group.gr_gid
    # Files made inside belong to the group too (the folder is set-group-id).
    staged = stage(made / "r.csv", lambda p: p.write_text("x"), privacy)
    assert _mode(staged) == 0o640 and staged.stat().st_gid == group.gr_gid


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_a_folder_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(UnsafePathError, match=r"out: the output folder is writable by other users"):
        private_dir(folder, OWNER, "output folder")


def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    folder = tmp_path / "out"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, -1)
    with pytest.raises(UnsafePathError, match="belongs to another user"):
        private_dir(folder, OWNER)


def test_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UnsafePathError, match="link: the run folder is a symbolic link"):
        private_dir(tmp_path / "link", OWNER, "run folder")
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(UnsafePathError, match="is not a folder"):
        private_dir(file, OWNER)


def test_check_not_link(tmp_path: Path) -> None:
    check_not_link(tmp_path / "absent", "state file")
    (tmp_path / "ok").write_text("")
    check_not_link(tmp_path / "ok", "state file")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    with pytest.raises(UnsafePathError, match="link: the state file is a symbolic link"):
        check_not_link(tmp_path / "link", "state file")
    with pytest.raises(UnsafePathError, match="is not a regular file"):
        check_not_link(tmp_path, "state file")


def test_staging_never_writes_through_a_planted_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    final = tmp_path / "flagged.csv"
    # Whatever names an attacker plants, mkstemp picks a fresh one.
    for i in range(20):
        (tmp_path / f".flagged.csv.{i}.tmp").symlink_to(victim)
    staged = stage(final, lambda p: p.write_text("report"), OWNER)
    assert not staged.is_symlink() and staged.read_text() == "report" and _mode(staged) == 0o600
    assert victim.read_text() == "precious"
    os.replace(staged, final)
    clear_staged(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flagged.csv", "victim"]
    assert victim.read_text() == "precious"


def test_a_failed_write_leaves_nothing_staged(tmp_path: Path) -> None:
    def fail(path: Path) -> None:
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        stage(tmp_path / "r.parquet", fail, OWNER)
    assert list(tmp_path.iterdir()) == []


def test_point_link_replaces_the_link_atomically(tmp_path: Path) -> None:
    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-2").mkdir()
    point_link(tmp_path / "latest", "run-1")
    point_link(tmp_path / "latest", "run-2")
    assert os.readlink(tmp_path / "latest") == "run-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "run-1", "run-2"]


def test_formula_cells_are_prefixed_in_csv_and_nothing_else_changes() -> None:
    frame = pl.DataFrame(
        {
            "name": [
                '=HYPERLINK("x")',
                "+cmd|' /C calc'!A0",
                "-2+3",
                "@SUM(A1)",
                "\tx",
                "\rx",
                "Ann",
                None,
                "a=b",
            ],
            "count": [1, -2, 3, 4, 5, 6, 7, 8, 9],
        }
    )
    safe = excel_safe(frame)
    assert safe.get_column("name").to_list() == [
        '\'=HYPERLINK("x")',
        "'+cmd|' /C calc'!A0",
        "'-2+3",
        "'@SUM(A1)",
        "'\tx",
        "'\rx",
        "Ann",
        None,
        "a=b",
    ]
    assert safe.get_column("count").to_list() == frame.get_column("count").to_list()


def test_write_csv_writes_the_safe_frame(tmp_path: Path) -> None:
    write_csv(pl.DataFrame({"la_office_phone": ["+441632960201"]}), tmp_path / "f.csv")
    assert (tmp_path / "f.csv").read_text() == "la_office_phone\n'+441632960201\n"
