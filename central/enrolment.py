"""Agent enrolment: one-time tokens exchanged for an agent's own credentials, and revocation."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from central import agents
from central.broker import BrokerAdmin, agent_amqp_url


class EnrolmentError(Exception):
    """A token that cannot be used; the message says why (unknown, used, expired)."""


@dataclass(frozen=True)
class Enrolled:
    agent_id: UUID
    city_id: UUID
    api_token: str
    amqp_url: str


async def create_token(
    conn: asyncpg.Connection, cidade_id: UUID, nome: str, created_by: UUID | None, ttl_s: int
) -> tuple[str, datetime]:
    """A one-time enrolment token for a new agent of the city; shown once, stored hashed."""
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
    await conn.execute(
        "INSERT INTO enrolment_tokens (id, cidade_id, nome, token_sha256, created_by, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        uuid.uuid4(), cidade_id, nome, agents.token_digest(token), created_by, expires,
    )  # fmt: skip
    return token, expires


async def enrol(
    conn: asyncpg.Connection, broker: BrokerAdmin, token: str, amqp_base_url: str
) -> Enrolled:
    """Spend the token: create the agent, its API token and its broker user. Commits.

    All or nothing: if the broker user cannot be made, the transaction rolls back and the token
    stays usable.
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE enrolment_tokens SET used_at = now()"
            " WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > now()"
            " RETURNING id, cidade_id, nome",
            agents.token_digest(token),
        )
        if row is None:
            raise EnrolmentError(await _why_unusable(conn, token))
        agent_id, api_token = await agents.create_agent(conn, row["cidade_id"], row["nome"])
        await conn.execute(
            "UPDATE enrolment_tokens SET agent_id = $2 WHERE id = $1", row["id"], agent_id
        )
        user, password = await broker.create_agent_user(agent_id, row["cidade_id"])
    return Enrolled(
        agent_id, row["cidade_id"], api_token, agent_amqp_url(amqp_base_url, user, password)
    )


async def _why_unusable(conn: asyncpg.Connection, token: str) -> str:
    row = await conn.fetchrow(
        "SELECT used_at, expires_at FROM enrolment_tokens WHERE token_sha256 = $1",
        agents.token_digest(token),
    )
    if row is None:
        return "unknown enrolment token"
    if row["used_at"] is not None:
        return "enrolment token already used"
    return "enrolment token expired"


async def revoke(conn: asyncpg.Connection, broker: BrokerAdmin, agent_id: UUID) -> bool:
    """Disable the agent's API token and delete its broker user. Idempotent; False if unknown."""
    found = await conn.fetchval(
        "UPDATE agents SET is_active = FALSE, revoked_at = coalesce(revoked_at, now())"
        " WHERE id = $1 RETURNING id",
        agent_id,
    )
    if found is None:
        return False
    await broker.delete_agent_user(agent_id)
    return True
