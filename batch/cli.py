"""`cpis-batch`: run a job, run the simulated Spine, make development certificates."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from batch import logs

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75

log = logging.getLogger("batch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpis-batch",
        description="Nightly CP-IS pre-check: scheduled-care (silent) queries to NHS Spine for clinic lists.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a job file",
        description="Read the job's clinic lists, query CP-IS for every distinct valid child and write reports. "
        "Exit 0 when every row reached a final outcome, 1 when some rows ended error/no_reply, "
        "2 for bad configuration or input, 75 when another run of the same job holds the lock.",
    )
    run.add_argument("job", type=Path, help="job file (TOML); relative paths in it are relative to the file")

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


def _fail(message: str, code: int) -> int:
    print(f"cpis-batch: error: {message}", file=sys.stderr)
    return code


def _run(job: Path) -> int:
    from batch.config import ConfigError, load_job
    from batch.job import StartupError, input_fingerprint, run_job
    from batch.lock import LockHeld, job_lock
    from batch.patients import InputError, read_patient_lists, resolve_inputs
    from batch.store import StoreError
    from batch.tls import TlsConfigError, client_context, expiry_warning

    try:
        cfg = load_job(job)
        ssl_context = client_context(cfg.tls.cert, cfg.tls.key, cfg.tls.ca)
        warning = expiry_warning(cfg.tls.cert)
        if warning:
            log.warning("%s", warning)
        # Inputs are read and validated before anything is written: bad input leaves no state behind.
        paths = resolve_inputs(cfg.input_pattern, cfg.base_dir)
        patients = read_patient_lists(paths, cfg.input, cfg.profile)
        fingerprint = input_fingerprint(cfg.name, paths)
    except (ConfigError, TlsConfigError, InputError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        with job_lock(cfg.lock_path):
            result = anyio.run(run_job, cfg, patients, fingerprint, ssl_context)
    except LockHeld as exc:
        return _fail(str(exc), EXIT_LOCKED)
    except (StartupError, StoreError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except BaseExceptionGroup as group:
        # A task group re-raises its tasks' errors as a group; an operator needs the one that matters.
        known, other = group.split((StartupError, StoreError))
        if known is None or other is not None:
            raise
        return _fail(str(_first_leaf(known)), EXIT_USAGE)
    print(f"reports: {result.reports.directory}")
    return result.exit_code


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _certs(directory: Path, force: bool) -> int:
    from batch.pki import make_dev_pki, spine_allowed_peer

    pki = make_dev_pki(directory, overwrite=force)
    print(f"development PKI in {pki.directory}")
    # For the job file: only the simulated Spine's certificate may then post replies.
    print(f'[inbound] allowed_peers = ["{spine_allowed_peer(pki)}"]')
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level)
    if args.command == "run":
        return _run(args.job)
    if args.command == "certs":
        return _certs(args.directory, args.force)
    from spine_sim.cli import run_sim

    return run_sim(args)


if __name__ == "__main__":
    sys.exit(main())
