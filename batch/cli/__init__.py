"""`cpis-batch`: run a job, run the simulated Spine, make development certificates."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from batch import logs
from batch.exits import Exit

log = logging.getLogger("batch")


def _job_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    summary: str,
    description: str,
    job_help: str = "job file (TOML)",
) -> argparse.ArgumentParser:
    """A subcommand that takes a job file as its first argument; `summary` is its line in `--help`."""
    command = sub.add_parser(name, help=summary, description=description)
    command.add_argument("job", type=Path, help=job_help)
    return command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpis-batch",
        description="Nightly CP-IS pre-check: scheduled-care (silent) queries to NHS Spine for clinic lists.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--log-format",
        default="plain",
        choices=logs.LOG_FORMATS,
        help="log lines on stderr: plain text (default) or one JSON object per line",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _job_command(
        sub,
        "run",
        summary="run a job file",
        description="Read the job's clinic lists, query CP-IS for every distinct valid child and write reports. "
        "Exit 0 when every row reached a final outcome, 1 when some rows ended error/no_reply, "
        "2 for bad configuration or input or an unsafe folder, 70 for an internal failure (the run is marked "
        "failed and the same command resumes it), 75 when another run of the same job holds the lock.",
        job_help="job file (TOML); relative paths in it are relative to the file",
    )

    _job_command(
        sub,
        "check",
        summary="check a job file, its inputs, certificates, ports and Spine, sending no query",
        description="Preflight: the job file, the input lists' columns, the certificate and key, the inbound "
        "port, a mutual-TLS handshake with Spine (nothing sent after it) and the output and state folders. "
        "One line per check (OK, WARN or FAIL); exit 0 when nothing failed, else 2.",
    )

    status = _job_command(
        sub,
        "status",
        summary="show the current or last run and the last 7 runs of a job",
        description="Read the job's state file (read-only; works while a run is going, without its lock): the "
        "current or last run's progress, outcomes, outstanding children and ETA, and the last 7 runs.",
    )
    status.add_argument("--json", action="store_true", help="one JSON object instead of text")

    _job_command(
        sub,
        "purge",
        summary="drop raw Spine messages older than [retention] raw_days",
        description="Drop the raw Spine messages (which hold names, dates of birth and plans) of runs older than "
        "the job's [retention] raw_days, keeping outcomes and the audit trail; every run does this too.",
    )

    report = _job_command(
        sub,
        "report",
        summary="write a run's reports again, from the state",
        description="Write a complete run's reports again from the state file into a new folder "
        "(output_dir/report-<run>-<UTC time>/), equal to the originals; reads only (no lock needed). "
        "Exit 2 when the run cannot be reported again.",
    )
    report.add_argument(
        "--run",
        metavar="ID",
        help="the run id, or its first 8 characters or more (default: the last complete run)",
    )

    audit = _job_command(
        sub,
        "audit",
        summary="export the audit trail of the queries sent",
        description="Export every CP-IS query sent from --since to --until (whole days in Europe/London, both "
        "included): when, message id, NHS number, our ASID and ODS code, the responsible person, why (source "
        "file and row, clinic, appointment date) and the child's outcome. The export is written privately and "
        "recorded in the audit trail (who ran it, counts). Exit 2 for a bad argument.",
    )
    audit.add_argument("--since", required=True, metavar="DATE", help="first day (YYYY-MM-DD)")
    audit.add_argument("--until", required=True, metavar="DATE", help="last day (YYYY-MM-DD)")
    audit.add_argument("--nhs-number", metavar="N", help="only the queries about this child")
    audit.add_argument("--format", required=True, choices=("csv", "parquet"))
    audit.add_argument("--output", required=True, type=Path, metavar="FILE", help="the file to write (0600)")

    certs = sub.add_parser(
        "certs",
        help="make a throw-away development PKI",
        description="Write a test CA and Spine and cpis-batch certificates for 127.0.0.1/localhost into DIR.",
    )
    certs.add_argument("directory", type=Path)
    certs.add_argument("--force", action="store_true", help="replace an existing PKI")

    sim = sub.add_parser(
        "sim",
        help="run the simulated Spine",
        description="A simulated NHS Spine for CP-IS: mutual TLS, ebXML, HL7 V3, asynchronous replies, faults.",
    )
    from spine_sim.cli import add_sim_arguments

    add_sim_arguments(sim)
    return parser


def _certs(directory: Path, force: bool) -> int:
    from batch.pki import make_dev_pki, spine_allowed_peer

    pki = make_dev_pki(directory, overwrite=force)
    print(f"development PKI in {pki.directory}")
    # For the job file: only the simulated Spine's certificate may then post replies.
    print(f'[inbound] allowed_peers = ["{spine_allowed_peer(pki)}"]')
    return Exit.OK


def _version() -> str:
    try:
        return importlib.metadata.version("cpis-batch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    if args.command == "run":
        from batch.cli.run import run_command

        return run_command(args.job)
    if args.command == "check":
        from batch.cli.check import check_command

        return check_command(args.job)
    if args.command == "status":
        from batch.cli.status import status_command

        return status_command(args.job, as_json=args.json)
    if args.command == "purge":
        from batch.cli.purge import purge_command

        return purge_command(args.job)
    if args.command == "report":
        from batch.cli.report import report_command

        return report_command(args.job, args.run)
    if args.command == "audit":
        from batch.cli.audit import AuditRequest, audit_command

        return audit_command(
            AuditRequest(args.job, args.since, args.until, args.nhs_number, args.format, args.output)
        )
    if args.command == "certs":
        return _certs(args.directory, args.force)
    from spine_sim.cli import run_sim

    return run_sim(args)


if __name__ == "__main__":
    sys.exit(main())
