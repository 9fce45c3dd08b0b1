"""Sync fault smoke tier (docs/design/sync.md, "Fault testing"): the agent and central's ingest
run as real processes against the session's real broker, database and S3; each test injects
plate reads and segments into the agent's store, does violence to one part, lets the system
recover and has the checker prove that nothing was lost, duplicated or invented and that the
dead-letter queues hold exactly the injected poison.

Each test is bounded (well under a minute when the machine is not overloaded); the longer tier
with more events, more kills and a long partition is ``python -m bench.faults``.
"""

from __future__ import annotations

import sqlite3
from uuid import UUID

import pytest

from devstack.sync_harness import wait_for
from devstack.tcpproxy import TcpProxy
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
