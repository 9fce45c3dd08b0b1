"""The relay's order during a long drain, against real RabbitMQ and PostgreSQL: plate reads
written after the drain began go ahead of the rest of its backlog, rows more urgent still go
first, and every read is stored once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from agent.store import PRIORITY, Store
from central.broker import BrokerAdmin
from tests.central.test_ingest import make_city, plate_read
from tests.test_relay_throughput import drain_recorded, wait_reads

pytestmark = pytest.mark.timeout(120)


async def test_live_reads_go_ahead_of_the_backlog(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    amqp_url: str,
    broker_admin: BrokerAdmin,
    tmp_path: Path,
) -> None:
    site = await make_city(db_pool, broker_admin, "Bauru")
    live = [plate_read(site, f"NEW{n:04d}") for n in range(10)]
    alert = plate_read(site, "ALE0001")

    async def arrive(store: Store) -> None:
        # Live reads, and one row ranked as an alert, committed while the drain is under way.
        await store.add_plate_reads(live)
        await store.add_plate_reads([alert])
        await store._run(
            lambda: store.db.execute(
                "UPDATE outbox SET priority = ? WHERE ref_id = ?",
                [PRIORITY["alert"], str(alert.read_id)],
            )
        )

    async with drain_recorded(site, amqp_url, tmp_path, arrive) as (store, relay, order):
        backlog = [plate_read(site, f"OLD{n:04d}") for n in range(1500)]
        await store.add_plate_reads(backlog)
        total = len(backlog) + len(live) + 1
        assert await relay._pump() == total
        # 500 backlog rows read first (5 messages of 100); then the alert-ranked row alone;
        # then the live reads at the head of the next read, 90 backlog reads filling their
        # batch; then the rest of the backlog.
        assert order[5] == f"plate_read:{alert.read_id}"
        assert order[6] == f"plate_read_batch:{live[0].read_id}+99"
        assert len(order) == 17
        assert (await store.backlog())["pending"] == {}
        assert await wait_reads(db_pool, site["camera"], total, 60) == total
