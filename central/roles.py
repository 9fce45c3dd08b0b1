"""Roles (the seed's ``roles``): a name and a JSON list of permissions. SQL functions.

Permissions are ``"<resource>:<action>"`` strings; ``"*"`` is every permission in every city.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from uuid import UUID

import asyncpg

# Every permission the API checks. A role may hold only these (or "*").
PERMISSIONS = frozenset(
    {
        "cities:read", "cities:admin", "cameras:read", "cameras:admin", "recordings:read",
        "clips:create", "plates:search", "agents:read", "agents:admin", "watchlists:read",
        "watchlists:admin", "alerts:read", "users:admin",
    }
)  # fmt: skip
BUILT_IN = frozenset({"admin", "operador", "instalador"})


def _row(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    perms = out["permissions"]
    out["permissions"] = sorted(json.loads(perms) if isinstance(perms, str) else perms or [])
    return out


async def list_roles(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT id, name, permissions FROM roles ORDER BY name")
    return [_row(r) for r in rows]


async def roles_by_name(conn: asyncpg.Connection, names: list[str]) -> list[dict[str, Any]]:
    """The named roles that exist (the caller compares with what was asked)."""
    rows = await conn.fetch(
        "SELECT id, name, permissions FROM roles WHERE name = ANY($1::text[]) ORDER BY name",
        names,
    )
    return [_row(r) for r in rows]


async def create_role(conn: asyncpg.Connection, name: str, permissions: list[str]) -> UUID:
    """asyncpg.UniqueViolationError if the name is taken."""
    role_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO roles (id, name, permissions) VALUES ($1, $2, $3::jsonb)",
        role_id, name, sorted(set(permissions)),
    )  # fmt: skip
    return role_id


async def update_role(conn: asyncpg.Connection, role_id: UUID, permissions: list[str]) -> bool:
    done = await conn.fetchval(
        "UPDATE roles SET permissions = $2::jsonb WHERE id = $1 RETURNING TRUE",
        role_id, sorted(set(permissions)),
    )  # fmt: skip
    return bool(done)


async def delete_role(conn: asyncpg.Connection, role_id: UUID) -> bool:
    """Delete a role no user holds (asyncpg.ForeignKeyViolationError otherwise)."""
    done = await conn.fetchval("DELETE FROM roles WHERE id = $1 RETURNING TRUE", role_id)
    return bool(done)
