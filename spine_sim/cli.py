"""The simulated Spine's command line (`python -m spine_sim`, `cpis-batch sim`): serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import anyio

from spine_sim.answers import SimIdentity
from spine_sim.arrivals import ArrivalPrinter
from spine_sim.dataset import DatasetError, load_dataset
from spine_sim.faults import FAULT_NAMES, FaultConfig, FaultConfigError, parse_fault_option
from spine_sim.reply_client import REPLY_CONNECTIONS
from spine_sim.server import SimServer, SimSettings
from spine_sim.stats import SimStats
from spine_sim.tls import TlsError, TlsFiles, client_context, pki_files, server_context

log = logging.getLogger(__name__)

READY_LINE = "cpis-batch sim listening on {url}"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SimIdentity()
    faults = FaultConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default)")
    parser.add_argument(
        "--pki", type=Path, metavar="DIR", help="development PKI (ca.pem, spine.pem, spine.key)"
    )
    parser.add_argument("--cert", type=Path, help="Spine certificate (PEM), if --pki is not given")
    parser.add_argument("--key", type=Path, help="Spine private key (PEM), if --pki is not given")
    parser.add_argument("--ca", type=Path, help="CA bundle trusted on both legs, if --pki is not given")
    parser.add_argument("--dataset", type=Path, required=True, help="dataset JSON (e.g. sample_data/)")
    parser.add_argument(
        "--reply-url", required=True, metavar="URL", help="the client's inbound HTTPS endpoint"
    )
    parser.add_argument("--latency-ms", type=float, default=50.0, help="delay before a reply (default 50)")
    parser.add_argument(
        "--ack-delay-ms",
        type=float,
        default=0.0,
        help="hold each accepted query's HTTP 202 this long, as a network round trip would (default 0)",
    )
    parser.add_argument(
        "--reply-connections",
        choices=REPLY_CONNECTIONS,
        default="new",
        help="a new mutual-TLS connection per reply, as Spine does (default), or reuse kept-alive ones",
    )
    parser.add_argument(
        "--log-arrivals",
        action="store_true",
        help="print 'arrival {json}' on stdout for every query POST, after the ready line",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="fault seed: the same seed injects the same faults"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME=RATE",
        help=f"inject a fault at a rate in 0..1 (repeatable); names: {', '.join(sorted(FAULT_NAMES))}",
    )
    parser.add_argument(
        "--late-delay-s", type=float, default=faults.late_delay_s, help="delay of a late reply"
    )
    parser.add_argument(
        "--slow-accept-s", type=float, default=faults.slow_accept_s, help="delay of a slow 202"
    )
    parser.add_argument(
        "--reorder-window", type=int, default=faults.reorder_window, help="held replies released together"
    )
    parser.add_argument(
        "--reorder-hold-s",
        type=float,
        default=faults.reorder_hold_s,
        help="longest hold of a reordered reply",
    )
    parser.add_argument("--party-key", default=defaults.party_key, help="the simulator's party key")
    parser.add_argument("--asid", default=defaults.asid, help="the simulator's ASID")
    parser.add_argument("--cpa-id", default=defaults.cpa_id, help="the CPA id queries must carry")
    parser.add_argument(
        "--stats-file", type=Path, metavar="PATH", help="write the counters here (JSON) on exit"
    )


def _tls_files(args: argparse.Namespace) -> TlsFiles:
    if args.pki is not None:
        return pki_files(args.pki)
    if args.cert is None or args.key is None or args.ca is None:
        raise TlsError("give --pki DIR, or all of --cert, --key and --ca")
    return TlsFiles(args.cert, args.key, args.ca)


def _settings(args: argparse.Namespace) -> SimSettings:
    rates = dict(parse_fault_option(option) for option in args.fault)
    faults = FaultConfig(
        rates=rates,
        seed=args.seed,
        late_delay_s=args.late_delay_s,
        slow_accept_s=args.slow_accept_s,
        reorder_window=args.reorder_window,
        reorder_hold_s=args.reorder_hold_s,
    )
    return SimSettings(
        dataset=load_dataset(args.dataset),
        reply_url=args.reply_url,
        identity=SimIdentity(party_key=args.party_key, asid=args.asid, cpa_id=args.cpa_id),
        latency_s=args.latency_ms / 1000.0,
        faults=faults,
        host=args.host,
        port=args.port,
        ack_delay_s=args.ack_delay_ms / 1000.0,
        reply_connections=args.reply_connections,
    )


def write_stats_file(path: Path, stats: SimStats) -> None:
    """Write atomically: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(stats.snapshot(), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


async def _serve(server: SimServer, arrivals: ArrivalPrinter | None) -> None:
    await server.listen()
    async with anyio.create_task_group() as task_group:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await task_group.start(server.serve)
            print(READY_LINE.format(url=server.url), flush=True)
            if arrivals is not None:
                arrivals.ready()
            async for signum in signals:
                log.info("stopping on %s", signal.Signals(signum).name)
                break
        task_group.cancel_scope.cancel()


def run_sim(args: argparse.Namespace) -> int:
    arrivals = ArrivalPrinter(sys.stdout) if args.log_arrivals else None
    try:
        settings = _settings(args)
        files = _tls_files(args)
        server = SimServer(
            settings,
            server_ssl=server_context(files),
            client_ssl=client_context(files),
            on_arrival=arrivals,
        )
    except (DatasetError, FaultConfigError, TlsError, ValueError) as exc:
        print(f"cpis-batch sim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    try:
        anyio.run(_serve, server, arrivals)
    except OSError as exc:
        print(
            f"cpis-batch sim: error: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr
        )
        status = EXIT_USAGE
    log.info("simulated Spine stopped: %s", server.stats.summary())
    if args.stats_file is not None:
        try:
            write_stats_file(args.stats_file, server.stats)
        except OSError as exc:
            print(f"cpis-batch sim: error: cannot write the stats file: {exc}", file=sys.stderr)
            status = status or EXIT_FAILED
    return status
