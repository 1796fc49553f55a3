"""The reply leg: one POST per reply, never resent; new or reused mutual-TLS connections."""

from __future__ import annotations

import anyio
import pytest

from batch.pki import DevPki
from spine_sim.http11 import listen_tcp
from spine_sim.reply_client import ReplyConnections
from spine_sim.server import SimSettings
from tests.sim.harness import (
    FLAGGED,
    NOT_ON_CPIS,
    UNBORN,
    WAIT_S,
    accepted,
    receiver_for,
    running_spine,
    send_query,
    sim_server,
    small_dataset,
    spine_client,
)


async def test_failed_reply_post_is_counted_and_not_resent(pki: DevPki) -> None:
    async with running_spine(pki, receiver_status=503) as spine:
        accepted(await send_query(spine.http, FLAGGED))
        await spine.receiver.next()
        stats = await spine.server.wait_for_stats(lambda s: s["replies_pending"] == 0)
        # Express route: one POST, never a second. A further query's reply arriving next proves nothing else
        # was queued ahead of it.
        second = await send_query(spine.http, NOT_ON_CPIS)
        following = await spine.receiver.next()
    assert (stats["replies_sent"], stats["replies_failed"]) == (0, 1)
    assert following.header.ref_to_message_id == second.message_id
    assert len(spine.receiver.received) == 2


async def test_reply_to_a_dead_endpoint_is_counted_failed_and_never_resent(pki: DevPki) -> None:
    # A port nobody listens on: the reply's connection is refused.
    listener, port = await listen_tcp("127.0.0.1", 0)
    await listener.aclose()
    settings = SimSettings(small_dataset(), f"https://127.0.0.1:{port}/cpis/inbound", latency_s=0.0)
    server = sim_server(pki, settings)
    receiver = receiver_for(pki)
    async with anyio.create_task_group() as task_group:
        await task_group.start(server.serve)
        async with spine_client(pki, server.url) as http:
            accepted(await send_query(http, FLAGGED))
            with anyio.fail_after(WAIT_S):
                # Replies are scheduled before the 202, so none pending now means the POST has failed.
                refused = await server.wait_for_stats(lambda s: s["replies_pending"] == 0)
            # The endpoint comes up on that port: a resent reply would now be delivered.
            listener, _ = await listen_tcp("127.0.0.1", port)
            task_group.start_soon(receiver.serve, listener)
            second = await send_query(http, NOT_ON_CPIS)
            following = await receiver.next()
            with anyio.fail_after(WAIT_S):
                after = await server.wait_for_stats(lambda s: s["replies_pending"] == 0)
        task_group.cancel_scope.cancel()
    assert (refused["replies_sent"], refused["replies_failed"]) == (0, 1)
    assert (after["replies_sent"], after["replies_failed"]) == (1, 1)
    assert following.header.ref_to_message_id == second.message_id
    assert [r.header.ref_to_message_id for r in receiver.received] == [second.message_id]


@pytest.mark.parametrize(
    ("mode", "keep_alive", "connections"),
    [("new", True, 3), ("reuse", True, 1), ("reuse", False, 3)],
    ids=["new", "reuse", "reuse-but-receiver-closes"],
)
async def test_reply_connections(
    pki: DevPki, mode: ReplyConnections, keep_alive: bool, connections: int
) -> None:
    async with running_spine(pki, reply_connections=mode, receiver_keep_alive=keep_alive) as spine:
        for number in (FLAGGED, NOT_ON_CPIS, UNBORN):
            accepted(await send_query(spine.http, number))
            await spine.receiver.next()
            # Acknowledged and counted: the connection is back in the pool before the next reply.
            await spine.server.wait_for_stats(lambda s: s["replies_pending"] == 0)
        stats = await spine.stats()
    assert (stats["replies_sent"], stats["replies_failed"]) == (3, 0)
    assert spine.receiver.connections == connections


async def test_reuse_skips_a_connection_the_receiver_dropped_while_idle(pki: DevPki) -> None:
    async with running_spine(pki, reply_connections="reuse", receiver_drop_after=True) as spine:
        for number in (FLAGGED, NOT_ON_CPIS):
            accepted(await send_query(spine.http, number))
            await spine.receiver.next()
            await spine.server.wait_for_stats(lambda s: s["replies_pending"] == 0)
        stats = await spine.stats()
    assert (stats["replies_sent"], stats["replies_failed"]) == (2, 0)
    assert spine.receiver.connections == 2
