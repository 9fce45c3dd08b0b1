"""Agent presence and health: PostgreSQL holds the truth, Redis a hot copy with a TTL.

Redis may restart empty at any time: every reader falls back to PostgreSQL, so presence is
only ever slower to read, never wrong.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.messages import Heartbeat

log = logging.getLogger(__name__)

# An agent that has not reported for this long is offline (it heartbeats every 10 s).
ONLINE_WINDOW_S = 45


def _key(agent_id: UUID) -> str:
    return f"gtvision:agent:{agent_id}:heartbeat"


async def record_heartbeat(
    conn: asyncpg.Connection,
    redis: aioredis.Redis | None,
    hb: Heartbeat,
) -> bool:
    """Keep the newest heartbeat (by ``sent_ms``); stale or duplicate ones change nothing.
    The newest also sets the statuses of the agent's cameras: its own, or its city's that no
    agent owns yet; never another agent's.

    Returns whether this heartbeat was the newest. Redis failures are logged, not raised.
    """
    # Presence runs on central's clock: an agent's clock may be off by hours (no NTP), which
    # would make it look online long after it died, or never. Its own sent_ms only orders its
    # heartbeats, and the difference is the clock offset central reports (plus transit time).
    received = datetime.now(UTC)
    body = hb.model_dump(mode="json") | {"received_ms": int(received.timestamp() * 1000)}
    newest = await conn.fetchval(
        "UPDATE agents SET last_seen_at = $2, last_heartbeat = $3 WHERE id = $1"
        " AND coalesce((last_heartbeat->>'sent_ms')::bigint, -1) < $4 RETURNING TRUE",
        hb.agent_id, received, body, hb.sent_ms,
    )  # fmt: skip
    if newest and hb.cameras:
        await conn.executemany(
            "UPDATE cameras SET status = $3, status_reason = $4, status_at = $5"
            " WHERE id = $1 AND (agent_id = $2 OR (agent_id IS NULL AND cidade_id ="
            " (SELECT cidade_id FROM agents WHERE id = $2)))",
            [(c.camera_id, hb.agent_id, c.status, c.reason, received) for c in hb.cameras],
        )
    if newest and redis is not None:
        try:
            await redis.set(_key(hb.agent_id), json.dumps(body), ex=ONLINE_WINDOW_S)
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable for presence (%r); PostgreSQL still has it", exc)
    return bool(newest)


async def agents_health(
    conn: asyncpg.Connection,
    redis: aioredis.Redis | None,
    scope: list[UUID] | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Agents of the cities in ``scope`` (None: all) with their last heartbeat and presence."""
    now = now or datetime.now(UTC)
    rows = await conn.fetch(
        "SELECT a.id, a.nome, a.cidade_id, c.nome AS cidade, a.is_active, a.last_seen_at,"
        " a.last_heartbeat FROM agents a JOIN cidades c ON c.id = a.cidade_id"
        " WHERE ($1::uuid[] IS NULL OR a.cidade_id = ANY($1)) ORDER BY a.nome",
        scope,
    )
    hot: list[Any] = [None] * len(rows)
    if redis is not None and rows:
        try:
            hot = await redis.mget([_key(r["id"]) for r in rows])
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable for presence (%r); reading PostgreSQL", exc)
    out = []
    for row, cached in zip(rows, hot, strict=True):
        heartbeat = json.loads(cached) if cached else row["last_heartbeat"]
        seen = row["last_seen_at"]
        online = row["is_active"] and (
            cached is not None
            or (seen is not None and now - seen < timedelta(seconds=ONLINE_WINDOW_S))
        )
        out.append(
            {
                "id": row["id"],
                "nome": row["nome"],
                "cidade_id": row["cidade_id"],
                "cidade": row["cidade"],
                "is_active": row["is_active"],
                "online": online,
                "last_seen_at": seen,
                "outbox_pending": (heartbeat or {}).get("outbox_pending", {}),
                "oldest_pending_age_ms": (heartbeat or {}).get("oldest_pending_age_ms"),
                "agent_version": (heartbeat or {}).get("agent_version"),
                "pending_blob_bytes": (heartbeat or {}).get("pending_blob_bytes"),
                "clock_sync": (heartbeat or {}).get("clock_sync", "unknown"),
                "clock_error_ms": (heartbeat or {}).get("clock_error_ms"),
                "clock_offset_ms": _offset(heartbeat),
                "disk": (heartbeat or {}).get("disk"),
                "cameras": (heartbeat or {}).get("cameras", []),
            }
        )
    return out


def _offset(heartbeat: dict[str, Any] | None) -> int | None:
    """Agent clock minus central clock as one heartbeat shows it (transit time included)."""
    if not heartbeat or "received_ms" not in heartbeat:
        return None
    return int(heartbeat["sent_ms"]) - int(heartbeat["received_ms"])
