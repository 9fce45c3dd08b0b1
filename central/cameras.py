"""Cameras: SQL functions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg


async def create_camera(
    conn: asyncpg.Connection,
    cidade_id: UUID,
    nome: str,
    url_rtsp: str,
    agent_id: UUID | None = None,
    localizacao: str | None = None,
) -> UUID:
    """Insert a camera of a city, optionally recorded by one of the city's agents."""
    camera_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO cameras (id, cidade_id, nome, url_rtsp, localizacao, agent_id)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        camera_id, cidade_id, nome, url_rtsp, localizacao, agent_id,
    )  # fmt: skip
    return camera_id


async def camera_city_for_agent(
    conn: asyncpg.Connection, camera_id: UUID, agent_id: UUID
) -> UUID | None:
    """The camera's city if the camera belongs to the same city as the agent, else None.

    This is the check that stops an agent from writing another city's data.
    """
    city: UUID | None = await conn.fetchval(
        "SELECT c.cidade_id FROM cameras c JOIN agents a ON a.cidade_id = c.cidade_id"
        " WHERE c.id = $1 AND a.id = $2 AND a.is_active",
        camera_id, agent_id,
    )  # fmt: skip
    return city


CAMERA_COLUMNS = (
    "id, cidade_id, nome, url_rtsp, localizacao, status, status_reason, status_at, agent_id,"
    " enabled, created_at"
)


async def list_cameras(
    conn: asyncpg.Connection, scope: list[UUID] | None, cidade_id: UUID | None = None
) -> list[dict[str, Any]]:
    """Cameras in ``scope`` (None: all cities), optionally of one city, by name."""
    rows = await conn.fetch(
        f"SELECT {CAMERA_COLUMNS} FROM cameras"  # noqa: S608 - a constant column list
        " WHERE ($1::uuid[] IS NULL OR cidade_id = ANY($1))"
        " AND ($2::uuid IS NULL OR cidade_id = $2) ORDER BY nome",
        scope, cidade_id,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def get_camera(
    conn: asyncpg.Connection, camera_id: UUID, scope: list[UUID] | None
) -> dict[str, Any] | None:
    """The camera if it exists and its city is in scope, else None (answer 404 either way)."""
    row = await conn.fetchrow(
        f"SELECT {CAMERA_COLUMNS} FROM cameras"  # noqa: S608 - a constant column list
        " WHERE id = $1 AND ($2::uuid[] IS NULL OR cidade_id = ANY($2))",
        camera_id, scope,
    )  # fmt: skip
    return None if row is None else dict(row)


async def set_thumbnail(
    conn: asyncpg.Connection, camera_id: UUID, key: str, taken: datetime
) -> tuple[bool, str | None, str | None]:
    """Point the camera at a newer thumbnail; one no newer than the current is not applied.

    Returns (applied, previous key, current key). Call inside a transaction.
    """
    previous = await conn.fetchrow(
        "SELECT thumbnail_key, thumbnail_at FROM cameras WHERE id = $1 FOR UPDATE", camera_id
    )
    if previous is None:
        return False, None, None
    if previous["thumbnail_at"] is not None and previous["thumbnail_at"] >= taken:
        return False, previous["thumbnail_key"], previous["thumbnail_key"]
    await conn.execute(
        "UPDATE cameras SET thumbnail_key = $2, thumbnail_at = $3 WHERE id = $1",
        camera_id, key, taken,
    )  # fmt: skip
    return True, previous["thumbnail_key"], key


async def update_camera(conn: asyncpg.Connection, camera_id: UUID, changes: dict[str, Any]) -> None:
    """Change a camera's ``nome``, ``url_rtsp``, ``localizacao``, ``agent_id`` and/or
    ``enabled`` (a key present with None clears ``localizacao``/``agent_id``). The caller checks
    scope first."""
    allowed = ("nome", "url_rtsp", "localizacao", "agent_id", "enabled")
    if not changes or not set(changes) <= set(allowed):
        raise ValueError(f"can change only {list(allowed)}")
    sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, start=2))
    await conn.execute(
        f"UPDATE cameras SET {sets} WHERE id = $1",  # noqa: S608 - column names from `allowed`
        camera_id, *changes.values(),
    )  # fmt: skip


async def camera_footage(conn: asyncpg.Connection, camera_id: UUID) -> dict[str, int]:
    """What central holds for a camera: rows that deleting it would orphan or destroy."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM segments WHERE camera_id = $1) AS segments,"
        " (SELECT count(*) FROM lpr_events WHERE camera_id = $1) AS plate_reads,"
        " (SELECT count(*) FROM clips WHERE camera_id = $1) AS clips",
        camera_id,
    )
    return dict(row) if row else {}


async def delete_camera(conn: asyncpg.Connection, camera_id: UUID) -> bool:
    done = await conn.fetchval("DELETE FROM cameras WHERE id = $1 RETURNING TRUE", camera_id)
    return bool(done)
