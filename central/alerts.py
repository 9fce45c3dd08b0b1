"""Watchlist alerts raised by agents (a plate read matching a listed plate). SQL functions."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

MAX_PAGE = 200

_COLUMNS = (
    "a.id, a.cidade_id, a.camera_id, c.nome AS camera, a.agent_id, a.read_id, a.plate,"
    " a.listed_plate, a.match, a.detected_at, a.received_at, a.acknowledged_by,"
    " a.acknowledged_at"
)


async def insert_alerts(conn: asyncpg.Connection, alerts: list[dict[str, Any]]) -> int:
    """Insert alerts (keys: id, cidade_id, camera_id, agent_id, read_id, plate, listed_plate,
    match, detected_at); a redelivered alert id is ignored. Returns rows inserted."""
    if not alerts:
        return 0
    keys = (
        "id", "cidade_id", "camera_id", "agent_id", "read_id", "plate", "listed_plate", "match",
        "detected_at",
    )  # fmt: skip
    result: str = await conn.execute(
        """
        INSERT INTO alerts (id, cidade_id, camera_id, agent_id, read_id, plate, listed_plate,
                            match, detected_at)
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[],
                             $6::text[], $7::text[], $8::text[], $9::timestamptz[])
        ON CONFLICT (id) DO NOTHING
        """,
        *[[a[k] for a in alerts] for k in keys],
    )
    return int(result.rsplit(" ", 1)[1])


async def list_alerts(
    conn: asyncpg.Connection,
    scope: list[UUID] | None,
    *,
    city_id: UUID | None = None,
    camera_id: UUID | None = None,
    open_only: bool = False,
    before: tuple[datetime, UUID] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Alerts in scope, newest first, keyset-paginated on (detected_at, id)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM alerts a JOIN cameras c ON c.id = a.camera_id"  # noqa: S608
        " WHERE ($1::uuid[] IS NULL OR a.cidade_id = ANY($1))"
        " AND ($2::uuid IS NULL OR a.cidade_id = $2)"
        " AND ($3::uuid IS NULL OR a.camera_id = $3)"
        " AND (NOT $4 OR a.acknowledged_at IS NULL)"
        " AND ($5::timestamptz IS NULL OR (a.detected_at, a.id) < ($5, $6::uuid))"
        " ORDER BY a.detected_at DESC, a.id DESC LIMIT $7",
        scope, city_id, camera_id, open_only,
        before[0] if before else None, before[1] if before else None, min(limit, MAX_PAGE),
    )  # fmt: skip
    return [dict(r) for r in rows]


async def get_alert(
    conn: asyncpg.Connection, alert_id: UUID, scope: list[UUID] | None
) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM alerts a JOIN cameras c ON c.id = a.camera_id"  # noqa: S608
        " WHERE a.id = $1 AND ($2::uuid[] IS NULL OR a.cidade_id = ANY($2))",
        alert_id, scope,
    )  # fmt: skip
    return None if row is None else dict(row)


async def acknowledge(
    conn: asyncpg.Connection, alert_id: UUID, user_id: UUID, scope: list[UUID] | None
) -> bool:
    """Mark the alert handled by the user (the first acknowledgement is kept)."""
    done = await conn.fetchval(
        "UPDATE alerts SET acknowledged_by = coalesce(acknowledged_by, $2),"
        " acknowledged_at = coalesce(acknowledged_at, now())"
        " WHERE id = $1 AND ($3::uuid[] IS NULL OR cidade_id = ANY($3)) RETURNING TRUE",
        alert_id, user_id, scope,
    )  # fmt: skip
    return bool(done)
