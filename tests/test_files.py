"""Private folders, no symlinks followed, atomic staging; and CSV cells a spreadsheet will not run."""

from __future__ import annotations

import grp
import os
import re
import stat
from pathlib import Path

import polars as pl
import pytest

from batch.csvsafe import excel_safe, write_csv
from batch.files import (
    Privacy,
    UnsafePathError,
    check_not_link,
    check_private_dir,
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
    assert _mode(made) == 0o750 | stat.S_ISGID
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


# --- who may read: the modes that follow from the job's group -------------------------------------------


def test_privacy_modes_for_the_owner_alone_and_with_a_group() -> None:
    assert (OWNER.gid, OWNER.umask, OWNER.dir_mode, OWNER.file_mode) == (None, 0o077, 0o700, 0o600)
    shared = Privacy(0)  # gid 0 is a group too: only None means "owner only"
    assert (shared.umask, shared.dir_mode, shared.file_mode) == (0o027, 0o750, 0o640)


def test_privacy_for_a_group_name() -> None:
    group = grp.getgrgid(os.getegid())
    assert Privacy.for_group(group.gr_name) == Privacy(group.gr_gid)
    assert Privacy.for_group(None) == OWNER
    assert Privacy.for_group("") == OWNER


# --- existing folders -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755, 0o711])
def test_an_existing_folder_others_cannot_write_is_accepted_as_it_is(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    folder.chmod(mode)
    assert private_dir(folder, OWNER) == folder
    assert _mode(folder) == mode
    assert check_private_dir(folder) is None


def test_refusals_name_the_path_and_what_it_is(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(UnsafePathError, match=f"^{re.escape(str(file))}: the folder is not a folder$"):
        private_dir(file, OWNER)
    (tmp_path / "link").symlink_to(tmp_path)
    message = f"^{re.escape(str(tmp_path / 'link'))}: the folder is a symbolic link; give its real path$"
    with pytest.raises(UnsafePathError, match=message):
        private_dir(tmp_path / "link", OWNER)
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o702)
    message = f"^{re.escape(str(open_folder))}: the folder is writable by other users \\(chmod go-w it\\)$"
    with pytest.raises(UnsafePathError, match=message):
        private_dir(open_folder, OWNER)


def test_a_folder_made_meanwhile_by_someone_else_is_judged_like_any_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out"
    real_mkdir = Path.mkdir

    def racing_mkdir(self: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        if self == target:
            real_mkdir(self)
            self.chmod(0o777)  # another process won the race, with a careless mode
            raise FileExistsError(self)
        real_mkdir(self, mode, parents, exist_ok)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    with pytest.raises(UnsafePathError, match="out: the folder is writable by other users"):
        private_dir(target, Privacy(os.getegid()))


# --- check_private_dir: judged without creating anything -----------------------------------------------


def test_check_private_dir_names_the_parent_a_missing_folder_would_be_made_in(tmp_path: Path) -> None:
    assert check_private_dir(tmp_path / "out") == tmp_path
    assert check_private_dir(tmp_path / "a" / "b" / "c") == tmp_path
    assert not (tmp_path / "a").exists()
    assert check_private_dir(Path("/cpis-no-such-folder/out")) == Path("/")


def test_check_private_dir_refuses_what_private_dir_would_refuse(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(
        UnsafePathError, match=r"link: the run folder is a symbolic link; give its real path$"
    ):
        check_private_dir(tmp_path / "link", "run folder")
    file = tmp_path / "file"
    file.write_text("")
    message = f"^{re.escape(str(file / 'out'))}: the run folder does not exist and cannot be made in {re.escape(str(file))}$"
    with pytest.raises(UnsafePathError, match=message):
        check_private_dir(file / "out", "run folder")
    with pytest.raises(UnsafePathError, match="the folder does not exist and cannot be made in"):
        check_private_dir(file / "a" / "b")


def test_check_private_dir_refuses_a_parent_it_may_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[Path, int]] = []

    def access(path: Path, mode: int) -> bool:
        asked.append((Path(path), mode))
        return False

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(UnsafePathError, match="out: the folder does not exist and cannot be made in"):
        check_private_dir(tmp_path / "out")
    assert asked == [(tmp_path, os.W_OK | os.X_OK)]


# --- files ----------------------------------------------------------------------------------------------


def test_check_not_link_refuses_a_file_of_another_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    theirs = tmp_path / "state.sqlite"
    theirs.write_text("")
    os.chown(theirs, 65534, -1)
    with pytest.raises(
        UnsafePathError, match=f"^{re.escape(str(theirs))}: the state file belongs to another user$"
    ):
        check_not_link(theirs, "state file")


def test_a_staged_file_is_hidden_beside_its_final_name(tmp_path: Path) -> None:
    staged = stage(tmp_path / "r.csv", lambda p: p.write_text("x"), OWNER)
    assert staged.parent == tmp_path
    assert staged.name.startswith(".r.csv.") and staged.name.endswith(".tmp")
    assert staged.read_text() == "x" and _mode(staged) == 0o600


def test_clear_staged_removes_only_our_leftovers(tmp_path: Path) -> None:
    for name in (".r.csv.abc.tmp", ".x.tmp", "r.tmp", ".r.csv.tmpx", "report.csv"):
        (tmp_path / name).write_text("")
    clear_staged(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.csv.tmpx", "r.tmp", "report.csv"]


def test_point_link_takes_another_name_when_its_temporary_one_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "run-1").mkdir()
    planted = tmp_path / f".latest.{'00' * 6}.tmp"
    planted.symlink_to("elsewhere")
    draws = iter([b"\0" * 6, b"\1" * 6])
    monkeypatch.setattr(os, "urandom", lambda n: next(draws))
    point_link(tmp_path / "latest", "run-1")
    assert os.readlink(tmp_path / "latest") == "run-1"
    assert os.readlink(planted) == "elsewhere"
    assert sorted(p.name for p in tmp_path.iterdir()) == [planted.name, "latest", "run-1"]
