"""Mosaics (the seed's ``mosaics``): a user's named grid of cameras. SQL functions."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg

LAYOUT_CELLS = {"1x1": 1, "2x2": 4, "3x3": 9, "4x4": 16}


async def create_mosaic(
    conn: asyncpg.Connection, user_id: UUID, name: str, layout: str, camera_ids: list[UUID]
) -> UUID:
    mosaic_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO mosaics (id, user_id, name, layout, camera_ids) VALUES ($1, $2, $3, $4, $5)",
        mosaic_id, user_id, name, layout, [str(c) for c in camera_ids],
    )  # fmt: skip
    return mosaic_id


async def update_mosaic(
    conn: asyncpg.Connection,
    mosaic_id: UUID,
    user_id: UUID,
    name: str,
    layout: str,
    camera_ids: list[UUID],
) -> bool:
    """Replace the user's mosaic; False if it is not theirs (or does not exist)."""
    done = await conn.fetchval(
        "UPDATE mosaics SET name = $3, layout = $4, camera_ids = $5"
        " WHERE id = $1 AND user_id = $2 RETURNING TRUE",
        mosaic_id, user_id, name, layout, [str(c) for c in camera_ids],
    )  # fmt: skip
    return bool(done)


async def delete_mosaic(conn: asyncpg.Connection, mosaic_id: UUID, user_id: UUID) -> bool:
    done = await conn.fetchval(
        "DELETE FROM mosaics WHERE id = $1 AND user_id = $2 RETURNING TRUE", mosaic_id, user_id
    )
    return bool(done)


async def list_mosaics(conn: asyncpg.Connection, user_id: UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, name, layout, camera_ids FROM mosaics WHERE user_id = $1 ORDER BY name",
        user_id,
    )
    return [dict(r) for r in rows]


async def get_mosaic(
    conn: asyncpg.Connection, mosaic_id: UUID, user_id: UUID
) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT id, name, layout, camera_ids FROM mosaics WHERE id = $1 AND user_id = $2",
        mosaic_id, user_id,
    )  # fmt: skip
    return None if row is None else dict(row)
