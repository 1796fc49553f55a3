"""One run: children in, one outcome per child out.

Three parts, data flowing one way:
- the send loop takes the next child from the ready queue, a place among the `max_in_flight` queries that may
  await a reply and a sender (POST concurrency), and starts an attempt;
- an attempt takes its rate slot, builds its message, makes itself durable, POSTs and records what Spine said,
  then gives its sender back;
- the deadline loop re-queues (or finishes) a child whose reply has not come within `reply_timeout_s`.

A child waiting for its reply holds a place in flight but no sender, so waiting never slows sending, and a
resumed run's children whose queries may still be at Spine wait on their own deadlines (from when those queries
were sent) while fresh children go out at the full rate. A reply, reported by the inbound endpoint through
`on_resolved`, ends its child at once (docs/decisions.md#d6).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
import anyio.abc

from batch.attempts import AttemptIndex
from batch.concurrency import PostConcurrency
from batch.config import Limits
from batch.failpoints import failpoint
from batch.ids import new_id
from batch.outbound import QueryBuilder
from batch.ratelimit import RateSlot, SlidingWindowLimiter
from batch.states import AttemptStatus, Outcome
from batch.store import AttemptRef, ChildProgress, Store, utcnow
from batch.transport import SendAccepted, SendResult, SendUnanswered, SpineSender

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Counters for the run summary (counts only: no patient data)."""

    posts: int = 0
    accepted: int = 0
    rejected: int = 0
    not_sent: int = 0
    timeouts: int = 0
    first_send: float | None = None
    last_send: float | None = None

    def sent(self, at: float) -> None:
        self.posts += 1
        self.first_send = at if self.first_send is None else self.first_send
        self.last_send = at


@dataclass(eq=False, slots=True)
class _Child:
    """A child being queried: made when it is first taken from the ready queue (or resumed with history), and
    dropped once it has an outcome, so a run's memory follows what is in flight, not the size of the list."""

    nhs_number: str
    counted: int = 0
    """Attempts whose POST left us, across restarts (they count towards max_attempts)."""
    unsent: int = 0
    last_failure: str | None = None
    awaiting: str | None = None
    """The message id whose reply is awaited until the child's deadline."""
    in_flight: bool = False
    """Holds one of the max_in_flight places."""
    done: bool = False


@dataclass(order=True, slots=True)
class _Deadline:
    at: float
    child: _Child = field(compare=False)
    message_id: str = field(compare=False)


class QueryPipeline:
    def __init__(
        self,
        *,
        limits: Limits,
        store: Store,
        sender: SpineSender,
        builder: QueryBuilder,
        run_id: str,
        limiter: SlidingWindowLimiter,
        concurrency: PostConcurrency,
        index: AttemptIndex | None = None,
    ) -> None:
        self._limits = limits
        self._store = store
        self._sender = sender
        self._builder = builder
        self._run_id = run_id
        self._limiter = limiter
        self._concurrency = concurrency
        self._index = index if index is not None else AttemptIndex()
        self._children: dict[str, _Child] = {}
        # Fresh children as NHS numbers (no object until they are sent), re-queued ones as their state.
        self._ready: deque[str | _Child] = deque()
        self._deadlines: list[_Deadline] = []
        self._open = 0
        self._in_flight = 0
        self._consecutive_failures = 0
        self._ready_changed = anyio.Event()
        self._place_freed = anyio.Event()
        self._deadlines_changed = anyio.Event()
        self._warned_in_flight = False
        self.breaker_open = False
        self.progress = Progress()

    # -- what the inbound endpoint tells us ------------------------------------------------------------------

    def on_resolved(self, run_id: str, nhs_number: str) -> None:
        """Called by the inbound endpoint after it committed a reply that decided this child's outcome."""
        if run_id != self._run_id:
            return
        child = self._children.get(nhs_number)
        if child is not None:
            self._done(child)

    # -- the run ---------------------------------------------------------------------------------------------

    async def run(self, fresh: Iterable[str], resumed: Sequence[ChildProgress] = ()) -> None:
        """Give every child an outcome; returns when all have one.

        `fresh` children have never been queried (taken once: an iterator that lets go of each number as it goes
        leaves the queue the only holder); `resumed` ones carry what earlier processes did for them.
        """
        finished: list[tuple[_Child, Outcome, str]] = []
        now_wall, now = datetime.now(UTC), anyio.current_time()
        limits = self._limits
        queued = len(self._ready)
        self._ready.extend(fresh)
        self._open += len(self._ready) - queued
        for progress in resumed:
            child = _Child(progress.nhs_number, progress.counted, progress.unsent, progress.last_failure)
            self._children[child.nhs_number] = child
            self._open += 1
            if progress.awaited is not None:
                # An earlier process's query may be at Spine: its own reply timeout runs from when it was sent.
                age = (now_wall - progress.awaited.since).total_seconds()
                child.awaiting = progress.awaited.message_id
                self._schedule(child, now + limits.reply_timeout_s - age)
            elif child.counted >= limits.max_attempts:
                finished.append((child, Outcome.NO_REPLY, _no_reply(child)))
            elif child.unsent >= limits.max_attempts:
                finished.append((child, Outcome.ERROR, f"send_failed:{child.last_failure}"))
            else:
                self._ready.append(child)
        for child, outcome, reason in finished:
            await self._finish(child, outcome, reason)
        if not self._open:
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._deadline_loop)
            await self._send_loop(tg)
            if self.breaker_open:
                while (left := self._pop_ready()) is not None:
                    await self._finish(left, Outcome.ERROR, "spine_unavailable")

    async def _send_loop(self, tg: anyio.abc.TaskGroup) -> None:
        while (child := await self._next_ready()) is not None:
            await self._take_place()
            token = object()
            await self._concurrency.limiter.acquire_on_behalf_of(token)
            if child.done or self.breaker_open:
                # Answered by a late reply, or Spine became unavailable, while this child waited its turn.
                self._concurrency.limiter.release_on_behalf_of(token)
                self._give_back_place()
                if not child.done:
                    self._requeue(child)
                continue
            child.in_flight = True
            tg.start_soon(self._attempt, child, token)

    async def _attempt(self, child: _Child, token: object) -> None:
        slot: RateSlot | None = None
        try:
            # The rate slot first: an attempt is recorded only once its POST can start, so a kill never
            # leaves attempts that were still queueing for the limiter.
            slot = await self._limiter.acquire()
            ref = AttemptRef(new_id(), self._run_id, child.nhs_number, new_id(), new_id())
            query = self._builder.build(ref)
            child.counted += 1
            # Durable before the POST: a reply that beats the 202, or a restart after a kill, finds it.
            await self._store.record_attempt(ref, child.counted + child.unsent, utcnow())
            self._index.add(ref)
            failpoint("attempt_recorded")
            result = await self._sender.send(query, slot)
            self.progress.sent(anyio.current_time())
            await self._settle(child, ref, result)
            if isinstance(result, SendAccepted):
                # How long a sender is busy when all goes well sizes POST concurrency; failures do not.
                self._concurrency.observe(anyio.current_time() - slot.granted)
        finally:
            if slot is not None:
                slot.sent()  # a slot whose POST never started must not hold up the limiter
            self._concurrency.limiter.release_on_behalf_of(token)

    async def _settle(self, child: _Child, ref: AttemptRef, result: SendResult) -> None:
        """Record what the POST achieved and decide what the child waits for next."""
        store = self._store
        if isinstance(result, SendAccepted):
            self.progress.accepted += 1
            self._consecutive_failures = 0
            await store.note_accepted(ref, utcnow())
            failpoint("query_accepted")
            self._await_reply(child, ref)
        elif isinstance(result, SendUnanswered) and result.maybe_delivered:
            await store.record_send_result(ref, AttemptStatus.UNANSWERED, result.reason)
            self._await_reply(child, ref)
        elif isinstance(result, SendUnanswered):
            self.progress.not_sent += 1
            log.warning("attempt %s not delivered to Spine: %s", ref.message_id, result.reason)
            child.counted -= 1
            child.unsent += 1
            child.last_failure = result.reason
            await store.record_send_result(ref, AttemptStatus.NOT_SENT, result.reason)
            self._give_back_place(child)
            self._note_send_failure()
            if child.done:
                return
            if child.unsent >= self._limits.max_attempts:
                await self._finish(child, Outcome.ERROR, f"send_failed:{result.reason}")
            elif self.breaker_open:
                await self._finish(child, Outcome.ERROR, "spine_unavailable")
            else:
                self._requeue(child)
        else:
            self.progress.rejected += 1
            log.warning("attempt %s refused by Spine: %s", ref.message_id, result.code)
            await store.record_send_result(ref, AttemptStatus.REJECTED, result.code)
            self._give_back_place(child)
            await self._finish(child, Outcome.ERROR, result.code)

    def _await_reply(self, child: _Child, ref: AttemptRef) -> None:
        if child.done:  # the reply beat the 202
            return
        child.awaiting = ref.message_id
        self._schedule(child, anyio.current_time() + self._limits.reply_timeout_s)

    async def _deadline_loop(self) -> None:
        while self._open:
            now = anyio.current_time()
            while self._deadlines and self._deadlines[0].at <= now:
                due = heapq.heappop(self._deadlines)
                child = due.child
                if not child.done and child.awaiting == due.message_id:
                    await self._timed_out(child, due.message_id)
            self._deadlines_changed = anyio.Event()
            wait = self._deadlines[0].at - anyio.current_time() if self._deadlines else math.inf
            if self._open and wait > 0:
                with anyio.move_on_after(wait):
                    await self._deadlines_changed.wait()

    async def _timed_out(self, child: _Child, message_id: str) -> None:
        child.awaiting = None
        self.progress.timeouts += 1
        await self._store.mark_timed_out(message_id)
        self._give_back_place(child)
        if child.done:
            return
        if child.counted >= self._limits.max_attempts:
            await self._finish(child, Outcome.NO_REPLY, _no_reply(child))
        elif self.breaker_open:
            await self._finish(child, Outcome.ERROR, "spine_unavailable")
        else:
            self._requeue(child)

    # -- bookkeeping -----------------------------------------------------------------------------------------

    def _schedule(self, child: _Child, at: float) -> None:
        assert child.awaiting is not None
        heapq.heappush(self._deadlines, _Deadline(at, child, child.awaiting))
        self._deadlines_changed.set()

    def _requeue(self, child: _Child) -> None:
        self._ready.append(child)
        self._ready_changed.set()

    def _pop_ready(self) -> _Child | None:
        while self._ready:
            entry = self._ready.popleft()
            if isinstance(entry, str):
                child = self._children[entry] = _Child(entry)
                return child
            if not entry.done:
                return entry
        return None

    async def _next_ready(self) -> _Child | None:
        """The next child to query; None when every child has an outcome or Spine is unavailable."""
        while not self.breaker_open:
            child = self._pop_ready()
            if child is not None:
                return child
            if not self._open:
                return None
            self._ready_changed = anyio.Event()
            await self._ready_changed.wait()
        return None

    async def _take_place(self) -> None:
        if self._in_flight >= self._limits.max_in_flight and not self._warned_in_flight:
            self._warned_in_flight = True
            log.warning(
                "limits.max_in_flight = %d binds: that many queries await replies, so sending waits for replies",
                self._limits.max_in_flight,
            )
        while self._in_flight >= self._limits.max_in_flight:
            self._place_freed = anyio.Event()
            await self._place_freed.wait()
        self._in_flight += 1

    def _give_back_place(self, child: _Child | None = None) -> None:
        if child is not None:
            if not child.in_flight:
                return
            child.in_flight = False
        self._in_flight -= 1
        self._place_freed.set()

    def _done(self, child: _Child) -> None:
        if child.done:
            return
        child.done = True
        del self._children[child.nhs_number]
        self._index.drop_child(child.nhs_number)
        child.awaiting = None
        self._give_back_place(child)
        self._open -= 1
        self._ready_changed.set()
        self._deadlines_changed.set()

    async def _finish(self, child: _Child, outcome: Outcome, reason: str) -> None:
        # A reply may have decided the child meanwhile; the store keeps the first outcome.
        await self._store.finish_child(self._run_id, child.nhs_number, outcome, reason)
        self._done(child)

    def _note_send_failure(self) -> None:
        self._consecutive_failures += 1
        if not self.breaker_open and self._consecutive_failures >= self._limits.circuit_breaker_failures:
            self.breaker_open = True
            self._ready_changed.set()
            log.error(
                "circuit breaker open after %d failed sends in a row: Spine unavailable, no more queries this run",
                self._consecutive_failures,
            )


def _no_reply(child: _Child) -> str:
    sent = child.counted
    return f"no reply to {sent} quer{'y' if sent == 1 else 'ies'} sent"
