"""Sync fault smoke tier (docs/design/sync.md, "Fault testing"): the agent and central's ingest
run as real processes against the session's real broker, database and S3; each test injects
plate reads and segments into the agent's store, does violence to one part, lets the system
recover and has the checker prove that nothing was lost, duplicated or invented and that the
dead-letter queues hold exactly the injected poison.

Each test is bounded (well under a minute when the machine is not overloaded); the longer tier
with more events, more kills and a long partition is ``python -m bench.faults``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from uuid import UUID

import aio_pika
import pytest

from central.ingest import RETRY_DELAY_S
from devstack.sync_checker import read_agent
from devstack.sync_harness import wait_for
from devstack.tcpproxy import TcpProxy
from shared.messages import PlateRead
from shared.topology import DELIVERY_LIMIT, EVENTS_EXCHANGE, PLATES_QUEUE, routing_key
from tests.sync.conftest import Rig


def unsent_read_ids(rig: Rig) -> set[UUID]:
    conn = sqlite3.connect(f"file:{rig.site.store_path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT ref_id FROM outbox WHERE kind = 'plate_read' AND sent_ms IS NULL"
        ).fetchall()
    finally:
        conn.close()
    return {UUID(r[0]) for r in rows}


async def in_central(rig: Rig, ids: set[UUID]) -> set[UUID]:
    async with rig.pool.acquire() as conn:
        rows = await conn.fetch("SELECT id FROM lpr_events WHERE id = ANY($1::uuid[])", list(ids))
    return {r["id"] for r in rows}


def amqp_port(rig: Rig) -> int:
    from urllib.parse import urlsplit

    port = urlsplit(rig.settings.amqp_url.get_secret_value()).port
    assert port is not None
    return port


@pytest.mark.timeout(150)
async def test_relay_killed_between_publish_and_mark_sent(rig: Rig) -> None:
    """kill -9 of the agent while its relay has reads published but not yet marked sent: the
    restarted relay sends them again and central's inbox absorbs the second copies."""
    async with TcpProxy("127.0.0.1", amqp_port(rig)) as proxy:
        rig.site.route_amqp_via(proxy.port)
        rig.ingest().start()
        await rig.inject.add_reads(2000)
        await rig.inject.add_segments(3)
        rig.agent.start()
        await rig.wait_reads(1)

        # Deterministic window: the broker gets the publishes, routes them and central stores
        # them, but its confirms are held back, so the relay cannot mark the rows sent.
        await proxy.stall("down")
        await rig.inject.add_reads(1500)

        async def stored_but_unmarked() -> set[UUID]:
            return await in_central(rig, unsent_read_ids(rig))

        window = await wait_for("reads stored by central, unmarked at the agent",
                                stored_but_unmarked, 60, alive=rig.running())  # fmt: skip
        rig.agent.kill9()
        await proxy.restore()
        print(f"killed with {len(window)} read(s) published and stored but not marked sent")
        rig.agent.start()

        # And a kill at an arbitrary moment of a large drain, twice.
        for _ in range(2):
            before = await rig.central_reads()
            await rig.inject.add_reads(4000)
            await rig.wait_reads(before + 500)
            rig.agent.kill9()
            rig.agent.start()
        await rig.wait_drained()
        assert window <= await in_central(rig, window)
    await rig.check()


@pytest.mark.timeout(150)
async def test_ingest_killed_before_and_after_commit(rig: Rig) -> None:
    """kill -9 of central's ingest with deliveries it committed but had not acked (the
    broker redelivers them to its successor, the inbox absorbs them), and at an arbitrary
    moment of a backlog (before its commit, most likely)."""
    async with TcpProxy("127.0.0.1", amqp_port(rig)) as proxy:
        ingest = rig.ingest(amqp_port=proxy.port).start()
        await rig.inject.add_reads(1000)
        await rig.inject.add_segments(3)
        rig.agent.start()
        await rig.wait_reads(1000)

        # After the commit, before the ack: the ingest's acks never reach the broker.
        await proxy.stall("up")
        before = await rig.central_reads()
        await rig.inject.add_reads(1500)
        await rig.wait_reads(before + 500)
        ingest.kill9()
        await proxy.restore()
        ingest.start()

        # At an arbitrary moment of a backlog.
        for _ in range(2):
            before = await rig.central_reads()
            await rig.inject.add_reads(5000)
            await rig.wait_reads(before + 500)
            ingest.kill9()
            ingest.start()
        await rig.wait_drained()
    await rig.check()


@pytest.mark.timeout(150)
async def test_broker_restart_mid_drain(rig: Rig) -> None:
    """The broker stops (and comes back) while a backlog drains; the agent keeps committing
    reads and video meanwhile. Quorum queues and persistent messages keep what was routed;
    both sides reconnect by themselves."""
    rig.ingest().start()
    await rig.inject.add_reads(6000)
    await rig.inject.add_segments(4)
    rig.agent.start()
    await rig.wait_reads(500)
    await asyncio.to_thread(rig.broker.stop)
    try:
        await rig.inject.add_reads(1000)
        await rig.inject.add_segments(2)
    finally:
        await asyncio.to_thread(rig.broker.start)
    await rig.wait_drained()
    await rig.check()


@pytest.mark.timeout(150)
async def test_postgres_restart(rig: Rig) -> None:
    """PostgreSQL goes away for longer than the queues' delivery limit times the retry delay,
    with deliveries in flight: the ingest survives, loses nothing and dead-letters nothing (a
    database outage is not poison; regression: each retry used to spend one of the five
    deliveries a message has before the broker dead-letters it)."""
    rig.ingest().start()
    await rig.inject.add_reads(3000)
    await rig.inject.add_segments(3)
    rig.agent.start()
    await rig.wait_reads(500)
    await asyncio.to_thread(rig.services.stop, "postgres")
    try:
        ids = set(await rig.inject.add_reads(1000))
        await rig.inject.add_segments(2)

        async def published() -> bool:
            return not ids & await asyncio.to_thread(unsent_read_ids, rig)

        # The reads reach the broker and the ingest, which cannot store them.
        await wait_for("the reads published while PostgreSQL is down", published, 60,
                       alive=rig.running())  # fmt: skip
        # Long enough for every held delivery to be retried past the delivery limit.
        await asyncio.sleep(2 * (DELIVERY_LIMIT + 2) * RETRY_DELAY_S)
    finally:
        await asyncio.to_thread(rig.services.get, "postgres")
    await rig.wait_drained()
    await rig.check()


@pytest.mark.timeout(150)
async def test_object_storage_down(rig: Rig) -> None:
    """S3 stops for a while, twice: while the agent uploads (uploads fail and are retried) and
    while central verifies segments already announced (verification waits for S3, nothing is
    dead-lettered). No segment row ever points at a missing object."""
    async with TcpProxy("127.0.0.1", amqp_port(rig)) as proxy:
        rig.ingest(amqp_port=proxy.port).start()
        await rig.inject.add_segments(3)
        await rig.inject.add_reads(500)
        rig.agent.start()
        await wait_for("a first segment in central", rig.central_segments, 60,
                       alive=rig.running())  # fmt: skip
        await asyncio.to_thread(rig.services.stop, "s3")
        try:
            await rig.inject.add_segments(4)
            await rig.inject.add_reads(500)
            await asyncio.sleep(6)
        finally:
            await asyncio.to_thread(rig.services.get, "s3")
        await rig.wait_drained()

        # Announced while central's ingest hears nothing, verified while S3 is down.
        await proxy.stall()
        ids = set(await rig.inject.add_segments(3))

        async def announced() -> bool:
            agent = await asyncio.to_thread(read_agent, rig.site.store_path)
            return not agent.unsent

        await wait_for("the agent to upload and announce the segments", announced, 60,
                       alive=rig.running())  # fmt: skip
        await asyncio.to_thread(rig.services.stop, "s3")
        try:
            await proxy.restore()
            await asyncio.sleep(8)
            async with rig.pool.acquire() as conn:
                early = await conn.fetchval(
                    "SELECT count(*) FROM segments WHERE id = ANY($1::uuid[])", list(ids)
                )
            assert early == 0, "a segment row was committed without its object being verified"
        finally:
            await asyncio.to_thread(rig.services.get, "s3")
        await rig.wait_drained()
    await rig.check()


@pytest.mark.timeout(150)
async def test_link_cut_and_stalled(rig: Rig) -> None:
    """The agent's link to the broker is cut (connections reset, connects refused), then
    stalled (a half-open link: open, silent), then restored: the agent notices the silent link
    by its heartbeats, reconnects, and delivers everything once."""
    async with TcpProxy("127.0.0.1", amqp_port(rig)) as proxy:
        rig.site.route_amqp_via(proxy.port)
        rig.ingest().start()
        await rig.inject.add_reads(2000)
        await rig.inject.add_segments(2)
        rig.agent.start()
        await rig.wait_reads(500)

        await proxy.cut()
        await rig.inject.add_reads(1000)
        await rig.inject.add_segments(2)
        await asyncio.sleep(4)
        await proxy.restore()
        await rig.wait_drained()

        await proxy.stall()
        stalled_at = proxy.stats.accepted
        await rig.inject.add_reads(1000)

        async def reconnected() -> bool:
            return proxy.stats.accepted > stalled_at

        # Only the AMQP heartbeat can tell a silent link from a quiet one.
        await wait_for("the agent to give up the silent link and reconnect", reconnected, 60,
                       alive=rig.running())  # fmt: skip
        await proxy.restore()
        await rig.wait_drained()
    await rig.check()


@pytest.mark.timeout(150)
async def test_poison_and_unroutable(rig: Rig) -> None:
    """Poison (invalid schema; a camera of another city) goes to the DLQ with its reason and
    blocks nothing; a publish the broker cannot route is a failure at the agent (not marked
    sent) and goes out once a route exists again."""
    rig.ingest().start()
    rig.agent.start()
    await rig.inject.add_reads(500)
    await rig.wait_reads(500)

    key = routing_key("plate_read", rig.site.city_id, rig.site.agent_id)
    foreign = PlateRead(
        read_id=uuid.uuid4(), agent_id=rig.site.agent_id, camera_id=uuid.uuid4(),
        plate="ABC1D23", confidence=0.9, seen_ms=1_700_000_000_000,
    )  # fmt: skip
    poison = {
        "poison-schema": b'{"type": "plate_read", "v": 1, "plate": 42}',
        "poison-camera": foreign.model_dump_json().encode(),
    }
    # Published as the agent itself (its own broker user), as a buggy or hostile agent would.
    conn = await aio_pika.connect(rig.site.amqp_url)
    async with conn:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=True)
        for message_id, body in poison.items():
            await exchange.publish(
                aio_pika.Message(body, message_id=message_id, user_id=f"agent-{rig.site.agent_id}",
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=key, timeout=10,
            )  # fmt: skip
    # The queue is not blocked: reads behind the poison arrive.
    await rig.inject.add_reads(500)
    await rig.wait_reads(1000)

    # Unroutable: no queue is bound for plate reads any more.
    admin = await aio_pika.connect(rig.settings.amqp_url.get_secret_value())
    async with admin:
        channel = await admin.channel()
        events = await channel.get_exchange(EVENTS_EXCHANGE)
        queue = await channel.get_queue(PLATES_QUEUE.name)
        keys = [f"v1.{kind}.#" for kind in PLATES_QUEUE.message_types]
        for k in keys:
            await queue.unbind(events, k)
        try:
            unroutable = set(await rig.inject.add_reads(300))

            def refused() -> bool:
                conn = sqlite3.connect(f"file:{rig.site.store_path}?mode=ro", uri=True)
                try:
                    n: int = conn.execute(
                        "SELECT count(*) FROM outbox WHERE kind = 'plate_read' "
                        "AND sent_ms IS NULL AND attempts > 0"
                    ).fetchone()[0]
                finally:
                    conn.close()
                return n > 0

            async def failed_at_agent() -> bool:
                return await asyncio.to_thread(refused)

            await wait_for("the relay to see its publishes returned", failed_at_agent, 60,
                           alive=rig.running())  # fmt: skip
            assert unroutable <= unsent_read_ids(rig), "an unroutable read was marked sent"
            assert not await in_central(rig, unroutable)
        finally:
            for k in keys:
                await queue.bind(events, k)
    await rig.wait_drained()
    await rig.check({PLATES_QUEUE.dead_letter_queue: set(poison)})


@pytest.mark.timeout(150)
async def test_two_ingests_one_killed(rig: Rig) -> None:
    """Two ingest processes consume at once (competing consumers on every queue); one is
    killed mid-drain and its unacked deliveries go to the other: no duplicates either way."""
    first, second = rig.ingest().start(), rig.ingest().start()
    await rig.inject.add_reads(10000)
    await rig.inject.add_segments(6)
    rig.agent.start()
    await rig.wait_reads(2000)
    first.kill9()
    await rig.inject.add_reads(2000)
    await rig.wait_drained()
    first.start()
    await rig.inject.add_reads(2000)
    await rig.inject.add_segments(2)
    await rig.wait_drained()
    assert second.alive
    await rig.check()
