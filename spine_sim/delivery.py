"""Posting replies to the client's inbound endpoint, after a latency, possibly held back and reordered.

The CP-IS reply route is express: a POST that fails is counted and never resent (docs/protocol.md#p2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
import anyio.abc

from spine_sim.answers import OutboundReply
from spine_sim.ebxml import acknowledges
from spine_sim.faults import FaultConfig
from spine_sim.reply_client import ReplyClient, ReplyPostError
from spine_sim.stats import SimStats

log = logging.getLogger(__name__)


class ReplyPoster:
    """Posts each reply once and counts it as sent (acknowledged) or failed."""

    def __init__(self, client: ReplyClient, stats: SimStats) -> None:
        self._client = client
        self._stats = stats

    async def post(self, reply: OutboundReply) -> bool:
        try:
            response = await self._client.post(reply.body, reply.headers)
        except ReplyPostError as exc:
            log.info("reply %s (%s) not delivered: %s", reply.message_id, reply.action, exc)
            delivered = False
        else:
            delivered = response.status == 200 and acknowledges(response.body, reply.message_id)
            if not delivered:
                log.info(
                    "reply %s (%s) not acknowledged: HTTP %d", reply.message_id, reply.action, response.status
                )
        self._stats.reply_finished(delivered=delivered)
        return delivered

    async def post_in_order(self, replies: list[OutboundReply]) -> None:
        # One after another, each acknowledged (or failed) before the next, so the receiver sees this order.
        for reply in replies:
            await self.post(reply)


@dataclass(frozen=True)
class Delivery:
    """The replies to one query, to go out ``delay_s`` after acceptance; ``hold`` for a reordered reply."""

    replies: list[OutboundReply]
    delay_s: float
    hold: bool = False


class Dispatcher:
    """Runs each delivery in its own task; held deliveries go out later, in reverse order.

    Held replies are released after the next reply that was not held (so that one overtakes them), or once
    ``reorder_window`` of them have collected (newest first), or when ``reorder_hold_s`` runs out.
    """

    def __init__(self, poster: ReplyPoster, faults: FaultConfig) -> None:
        self._poster = poster
        self._faults = faults
        self._held: list[Delivery] = []
        self._generation = 0
        self._task_group: anyio.abc.TaskGroup | None = None

    async def run(
        self,
        deliveries: anyio.abc.ObjectReceiveStream[Delivery],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        async with anyio.create_task_group() as task_group, deliveries:
            self._task_group = task_group
            task_status.started()
            async for delivery in deliveries:
                task_group.start_soon(self._deliver, delivery)

    async def _deliver(self, delivery: Delivery) -> None:
        await anyio.sleep(delivery.delay_s)
        if delivery.hold:
            await self._hold(delivery)
            return
        await self._poster.post_in_order(delivery.replies)
        await self._release()

    async def _hold(self, delivery: Delivery) -> None:
        self._held.append(delivery)
        if len(self._held) >= self._faults.reorder_window:
            await self._release()
        elif len(self._held) == 1 and self._task_group is not None:
            self._task_group.start_soon(self._release_after, self._generation, self._faults.reorder_hold_s)

    async def _release_after(self, generation: int, delay_s: float) -> None:
        await anyio.sleep(delay_s)
        # Only the batch this timer was started for; a later batch has its own timer.
        if generation == self._generation:
            await self._release()

    async def _release(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        self._generation += 1
        for delivery in reversed(held):
            await self._poster.post_in_order(delivery.replies)
