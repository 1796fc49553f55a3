"""The systemd examples beside jobs/crontab.example: valid units (systemd-analyze verify, where installed), with
the hardening the README promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

JOBS = REPO / "jobs"
SERVICE = JOBS / "cpis-batch-nightly.service"
TIMER = JOBS / "cpis-batch-nightly.timer"


def _settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_service_is_hardened() -> None:
    settings = _settings(SERVICE)
    for key, value in {
        "UMask": "0077",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "LockPersonality": "yes",
        "User": "cpis",
        "SuccessExitStatus": "1",
    }.items():
        assert settings.get(key) == [value], key
    assert settings["ReadWritePaths"] == ["/opt/cpis-batch/state /opt/cpis-batch/out"]
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "run /opt/cpis-batch/jobs/nightly-clinic-precheck.toml" in settings["ExecStart"][0]
    assert _settings(TIMER)["OnCalendar"] == ["*-*-* 01:15:00 Europe/London"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    # verify wants the ExecStart program and the ReadWritePaths to exist: point them at this checkout.
    (tmp_path / "state").mkdir()
    (tmp_path / "out").mkdir()
    text = (
        SERVICE.read_text()
        .replace("/opt/cpis-batch/.venv/bin/cpis-batch", str(Path(sys.executable).with_name("cpis-batch")))
        .replace("/opt/cpis-batch/state", str(tmp_path / "state"))
        .replace("/opt/cpis-batch/out", str(tmp_path / "out"))
        .replace("WorkingDirectory=/opt/cpis-batch", f"WorkingDirectory={REPO}")
    )
    (tmp_path / SERVICE.name).write_text(text)
    shutil.copy(TIMER, tmp_path / TIMER.name)
    completed = subprocess.run(
        ["systemd-analyze", "verify", SERVICE.name, TIMER.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stderr.strip() == "", completed.stderr
