"""Cameras: SQL functions."""

from __future__ import annotations

import uuid
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
