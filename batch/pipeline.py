"""One run: children in, one outcome per child out.

Data flows one way: the dispatcher feeds children through a zero-buffer memory stream to a fixed pool of
workers (the pool size *is* the in-flight bound); each worker records an attempt, posts it through the shared
transport (paced by the rate limiter) and waits for the inbound endpoint to report a resolution or for the
reply timeout, re-querying with new identifiers up to `max_attempts` (decision d).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from batch.config import JobConfig
from batch.ebxml import ACTION_QUERY, SERVICE, MessageHeader, build_message, utc_timestamp
from batch.failpoints import failpoint
from batch.hl7 import build_query
from batch.ids import new_id
from batch.store import AttemptRef, QueryState, Store
from batch.transport import SendAccepted, SendRejected, SendUnanswered, SpineTransport

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Counters for the run summary (counts only: no patient data)."""

    attempts: int = 0
    accepted: int = 0
    rejected: int = 0
    send_failures: int = 0
    timeouts: int = 0
    first_send: float | None = None
    last_send: float | None = None


class QueryPipeline:
    def __init__(self, cfg: JobConfig, store: Store, transport: SpineTransport, run_id: str) -> None:
        self._cfg = cfg
        self._store = store
        self._transport = transport
        self._run_id = run_id
        self._events: dict[str, anyio.Event] = {}
        self._resolved: set[str] = set()
        self._consecutive_failures = 0
        self.breaker_open = False
        self.progress = Progress()

    def on_resolved(self, run_id: str, nhs_number: str) -> None:
        """Called by the inbound endpoint after it committed a resolving reply."""
        if run_id != self._run_id:
            return
        self._resolved.add(nhs_number)
        event = self._events.get(nhs_number)
        if event is not None:
            event.set()

    async def run(self, children: list[QueryState]) -> None:
        if not children:
            return
        for child in children:
            self._events.setdefault(child.nhs_number, anyio.Event())
        send, receive = anyio.create_memory_object_stream[QueryState](max_buffer_size=0)
        workers = min(self._cfg.limits.max_in_flight, len(children))
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(self._worker, receive.clone())
            receive.close()
            async with send:
                for child in children:
                    await send.send(child)

    async def _worker(self, receive: MemoryObjectReceiveStream[QueryState]) -> None:
        async with receive:
            async for child in receive:
                await self._process(child)

    async def _wait_for_reply(self, nhs_number: str, seconds: float) -> bool:
        if nhs_number in self._resolved:
            return True
        with anyio.move_on_after(max(seconds, 0.0)):
            await self._events[nhs_number].wait()
        return nhs_number in self._resolved

    async def _process(self, child: QueryState) -> None:
        nhs = child.nhs_number
        limits = self._cfg.limits
        attempts = child.attempts
        if attempts and child.last_sent_at:
            # Resumed: an earlier process may have a query in flight; give it its full reply timeout first.
            elapsed = (datetime.now(UTC) - datetime.fromisoformat(child.last_sent_at)).total_seconds()
            if await self._wait_for_reply(nhs, limits.reply_timeout_s - elapsed):
                return
        last_failure: str | None = None
        while attempts < limits.max_attempts and not self.breaker_open:
            if nhs in self._resolved:
                return
            attempts += 1
            ref = AttemptRef(
                message_id=new_id(),
                run_id=self._run_id,
                nhs_number=nhs,
                conversation_id=new_id(),
                query_event_id=new_id(),
            )
            headers, body, hl7 = self._build(ref)
            # Written before the POST, so a reply that beats the 202 (or a crash) still finds its attempt.
            await self._store.record_attempt(ref, attempts)
            failpoint("attempt_recorded")
            self.progress.attempts += 1
            result = await self._transport.send(headers, body, hl7)
            now = anyio.current_time()
            self.progress.first_send = self.progress.first_send or now
            self.progress.last_send = now
            if isinstance(result, SendRejected):
                self.progress.rejected += 1
                log.warning("attempt %s refused by Spine: %s", ref.message_id, result.code)
                await self._store.mark_attempt(ref.message_id, self._run_id, "failed", result.code)
                await self._finish(nhs, "error", result.code)
                return
            if isinstance(result, SendUnanswered) and not result.maybe_delivered:
                self.progress.send_failures += 1
                last_failure = result.reason
                log.warning("attempt %s not delivered to Spine: %s", ref.message_id, result.reason)
                await self._store.mark_attempt(ref.message_id, self._run_id, "failed", result.reason)
                self._note_failure()
                continue
            if isinstance(result, SendAccepted):
                self.progress.accepted += 1
                self._consecutive_failures = 0
                await self._store.mark_attempt(ref.message_id, self._run_id, "accepted")
                failpoint("query_accepted")
            else:
                await self._store.mark_attempt(ref.message_id, self._run_id, "unanswered", result.reason)
            last_failure = None
            if await self._wait_for_reply(nhs, limits.reply_timeout_s):
                return
            self.progress.timeouts += 1
            await self._store.mark_attempt(ref.message_id, self._run_id, "timed_out")
        if nhs in self._resolved:
            return
        if self.breaker_open and attempts < limits.max_attempts:
            await self._finish(nhs, "error", "spine_unavailable")
        elif last_failure is not None:
            await self._finish(nhs, "error", f"send_failed:{last_failure}")
        else:
            await self._finish(nhs, "no_reply", f"no reply after {attempts} attempts")

    def _note_failure(self) -> None:
        self._consecutive_failures += 1
        if not self.breaker_open and self._consecutive_failures >= self._cfg.limits.circuit_breaker_failures:
            self.breaker_open = True
            log.error(
                "circuit breaker open after %d failed sends in a row: Spine unavailable, no more queries this run",
                self._consecutive_failures,
            )

    async def _finish(self, nhs: str, outcome: str, reason: str | None) -> None:
        # A reply may have resolved the child meanwhile; the store keeps the first outcome.
        await self._store.finish_child(self._run_id, nhs, outcome, reason)

    def _build(self, ref: AttemptRef) -> tuple[dict[str, str], bytes, bytes]:
        cfg = self._cfg
        now = datetime.now(UTC)
        hl7 = build_query(
            nhs_number=ref.nhs_number,
            message_id=ref.message_id,
            query_id=ref.query_event_id,
            sender=cfg.sender,
            spine_asid=cfg.spine.asid,
            now=now,
            version_code=cfg.version_code,
        )
        header = MessageHeader(
            from_party=cfg.sender_party_key,
            to_party=cfg.spine.party_key,
            cpa_id=cfg.spine.cpa_id,
            conversation_id=ref.conversation_id,
            service=SERVICE,
            action=ACTION_QUERY,
            message_id=ref.message_id,
            timestamp=utc_timestamp(now),
        )
        headers, body = build_message(header, hl7)
        return headers, body, hl7
