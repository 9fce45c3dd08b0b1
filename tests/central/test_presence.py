"""Agent presence: PostgreSQL is the truth, Redis a hot copy that may vanish at any time."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from central import agents, cities, presence
from shared.messages import Heartbeat

pytestmark = pytest.mark.timeout(60)


def heartbeat(agent_id: uuid.UUID, sent_ms: int, pending: int) -> Heartbeat:
    return Heartbeat(
        heartbeat_id=uuid.uuid4(), agent_id=agent_id, sent_ms=sent_ms, agent_version="t",
        outbox_pending={"segment": pending}, oldest_pending_age_ms=pending * 1000,
    )  # fmt: skip


async def test_newest_heartbeat_wins_and_survives_redis_loss(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    redis = aioredis.from_url(redis_url)
    try:
        async with db_pool.acquire() as conn:
            city = await cities.create_city(conn, "Limeira", "SP", 7)
            agent, _ = await agents.create_agent(conn, city, "a")
            now_ms = time.time_ns() // 1_000_000
            assert await presence.record_heartbeat(conn, redis, heartbeat(agent, now_ms, 3))
            # Out of order: an older heartbeat delivered late changes nothing.
            assert not await presence.record_heartbeat(
                conn, redis, heartbeat(agent, now_ms - 5000, 9)
            )
            [row] = await presence.agents_health(conn, redis)
            assert row["online"] and row["outbox_pending"] == {"segment": 3}

            await redis.flushall()  # Redis restarted empty
            [row] = await presence.agents_health(conn, redis)
            assert row["online"] and row["outbox_pending"] == {"segment": 3}

            later = datetime.now(UTC) + timedelta(seconds=presence.ONLINE_WINDOW_S + 1)
            [row] = await presence.agents_health(conn, redis, None, now=later)
            assert not row["online"]
    finally:
        await redis.aclose()


async def test_redis_down_is_not_an_error(db_pool: asyncpg.Pool) -> None:
    dead: Any = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        async with db_pool.acquire() as conn:
            city = await cities.create_city(conn, "Franca", "SP", 7)
            agent, _ = await agents.create_agent(conn, city, "b")
            assert await presence.record_heartbeat(
                conn, dead, heartbeat(agent, time.time_ns() // 1_000_000, 0)
            )
            [row] = await presence.agents_health(conn, dead)
            assert row["online"]
    finally:
        await dead.aclose()
