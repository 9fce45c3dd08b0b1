"""Agent presence: PostgreSQL is the truth, Redis a hot copy that may vanish at any time."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from central import agents, cameras, cities, presence
from shared.messages import CameraHealth, DiskHealth, Heartbeat

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


async def test_presence_uses_centrals_clock_and_reports_the_agents(db_pool: asyncpg.Pool) -> None:
    """An agent whose clock is an hour behind (no NTP) is online while it reports, offline once
    it stops, and its offset, disk and cameras' statuses are shown; its heartbeat sets only its
    own cameras' statuses."""
    async with db_pool.acquire() as conn:
        city = await cities.create_city(conn, "Bauru", "SP", 7)
        agent, _ = await agents.create_agent(conn, city, "relógio atrasado")
        other, _ = await agents.create_agent(conn, city, "outro")
        mine = await cameras.create_camera(conn, city, "c1", "rtsp://10.0.0.1/a", agent)
        theirs = await cameras.create_camera(conn, city, "c2", "rtsp://10.0.0.2/b", other)
        skewed_ms = time.time_ns() // 1_000_000 - 3_600_000
        hb = heartbeat(agent, skewed_ms, 0).model_copy(
            update={
                "clock_sync": "unsynced",
                "clock_error_ms": 16_000,
                "cameras": [
                    CameraHealth(camera_id=mine, status="error", reason="authentication failed"),
                    CameraHealth(camera_id=theirs, status="online", reason="recording"),
                ],
                "disk": DiskHealth(
                    used_bytes=10, free_bytes=20, capacity_bytes=30, retention_days=6.5
                ),
            }
        )
        assert await presence.record_heartbeat(conn, None, hb)
        [row] = [r for r in await presence.agents_health(conn, None) if r["id"] == agent]
        assert row["online"], "an agent with a slow clock that reports is online"
        assert -3_600_000 - 60_000 < row["clock_offset_ms"] < -3_600_000 + 60_000
        assert (row["clock_sync"], row["clock_error_ms"]) == ("unsynced", 16_000)
        assert row["disk"]["retention_days"] == 6.5
        assert [c["status"] for c in row["cameras"]] == ["error", "online"]
        statuses = {
            r["id"]: (r["status"], r["status_reason"])
            for r in await conn.fetch("SELECT id, status, status_reason FROM cameras")
        }
        assert statuses[mine] == ("error", "authentication failed")
        assert statuses[theirs][0] != "online", "an agent cannot set another agent's camera"
        later = datetime.now(UTC) + timedelta(seconds=presence.ONLINE_WINDOW_S + 1)
        [row] = [r for r in await presence.agents_health(conn, None, now=later) if r["id"] == agent]
        assert not row["online"]
