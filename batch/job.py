"""A whole job run: inputs → store → inbound endpoint + query pipeline → reports."""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import polars as pl

from batch.config import JobConfig
from batch.correlate import ReplyProcessor
from batch.failpoints import failpoint
from batch.ids import new_id
from batch.inbound import InboundApp, bind_socket, serve_inbound
from batch.logs import run_id_var
from batch.pipeline import QueryPipeline
from batch.ratelimit import SlidingWindowLimiter
from batch.reports import ReportPaths, write_reports
from batch.store import Store
from batch.transport import SpineTransport

log = logging.getLogger(__name__)

UK = ZoneInfo("Europe/London")
EXIT_OK, EXIT_INCOMPLETE = 0, 1


class StartupError(Exception):
    """The run cannot start (for example the inbound port is taken); exit 2."""


@dataclass(frozen=True)
class JobResult:
    exit_code: int
    run_id: str
    reports: ReportPaths
    summary: dict[str, Any]


def input_fingerprint(job_name: str, paths: list[Path]) -> str:
    """Same job and same input bytes → same fingerprint → a restarted run resumes rather than starts again."""
    digest = hashlib.sha256(job_name.encode())
    for path in paths:
        digest.update(b"\0" + path.name.encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _update_latest(output_dir: Path, run_dir: Path) -> None:
    link = output_dir / "latest"
    tmp = output_dir / f".latest.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


async def run_job(
    cfg: JobConfig, patients: pl.DataFrame, fingerprint: str, ssl_context: ssl.SSLContext
) -> JobResult:
    started = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    children = sorted(set(patients.get_column("_nhs_number").drop_nulls().to_list()))
    # Bound before the state is touched: a taken port is a startup error that leaves nothing behind.
    try:
        sock = bind_socket(cfg.inbound)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {cfg.inbound.host}:{cfg.inbound.port} for replies ({exc.strerror})"
        ) from None
    # Closed on the way out; once the server has taken it over (detached) closing is a no-op.
    with sock:
        async with Store.open(cfg.state) as store:
            run = await store.begin_or_resume_run(
                run_id=new_id(),
                job_name=cfg.name,
                input_fingerprint=fingerprint,
                reference_date=datetime.now(UK).date().isoformat(),
            )
            run_id_var.set(run.run_id)
            await store.add_children(run.run_id, children)
            failpoint("run_started")
            pending = await store.open_children(run.run_id)
            log.info(
                "%s run: %d input rows, %d distinct children, %d still to answer",
                "resumed" if run.resumed else "new",
                patients.height,
                len(children),
                len(pending),
            )
            limiter = SlidingWindowLimiter(cfg.limits.rate_per_second)
            async with SpineTransport(
                spine=cfg.spine,
                http=cfg.http,
                ssl_context=ssl_context,
                limiter=limiter,
                max_concurrent_posts=cfg.limits.max_concurrent_posts,
            ) as transport:
                pipeline = QueryPipeline(cfg, store, transport, run.run_id)
                processor = ReplyProcessor(
                    store,
                    our_party_key=cfg.sender_party_key,
                    not_found_codes=cfg.not_found_codes,
                    on_resolved=pipeline.on_resolved,
                    spine_party_key=cfg.spine.party_key,
                )
                stop = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(serve_inbound, InboundApp(processor, cfg.inbound.path), sock, cfg.tls, stop)
                    await pipeline.run(pending)
                    stop.set()
            outcomes = await store.outcomes(run.run_id)
            counts = await store.run_counts(run.run_id)
            progress = pipeline.progress
            sending = (
                (progress.last_send - progress.first_send)
                if progress.first_send and progress.last_send
                else 0.0
            )
            summary: dict[str, Any] = {
                "run_id": run.run_id,
                "job": cfg.name,
                "profile": cfg.profile,
                "resumed": run.resumed,
                "run_started_at": run.started_at,
                "process_started_at": started_at,
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "reference_date": run.reference_date,
                "distinct_children": len(children),
                "queries_sent": counts.get("queries_sent", 0),
                "attempts": counts.get("attempts", 0),
                "send_failures": counts.get("send_failures", 0),
                "posts_this_process": transport.posts_made,
                "replies": {
                    k.removeprefix("inbound_"): v for k, v in counts.items() if k.startswith("inbound_")
                },
                "inbound_this_process": dict(processor.counts),
                "attempts_this_process": {
                    "accepted": progress.accepted,
                    "rejected": progress.rejected,
                    "not_delivered": progress.send_failures,
                    "reply_timeouts": progress.timeouts,
                },
                "circuit_breaker_open": pipeline.breaker_open,
                "duration_s": round(time.monotonic() - started, 3),
                "sending_duration_s": round(sending, 3),
                "achieved_rate_per_s": round((progress.attempts - 1) / sending, 3) if sending > 0 else None,
                "configured_rate_per_s": cfg.limits.rate_per_second,
            }
            run_dir = cfg.output_dir / f"run-{run.reference_date.replace('-', '')}-{run.run_id[:8]}"
            reports, results = write_reports(
                run_dir,
                patients,
                outcomes,
                reference_date=date.fromisoformat(run.reference_date),
                summary=summary,
            )
            _update_latest(cfg.output_dir, run_dir)
            await store.complete_run(run.run_id)
        counts_by_outcome = dict(results.group_by("outcome").len().iter_rows())
        summary = {**summary, "outcomes": counts_by_outcome}
        log.info(
            "run complete: %s; reports in %s",
            ", ".join(f"{k}={v}" for k, v in sorted(counts_by_outcome.items())),
            run_dir,
        )
        incomplete = counts_by_outcome.get("error", 0) + counts_by_outcome.get("no_reply", 0)
        return JobResult(EXIT_INCOMPLETE if incomplete else EXIT_OK, run.run_id, reports, summary)
