"""A whole job run, in three steps: prepare, send and await, finalise (the reports, staged a slice at a time)."""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import polars as pl

from batch.attempts import AttemptIndex
from batch.changes import Change, RunOutcomes, RunRef, compare_runs, sorted_changes
from batch.concurrency import PostConcurrency
from batch.config import JobConfig
from batch.context import row_context_of
from batch.correlate import ReplyProcessor
from batch.exits import Exit
from batch.failpoints import failpoint
from batch.files import Privacy, point_link, private_dir
from batch.ids import new_id
from batch.inbound import InboundApp, bind_socket, serve_inbound
from batch.logs import run_id_var
from batch.outbound import QueryBuilder
from batch.peers import PeerPolicy, PeerPolicyError
from batch.pipeline import Progress, QueryPipeline
from batch.progress import ProgressOptions, reporting
from batch.ratelimit import SlidingWindowLimiter
from batch.reports import (
    ReportPaths,
    ReportStager,
    answered_numbers,
    build_slice,
    change_counts_for,
    changes_report,
    input_slices,
)
from batch.run_inputs import decode as decode_inputs
from batch.run_inputs import encode as encode_inputs
from batch.selection import apply_window, query_reasons, reason_frame
from batch.states import RunStatus
from batch.store import Run, SenderIdentity, Store, StoreError
from batch.summary import RunSummary, ThisProcess
from batch.tls import TlsConfigError, server_context
from batch.transport import SpineTransport

log = logging.getLogger(__name__)

UK = ZoneInfo("Europe/London")


class StartupError(Exception):
    """The run cannot start (for example the inbound port is taken); exit 2."""


@dataclass(frozen=True)
class JobResult:
    exit_code: Exit
    run_id: str
    reports: ReportPaths
    summary: RunSummary


@dataclass(frozen=True)
class _Sending:
    """What the send-and-await step leaves for the summary."""

    progress: Progress
    inbound: dict[str, int]
    inbound_refused: dict[str, int]
    breaker_open: bool
    concurrency_peak: int


def input_fingerprint(job_name: str, paths: list[Path]) -> str:
    """Same job and same input bytes → same fingerprint → a restarted run resumes rather than starts again."""
    digest = hashlib.sha256(job_name.encode())
    for path in paths:
        digest.update(b"\0" + path.name.encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


async def _mark_failed(store: Store, run: Run) -> None:
    # Best effort: the failure may be the store's own. A run left `running` resumes all the same.
    with anyio.CancelScope(shield=True):
        try:
            await store.end_run(run.run_id, RunStatus.FAILED)
        except StoreError:
            log.error("run %s could not be marked failed; a rerun resumes it all the same", run.run_id)


class InputRows:
    """The rows read from the job's lists, handed to `run_job` to be kept in the state once. Once taken nothing
    holds them: the run goes on with the copy it kept, and a second whole-run frame, held by the caller to the
    end of the run, would cost as much again (about 10 MiB at 100,000 rows)."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self._frame: pl.DataFrame | None = frame

    def take(self) -> pl.DataFrame:
        """The rows, once. Raises RuntimeError when they were taken before."""
        frame, self._frame = self._frame, None
        if frame is None:
            raise RuntimeError("the input rows were taken already")
        return frame


@dataclass(frozen=True)
class _Prepared:
    run: Run
    patients: pl.DataFrame
    """The run's input rows, as kept in the state (with `_window_reason`)."""
    children: int
    """How many distinct children the run queries (each kept in the state with why)."""


def _sender(cfg: JobConfig) -> SenderIdentity:
    sender = cfg.sender
    return SenderIdentity(
        asid=sender.asid,
        ods_code=sender.ods_code,
        responsible_person_name=sender.responsible_person_name,
        responsible_person_role_code=sender.role_code,
        responsible_person_role_name=sender.role_name,
    )


async def keep_run_inputs(
    store: Store, run: Run, patients: pl.DataFrame, window_days: int | None
) -> pl.DataFrame:
    """The run's input rows, marked against the appointment window of its reference date. Kept in the state
    once, when the run starts; a resumed run goes on with the rows it kept, so its reports are those of an
    uninterrupted run. The frame returned is always the one decoded from the state, which is what
    `cpis-batch report` reads too."""
    current = apply_window(patients, window_days, date.fromisoformat(run.reference_date))
    stored = await store.run_inputs(run.run_id) if run.resumed else None
    if stored is not None and not stored.dropped:
        kept = await anyio.to_thread.run_sync(decode_inputs, [p for p in stored.parts if p is not None])
        if not kept.equals(current):
            log.warning(
                "the job's [input] settings read the lists differently from when this run started;"
                " the run goes on with the rows it started with"
            )
        return kept
    parts = await anyio.to_thread.run_sync(encode_inputs, current)
    await store.save_run_inputs(run.run_id, parts)
    return await anyio.to_thread.run_sync(decode_inputs, [data for _, data in parts])


def _bind(cfg: JobConfig) -> socket.socket:
    # Bound before the state is touched: a taken port is a startup error that leaves nothing behind.
    try:
        return bind_socket(cfg.inbound)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {cfg.inbound.host}:{cfg.inbound.port} for replies ({exc.strerror})"
        ) from None


async def _prepare(store: Store, cfg: JobConfig, rows: InputRows, fingerprint: str) -> _Prepared:
    run = await store.begin_or_resume_run(
        run_id=new_id(),
        job_name=cfg.name,
        input_fingerprint=fingerprint,
        reference_date=datetime.now(UK).date().isoformat(),
        sender=_sender(cfg),
    )
    run_id_var.set(run.run_id)
    patients = await keep_run_inputs(store, run, rows.take(), cfg.input.window_days)
    reasons = reason_frame(patients)
    await store.add_children(run.run_id, query_reasons(reasons))
    # Raw replies hold names, dates of birth and plans; they are kept only `retention.raw_days`.
    purged = await store.purge_raw(datetime.now(UTC) - timedelta(days=cfg.retention.raw_days))
    if purged:
        log.info("dropped the raw messages of %d replies older than %d days", purged, cfg.retention.raw_days)
    failpoint("run_started")
    return _Prepared(run, patients, reasons.height)


def taken(numbers: list[str]) -> Iterator[str]:
    """Each of `numbers` in order, the list emptied as they are taken: the pipeline's queue is then their only
    holder, and each goes once its child has an outcome (a whole run's numbers, ~6 MiB at 100,000 children,
    were otherwise held to the end)."""
    numbers.reverse()
    while numbers:
        yield numbers.pop()


async def _send_and_await(
    store: Store,
    cfg: JobConfig,
    run: Run,
    sock: socket.socket,
    ssl_context: ssl.SSLContext,
    progress: ProgressOptions | None = None,
) -> _Sending:
    """Serve the reply endpoint and query every open child until each has an outcome."""
    pending = await store.open_children(run.run_id)
    log.info("%s run: %d children still to answer", "resumed" if run.resumed else "new", len(pending))
    limits = cfg.limits
    limiter = SlidingWindowLimiter(limits.rate_per_second)
    # A restart within a second of the last send must not double the rate in that second. A request left the
    # earlier process at the latest when Spine acknowledged it; without an acknowledgement, at the latest a
    # gate's lead (a quarter window) after it was recorded.
    now_wall, now = datetime.now(UTC), anyio.current_time()
    recent = await store.recent_sends(cfg.name, limiter.capacity)
    latest = [acked or recorded + timedelta(seconds=limiter.window / 4) for recorded, acked in recent]
    limiter.seed([now - (now_wall - sent).total_seconds() for sent in latest])
    concurrency = PostConcurrency(limits.rate_per_second, limits.max_concurrent_posts)
    async with SpineTransport(
        spine=cfg.spine,
        http=cfg.http,
        ssl_context=ssl_context,
        limiter=limiter,
        max_connections=limits.max_concurrent_posts,
    ) as transport:
        # The attempts of children still waiting, shared by the pipeline (which adds them) and the reply
        # workflow (which matches replies to them without a read from the state file).
        attempts = AttemptIndex()
        pipeline = QueryPipeline(
            limits=limits,
            store=store,
            sender=transport,
            builder=QueryBuilder(cfg),
            run_id=run.run_id,
            limiter=limiter,
            concurrency=concurrency,
            index=attempts,
        )
        processor = ReplyProcessor(
            store,
            our_party_key=cfg.sender_party_key,
            spine_party_key=cfg.spine.party_key,
            spine_cpa_id=cfg.spine.cpa_id,
            not_found_codes=cfg.not_found_codes,
            on_resolved=pipeline.on_resolved,
            index=attempts,
        )
        app = InboundApp(processor, cfg.inbound.path)
        try:
            server_tls = server_context(cfg.tls.cert, cfg.tls.key, cfg.tls.ca)
            peers = PeerPolicy.from_config(cfg.inbound.allowed_peers)
        except (TlsConfigError, PeerPolicyError) as exc:
            raise StartupError(str(exc)) from None
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_inbound, app, sock, server_tls, peers, stop)
            async with reporting(cfg.state, run.run_id, progress):
                await pipeline.run(taken(pending.fresh), pending.resumed)
            stop.set()
    return _Sending(
        pipeline.progress,
        dict(processor.counts),
        dict(app.refusals.counts),
        pipeline.breaker_open,
        concurrency.peak,
    )


async def stage_reports(
    store: Store, run_id: str, reference_date: str, patients: pl.DataFrame, directory: Path, privacy: Privacy
) -> ReportStager:
    """A run's reports staged in `directory` a slice of input rows at a time, each slice's answers read from the
    state: the one way they are built, for the run itself and for `cpis-batch report` alike (which must give
    the same files). Raises UnsafePathError when `directory` is not a private folder of ours."""
    day = date.fromisoformat(reference_date)
    stager = ReportStager(directory, privacy)
    for part in input_slices(patients):
        outcomes = await store.outcome_frame(run_id, answered_numbers(part))
        stager.add(*build_slice(part, outcomes, day))
    return stager


async def run_changes(
    store: Store, run_id: str, reference_date: str, patients: pl.DataFrame
) -> tuple[pl.DataFrame, RunRef | None]:
    """The `changes` report since the job's previous complete run, and that run (None: the job's first).

    Compared a page of this run's children at a time, beside the same children's outcomes in the previous run:
    a child is compared alone, and neither run is ever whole in memory."""
    current = RunRef(run_id, date.fromisoformat(reference_date))
    prior = await store.previous_complete_run(run_id)
    if prior is None:
        return changes_report(patients, [], None, current), None
    previous = RunRef(prior.run_id, date.fromisoformat(prior.reference_date))
    found: list[Change] = []
    async for page in store.outcome_pages(run_id):
        before = await store.outcome_frame(prior.run_id, page.get_column("nhs_number").to_list())
        found += compare_runs(
            RunOutcomes(previous.run_id, previous.reference_date, before),
            RunOutcomes(current.run_id, current.reference_date, page),
        )
    return changes_report(patients, sorted_changes(found), previous, current), previous


async def _finalise(
    store: Store,
    cfg: JobConfig,
    run: Run,
    sending: _Sending,
    patients: pl.DataFrame,
    privacy: Privacy,
    *,
    started: float,
    process_started_at: str,
    children: int,
) -> tuple[ReportPaths, RunSummary]:
    """The run's reports and summary from the outcomes in the state, put in place; the run is then complete."""
    private_dir(cfg.output_dir, privacy, "output folder")
    run_dir = cfg.output_dir / f"run-{run.reference_date.replace('-', '')}-{run.run_id[:8]}"
    stager = await stage_reports(store, run.run_id, run.reference_date, patients, run_dir, privacy)
    changes, previous = await run_changes(store, run.run_id, run.reference_date, patients)
    counts = await store.run_counts(run.run_id)
    totals = stager.totals
    summary = _summary(
        cfg,
        run,
        sending,
        process_started_at=process_started_at,
        started=started,
        rows=totals.rows,
        children=children,
        outcomes=totals.outcomes,
        flagged_plan_rows=totals.flagged_rows,
        queries_sent=counts.attempts,
        send_failures=counts.send_failures,
        replies={d.value: n for d, n in sorted(counts.inbound.items())},
        commit_groups=store.commit_groups,
    )
    summary = replace(summary, changes=change_counts_for(changes, previous))
    summary_json = summary.to_json()
    reports = stager.finish(
        changes=changes, previous=previous, context_of=row_context_of(patients), summary_json=summary_json
    )
    # Readers follow `latest`; it is swapped in one rename, never edited in place.
    point_link(cfg.output_dir / "latest", run_dir.name)
    # The summary is kept with the run: `cpis-batch report` writes it again as it was.
    await store.end_run(run.run_id, RunStatus.COMPLETE, summary_json)
    return reports, summary


def _summary(
    cfg: JobConfig,
    run: Run,
    sending: _Sending,
    *,
    process_started_at: str,
    started: float,
    rows: int,
    children: int,
    outcomes: dict[str, int],
    flagged_plan_rows: int,
    queries_sent: int,
    send_failures: int,
    replies: dict[str, int],
    commit_groups: int,
) -> RunSummary:
    progress = sending.progress
    sending_s = (
        progress.last_send - progress.first_send
        if progress.first_send is not None and progress.last_send is not None
        else 0.0
    )
    return RunSummary(
        run_id=run.run_id,
        job=cfg.name,
        profile=cfg.profile,
        resumed=run.resumed,
        run_started_at=run.started_at,
        process_started_at=process_started_at,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        reference_date=run.reference_date,
        rows=rows,
        distinct_children=children,
        outcomes=outcomes,
        flagged_plan_rows=flagged_plan_rows,
        queries_sent=queries_sent,
        send_failures=send_failures,
        replies=replies,
        this_process=ThisProcess(
            posts=progress.posts,
            accepted=progress.accepted,
            rejected=progress.rejected,
            not_sent=progress.not_sent,
            reply_timeouts=progress.timeouts,
            inbound=sending.inbound,
            inbound_refused=sending.inbound_refused,
            post_concurrency_peak=sending.concurrency_peak,
            commit_groups=commit_groups,
        ),
        circuit_breaker_open=sending.breaker_open,
        duration_s=round(time.monotonic() - started, 3),
        sending_duration_s=round(sending_s, 3),
        achieved_rate_per_s=round((progress.posts - 1) / sending_s, 3) if sending_s > 0 else None,
        configured_rate_per_s=cfg.limits.rate_per_second,
    )


async def run_job(
    cfg: JobConfig,
    rows: InputRows,
    fingerprint: str,
    ssl_context: ssl.SSLContext,
    privacy: Privacy | None = None,
    progress: ProgressOptions | None = None,
) -> JobResult:
    """Run the job to the end on the input `rows` (taken once kept in the state); returns its exit code, reports
    and summary.

    Raises StartupError (the run cannot start), StoreError (the state file cannot be opened), UnsafePathError
    (a path we would write is not safe); any other exception is an internal failure, after which the run is
    marked failed and a rerun of the same input resumes it. `progress`: how to report progress while
    sending and waiting (None: not at all).
    """
    privacy = privacy or Privacy()
    started = time.monotonic()
    process_started_at = datetime.now(UTC).isoformat(timespec="seconds")
    sock = _bind(cfg)
    # Closed on the way out; once the server has taken it over (detached) closing is a no-op.
    with sock:
        async with Store.open(cfg.state) as store:
            prepared = await _prepare(store, cfg, rows, fingerprint)
            run = prepared.run
            try:
                sending = await _send_and_await(store, cfg, run, sock, ssl_context, progress)
                reports, summary = await _finalise(
                    store,
                    cfg,
                    run,
                    sending,
                    prepared.patients,
                    privacy,
                    started=started,
                    process_started_at=process_started_at,
                    children=prepared.children,
                )
            except Exception:
                await _mark_failed(store, run)
                raise
    log.info(
        "run complete: %s; reports in %s",
        ", ".join(f"{k}={v}" for k, v in sorted(summary.outcomes.items()) if v),
        reports.directory,
    )
    return JobResult(Exit.INCOMPLETE if summary.incomplete else Exit.OK, run.run_id, reports, summary)
