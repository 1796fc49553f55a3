"""`make run`: the nightly job end to end on the sample data against the simulated Spine.

Glue only: it reads the job file for the addresses it needs, asks ``cpis-batch certs`` for a development PKI,
starts the simulator and runs ``cpis-batch run`` as a separate process, as an operator would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spine_sim.process import running_sim

ROOT = Path(__file__).resolve().parents[1]
EXIT_USAGE = 2


class DemoError(Exception):
    """The job file cannot be demonstrated; the message says why."""


@dataclass(frozen=True)
class DemoJob:
    pki_dir: Path
    spine_host: str
    spine_port: int
    reply_url: str
    output_dir: Path


def _table(data: dict[str, Any], name: str, job: Path) -> dict[str, Any]:
    table = data.get(name)
    if not isinstance(table, dict):
        raise DemoError(f"{job}: missing [{name}] table")
    return table


def _text(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DemoError(f"{where}.{key} must be a non-empty string")
    return value


def read_demo_job(job: Path) -> DemoJob:
    """What the demo needs from the job file; refuses anything but the simulated profile."""
    try:
        data = tomllib.loads(job.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DemoError(f"cannot read job file {job}: {exc}") from None
    profile = _table(data, "job", job).get("profile", "simulated")
    if profile != "simulated":
        # Writing development certificates over a real deployment's would be harmful, and the simulated
        # Spine can only stand in for a simulated endpoint.
        raise DemoError(
            f'{job}: profile is {profile!r}; the demo runs only jobs with profile "simulated" '
            "(it writes development certificates and starts a simulated Spine)"
        )
    base = job.resolve().parent
    tls, spine, inbound = (_table(data, name, job) for name in ("tls", "spine", "inbound"))
    spine_url = urlsplit(_text(spine, "url", "spine"))
    reply_url = inbound.get("public_url")
    if not isinstance(reply_url, str) or not reply_url:
        host, path, port = (
            _text(inbound, "host", "inbound"),
            _text(inbound, "path", "inbound"),
            inbound.get("port"),
        )
        if not isinstance(port, int) or isinstance(port, bool):
            raise DemoError("inbound.port must be an integer")
        reply_url = f"https://{f'[{host}]' if ':' in host else host}:{port}{path}"
    return DemoJob(
        pki_dir=(base / _text(tls, "ca", "tls")).resolve().parent,
        spine_host=spine_url.hostname or "127.0.0.1",
        spine_port=spine_url.port or 443,
        reply_url=reply_url,
        output_dir=(base / _text(_table(data, "job", job), "output_dir", "job")).resolve(),
    )


def _cpis_batch(*args: str) -> int:
    return subprocess.call([sys.executable, "-m", "batch", *args])


def main(argv: list[str]) -> int:
    job = Path(argv[0]) if argv else ROOT / "jobs" / "nightly-clinic-precheck.toml"
    dataset = Path(argv[1]) if len(argv) > 1 else ROOT / "sample_data" / "spine-dataset.json"
    try:
        demo = read_demo_job(job)
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Reuses a usable PKI already there; writes one otherwise.
    if _cpis_batch("certs", str(demo.pki_dir)) != 0:
        print(f"demo: error: could not write a development PKI in {demo.pki_dir}", file=sys.stderr)
        return EXIT_USAGE
    with running_sim(
        pki_dir=demo.pki_dir,
        dataset=dataset,
        reply_url=demo.reply_url,
        host=demo.spine_host,
        port=demo.spine_port,
    ) as sim:
        print(f"demo: simulated Spine at {sim.url}; running {job}")
        code = _cpis_batch("run", str(job))
        stats = sim.stats()
    print(
        "demo: simulated Spine saw {q} queries, sent {r} replies, local-authority notifications: {n}".format(
            q=stats.get("queries_received"), r=stats.get("replies_sent"), n=stats.get("notifications")
        )
    )
    latest = demo.output_dir / "latest"
    summary = json.loads((latest / "summary.json").read_text()) if (latest / "summary.json").exists() else {}
    print(f"demo: outcomes {json.dumps(summary.get('outcomes', {}), sort_keys=True)}")
    print(f"demo: reports in {latest.resolve()}")
    for name in (
        "summary.html",
        "flagged.xlsx",
        "flagged.csv",
        "flagged.parquet",
        "changes.csv",
        "results.parquet",
        "exceptions.csv",
        "summary.json",
    ):
        print(f"        {latest / name}")
    meaning = {0: "every row final", 1: "some rows ended error/no_reply: see exceptions.csv"}
    print(f"demo: the job exited {code} ({meaning.get(code, 'the run did not complete')})")
    # The sample list includes children Spine answers with an error, so 1 is the expected demo result;
    # only a run that could not complete fails the demo.
    return 0 if code in meaning else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
