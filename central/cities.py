"""Cities (the seed's ``cidades``): SQL functions."""

from __future__ import annotations

import uuid
from uuid import UUID

import asyncpg


async def create_city(
    conn: asyncpg.Connection, nome: str, estado: str, plano_retencao_dias: int = 30
) -> UUID:
    """Insert a city; the retention plan must be 7, 15 or 30 days (CHECK constraint)."""
    city_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO cidades (id, nome, estado, plano_retencao_dias) VALUES ($1, $2, $3, $4)",
        city_id, nome, estado, plano_retencao_dias,
    )  # fmt: skip
    return city_id
