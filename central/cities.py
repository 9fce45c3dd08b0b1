"""Cities (the seed's ``cidades``): SQL functions."""

from __future__ import annotations

import uuid
from typing import Any
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


async def list_cities(conn: asyncpg.Connection, scope: list[UUID] | None) -> list[dict[str, Any]]:
    """Cities in ``scope`` (None: all), by name."""
    rows = await conn.fetch(
        "SELECT id, nome, estado, plano_retencao_dias, created_at FROM cidades"
        " WHERE ($1::uuid[] IS NULL OR id = ANY($1)) ORDER BY nome",
        scope,
    )
    return [dict(r) for r in rows]


async def get_city(
    conn: asyncpg.Connection, city_id: UUID, scope: list[UUID] | None
) -> dict[str, Any] | None:
    """The city if it exists and is in scope; None otherwise (the caller answers 404 either way)."""
    row = await conn.fetchrow(
        "SELECT id, nome, estado, plano_retencao_dias, created_at FROM cidades"
        " WHERE id = $1 AND ($2::uuid[] IS NULL OR id = ANY($2))",
        city_id, scope,
    )  # fmt: skip
    return None if row is None else dict(row)


async def update_city(
    conn: asyncpg.Connection, city_id: UUID, scope: list[UUID] | None, changes: dict[str, Any]
) -> bool:
    """Change ``nome``, ``estado`` and/or ``plano_retencao_dias`` of a city in scope."""
    allowed = {"nome", "estado", "plano_retencao_dias"}
    if not changes or not set(changes) <= allowed:
        raise ValueError(f"can change only {sorted(allowed)}")
    done = await conn.fetchval(
        "UPDATE cidades SET nome = coalesce($3, nome), estado = coalesce($4, estado),"
        " plano_retencao_dias = coalesce($5, plano_retencao_dias)"
        " WHERE id = $1 AND ($2::uuid[] IS NULL OR id = ANY($2)) RETURNING TRUE",
        city_id, scope, changes.get("nome"), changes.get("estado"),
        changes.get("plano_retencao_dias"),
    )  # fmt: skip
    return bool(done)
