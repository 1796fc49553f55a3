"""A cpis-batch job file for a run against this simulator, as tests, the benchmarks and tools write them.

The simulator's own identifiers and loopback addresses, the simulated profile, and the development PKI's file
names; every key the caller wants otherwise is a plain dict update before `write_job`.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below the ephemeral range, from here up: clear of the well-known ports most services take.
_LOWEST = 10_000
_given: set[int] = set()
_given_lock = threading.Lock()
_rng = random.SystemRandom()


def _ephemeral_low() -> int | None:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port that is free now and that nothing else will be handed in the meantime.

    The caller binds it later (a job's reply endpoint), so a port the kernel chose with `bind(0)` could be
    handed again before then: to the simulator's own `bind(0)`, or as the local end of any connection.
    Ports below the ephemeral range are never handed out that way, so one is drawn from there, and no
    port is given twice in a process (the bench draws from two threads). Where that range is unknown or
    too small, the kernel chooses.
    """
    low = _ephemeral_low()
    if low is not None and low - _LOWEST >= 1_000:
        with _given_lock:
            for _ in range(200):
                port = _rng.randrange(_LOWEST, low)
                if port not in _given and _bindable(port):
                    _given.add(port)
                    return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def job_tables(
    *, tmp: Path, pki: Path, inputs: str, spine_url: str, inbound_port: int, name: str = "test-job"
) -> dict[str, dict[str, Any]]:
    return {
        "job": {
            "name": name,
            "input": inputs,
            "output_dir": str(tmp / "out"),
            "state": str(tmp / "state" / "state.sqlite"),
            "profile": "simulated",
        },
        "input": {
            "nhs_number_column": "NHS No",
            "appointment_date_column": "Appointment Date",
            "appointment_date_format": "%d/%m/%Y",
        },
        "spine": {
            "url": spine_url,
            "asid": "999000000001",
            "party_key": "SIMSPINE-0000001",
            "cpa_id": "S1SIMCPIS0001",
        },
        "sender": {
            "asid": "999000000101",
            "party_key": "SIMCLINIC-0000101",
            "ods_code": "SIM01",
            "organisation_name": "Simulated Test Trust",
            "responsible_person_name": "Dr Alex Example",
            "responsible_person_role_code": "R0260",
            "responsible_person_role_name": "General Medical Practitioner",
        },
        "inbound": {"host": "127.0.0.1", "port": inbound_port, "path": "/cpis/replies"},
        "tls": {
            "cert": str(pki / "cpis-batch.pem"),
            "key": str(pki / "cpis-batch.key"),
            "ca": str(pki / "ca.pem"),
        },
        "limits": {"rate_per_second": 50, "max_in_flight": 100, "reply_timeout_s": 10, "max_attempts": 3},
        "http": {"backoff_s": 0.05},
    }


def write_job(path: Path, tables: Mapping[str, Mapping[str, Any]]) -> Path:
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path
