"""Config hints: what an admin changed at central that an agent must honour over its YAML.

An agent's hint is derived from central's state whenever it is sent: the upload cap set for the
agent (``agents.max_upload_mbps``) and the cameras of its city whose state central decides — a
camera disabled at central (``cameras.enabled``) or assigned to another agent is disabled for
this one. A camera assigned to no agent and enabled is left to the agents' YAML (it is not
listed). Every change that concerns an agent bumps its ``agents.config_version`` in the same
transaction; the worker's pusher (central/commands.py) then sends the agent its new hint.
"""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg

from central import commands
from shared.messages import MAX_HINT_CAMERAS, CameraHint, ConfigHint


async def bump_city(conn: asyncpg.Connection, city_id: UUID) -> None:
    """Every agent of the city gets a new hint (a camera of the city changed)."""
    await conn.execute(
        "UPDATE agents SET config_version = config_version + 1 WHERE cidade_id = $1", city_id
    )


async def set_agent(
    conn: asyncpg.Connection, agent_id: UUID, scope: list[UUID] | None, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """Apply ``changes`` (``max_upload_mbps``: a cap or None) to an agent in ``scope`` and bump
    its hint version; returns the agent's settings, or None if not found in scope."""
    allowed = ("max_upload_mbps",)
    if not changes or not set(changes) <= set(allowed):
        raise ValueError(f"can change only {list(allowed)}")
    sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, start=3))
    row = await conn.fetchrow(
        f"UPDATE agents SET {sets}, config_version = config_version + 1"  # noqa: S608 - column names from `allowed`
        " WHERE id = $1 AND ($2::uuid[] IS NULL OR cidade_id = ANY($2))"
        " RETURNING id, cidade_id, nome, max_upload_mbps, config_version",
        agent_id, scope, *changes.values(),
    )  # fmt: skip
    return None if row is None else dict(row)


def hint_id(agent_id: UUID, version: int) -> UUID:
    """The same (agent, version) always gives the same id: a resend is recognisable."""
    return uuid.uuid5(agent_id, f"config-hint-{version}")


async def agent_hint(conn: asyncpg.Connection, agent_id: UUID) -> ConfigHint:
    """The hint the agent should hold now; LookupError if there is no such agent."""
    async with conn.transaction(isolation="repeatable_read"):
        agent = await conn.fetchrow(
            "SELECT cidade_id, max_upload_mbps, config_version FROM agents WHERE id = $1",
            agent_id,
        )
        if agent is None:
            raise LookupError(f"no agent {agent_id}")
        cameras = await conn.fetch(
            "SELECT id, enabled AND (agent_id IS NULL OR agent_id = $2) AS enabled"
            " FROM cameras WHERE cidade_id = $1 AND NOT (enabled AND agent_id IS NULL)"
            " ORDER BY id LIMIT $3",
            agent["cidade_id"], agent_id, MAX_HINT_CAMERAS + 1,
        )  # fmt: skip
    if len(cameras) > MAX_HINT_CAMERAS:
        raise ValueError(
            f"agent {agent_id}: its city has more than {MAX_HINT_CAMERAS} cameras assigned or "
            "disabled; a config hint cannot list them"
        )
    version = int(agent["config_version"])
    return ConfigHint(
        hint_id=hint_id(agent_id, version),
        agent_id=agent_id,
        version=version,
        max_upload_mbps=agent["max_upload_mbps"],
        cameras=[CameraHint(camera_id=c["id"], enabled=c["enabled"]) for c in cameras],
    )


async def _build(pool: asyncpg.Pool, row: dict[str, Any], cache: dict[Any, Any]) -> ConfigHint:
    async with pool.acquire() as conn:
        return await agent_hint(conn, row["agent_id"])


PUSH = commands.VersionedCommand(kind="config_hint", current="a.config_version", build=_build)


async def push_due(pool: asyncpg.Pool, publisher: commands.Publisher) -> int:
    """Send every agent whose hint changed since it was last sent one; returns hints sent."""
    return await commands.push_due(pool, publisher, [PUSH])
